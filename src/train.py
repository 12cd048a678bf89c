"""Training entrypoint: `python src/train.py model=resnet34_unet optim.lr=3e-4` (`-m` for sweeps).

Composes configs/train.yaml with its groups, checks it (petseg.checks), builds the run's objects
(petseg.build), trains (petseg.trainer) and returns the best val Dice, which sweepers (Optuna)
optimise. `trainer.resume=<run dir or .pth>` continues a stopped run (petseg.resume); under torchrun
one run trains on several processes. A job of a sweep whose loss diverges returns the best val Dice it
reached (0 if none) so the sweep goes on. Exit codes: 0 done; 2 a user mistake, one line, no
traceback; 128 + signal after SIGINT/SIGTERM (last.pth saved, resume command printed); 1 a bug.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from petseg.cli import run_hydra_main
from petseg.paths import CONFIG_DIR, project_path

# Launchers that run jobs in fresh processes (submitit locally or on SLURM) unpickle this module's
# task function there: they need src/ importable, as it is for `python src/train.py`.
_SRC = str(Path(__file__).resolve().parent)
if _SRC not in os.environ.get("PYTHONPATH", "").split(os.pathsep):
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_SRC, os.environ.get("PYTHONPATH")) if p)


# ${pid:} in hydra.run.dir / hydra.sweep.dir (configs/train.yaml): this process's id, so runs started
# in the same second never share a dir. ${project:outputs}: outputs/ of the project, from any directory.
OmegaConf.register_new_resolver("pid", os.getpid, use_cache=True, replace=True)
OmegaConf.register_new_resolver("project", lambda path: str(project_path(path)), replace=True)


# An absolute config_path: Hydra reads a relative one as a package path when this module is imported
# (as by tests calling cli()) rather than run as a script.
@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def main(cfg: DictConfig) -> float:
    # torch and the rest load here, after Hydra read the command line: a mistake in it is reported
    # in a second, and a Ctrl-C during these imports is caught by cli().
    from petseg.run import run_job

    return run_job(cfg, HydraConfig.get())


def cli(argv: list[str] | None = None) -> int:
    """`python src/train.py [overrides]`; the exit code (0, 2 for a user mistake, 128 + a signal)."""
    return run_hydra_main(main, argv)


if __name__ == "__main__":
    sys.exit(cli())
