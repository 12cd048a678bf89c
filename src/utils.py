"""Small shared pieces: the one Dice implementation, seeding and random states.

Dice is defined once here and used by training, validation, evaluation and inference, so every number
the project prints means the same thing.
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

log = logging.getLogger("petseg")


# --------------------------------------------------------------------------------------------- Dice
def dice_counts(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image intersection |P∩G| and size sum |P|+|G| of binary masks shaped (N, ...)."""
    pred = pred.reshape(pred.shape[0], -1).float()
    target = target.reshape(target.shape[0], -1).float()
    intersection = (pred * target).sum(dim=1)
    total = pred.sum(dim=1) + target.sum(dim=1)
    return intersection, total


def dice_from_counts(intersection: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """Dice = 2|P∩G| / (|P|+|G|); an image where both masks are empty scores 1 (perfect agreement)."""
    empty = total == 0
    dice = 2 * intersection / total.clamp_min(1)
    return torch.where(empty, torch.ones_like(dice), dice)


def dice_per_image(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Dice of each image in a batch of binary masks (N, ...), as a float tensor of shape (N,)."""
    return dice_from_counts(*dice_counts(pred, target))


def binarize(logits: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Foreground where sigmoid(logits) > threshold, without computing the sigmoid."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    return logits > float(np.log(threshold / (1 - threshold)))


@dataclass
class DiceMeter:
    """Accumulates Dice over batches: mean over images and pooled over all pixels; and the pixel
    error (1 - accuracy) over all pixels, the number the UNet paper reports for the EM slices."""

    dice_sum: float = 0.0
    count: int = 0
    intersection: float = 0.0
    total: float = 0.0
    wrong: float = 0.0  # pixels where prediction and truth differ
    pixels: float = 0.0
    per_image: list[float] = field(default_factory=list)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        intersection, total = dice_counts(pred, target)
        dice = dice_from_counts(intersection, total)
        self.dice_sum += float(dice.sum())
        self.count += int(dice.numel())
        self.intersection += float(intersection.sum())
        self.total += float(total.sum())
        # |P xor G| = |P| + |G| - 2|P∩G|: the wrong pixels from the Dice counts, no second pass.
        self.wrong += float((total - 2 * intersection).sum())
        self.pixels += float(pred.numel())
        self.per_image.extend(dice.tolist())
        return dice

    @property
    def pixel_error(self) -> float:
        """Wrong pixels over all pixels of all images (1 - pixel accuracy)."""
        return self.wrong / self.pixels if self.pixels else float("nan")

    @property
    def mean(self) -> float:
        """Mean of the per-image Dice scores (the headline metric)."""
        return self.dice_sum / self.count if self.count else float("nan")

    @property
    def pooled(self) -> float:
        """Dice over all pixels of all images taken together."""
        if self.count == 0:
            return float("nan")
        return 1.0 if self.total == 0 else 2 * self.intersection / self.total


# ----------------------------------------------------------------------------- seeding and devices
def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch; optionally force deterministic kernels (slower, reproducible)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        # cuBLAS needs this to be deterministic; harmless on CPU.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def capture_rng() -> dict[str, Any]:
    """Every global random state (Python, NumPy, torch, CUDA), as types torch.load(weights_only=True)
    accepts: saved in checkpoints so a resumed run draws the same numbers as one never stopped."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    # This process's own GPU only: the _all variants create a context on every visible GPU from every
    # rank (memory on each), and a resume may see another number of GPUs.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Set every global random state back to what ``capture_rng`` saw."""
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if isinstance(cuda, (list, tuple)):  # older checkpoints: one state per visible GPU
            cuda = cuda[torch.cuda.current_device()] if torch.cuda.current_device() < len(cuda) else None
        if cuda is not None:
            torch.cuda.set_rng_state(cuda)
