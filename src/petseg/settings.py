"""Plain, typed settings that a training run's builders, its loop and its callbacks take instead of
the config.

``run_settings(cfg)`` reads every group once, at the start, each by its one reader (``data_settings``,
``train_settings``, ...; a wrong value is one PetsegError line); below it nothing reads YAML. Each
field says which key it comes from; the key's default and its meaning are in the YAML
(configs/<group>/*.yaml), not here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from petseg.checkpoint import ExportSettings
from petseg.data_settings import DataSettings, data_settings
from petseg.errors import PetsegError
from petseg.transforms import AugSettings, aug_settings
from petseg.value_checks import (
    check_decay,
    check_threshold,
    non_negative_int,
    optional_positive_int,
    positive,
)


@dataclass(frozen=True)
class TrainSettings:
    epochs: int  # trainer.epochs
    batch_size: int  # data.batch_size (per process and per micro-batch)
    image_size: int  # data.image_size: the final training size, and validation's input size
    # trainer.size_schedule: (size, epochs) phases trained before the rest of the epochs at image_size
    size_schedule: tuple[tuple[int, int], ...] = ()
    accumulate: int = 1  # trainer.accumulate: micro-batches per optimiser step
    grad_clip: float | None = None  # trainer.grad_clip
    threshold: float = 0.5  # trainer.threshold
    monitor: str = "val/dice"  # monitor
    headline: str = "dice_256"  # data.headline: the protocol of val/dice
    limit_train_batches: int | None = None  # trainer.limit_train_batches (optimiser steps per epoch)
    limit_val_batches: int | None = None  # trainer.limit_val_batches
    overlay_every: int = 0  # trainer.overlays.every_n_epochs
    overlay_count: int = 0  # trainer.overlays.count
    save_last: bool = True  # trainer.checkpoint.save_last
    save_best: bool = True  # trainer.checkpoint.save_best
    save_every_n_steps: int = 0  # trainer.checkpoint.every_n_steps (0: off)
    save_every_n_minutes: float = 0.0  # trainer.checkpoint.every_n_minutes (0: off)
    ema: float | None = None  # trainer.ema: the decay of the weights' moving average (None: off)

    def size_at(self, epoch: int) -> int:
        """The training image size of epoch ``epoch`` (0-based)."""
        start = 0
        for size, epochs in self.size_schedule:
            if epoch < start + epochs:
                return size
            start += epochs
        return self.image_size

    def train_sizes(self) -> list[int]:
        """Every size some epoch trains at, in schedule order (the final size last)."""
        sizes = [s for s, _ in self.size_schedule if s != self.image_size]
        return [*dict.fromkeys(sizes), self.image_size]

    def is_report_epoch(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` (0-based) is the first, the last or an every_n_epochs-th one (of
        trainer.overlays): the epochs that validation also writes overlays and the no-EMA score."""
        every = self.overlay_every
        return every > 0 and ((epoch + 1) % every == 0 or epoch + 1 == self.epochs or epoch == 0)

    def overlays_at(self, epoch: int) -> int:
        """How many overlays validation of ``epoch`` (0-based) writes: overlay_count on report epochs,
        0 on the others."""
        return self.overlay_count if self.is_report_epoch(epoch) else 0


def _positive_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PetsegError(f"{key}={value!r} must be an integer >= 1")
    return value


def size_schedule(value: Any, epochs: int, image_size: int) -> tuple[tuple[int, int], ...]:
    """trainer.size_schedule as ((size, epochs), ...): null or a list of [size, epochs] pairs, sizes
    divisible by 32 and not above data.image_size, leaving at least one epoch at data.image_size."""
    if value is None:
        return ()
    raw = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
    usage = "a list of [size, epochs] pairs, e.g. [[64, 10], [96, 8]]"
    if not isinstance(raw, list | tuple):
        raise PetsegError(f"trainer.size_schedule={raw!r} must be null or {usage}")
    phases = []
    for pair in raw:
        if not (isinstance(pair, list | tuple) and len(pair) == 2 and all(type(v) is int for v in pair)):
            raise PetsegError(f"trainer.size_schedule: {pair!r} is not a [size, epochs] pair; give {usage}")
        size, n = pair
        if size < 32 or size % 32 or size > image_size:
            raise PetsegError(
                f"trainer.size_schedule: size {size} must be a multiple of 32 between 32 and "
                f"data.image_size={image_size} (the final size, trained last)"
            )
        if n < 1:
            raise PetsegError(f"trainer.size_schedule: [{size}, {n}] must train at least one epoch")
        phases.append((size, n))
    if sum(n for _, n in phases) >= epochs:
        raise PetsegError(
            f"trainer.size_schedule trains {sum(n for _, n in phases)} epochs before data.image_size, but "
            f"trainer.epochs={epochs}: leave at least one epoch at the final size"
        )
    return tuple(phases)


