"""The one checkpoint save/load pair.

A checkpoint is a plain dict (tensors, numbers, strings, lists) so it loads with
``torch.load(weights_only=True)``: loading never runs pickled code. It carries the composed config,
so evaluation and inference rebuild the same model and preprocessing from the file alone.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import secrets
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch
from omegaconf import OmegaConf
from torch import nn

from models import build_model
from petseg.errors import PetsegError
from petseg.hydra_args import is_multirun
from petseg.paths import project_path
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


def remove_partial_writes(folder: str | Path) -> list[Path]:
    """Delete temp files that a process killed mid-save (SIGKILL, power cut) left in ``folder``."""
    leftovers = sorted(Path(folder).glob(f".*.pth.*{TEMP_SUFFIX}"))
    for leftover in leftovers:
        leftover.unlink(missing_ok=True)
    return leftovers


# The first bytes of the two formats torch.save writes: a zip archive (the default since torch 1.6)
# and the legacy pickle stream, which starts with torch's magic number pickled at protocol 2.
ZIP_MAGIC = b"PK\x03\x04"
LEGACY_MAGIC = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)
# What every checkpoint save_checkpoint writes holds; listed when missing.
REQUIRED_KEYS = ("format", "version", "model", "config")
# A member torch.save writes in its zip archive: <archive name>/data.pkl and <archive name>/data/<n>.
TORCH_MEMBER = re.compile(r"[^/]+/data(\.pkl$|/)")


def _zip_reason(path: Path, err: Exception) -> str:
    """Why torch could not load a zip file, in user words (never torch's or miniz's internal text)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, EOFError):
        # No readable central directory: the usual cut-off copy. torch archives begin with their data
        # (<archive>/data.pkl or <archive>/data/<n>), named in the first local header.
        with open(path, "rb") as fh:
            head = fh.read(1024)
        name_length = int.from_bytes(head[26:28], "little")
        first = head[30 : 30 + name_length].decode("utf-8", "replace")
        return f"truncated or corrupt {'torch' if TORCH_MEMBER.match(first) else 'zip'} file"
    if any(name.endswith("/constants.pkl") for name in names):
        return "a TorchScript model, not a checkpoint"
    if not any(TORCH_MEMBER.match(name) for name in names):
        return "a zip archive, not a torch file"
    if isinstance(err, pickle.UnpicklingError):  # weights_only refuses to run pickled code
        return "it holds pickled Python objects, e.g. a whole model, which a safe load refuses"
    return "truncated or corrupt torch file"


