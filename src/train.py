"""Training entrypoint: `python src/train.py model=resnet34_unet optim.lr=3e-4`.

Composes configs/train.yaml with its groups, validates the result, trains, and returns the best
validation Dice so Hydra sweepers (e.g. Optuna) can optimise it.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from cli import USAGE_ERROR
from errors import PetsegError
from trainer import TrainingInterrupted, fit
from validation import validate_train_config

log = logging.getLogger("petseg.train")

# Launchers that run jobs in fresh processes (submitit locally or on SLURM) unpickle this module's
# task function there: they need src/ importable, as it is for `python src/train.py`.
_SRC = str(Path(__file__).resolve().parent)
if _SRC not in os.environ.get("PYTHONPATH", "").split(os.pathsep):
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_SRC, os.environ.get("PYTHONPATH")) if p)


@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
def main(cfg: DictConfig) -> float:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        validate_train_config(cfg)
        return fit(cfg, run_dir)
    except TrainingInterrupted as stop:
        log.warning("%s", stop)
        sys.exit(stop.exit_code)
    except PetsegError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(USAGE_ERROR)


if __name__ == "__main__":
    main()
