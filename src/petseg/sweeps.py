"""What a sweep (multirun) dir holds: its job dirs and the overrides each was started with; shared by
sweep_summary.py (the table) and curves.py (one line per job, labelled by what sets it apart)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf


def run_overrides(run_dir: Path) -> list[str]:
    """A run's command-line overrides as Hydra recorded them ([] where it left no record)."""
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    return [str(o) for o in OmegaConf.load(overrides_file)] if overrides_file.is_file() else []


def shared_overrides(runs: list[Path]) -> list[str]:
    """The overrides every run of the sweep was given (debug=tiny, data.root=...), in command order."""
    overrides = [run_overrides(run) for run in runs]
    if len(overrides) < 2:
        return []
    common = set.intersection(*map(set, overrides))
    return [o for o in overrides[0] if o in common]


def varying_overrides(runs: list[Path]) -> list[list[str]]:
    """Each run's overrides less those every run shares (e.g. data.root): what tells them apart."""
    overrides = [run_overrides(run) for run in runs]
    common = set.intersection(*map(set, overrides)) if len(overrides) > 1 else set()
    return [[o for o in own if o not in common] for own in overrides]


def find_runs(sweep_dir: Path) -> list[Path]:
    """Every job dir of the sweep: the folders holding a Hydra .hydra/ record or TensorBoard events."""
    runs = {p.parent.parent for p in sweep_dir.rglob(".hydra/overrides.yaml")}
    runs |= {p.parent.parent for p in sweep_dir.rglob("tb/events.out.tfevents.*")}
    runs.discard(sweep_dir)
    return sorted(runs)
