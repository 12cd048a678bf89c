"""The one evaluation loop and its Dice protocols, used by training's validation, evaluate.py,
inference.py and the demo, so every number is computed the same way.

Every prediction is made as the model was trained (its own input size and preprocessing) and scored
three ways, all with Dice = 2|P∩G| / (|P|+|G|) per image, averaged over images (and pooled over pixels):

* ``dice_256``: the reference protocol (SimpleOxfordPetDataset's, what published numbers use): logits
  upsampled bilinearly to 256x256 and thresholded, against the trimap resized to 256x256 by nearest
  neighbour. Runs at any training size compare by it; it is the headline and training's ``val/dice``.
* ``dice_native``: logits upsampled to each image's original size, against the full-size trimap.
* ``dice_input``: at the model's input size, against the mask resized with the image.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm import tqdm

from petseg.data_settings import PROTOCOLS
from petseg.distributed import SINGLE, DistInfo, all_gather_list, all_sum
from petseg.errors import PetsegError
from petseg.loaders import _pet_dataset
from petseg.model_input import ModelInput
from petseg.runtime import Runtime
from utils import DiceMeter, binarize

# The reference protocol scores every prediction against the trimap resized to this size (by PIL NEAREST).
REFERENCE_SIZE = 256


def reference_mask(mask: np.ndarray, size: int = REFERENCE_SIZE) -> np.ndarray:
    """A binary uint8 mask (H, W) resized to size x size by PIL's NEAREST: the ground truth of the
    reference protocol (SimpleOxfordPetDataset resizes its trimaps exactly this way)."""
    return np.asarray(Image.fromarray(mask).resize((size, size), Image.NEAREST), dtype=np.uint8).copy()


PROTOCOL_LABELS = {
    "dice_256": f"reference protocol, {REFERENCE_SIZE}x{REFERENCE_SIZE} masks",
    "dice_native": "each image's original size",
    "dice_input": "the model's input size",
}
TTA_MODES: tuple[str, ...] = ("none", "flip")


def check_tta(tta: Any) -> bool:
    """``tta`` setting ('none' / 'flip', or a bool) -> whether flip TTA is on; PetsegError otherwise."""
    if isinstance(tta, bool):
        return tta
    if tta is None or str(tta) not in TTA_MODES:
        raise PetsegError(f"tta must be one of {', '.join(TTA_MODES)}, got {tta!r}")
    return str(tta) == "flip"


def predict_logits(
    model: nn.Module, images: torch.Tensor, runtime: Runtime, tta: bool = False
) -> torch.Tensor:
    """float32 logits of a batch; with ``tta`` the mean of the logits of the images and of their mirror
    images (flipped back), since pets face left and right alike."""
    with runtime.autocast():
        logits = model(images).float()
        if tta:
            logits = (logits + model(images.flip(-1)).float().flip(-1)) / 2
    return logits


def resize_logits(logits: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Logits (N, 1, h, w) resized bilinearly (centre-aligned) to height x width, before thresholding."""
    if logits.shape[-2:] == (height, width):
        return logits
    return F.interpolate(logits.float(), size=(height, width), mode="bilinear", align_corners=False)


