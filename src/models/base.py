"""Shared base class for segmentation models and the one input-size message they all use."""

from __future__ import annotations

import torch
from torch import nn


def _nearest_multiples(size: int, multiple: int) -> list[int]:
    """The valid sizes on either side of ``size`` (only the upper one when the lower would be 0)."""
    lower = (size // multiple) * multiple
    upper = lower + multiple
    return [upper] if lower == 0 else [lower, upper]


def size_error_message(name: str, height: int, width: int, multiple: int) -> str | None:
    """Return why ``height x width`` is invalid for model ``name``, or None when it is valid.

    One function builds the message for both the forward pass (ValueError) and config validation
    (PetsegError via ``check_input_size``), so a user sees the same words wherever it is caught.
    """
    bad = {dim: size for dim, size in (("height", height), ("width", width)) if size % multiple}
    if not bad:
        return None
    if len(set(bad.values())) == 1:
        # One bad dimension, or both bad with the same value: one list of sizes says it all.
        (size,) = set(bad.values())
        nearest = " or ".join(map(str, _nearest_multiples(size, multiple)))
    else:
        nearest = ", ".join(
            f"{dim} " + " or ".join(map(str, _nearest_multiples(size, multiple))) for dim, size in bad.items()
        )
    return (
        f"image size {height}x{width} is not a multiple of {multiple} for {name}; "
        f"nearest valid sizes: {nearest}"
    )


def is_positive_int(value: object) -> bool:
    """True for a positive int (not a bool: YAML ``true`` would otherwise pass as 1)."""
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def require_positive_ints(**values: object) -> None:
    """Raise ValueError naming the first argument that is not a positive integer."""
    for arg, value in values.items():
        if not is_positive_int(value):
            raise ValueError(f"{arg} must be a positive integer, got {value!r}")


class SegmentationModel(nn.Module):
    """Base for registered models: (N, C, H, W) images -> (N, out_channels, H, W) logits.

    ``size_multiple`` is the factor H and W must be divisible by (2 ** number of downsamplings);
    ``registry_name`` is set by ``register_model`` and only used in messages.
    """

    size_multiple: int = 1
    registry_name: str = ""

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ValueError for an input whose size the model would have to crop or pad.

        We never crop silently: a misaligned skip connection would either crash deep inside the
        decoder or (with cropping) return a mask that does not line up with the image.
        """
        if x.dim() != 4:
            raise ValueError(f"expected a 4-D (N, C, H, W) tensor, got shape {tuple(x.shape)}")
        name = self.registry_name or type(self).__name__
        message = size_error_message(name, x.shape[-2], x.shape[-1], self.size_multiple)
        if message:
            raise ValueError(message)
