"""The one checkpoint save/load pair.

A checkpoint is a plain dict (tensors, numbers, strings, lists) so it loads with
``torch.load(weights_only=True)``: loading never runs pickled code. It carries the composed config,
so evaluation and inference rebuild the same model and preprocessing from the file alone.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from errors import PetsegError
from models import build_model

FORMAT = "petseg-checkpoint"
VERSION = 1


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write atomically: a temp file in the same folder, fsync, then rename over the target.

    A kill at any moment leaves either the previous file or the new one, never a torn file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "version": VERSION, **state}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load one of our checkpoints safely (weights_only) or raise a PetsegError saying why not."""
    path = Path(path)
    if not path.is_file():
        raise PetsegError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, zipfile.BadZipFile, EOFError, ValueError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PetsegError(f"{path} is not a petseg checkpoint ({first_line[:200]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise PetsegError(f"{path} is not a petseg checkpoint (no '{FORMAT}' marker)")
    if ckpt.get("version", 0) > VERSION:
        raise PetsegError(f"{path} was written by a newer petseg (format {ckpt['version']} > {VERSION})")
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any], expected_name: str | None = None) -> nn.Module:
    """Rebuild the model the checkpoint's config describes and load its weights as float32."""
    model_cfg = dict(ckpt["config"]["model"])
    name = model_cfg.get("name")
    if expected_name is not None and name != expected_name:
        raise PetsegError(f"checkpoint holds a '{name}' model, but the config asks for '{expected_name}'")
    model = build_model(**model_cfg)
    state = {k: v.float() if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise PetsegError(
            f"checkpoint weights do not fit a '{name}' model: {str(err).splitlines()[0]}"
        ) from None
    return model


def export_weights(ckpt: dict[str, Any], path: str | Path, half: bool = False) -> Path:
    """Save a small deployable copy: weights, config, epoch and metrics, no optimiser state.

    half=True stores floating weights as fp16 (half the file size); loading restores float32.
    """
    weights = ckpt["model"]
    if half:
        weights = {k: v.half() if v.is_floating_point() else v for k, v in weights.items()}
    keep = ("config", "epoch", "metrics", "best", "history", "model_name")
    return save_checkpoint(path, {"model": weights, **{k: ckpt[k] for k in keep if k in ckpt}})
