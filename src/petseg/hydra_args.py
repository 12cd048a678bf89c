"""train.py's Hydra command line as other code writes or reads it: quoting a value, telling a sweep job,
and the arguments of torchrun's other ranks."""

from __future__ import annotations

import os
import re

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from petseg.errors import PetsegError

# Characters Hydra's override grammar takes unquoted in a value (not ',' '=' '~' '$' spaces quotes brackets).
_HYDRA_PLAIN = re.compile(r"[\w\-+./:@%]+")


def hydra_quote(value: str) -> str:
    """``value`` written so a Hydra ``key=value`` override reads it back verbatim (e.g. a path)."""
    if _HYDRA_PLAIN.fullmatch(value):
        return value
    quote = "'" if "'" not in value else '"'
    return f"{quote}{value}{quote}"


def is_multirun() -> bool:
    """Whether this process runs a job of a Hydra multirun (-m, a sweep)."""
    try:
        return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:
        return False


def quiet_other_ranks(argv: list[str]) -> list[str]:
    """Under torchrun, Hydra runs in every process: only rank 0 may create the run dir, its .hydra/
    record and train.log. The others get a run dir of '.' (exists: nothing is created) and no Hydra
    output or log file; the trainer hands them rank 0's run dir. Sweeps and torchrun do not mix."""
    if not (os.environ.get("WORLD_SIZE") or os.environ.get("SLURM_NTASKS")):
        return argv  # no launcher: skip importing torch (via distributed.py) before Hydra parses
    from petseg.distributed import launched_info  # late: see the line above

    info = launched_info()
    if not info.enabled:
        return argv
    if "-m" in argv or "--multirun" in argv:
        raise PetsegError(
            "torchrun trains one run on several processes; run sweeps (-m) without torchrun, "
            "or give each sweep job its GPUs through a launcher"
        )
    if info.is_main:
        return argv
    keep = [a for a in argv if not a.lstrip("+").startswith(("hydra.run.dir=", "hydra.output_subdir="))]
    return [*keep, "hydra.run.dir=.", "hydra.output_subdir=null", "hydra/job_logging=disabled"]
