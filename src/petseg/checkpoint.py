"""The one checkpoint save/load pair.

A checkpoint is a plain dict (tensors, numbers, strings, lists) so it loads with
``torch.load(weights_only=True)``: loading never runs pickled code. It carries the composed config,
so evaluation and inference rebuild the same model and preprocessing from the file alone.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from models import build_model
from petseg.cli import is_multirun
from petseg.errors import PetsegError
from petseg.upgrade import upgrade_config

log = logging.getLogger("petseg.train")

FORMAT = "petseg-checkpoint"
VERSION = 1
# Config sections evaluation and inference rebuild the model and its preprocessing from.
REQUIRED_CONFIG = ("model", "data", "aug", "trainer")
TEMP_SUFFIX = ".tmp"


def _temp_name(path: Path) -> Path:
    # Hidden, beside the target (os.replace is only atomic within one file system), unique per writer.
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{TEMP_SUFFIX}")


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable: without it a power cut can forget the new directory entry."""
    if not hasattr(os, "O_DIRECTORY"):  # Windows: directories cannot be opened this way
        return
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems (e.g. some network mounts) refuse; the rename itself already happened
    finally:
        os.close(fd)


def write_atomic(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Write a file through ``write(fh)`` atomically: temp file, flush, fsync, rename over ``path``.

    A failure or a kill at any moment leaves either the previous file or the new one, never a torn one.
    A failure removes the temp file; only a hard kill mid-write can leave one (``remove_partial_writes``).
    An OSError (disk full, no permission) becomes a PetsegError naming the file.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _temp_name(path)
        # 0o666 minus the umask like any new file (mkstemp would make it readable by its owner only).
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as err:
        raise PetsegError(f"cannot write {path}: {err}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as err:  # also KeyboardInterrupt: never leave a half-written temp file behind
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise PetsegError(f"cannot write {path}: {err}") from None
        raise
    _fsync_dir(path.parent)
    return path


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Save ``state`` (plus the format marker) atomically to ``path``; see ``write_atomic``."""
    payload = {"format": FORMAT, "version": VERSION, **state}
    return write_atomic(path, lambda fh: torch.save(payload, fh))


def copy_checkpoint(source: str | Path, target: str | Path) -> Path:
    """Copy a checkpoint file atomically (best.pth from last.pth)."""
    with open(source, "rb") as src:
        return write_atomic(target, lambda fh: shutil.copyfileobj(src, fh, 1 << 20))


def remove_partial_writes(folder: str | Path) -> list[Path]:
    """Delete temp files that a process killed mid-save (SIGKILL, power cut) left in ``folder``."""
    leftovers = sorted(Path(folder).glob(f".*.pth.*{TEMP_SUFFIX}"))
    for leftover in leftovers:
        leftover.unlink(missing_ok=True)
    return leftovers


def load_checkpoint(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """Load one of our checkpoints safely (weights_only) or raise a PetsegError saying why not.

    ``mmap=True`` maps the tensors instead of reading them: cheap when only the config is needed.
    """
    path = Path(path)
    if path.is_dir():
        raise PetsegError(f"checkpoint {path} is a folder; give a .pth file (e.g. {path / 'best.pth'})")
    if not path.is_file():
        raise PetsegError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # any failure to decode a user's file is about that file, not a bug
        text = str(err).strip()
        first_line = text.splitlines()[0] if text else type(err).__name__
        raise PetsegError(f"{path} is not a petseg checkpoint ({first_line[:200]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise PetsegError(f"{path} is not a petseg checkpoint (no '{FORMAT}' marker)")
    if not isinstance(ckpt.get("version"), int) or ckpt["version"] > VERSION:
        raise PetsegError(f"{path} was written by a newer petseg (format {ckpt.get('version')} > {VERSION})")
    weights, config = ckpt.get("model"), ckpt.get("config")
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise PetsegError(f"{path} is a damaged petseg checkpoint: it holds no model weights")
    missing = [key for key in REQUIRED_CONFIG if not isinstance((config or {}).get(key), dict)]
    if not isinstance(config, dict) or missing or not isinstance(config["model"].get("name"), str):
        raise PetsegError(
            f"{path} is a damaged petseg checkpoint: its config lacks {', '.join(missing) or 'model.name'}"
        )
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any], expected_name: str | None = None) -> nn.Module:
    """Rebuild the model the checkpoint's config describes and load its weights as float32.

    Weights that do not fit that model (another architecture or width, an altered file) are a
    PetsegError that says how many tensors are missing, unexpected or of another shape.
    """
    model_cfg = OmegaConf.to_container(upgrade_config(ckpt["config"]).model, resolve=True)
    assert isinstance(model_cfg, dict)
    name = model_cfg.get("name")
    if expected_name is not None and name != expected_name:
        raise PetsegError(f"checkpoint holds a '{name}' model, but the config asks for '{expected_name}'")
    model = build_model(**model_cfg)
    state = {k: v.float() if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    reshaped = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or reshaped:
        example = (reshaped or missing or unexpected)[0]
        raise PetsegError(
            f"checkpoint weights do not fit the '{name}' model its config describes ({len(missing)} "
            f"missing, {len(unexpected)} unexpected, {len(reshaped)} of another shape, e.g. '{example}'): "
            "the file holds another architecture or was altered"
        )
    model.load_state_dict(state)
    return model


def export_weights(ckpt: dict[str, Any], path: str | Path, half: bool = False) -> Path:
    """Save a small deployable copy: weights, config, epoch and metrics, no optimiser state.

    half=True stores floating weights as fp16 (half the file size); loading restores float32.
    """
    weights = ckpt["model"]
    if half:
        weights = {k: v.half() if v.is_floating_point() else v for k, v in weights.items()}
    keep = ("config", "epoch", "metrics", "best", "history", "runtime", "train_images")
    return save_checkpoint(path, {"model": weights, **{k: ckpt[k] for k in keep if k in ckpt}})


def export_best(run_dir: Path, cfg: DictConfig, best_metric: float, best_epoch: int) -> Path | None:
    """Copy the weights of ``run_dir/best.pth`` to ``<trainer.checkpoint.export_dir>/<model name>.pth``
    (fp16 if half_precision_export); the path, or None when nothing was exported: export off, a smoke
    run (trainer.limit_*), a multirun unless export_in_multirun, no best.pth, or a file already there
    that this command did not ask to replace (trainer.checkpoint.overwrite=true): a user's model is
    never replaced silently."""
    ckpt_cfg = cfg.trainer.checkpoint
    best = run_dir / "best.pth"
    if not ckpt_cfg.export_dir or not best.is_file():
        return None
    if cfg.trainer.limit_train_batches is not None or cfg.trainer.limit_val_batches is not None:
        log.info(
            "smoke run (trainer.limit_*): not exported to %s; the best weights are %s",
            ckpt_cfg.export_dir,
            best,
        )
        return None
    if is_multirun() and not ckpt_cfg.export_in_multirun:
        log.info(
            "multirun: not exporting to %s (set trainer.checkpoint.export_in_multirun=true)",
            ckpt_cfg.export_dir,
        )
        return None
    target = Path(ckpt_cfg.export_dir) / f"{cfg.model.name}.pth"
    if target.exists() and not ckpt_cfg.overwrite:
        log.warning(
            "%s already exists and was kept; this run's best weights (val Dice %.4f) are %s. To replace "
            "it, copy that file there or train with trainer.checkpoint.overwrite=true",
            target,
            best_metric,
            best,
        )
        return None
    export_weights(load_checkpoint(best), target, half=bool(ckpt_cfg.half_precision_export))
    log.info("best weights (val Dice %.4f, epoch %d) exported to %s", best_metric, best_epoch, target)
    return target
