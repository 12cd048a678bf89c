"""The Trainer as the modules it calls see it: callbacks (petseg/callbacks.py, petseg/ema.py) and
resume (petseg/resume.py). The Trainer (petseg/trainer.py) imports those modules, so they name what they
use of it here instead of importing it back."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from petseg.distributed import DistInfo
from petseg.progress import Progress
from petseg.run_objects import RunObjects


class TrainerView(Protocol):
    """What callbacks and resume read and set of a petseg.trainer.Trainer."""

    built: RunObjects
    dist: DistInfo
    progress: Progress
    steps_per_epoch: int
    current_size: int  # this epoch's training size
    saved_at: float  # time.monotonic() of the last last.pth
    resumed_from: Path | None
    choices: dict[str, str]

    def save(self, name: str) -> Path: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...
