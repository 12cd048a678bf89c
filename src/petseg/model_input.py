"""The one conversion of the data's uint8 batches into what a model takes, on the model's device.

Every item leaves the dataset as uint8: image (3, S, S) in RGB order and mask (1, S, S) in {0, 1}
(oxford_pet.OxfordPetDataset). Training, validation, evaluation, inference, the demo and the benchmarks
all hand those batches to a ``ModelInput``, which moves them to the device (a quarter of the bytes of
float32) and only there turns the image into float32 normalised by ``data.mean``/``data.std`` and the
mask into float32, in the model's memory format. Pictures (overlays, galleries) read the uint8 image
as it is: nothing has to be de-normalised.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from petseg.data_settings import DataSettings, as_data_settings
from petseg.runtime import Runtime


class ModelInput:
    """Turns uint8 batches into the model's float inputs on ``runtime.device`` (see the module doc)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], runtime: Runtime) -> None:
        self.runtime = runtime
        # (1, 3, 1, 1) float32 on the device, so the arithmetic below is the same float32 operations,
        # in the same order, as (image / 255 - mean) / std in numpy: bit-identical values on CPU.
        shape = (1, len(list(mean)), 1, 1)  # one per channel: RGB, or 1 for grayscale
        self.mean = torch.tensor(list(mean), dtype=torch.float32).view(shape).to(runtime.device)
        self.std = torch.tensor(list(std), dtype=torch.float32).view(shape).to(runtime.device)

    @classmethod
    def of(cls, data: DataSettings | Any, runtime: Runtime) -> ModelInput:
        """The normalisation of the data settings, data.mean and data.std (resolved; a data config is
        read by data_settings first)."""
        data = as_data_settings(data)
        assert data.mean is not None and data.std is not None, "resolved data settings"
        return cls(data.mean, data.std, runtime)

    def images(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 RGB (N, 3, H, W) -> normalised float32 on the device, in the model's memory format."""
        if images.dtype != torch.uint8:
            raise TypeError(f"images must be uint8 (N, 3, H, W) as the dataset gives; got {images.dtype}")
        x = images.to(self.runtime.device, non_blocking=True).float()
        x.div_(255.0).sub_(self.mean).div_(self.std)  # in place: one float buffer instead of four
        if self.runtime.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def masks(self, masks: torch.Tensor) -> torch.Tensor:
        """uint8 {0, 1} masks (N, 1, H, W) -> float32 on the device (what the losses take)."""
        return masks.to(self.runtime.device, non_blocking=True).float()

    def __call__(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, masks) of a collated batch of dataset items."""
        return self.images(batch["image"]), self.masks(batch["mask"])