def _check_loop_keys(cfg: DictConfig) -> None:
    trainer, ckpt = cfg.trainer, cfg.trainer.checkpoint
    positive(trainer.epochs, "trainer.epochs", int)
    check_threshold(trainer.threshold, "trainer.threshold")
    if trainer.grad_clip is not None:
        positive(trainer.grad_clip, "trainer.grad_clip")
    for key in ("limit_train_batches", "limit_val_batches"):
        optional_positive_int(trainer[key], f"trainer.{key}")
    optional_positive_int(ckpt.every_n_steps, "trainer.checkpoint.every_n_steps")
    if ckpt.every_n_minutes is not None:
        positive(ckpt.every_n_minutes, "trainer.checkpoint.every_n_minutes (or null)")
    non_negative_int(trainer.overlays.count, "trainer.overlays.count")
    non_negative_int(trainer.overlays.every_n_epochs or 0, "trainer.overlays.every_n_epochs")
    if cfg.monitor not in ("val/dice", "val/dice_pooled"):
        raise PetsegError(f"monitor must be val/dice or val/dice_pooled, got {cfg.monitor}")


def train_settings(cfg: DictConfig, data: DataSettings) -> TrainSettings:
    """The training loop's settings: the trainer keys it reads, ``monitor``, and from the data settings
    the batch size, the final image size and the headline."""
    _check_loop_keys(cfg)
    trainer, ckpt = cfg.trainer, cfg.trainer.checkpoint
    epochs, image_size = int(trainer.epochs), data.image_size
    limit_train, limit_val = trainer.limit_train_batches, trainer.limit_val_batches
    return TrainSettings(
        epochs=epochs,
        batch_size=data.batch_size,
        image_size=image_size,
        size_schedule=size_schedule(trainer.size_schedule, epochs, image_size),
        accumulate=_positive_int(trainer.accumulate, "trainer.accumulate"),
        grad_clip=None if trainer.grad_clip is None else float(trainer.grad_clip),
        threshold=float(trainer.threshold),
        monitor=str(cfg.monitor),
        headline=data.headline,
        limit_train_batches=None if limit_train is None else int(limit_train),
        limit_val_batches=None if limit_val is None else int(limit_val),
        overlay_every=int(trainer.overlays.every_n_epochs or 0),
        overlay_count=int(trainer.overlays.count or 0),
        save_last=bool(ckpt.save_last),
        save_best=bool(ckpt.save_best),
        save_every_n_steps=int(ckpt.every_n_steps or 0),
        save_every_n_minutes=float(ckpt.every_n_minutes or 0),
        ema=check_decay(trainer.ema),
    )


@dataclass(frozen=True)
class RunSettings:
    """Every group's settings of one training run, each read once by its reader (run_settings)."""

    data: DataSettings  # the data group; a folder's channels/mean/std still 'auto'/null (build resolves)
    aug: AugSettings  # the aug group
    train: TrainSettings  # the loop's trainer keys
    export: ExportSettings  # trainer.checkpoint's export keys


def export_settings(cfg: DictConfig, train: TrainSettings) -> ExportSettings:
    """trainer.checkpoint's export keys, and whether this is a smoke run that must not export (from the
    loop's trainer.limit_* settings, read once by train_settings)."""
    ckpt = cfg.trainer.checkpoint
    return ExportSettings(
        export_dir=None if not ckpt.export_dir else str(ckpt.export_dir),
        name=str(ckpt.export_name or f"{cfg.model.name}.pth"),
        overwrite=bool(ckpt.overwrite),
        half=bool(ckpt.half_precision_export),
        in_multirun=bool(ckpt.export_in_multirun),
        smoke=train.limit_train_batches is not None or train.limit_val_batches is not None,
    )


def run_settings(cfg: DictConfig) -> RunSettings:
    """The composed training config's groups as typed settings, each checked (a PetsegError line)."""
    data = data_settings(cfg.data)
    train = train_settings(cfg, data)
    return RunSettings(data=data, aug=aug_settings(cfg.aug), train=train, export=export_settings(cfg, train))