def _read_torch_file(path: Path, mmap: bool) -> Any:
    """torch.load(weights_only) of ``path``, or a PetsegError giving the reason in a few words.

    The format is told from the first bytes before torch sees the file: torch's errors for a file it
    cannot read (EOFError, `pop from empty list`, miniz and mmap messages, pickle warnings) say
    nothing to a user, and a plain pickle is not even attempted.
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(LEGACY_MAGIC))
    except OSError as err:
        raise PetsegError(f"cannot read checkpoint {path}: {err.strerror or err}") from None
    if not head:
        raise PetsegError(f"{path} is not a petseg checkpoint (empty file)")
    legacy = head == LEGACY_MAGIC
    if not legacy and not head.startswith(ZIP_MAGIC):
        raise PetsegError(f"{path} is not a petseg checkpoint (not a torch file)")
    try:
        # torch warns on stderr about files it is unsure of (a TorchScript archive, an odd pickle
        # protocol); the outcome here is either a checkpoint or this function's one-line error.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            # mmap needs the zip format; a legacy file is read whole (we never write one).
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and not legacy)
    except MemoryError:
        raise
    except Exception as err:  # any failure to decode a torch file is about that file, not a bug
        reason = "truncated or corrupt torch file" if legacy else _zip_reason(path, err)
        raise PetsegError(f"{path} is not a petseg checkpoint ({reason})") from None


def _contents_problem(ckpt: Any) -> str | None:
    """Why a loaded object is not one of our checkpoints (a few words), or None when it is."""
    if not isinstance(ckpt, dict):
        return f"it holds a {type(ckpt).__name__}, not a checkpoint dict"
    if ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        return "a plain state_dict without the config"
    missing = [key for key in REQUIRED_KEYS if key not in ckpt]
    if missing:
        return f"missing keys: {', '.join(missing)}"
    if ckpt["format"] != FORMAT:
        return f"format is {ckpt['format']!r}, not {FORMAT!r}"
    if not isinstance(ckpt["version"], int):
        return f"version is {ckpt['version']!r}, not a number"
    weights, config = ckpt["model"], ckpt["config"]
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        return "its model entry is not a state_dict of tensors"
    if not isinstance(config, dict):
        return "its config entry is not a dict"
    lacking = [key for key in REQUIRED_CONFIG if not isinstance(config.get(key), dict)]
    if not lacking and not isinstance(config["model"].get("name"), str):
        lacking = ["model.name"]
    return f"its config lacks {', '.join(lacking)}" if lacking else None


def load_checkpoint(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """Load one of our checkpoints safely (weights_only) or raise a one-line PetsegError: a missing
    file or a folder says so; anything else is ``<file> is not a petseg checkpoint (<reason>)``.

    ``mmap=True`` maps the tensors instead of reading them: cheap when only the config is needed.
    """
    path = Path(path)
    if path.is_dir():
        raise PetsegError(f"checkpoint {path} is a folder; give a .pth file (e.g. {path / 'best.pth'})")
    if not path.is_file():
        raise PetsegError(f"checkpoint not found: {path}")
    ckpt = _read_torch_file(path, mmap)
    if isinstance(ckpt, dict) and isinstance(ckpt.get("version"), int) and ckpt["version"] > VERSION:
        raise PetsegError(f"{path} was written by a newer petseg (format {ckpt['version']} > {VERSION})")
    problem = _contents_problem(ckpt)
    if problem:
        raise PetsegError(f"{path} is not a petseg checkpoint ({problem})")
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
    """Save a small deployable copy (``evaluation_state``): weights, config, epoch and metrics.

    half=True stores floating weights as fp16 (half the file size); loading restores float32.
    """
    weights = ckpt["model"]
    if half:
        weights = {k: v.half() if v.is_floating_point() else v for k, v in weights.items()}
    return save_checkpoint(path, {**evaluation_state(ckpt), "model": weights})


# What evaluation, inference and the reports read: the scored weights and what they were trained as.
EVALUATION_KEYS = (
    "model",
    "config",
    "epoch",
    "metrics",
    "best",
    "history",
    "runtime",
    "train_images",
    "choices",
)


def evaluation_state(ckpt: dict[str, Any]) -> dict[str, Any]:
    """``ckpt`` without what only resuming needs (optimiser moments, trained weights beside the EMA,
    schedule, RNG states): best.pth and exports, a third of last.pth's size with AdamW."""
    return {k: ckpt[k] for k in EVALUATION_KEYS if k in ckpt}


@dataclass(frozen=True)
class ExportSettings:
    """Where and how the best weights are exported at the end (settings.export_settings reads them)."""

    export_dir: str | None  # trainer.checkpoint.export_dir (null: no export)
    name: str  # trainer.checkpoint.export_name, else <model.name>.pth
    overwrite: bool = False  # trainer.checkpoint.overwrite
    half: bool = False  # trainer.checkpoint.half_precision_export
    in_multirun: bool = False  # trainer.checkpoint.export_in_multirun
    smoke: bool = False  # trainer.limit_train_batches or limit_val_batches set: a smoke run


def export_best(run_dir: Path, export: ExportSettings, best_metric: float, best_epoch: int) -> Path | None:
    """Copy the weights of ``run_dir/best.pth`` to ``<export_dir>/<name>`` (fp16 if ``half``); the
    path, or None when nothing was exported: export off, a smoke run (trainer.limit_*), a multirun
    unless export_in_multirun, no best.pth, or a file already there that this command did not ask to
    replace (trainer.checkpoint.overwrite=true): a user's model is never replaced silently."""
    best = run_dir / "best.pth"
    if not export.export_dir or not best.is_file():
        return None
    if export.smoke:
        log.info(
            "smoke run (trainer.limit_*): not exported to %s; the best weights are %s",
            export.export_dir,
            best,
        )
        return None
    if is_multirun() and not export.in_multirun:
        log.info(
            "multirun: not exporting to %s (set trainer.checkpoint.export_in_multirun=true)",
            export.export_dir,
        )
        return None
    target = project_path(export.export_dir) / export.name  # the project's saved_models/
    if target.exists() and not export.overwrite:
        log.warning(
            "%s already exists and was kept; this run's best weights (val Dice %.4f) are %s. To replace "
            "it, copy that file there or train with trainer.checkpoint.overwrite=true",
            target,
            best_metric,
            best,
        )
        return None
    export_weights(load_checkpoint(best), target, half=export.half)
    log.info("best weights (val Dice %.4f, epoch %d) exported to %s", best_metric, best_epoch, target)
    return target
