"""What a training run does around the step, as callbacks the Trainer calls at fixed points.

A callback has any of ``before_fit(trainer)``, ``after_step(trainer, seconds)``,
``after_epoch(trainer, record, samples)``, ``after_fit(trainer, seconds)`` and, when it has state
that a resumed run needs, ``state_dict()`` / ``load_state_dict(state)`` (saved in last.pth under
its ``name``). ``Callback`` gives no-op defaults. They are built from the config in one place
(``build.build_trainer``); the Trainer knows only this protocol. Callbacks run on every rank; those
that write (TensorBoard, export) do so on rank 0 only.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from torch.utils.tensorboard import SummaryWriter

from petseg.checkpoint import ExportSettings, export_best
from petseg.pictures import comparison_rows
from petseg.tb import write_epoch, write_hparams_start, write_run_end
from petseg.thread_tuner import ThreadTuner
from petseg.trainer_view import TrainerView

log = logging.getLogger("petseg.train")


class Callback:
    """No-op hooks; subclasses override what they need."""

    def before_fit(self, trainer: TrainerView) -> None:
        pass

    def after_step(self, trainer: TrainerView, seconds: float) -> None:
        pass

    def after_epoch(self, trainer: TrainerView, record: dict[str, float], samples: list) -> None:
        pass

    def after_fit(self, trainer: TrainerView, seconds: float) -> None:
        pass


class TensorBoardLog(Callback):
    """Per-epoch scalars and overlays, and the HParams tab, in ``<run dir>/tb`` (rank 0)."""

    def __init__(self, run_dir: Path, cfg: DictConfig, choices: dict[str, str]) -> None:
        self.folder, self.cfg, self.choices = Path(run_dir) / "tb", cfg, choices
        self.writer: SummaryWriter | None = None

    def before_fit(self, trainer: TrainerView) -> None:
        if not trainer.dist.is_main:
            return
        # On resume, TensorBoard drops every event an earlier process logged from the next epoch on
        # (a crash after logging an epoch but before saving it): each epoch appears once in the log.
        purge = trainer.progress.epoch + 1 if trainer.resumed_from is not None else None
        self.writer = SummaryWriter(str(self.folder), purge_step=purge)
        write_hparams_start(self.writer, self.cfg, trainer.choices)

    def after_epoch(self, trainer: TrainerView, record: dict[str, float], samples: list) -> None:
        if self.writer is not None:
            overlays = comparison_rows(samples, len(samples[0][0])) if samples else None
            write_epoch(self.writer, record, overlays)

    def after_fit(self, trainer: TrainerView, seconds: float) -> None:
        if self.writer is not None:
            progress = trainer.progress
            write_run_end(self.writer, progress.history, (progress.best_metric, progress.best_epoch), seconds)
            self.close()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class ThreadTuning(Callback):
    """``trainer.threads: auto`` (petseg.thread_tuner): feed it every step's time. A new training size
    (trainer.size_schedule) changes what a step costs, so the tuner starts over at each size."""

    def __init__(self, tuner: ThreadTuner) -> None:
        self.tuner = tuner
        self.size: int | None = None

    def after_step(self, trainer: TrainerView, seconds: float) -> None:
        if trainer.current_size != self.size:
            self.size = trainer.current_size
            self.tuner.reset()
        self.tuner.after_step(seconds)


class MidEpochSave(Callback):
    """last.pth inside an epoch: every n optimiser steps, and every n minutes (so a long first epoch
    killed by the machine's end still leaves a state to resume)."""

    def __init__(self, every_n_steps: int, every_n_minutes: float) -> None:
        self.every_n_steps, self.every_n_minutes = every_n_steps, every_n_minutes

    def after_step(self, trainer: TrainerView, seconds: float) -> None:
        progress = trainer.progress
        if progress.step >= trainer.steps_per_epoch:
            return  # the epoch's end saves anyway
        due = bool(self.every_n_steps) and progress.global_step % self.every_n_steps == 0
        minutes = self.every_n_minutes
        due = due or (minutes > 0 and time.monotonic() - trainer.saved_at >= minutes * 60)
        if due:
            trainer.save("last.pth")


class ExportBest(Callback):
    """At the end, the best weights to ``<trainer.checkpoint.export_dir>/<model>.pth`` (rank 0)."""

    def __init__(self, run_dir: Path, export: ExportSettings) -> None:
        self.run_dir, self.export = Path(run_dir), export

    def after_fit(self, trainer: TrainerView, seconds: float) -> None:
        if not trainer.dist.is_main:
            return
        progress = trainer.progress
        exported = export_best(self.run_dir, self.export, progress.best_metric, progress.best_epoch)
        saved = [self.run_dir / n for n in ("best.pth", "last.pth") if (self.run_dir / n).is_file()]
        log.info("checkpoints: %s", ", ".join(map(str, [*saved, *([exported] if exported else [])])))


def callback_states(callbacks: list[Any]) -> dict[str, Any]:
    """``{name: state}`` of the callbacks that have state."""
    return {type(c).__name__: c.state_dict() for c in callbacks if hasattr(c, "state_dict")}


def load_callback_states(callbacks: list[Any], states: dict[str, Any]) -> None:
    for callback in callbacks:
        name = type(callback).__name__
        if hasattr(callback, "load_state_dict") and name in states:
            callback.load_state_dict(states[name])
