"""Config checks that run before any work, so a typo costs a second, not an epoch.

Each check raises a PetsegError with one line naming the key, the bad value and what would be valid;
train.py prints it and exits with code 2.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from models import check_input_size
from petseg.errors import PetsegError
from petseg.evaluation import PROTOCOLS
from petseg.runtime import AMP_DTYPES
from petseg.transforms import check_image_size


def _positive(value: object, key: str, kind: type = float) -> None:
    try:
        ok = not isinstance(value, bool) and kind(value) > 0 and kind(value) == float(value)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise PetsegError(f"{key} must be a positive {kind.__name__}, got {value!r}")


def _optional_positive_int(value: object, key: str) -> None:
    if value is not None:
        _positive(value, key, int)


def _non_negative_int(value: object, key: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise PetsegError(f"{key} must be an integer >= 0, got {value!r}")


def _channel_numbers(values: object, key: str, channels: int = 3) -> list[float]:
    """One number per image channel (data.mean, data.std): R, G, B, or one for grayscale."""
    try:
        numbers = [float(v) for v in values if not isinstance(v, bool | str)]  # type: ignore[attr-defined]
        ok = len(numbers) == len(values) == channels  # type: ignore[arg-type]
    except (TypeError, ValueError):
        ok = False
    if not ok:
        what = "3 numbers (R, G, B)" if channels == 3 else f"{channels} number(s), one per channel"
        raise PetsegError(f"{key} must be {what}, got {values!r}")
    return numbers


def check_threshold(value: object, key: str) -> float:
    """A probability threshold strictly between 0 and 1 (train.py, evaluate.py and inference.py)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
        raise PetsegError(f"{key} must be a number strictly between 0 and 1, got {value!r}")
    return float(value)


def check_device(value: object, key: str) -> str:
    """auto or a device torch knows; whether it is present here is the runtime's to say."""
    if str(value) != "auto":
        try:
            torch.device(str(value))
        except (RuntimeError, ValueError):
            raise PetsegError(
                f"{key}={value} is not a device; use auto, cpu, cuda, cuda:<index> or mps"
            ) from None
    return str(value)


def check_data_settings(model_name: str, data_cfg: DictConfig, in_channels: object = None) -> None:
    """The data settings a run uses (train.py's config, or a checkpoint's plus data.* overrides in
    evaluate.py and inference.py): batch size, workers, channels, normalisation (null: computed from
    the train images of a folder), an image and crop size the model takes."""

    _positive(data_cfg.batch_size, "data.batch_size", int)
    _non_negative_int(data_cfg.num_workers, "data.num_workers")
    channels = data_cfg.channels
    folder = data_cfg.get("layout") == "folder"
    if channels not in (1, 3) and not (channels == "auto" and folder):
        raise PetsegError(f"data.channels must be 1 or 3{' or auto' if folder else ''}, got {channels!r}")
    if in_channels is not None and channels in (1, 3) and in_channels != channels:
        raise PetsegError(
            f"model.in_channels={in_channels} but data.channels={channels}: the model takes the data's "
            "channels (leave model.in_channels unset)"
        )
    count = channels if channels in (1, 3) else None
    for key in ("mean", "std"):
        if data_cfg[key] is None and folder:
            continue  # computed from the train split (petseg.folder_data)
        numbers = _channel_numbers(data_cfg[key], f"data.{key}", count or len(data_cfg[key] or ()))
        if key == "std" and min(numbers) <= 0:
            raise PetsegError(f"data.std must be positive, got {list(data_cfg.std)}")
    if data_cfg.headline not in PROTOCOLS:
        raise PetsegError(f"data.headline must be one of {', '.join(PROTOCOLS)}, got {data_cfg.headline!r}")
    size = check_image_size(data_cfg.image_size)
    check_input_size(model_name, size, size)  # also: an unknown model name, in the registry's words
    if data_cfg.get("repeat") is not None:
        _positive(data_cfg.repeat, "data.repeat", int)
    crop = data_cfg.get("crop")
    if crop is not None:
        _positive(crop, "data.crop", int)
        if crop > size:
            raise PetsegError(f"data.crop={crop} is larger than data.image_size={size}")
        check_input_size(model_name, int(crop), int(crop))


def _validate_trainer(t: DictConfig) -> None:

    _positive(t.epochs, "trainer.epochs", int)
    if isinstance(t.seed, bool) or not isinstance(t.seed, int):
        raise PetsegError(f"trainer.seed must be an integer, got {t.seed!r}")
    check_threshold(t.threshold, "trainer.threshold")
    if t.grad_clip is not None:
        _positive(t.grad_clip, "trainer.grad_clip")
    if t.threads != "auto":
        _optional_positive_int(t.threads, "trainer.threads (or auto)")
    for key in ("limit_train_batches", "limit_val_batches"):
        _optional_positive_int(t[key], f"trainer.{key}")
    _optional_positive_int(t.checkpoint.every_n_steps, "trainer.checkpoint.every_n_steps")
    if t.checkpoint.every_n_minutes is not None:
        _positive(t.checkpoint.every_n_minutes, "trainer.checkpoint.every_n_minutes (or null)")
    _non_negative_int(t.overlays.count, "trainer.overlays.count")
    _non_negative_int(t.overlays.every_n_epochs or 0, "trainer.overlays.every_n_epochs")
    if str(t.amp) not in ("auto", *AMP_DTYPES):
        raise PetsegError(f"trainer.amp={t.amp} is not one of auto, {', '.join(AMP_DTYPES)}")
    check_device(t.device, "trainer.device")


def check_train_config(cfg: DictConfig) -> None:
    """Raise PetsegError with one clear line for the first user mistake found in a training config.

    Covers numbers (lr, batch size, epochs, image size the model can take, trainer settings) and the
    model name. What a builder checks anyway is left to it, once: the augmentation pipeline, the
    dataset root and the test-leak guard (build_dataset), the optimiser, schedule and loss arguments
    (petseg/build.py). Group options (``model=foo``) are Hydra's to
    reject; train.py turns that into the same kind of one-line error.
    """
    _positive(cfg.optim.lr, "optim.lr")
    check_data_settings(cfg.model.name, cfg.data, cfg.model.get("in_channels"))
    _validate_trainer(cfg.trainer)
    if cfg.monitor not in ("val/dice", "val/dice_pooled"):
        raise PetsegError(f"monitor must be val/dice or val/dice_pooled, got {cfg.monitor}")
