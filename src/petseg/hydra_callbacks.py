"""Hydra callbacks of train.py (configs/train.yaml, hydra.callbacks): what a sweep tells its user."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from petseg.paths import PROJECT_ROOT, python_command


class AnnounceSweep(Callback):
    """A sweep (-m) says where it writes when it starts, and how to compare its jobs when it ends;
    each job then prints its own run dir, checkpoints and best val Dice like a single run."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        print(f"sweep dir: {config.hydra.sweep.dir}", flush=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        summary = python_command(PROJECT_ROOT / "src" / "sweep_summary.py")
        print(f"sweep dir: {sweep_dir}; compare its jobs: {summary} sweep_dir={sweep_dir}", flush=True)
