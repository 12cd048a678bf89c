"""OpenMP settings that must be in the environment before torch is imported (OpenMP reads them once).

On a small machine shared with another CPU-bound process (a second run, an evaluation, a browser),
torch's thread pool has one thread per core and one of them keeps losing its core. With OpenMP's
default wait policy the other threads spin at every barrier for it, and a training step became 10-15x
slower. Sleeping at once instead (OMP_WAIT_POLICY=PASSIVE) hands the core back
(benchmarks/busy_machine.py; measured in benchmarks/README.md). A value the user set is kept.
"""

from __future__ import annotations

import os
import sys

WAIT_POLICY = "PASSIVE"


def configure() -> None:
    """Set the wait policy unless the user chose one; call before the first ``import torch``."""
    if "torch" in sys.modules:  # too late to matter: OpenMP is loaded with torch
        return
    os.environ.setdefault("OMP_WAIT_POLICY", WAIT_POLICY)
