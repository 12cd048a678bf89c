"""One training run from a config: signals, processes, the run dir, build, resume, Trainer.fit."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from omegaconf import DictConfig

from petseg.build import Built, build
from petseg.checkpoint import remove_partial_writes
from petseg.distributed import DistInfo, broadcast_object, init_distributed, shutdown
from petseg.resume import resolve_resume
from petseg.signals import StopSignals
from petseg.trainer import Trainer

log = logging.getLogger("petseg.train")


def _describe(cfg: DictConfig, built: Built, dist: DistInfo) -> str:
    rt = built.runtime
    ddp = f"; {dist.world_size} processes (DDP), global batch {dist.world_size * int(cfg.data.batch_size)}"
    return (
        f"model {cfg.model.name} ({sum(p.numel() for p in built.model.parameters()) / 1e6:.2f}M params) on "
        f"{rt.device}, {rt.describe()['amp']}, channels_last={rt.channels_last} ({rt.why}); "
        f"{len(built.train_set)} train / {len(built.val_set)} valid images{ddp if dist.enabled else ''}"
    )


def fit(cfg: DictConfig, run_dir: str | Path, choices: Mapping[str, str] | None = None) -> float:
    """Train as the config says, in ``run_dir``; returns the best validation Dice.

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
                log.info("run dir: %s", run_dir.resolve())
                run_dir.mkdir(parents=True, exist_ok=True)
                for leftover in remove_partial_writes(run_dir):
                    log.info("removed %s, left by a save that was killed", leftover.name)
            built = build(cfg, dist)
            trainer = Trainer(cfg, built, run_dir, dist, stop, choices)
            if cfg.trainer.resume:
                trainer.resume(resolve_resume(cfg.trainer.resume))
            log.info("%s", _describe(cfg, built, dist))
            return trainer.fit()
        finally:
            shutdown(dist)
