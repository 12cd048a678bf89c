"""Plain, typed settings that the training loop and its callbacks take instead of the config.

``train_settings(cfg)`` reads the keys once, at the start (a wrong value is one PetsegError line); below
it nothing reads YAML. Each field says which key it comes from; the key's default and its meaning are
in the YAML (configs/trainer/default.yaml), not here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from petseg.errors import PetsegError


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


def train_settings(cfg: DictConfig) -> TrainSettings:
    """The training loop's settings from the composed config (after checks.check_train_config, which
    checks the older trainer keys; the keys only this loop reads are checked here)."""
    trainer, ckpt = cfg.trainer, cfg.trainer.checkpoint
    epochs, image_size = int(trainer.epochs), int(cfg.data.image_size)
    limit_train, limit_val = trainer.limit_train_batches, trainer.limit_val_batches
    return TrainSettings(
        epochs=epochs,
        batch_size=int(cfg.data.batch_size),
        image_size=image_size,
        size_schedule=size_schedule(trainer.size_schedule, epochs, image_size),
        accumulate=_positive_int(trainer.accumulate, "trainer.accumulate"),
        grad_clip=None if trainer.grad_clip is None else float(trainer.grad_clip),
        threshold=float(trainer.threshold),
        monitor=str(cfg.monitor),
        headline=str(cfg.data.headline),
        limit_train_batches=None if limit_train is None else int(limit_train),
        limit_val_batches=None if limit_val is None else int(limit_val),
        overlay_every=int(trainer.overlays.every_n_epochs or 0),
        overlay_count=int(trainer.overlays.count or 0),
        save_last=bool(ckpt.save_last),
        save_best=bool(ckpt.save_best),
        save_every_n_steps=int(ckpt.every_n_steps or 0),
        save_every_n_minutes=float(ckpt.every_n_minutes or 0),
    )
