"""One training run from a config: signals, processes, the run dir, build, resume, Trainer.fit; and
train.py's job around it: check the config, and end every way a run can end in one clear line."""

from __future__ import annotations

import logging
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hydra.types import RunMode
from omegaconf import DictConfig

from petseg.build import build, build_trainer
from petseg.checkpoint import remove_partial_writes
from petseg.checks import check_train_config
from petseg.distributed import DistInfo, broadcast_object, init_distributed, shutdown
from petseg.errors import USAGE_ERROR, PetsegError, TrainingDiverged
from petseg.paths import project_path
from petseg.resume import config_for_resume, resolve_resume, resume_trainer
from petseg.run_objects import RunObjects
from petseg.settings import RunSettings, run_settings
from petseg.signals import StopSignals, TrainingInterrupted

log = logging.getLogger("petseg.train")


def _describe(cfg: DictConfig, built: RunObjects, dist: DistInfo) -> str:
    runtime = built.runtime
    ddp = f"; {dist.world_size} processes (DDP), global batch {dist.world_size * int(cfg.data.batch_size)}"
    return (
        f"model {cfg.model.name} ({sum(p.numel() for p in built.model.parameters()) / 1e6:.2f}M params) on "
        f"{runtime.device}, {runtime.describe()['amp']}, channels_last={runtime.channels_last} "
        f"({runtime.why}); "
        f"{len(built.train_set)} train / {len(built.val_set)} valid images{ddp if dist.enabled else ''}"
    )


def fit(
    cfg: DictConfig,
    run_dir: str | Path,
    choices: Mapping[str, str] | None = None,
    settings: RunSettings | None = None,
) -> float:
    """Train as the config says, in ``run_dir``; returns the best validation Dice. ``settings``: what
    check_train_config read from ``cfg`` (read here when not given).

    Signal handling starts before the setup, so a Ctrl-C while data and model load also ends in a
    saved last.pth and the resume command rather than a traceback.
    """
    with StopSignals() as stop:
        dist = init_distributed()
        try:
            if dist.enabled:
                stop.debounce_s = 2.0
                if not dist.is_main:
                    logging.getLogger("petseg").setLevel(logging.WARNING)  # rank 0 tells the story
            # Every rank works in rank 0's run dir (Hydra gave the others a dummy one); only rank 0 writes.
            run_dir = Path(broadcast_object(str(run_dir), dist))
            if dist.is_main:
                run_dir.mkdir(parents=True, exist_ok=True)
                for leftover in remove_partial_writes(run_dir):
                    log.info("removed %s, left by a save that was killed", leftover.name)
            settings = settings or run_settings(cfg)
            built = build(cfg, dist, settings)
            # Only now: a run that build() rejects (no data, a bad setting) leaves no dir, so printing
            # one before would name a path that is gone by the time the error line follows.
            if dist.is_main:
                log.info("run dir: %s", run_dir.resolve())
            trainer = build_trainer(cfg, built, run_dir, dist, stop, dict(choices or {}), settings)
            if cfg.trainer.resume:
                resume_trainer(trainer, resolve_resume(cfg.trainer.resume), cfg)
            log.info("%s", _describe(cfg, built, dist))
            return trainer.fit()
        finally:
            shutdown(dist)


def run_job(cfg: DictConfig, hydra_cfg: Any) -> float:
    """train.py's job in the run dir Hydra made: check the config, resume if asked, fit; the best val
    Dice (what sweepers optimise). A user mistake exits with code 2 after one line on stderr; it is
    written to the run's train.log too, or, when the run did no work yet, its empty dir is removed."""

    run_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        if cfg.trainer.resume:
            cfg = config_for_resume(cfg, list(hydra_cfg.overrides.task))
        settings = check_train_config(cfg)
        choices = {g: str(o) for g, o in hydra_cfg.runtime.choices.items() if o and not g.startswith("hydra")}
        return fit(cfg, run_dir, choices, settings)
    except TrainingDiverged as err:
        if hydra_cfg.mode != RunMode.MULTIRUN:
            _end_with_error(err, run_dir, cfg.trainer.resume)
        # What the sweeper optimises: the best val Dice reached before diverging, 0 (the worst Dice)
        # if no epoch finished. Not NaN: the Optuna sweeper cannot record a NaN trial and would stop.
        score = max(err.best_metric, 0.0)
        log.error("job %s diverged, the sweep goes on (its score: %.4f): %s", hydra_cfg.job.num, score, err)
        return score
    except TrainingInterrupted as stop:
        log.warning("%s", stop)
        sys.exit(stop.exit_code)
    except PetsegError as err:
        _end_with_error(err, run_dir, cfg.trainer.resume)


# What Hydra writes into a new run dir before the job starts: a dir holding nothing else did no work.
_HYDRA_STARTUP_FILES = {".hydra", "train.log"}


def _end_with_error(err: PetsegError, run_dir: Path, resume: str | None) -> None:
    print(f"error: {err}", file=sys.stderr)
    # The dir of a run being resumed is the user's, whatever it holds; a fresh one may go.
    target = Path(str(resume)).expanduser().absolute() if resume else None
    fresh = target is None or run_dir.absolute() not in (target, target.parent)
    fresh = fresh and run_dir.resolve() != Path.cwd().resolve()  # torchrun's other ranks get "."
    if fresh and run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= _HYDRA_STARTUP_FILES:
        shutil.rmtree(run_dir, ignore_errors=True)  # rejected before any work: leave nothing behind
        _remove_if_empty(run_dir.parent)  # the outputs/<date>/ Hydra made for it
    else:
        _to_log_files(logging.ERROR, f"error: {err}")
    sys.exit(USAGE_ERROR)


def _remove_if_empty(folder: Path) -> None:
    """Remove ``folder`` if it is a date folder of the project's outputs/ (Hydra's default run dirs)
    and holds nothing; any other folder is the user's."""
    try:
        if folder.resolve().parent == project_path("outputs").resolve():
            folder.rmdir()  # only succeeds when empty
    except OSError:
        pass


def _to_log_files(level: int, message: str) -> None:
    """Write ``message`` to the log files (train.log) only: the console has it already."""
    record = log.makeRecord(log.name, level, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
