"""A checkpoint's model with its own preprocessing, for one photo at a time (inference.py, the demo)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import nn

from petseg.checkpoint import model_from_checkpoint
from petseg.data_settings import data_settings
from petseg.evaluation import predict_logits, resize_logits
from petseg.images import read_image
from petseg.model_input import ModelInput
from petseg.runtime import Runtime, setup_runtime
from petseg.transforms import build_transform
from petseg.upgrade import upgrade_config
from petseg.value_checks import check_device, check_threshold
from utils import binarize


class Predictor:
    """A checkpoint's model with its own preprocessing: RGB array in, binary mask at that size out."""

    def __init__(
        self, ckpt: dict[str, Any], device: str = "auto", threshold: float = 0.5, tta: bool = False
    ) -> None:
        self.config = upgrade_config(ckpt["config"])
        self.data = data_settings(self.config.data)  # its preprocessing: image size, channels, mean/std
        check_threshold(threshold, "threshold")
        check_device(device, "device")
        trainer = OmegaConf.merge(self.config.trainer, {"device": device})
        self.runtime: Runtime = setup_runtime(trainer, device_key="device")
        self.model: nn.Module = self.runtime.prepare(model_from_checkpoint(ckpt)).eval()
        self.image_size = self.data.image_size
        self.transform = build_transform(None, self.image_size, train=False)  # never augmented
        self.model_input = ModelInput.of(self.data, self.runtime)
        self.threshold = threshold
        self.tta = tta

    def read(self, path: Path) -> np.ndarray:
        """An image file decoded as this model's training images were (RGB, or grayscale)."""
        assert self.data.channels is not None, "a checkpoint's resolved data settings"
        return read_image(path, self.data.channels)

    @torch.no_grad()
    def logits(self, image: np.ndarray) -> torch.Tensor:
        """Logits (1, 1, S, S) at the model's input size S for an RGB uint8 image (H, W, 3) of any size
        (flip TTA applied when on)."""
        resized = self.transform(image=image)["image"]  # uint8 (S, S, C), like a dataset item's
        if resized.ndim == 2:  # cv2 drops a single channel's axis
            resized = resized[:, :, None]
        batch = torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1)))[None]
        return predict_logits(self.model, self.model_input.images(batch), self.runtime, self.tta)

    @torch.no_grad()
    def predict(self, image: np.ndarray) -> np.ndarray:
        """Binary mask (H, W) for an RGB uint8 image (H, W, 3) of any size."""
        full = resize_logits(self.logits(image), image.shape[0], image.shape[1])
        return binarize(full, self.threshold)[0, 0].cpu().numpy()
