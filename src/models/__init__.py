"""Segmentation models behind a registry.

Adding an architecture takes one new module in this package whose class carries
``@register_model("name")``, its import below (importing it runs the decorator, which makes the name
buildable), and one ``configs/model/<name>.yaml``. The list is explicit so a reader sees every model
here, and a checkpoint names its model by the stable registry name, never by a module path.
"""

from . import resnet34_unet, unet  # noqa: F401  (registers "resnet34_unet" and "unet")
from .base import SegmentationModel, size_error_message
from .registry import available_models, build_model, check_input_size, register_model

__all__ = [
    "SegmentationModel",
    "available_models",
    "build_model",
    "check_input_size",
    "register_model",
    "size_error_message",
]