class ReferenceTargets:
    """Ground truth of the protocols that do not use the model's input size, looked up by image name.

    ``load_mask(name)`` gives an image's binary mask at its original size (from its trimap).
    ``batch(names, native)`` returns the 256x256 masks of the reference protocol, each computed once
    and kept when ``keep`` (training's validation: ~64 KB an image), and, when ``native``, the
    full-size masks.
    """

    def __init__(
        self, load_mask: Callable[[str], np.ndarray], size: int = REFERENCE_SIZE, keep: bool = True
    ) -> None:
        self.load_mask = load_mask
        self.size = size
        self._kept: dict[str, np.ndarray] | None = {} if keep else None

    @classmethod
    def of(cls, dataset: Any, keep: bool = True) -> ReferenceTargets:
        """Targets of an OxfordPetDataset (also inside a Subset or similar wrapper)."""

        pet = _pet_dataset(dataset)
        if pet is None or not hasattr(pet, "load_mask"):
            raise TypeError(f"cannot find the masks of a {type(dataset).__name__}: pass targets=")
        return cls(pet.load_mask, keep=keep)

    def batch(self, names: Sequence[str], native: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(reference masks, bool (N, 1, S, S); full-size masks, bool (1, 1, H, W) each when ``native``)."""
        refs, natives = [], []
        for name in names:
            kept = self._kept.get(name) if self._kept is not None else None
            full = self.load_mask(name) if native or kept is None else None
            if kept is None:
                kept = reference_mask(full, self.size)
                if self._kept is not None:
                    self._kept[name] = kept
            refs.append(kept)
            if native:
                natives.append(torch.from_numpy(full)[None, None].bool())
        return torch.from_numpy(np.stack(refs))[:, None].bool(), natives


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    model_input: ModelInput,
    loss_fn: nn.Module | None = None,
    threshold: float = 0.5,
    limit_batches: int | None = None,
    progress: bool = True,
    desc: str = "eval",
    on_batch: Any = None,
    dist: DistInfo = SINGLE,
    targets: ReferenceTargets | None = None,
    native: bool = False,
    tta: bool = False,
    headline: str = "dice_256",
) -> dict[str, Any]:
    """Score a model on a loader of dataset items (uint8, turned into model inputs by ``model_input``)
    by the protocols of this module (``dice_native`` only when ``native``).

    Returns ``dice`` and ``dice_pooled`` (the ``headline`` protocol's mean and pooled Dice: the
    reference protocol's for the pets, ``dice_native`` for data=folder), ``pixel_error`` (the
    headline's), ``protocols`` (``{"dice_256": {"mean", "pooled", "pixel_error"}, ...}``),
    ``loss`` (at input size; None without ``loss_fn``),
    ``count`` and ``per_image``: one row per image in list order, ``{"name", "fg_fraction" (of the
    256x256 ground truth), "dice_256", "dice_input"[, "dice_native"]}``.

    ``targets`` default to the loader's dataset's masks. ``on_batch(batch, logits, dice_256)`` lets
    callers (overlays, galleries) see predictions without a second pass.

    Under DDP (``dist.enabled``) every rank scores its shard (sampler.ShardSampler: every
    world_size-th image, no padding) and the counts are summed over ranks, so every rank returns the
    numbers a single process computes on the whole split; per_image is put back in list order.
    """
    if headline not in PROTOCOLS:
        raise PetsegError(f"data.headline must be one of {', '.join(PROTOCOLS)}, got {headline!r}")
    native = native or headline == "dice_native"
    if targets is None:
        targets = ReferenceTargets.of(loader.dataset, keep=False)
    runtime = model_input.runtime
    was_training = model.training
    model.eval()
    meters = {p: DiceMeter() for p in PROTOCOLS if native or p != "dice_native"}
    rows: list[dict[str, Any]] = []
    loss_sum, loss_count = 0.0, 0
    total = len(loader) if limit_batches is None else min(len(loader), limit_batches)
    bar = tqdm(loader, total=total, desc=desc, leave=False, disable=not progress, dynamic_ncols=True)
    for index, batch in enumerate(bar):
        if limit_batches is not None and index >= limit_batches:
            break
        images, masks = model_input(batch)
        logits = predict_logits(model, images, runtime, tta)
        if loss_fn is not None:
            loss_sum += float(loss_fn(logits, masks)) * len(logits)
            loss_count += len(logits)
        ref_masks, full_masks = targets.batch(batch["name"], native)
        ref_masks = ref_masks.to(runtime.device)
        size = targets.size
        scores = {
            "dice_input": meters["dice_input"].update(binarize(logits, threshold), masks > 0.5),
            "dice_256": meters["dice_256"].update(
                binarize(resize_logits(logits, size, size), threshold), ref_masks
            ),
        }
        if native:
            scores["dice_native"] = torch.cat(
                [
                    meters["dice_native"].update(
                        binarize(resize_logits(one[None], *full.shape[-2:]), threshold),
                        full.to(runtime.device),
                    )
                    for one, full in zip(logits, full_masks, strict=True)
                ]
            )
        fg = ref_masks.flatten(1).float().mean(1)
        for i, name in enumerate(batch["name"]):
            rows.append(
                {"name": name, "fg_fraction": float(fg[i])} | {p: float(d[i]) for p, d in scores.items()}
            )
        if on_batch is not None:
            on_batch(batch, logits, scores[headline])
        bar.set_postfix(dice_256=f"{meters['dice_256'].mean:.4f}")
    model.train(was_training)
    if dist.enabled:
        fields = ("intersection", "total", "wrong", "pixels")
        sums = [getattr(m, f) for m in meters.values() for f in fields] + [loss_sum, loss_count]
        sums = all_sum(sums, dist, runtime.device)
        loss_sum, loss_count = sums[-2:]
        rows = interleave_shards(all_gather_list([rows], dist))
        for k, (protocol, meter) in enumerate(meters.items()):
            for j, f in enumerate(fields):
                setattr(meter, f, sums[len(fields) * k + j])
            meter.per_image = [row[protocol] for row in rows]
            meter.count = len(rows)
            meter.dice_sum = sum(meter.per_image)  # in list order: the single-process sum, term for term
    protocols = {
        p: {"mean": m.mean, "pooled": m.pooled, "pixel_error": m.pixel_error} for p, m in meters.items()
    }
    return {
        "dice": protocols[headline]["mean"],
        "dice_pooled": protocols[headline]["pooled"],
        "pixel_error": protocols[headline]["pixel_error"],
        "headline": headline,
        "protocols": protocols,
        "loss": loss_sum / loss_count if loss_count else None,
        "count": len(rows),
        "per_image": rows,
    }


def interleave_shards(shards: list[list[Any]]) -> list[Any]:
    """Undo ShardSampler's split: rank r's k-th item is item r + k * world_size of the whole list."""
    merged: list[Any] = []
    for k in range(max((len(s) for s in shards), default=0)):
        merged.extend(shard[k] for shard in shards if k < len(shard))
    return merged


def format_protocols(protocols: dict[str, dict[str, float]], image_size: int | None = None) -> list[str]:
    """One aligned line per protocol, reference protocol first, each saying what it measures."""
    lines = []
    for p in PROTOCOLS:
        if p in protocols:
            label = PROTOCOL_LABELS[p] + (f", {image_size} px" if p == "dice_input" and image_size else "")
            m = protocols[p]
            error = f"  pixel error {m['pixel_error']:.4f}" if "pixel_error" in m else ""
            lines.append(f"  {p:<12} mean {m['mean']:.4f}  pooled {m['pooled']:.4f}{error}   ({label})")
    return lines
