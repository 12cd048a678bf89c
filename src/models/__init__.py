"""Segmentation models behind a registry.

Adding an architecture takes one new module in this package whose class carries
``@register_model("name")``, plus one ``configs/model/<name>.yaml``. Every module of the package is
imported below (no hand-kept import list), so the decorator runs and the name becomes buildable.
"""

import importlib
import pkgutil

from .base import SegmentationModel, size_error_message
from .registry import available_models, build_model, check_input_size, register_model

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "SegmentationModel",
    "available_models",
    "build_model",
    "check_input_size",
    "register_model",
    "size_error_message",
]
