"""Config checks that run before any work, so a typo costs a second, not an epoch."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from errors import PetsegError
from models import available_models, check_input_size
from optim import OPTIMIZERS, SCHEDULES


def _positive(value: object, key: str, kind: type = float) -> None:
    try:
        ok = kind(value) > 0 and kind(value) == float(value)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise PetsegError(f"{key} must be a positive {kind.__name__}, got {value!r}")


def validate_train_config(cfg: DictConfig) -> None:
    """Raise PetsegError with one clear line for the first user mistake found in a training config."""
    if cfg.model.name not in available_models():
        raise PetsegError(f"unknown model '{cfg.model.name}'; valid: {', '.join(available_models())}")
    if cfg.optim.name not in OPTIMIZERS:
        raise PetsegError(f"unknown optimizer '{cfg.optim.name}'; valid: {', '.join(OPTIMIZERS)}")
    if cfg.sched.name not in SCHEDULES:
        raise PetsegError(f"unknown schedule '{cfg.sched.name}'; valid: {', '.join(SCHEDULES)}")
    _positive(cfg.optim.lr, "optim.lr")
    _positive(cfg.data.batch_size, "data.batch_size", int)
    _positive(cfg.trainer.epochs, "trainer.epochs", int)
    _positive(cfg.data.image_size, "data.image_size", int)
    size = int(cfg.data.image_size)
    check_input_size(cfg.model.name, size, size)
    if cfg.monitor not in ("val/dice", "val/dice_pooled"):
        raise PetsegError(f"monitor must be val/dice or val/dice_pooled, got {cfg.monitor}")
    root = Path(cfg.data.root)
    if not root.is_dir():
        raise PetsegError(
            f"dataset root {root} does not exist; download it with "
            f"`python src/oxford_pet.py --root {root} --download` or set data.root=<path>"
        )
