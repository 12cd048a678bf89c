"""Turn a multirun (sweep) dir into one table: overrides, best val Dice, its epoch, wall time.

    python src/sweep_summary.py sweep_dir=outputs/multirun/2026-11-26/10-00-00 [out=<folder>]

Prints the overrides every job shares, then the table sorted by Dice (best first) with each job's own
overrides, and saves it as summary.csv and summary.md in the sweep dir. Everything is read from what
each run left behind (Hydra's overrides.yaml and the TensorBoard events), so it also works on sweeps
that are still running or were cut short. The keys and their defaults: configs/sweep_summary.yaml,
``python src/sweep_summary.py --help``."""

from __future__ import annotations

import csv
import sys
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from petseg.cli import run_command
from petseg.command_config import as_optional_path, as_path, load_cli_config
from petseg.errors import PetsegError
from petseg.sweeps import find_runs, shared_overrides, varying_overrides
from petseg.tb import read_events

MONITOR = "val/dice"


@dataclass
class RunSummary:
    run: str
    overrides: str
    best_dice: float | None
    best_epoch: int | None
    epochs: int
    wall_minutes: float | None


def summarise_run(run_dir: Path, sweep_dir: Path, overrides: list[str]) -> RunSummary:
    """One row: a run's own ``overrides`` (see varying_overrides) and what its TensorBoard log says."""
    events = read_events(run_dir)
    points = {step: value for step, (value, _) in events.get(MONITOR, {}).items()}
    times = [wall for series in events.values() for _, wall in series.values()]
    config_file = run_dir / ".hydra" / "config.yaml"
    if config_file.is_file():  # written when the job starts: counts the first epoch too
        times.append(config_file.stat().st_mtime)
    best_epoch = max(points, key=lambda step: points[step]) if points else None
    return RunSummary(
        run=str(run_dir.relative_to(sweep_dir)),
        overrides=" ".join(overrides) or "(none)",
        best_dice=points[best_epoch] if best_epoch is not None else None,
        best_epoch=best_epoch,
        epochs=len(points),
        wall_minutes=(max(times) - min(times)) / 60 if len(times) > 1 else None,
    )


def summarise(sweep_dir: Path) -> list[RunSummary]:
    if not sweep_dir.is_dir():
        raise PetsegError(f"sweep dir {sweep_dir} does not exist")
    runs = find_runs(sweep_dir)
    if not runs:
        raise PetsegError(f"no runs (job dirs with .hydra/ or tb/) under {sweep_dir}")
    rows = [
        summarise_run(run, sweep_dir, own) for run, own in zip(runs, varying_overrides(runs), strict=True)
    ]
    return sorted(rows, key=lambda r: -1.0 if r.best_dice is None else r.best_dice, reverse=True)


def header(headline: str = "dice_256") -> tuple[str, ...]:
    """The columns; the Dice one named by the data's headline (val/dice logs it: dice_256 for pets)."""
    return ("rank", "run", "overrides", f"best val {headline}", "epoch", "epochs", "wall min")


def headline_of(runs: list[Path]) -> str:
    """``data.headline`` of the first job with a config (jobs of one sweep share their data group)."""
    for run_dir in runs:
        config_file = run_dir / ".hydra" / "config.yaml"
        if config_file.is_file():
            return str(OmegaConf.select(OmegaConf.load(config_file), "data.headline", default="dice_256"))
    return "dice_256"


def as_cells(rank: int, row: RunSummary) -> list[str]:
    return [
        str(rank),
        row.run,
        row.overrides,
        "n/a" if row.best_dice is None else f"{row.best_dice:.4f}",
        "n/a" if row.best_epoch is None else str(row.best_epoch),
        str(row.epochs),
        "n/a" if row.wall_minutes is None else f"{row.wall_minutes:.1f}",
    ]


def to_markdown(rows: list[RunSummary], shared: list[str] | None = None, headline: str = "dice_256") -> str:
    """The table; led by the overrides all jobs share, which its column leaves out."""
    columns = header(headline)
    lines = [f"Every job: {' '.join(shared) if shared else '(no shared overrides)'}", ""]
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(as_cells(i, r)) + " |" for i, r in enumerate(rows, 1)]
    return "\n".join(lines) + "\n"


def write_csv(rows: list[RunSummary], path: Path, headline: str = "dice_256") -> None:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header(headline))
        writer.writerows(as_cells(i, r) for i, r in enumerate(rows, 1))


def main(argv: list[str] | None = None) -> int:
    def run() -> int:
        cfg = load_cli_config("sweep_summary", sys.argv[1:] if argv is None else argv)
        sweep_dir = as_path(cfg.sweep_dir, "sweep_dir")
        rows = summarise(sweep_dir)
        out = as_optional_path(cfg.out, "out") or sweep_dir
        out.mkdir(parents=True, exist_ok=True)
        runs = find_runs(sweep_dir)
        headline = headline_of(runs)
        markdown = to_markdown(rows, shared_overrides(runs), headline)
        (out / "summary.md").write_text(markdown)
        write_csv(rows, out / "summary.csv", headline)
        print(markdown, end="")
        print(f"saved {out / 'summary.csv'} and {out / 'summary.md'}")
        return 0

    return run_command(run)


if __name__ == "__main__":
    sys.exit(main())
