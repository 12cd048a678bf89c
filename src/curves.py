"""Per-epoch train/val Dice of runs and sweeps, read from their TensorBoard logs, in one PNG.

    python src/curves.py runs=[outputs/2026-11-26/10-00-00_unet,outputs/2026-11-26/10-30-00_resnet34_unet] \
        labels=[UNet,ResNet34-UNet] out=docs/figures/curves.png
    python src/curves.py runs=outputs/multirun/2026-11-26/10-00-00 out=outputs/sweep_curves.png

Each entry of ``runs`` is a run dir (it has its own tb/ or .hydra/) or a folder of runs such as a
multirun sweep dir (numbered job dirs, each with tb/): then each job is its own pair of lines, labelled
by the overrides that set it apart from the other jobs of that folder (Hydra's .hydra/overrides.yaml),
after the folder's ``labels`` entry if one is given. A run is labelled by its ``labels`` entry, else its
dir name. Prints one line per run (label, epochs, best val Dice), then where the PNG went. The keys,
their defaults and how to write a list: configs/curves.yaml, ``python src/curves.py --help``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from matplotlib import rcParams
from matplotlib.figure import Figure
from omegaconf import DictConfig, ListConfig

from petseg.cli import run_command
from petseg.command_config import as_optional_path, as_paths, load_cli_config
from petseg.errors import PetsegError
from petseg.paths import project_path
from petseg.sweeps import find_runs, varying_overrides
from petseg.tb import read_events

TAGS = ("train/dice", "val/dice")


@dataclass
class Series:
    """One run's curves as drawn: its legend label and {tag: [(epoch, value), ...]}."""

    label: str
    run_dir: Path
    points: dict[str, list[tuple[int, float]]]


def read_scalars(run_dir: str | Path, tags: tuple[str, ...] = TAGS) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(epoch, value), ...]} from every event file under run_dir (later writes win)."""
    if not any(Path(run_dir).rglob("events.out.tfevents.*")):
        raise PetsegError(f"no TensorBoard event files under {run_dir}")
    events = read_events(run_dir)
    return {tag: sorted((step, value) for step, (value, _) in events.get(tag, {}).items()) for tag in tags}


def is_run_dir(path: Path) -> bool:
    return (path / "tb").is_dir() or (path / ".hydra").is_dir()


def runs_of(path: Path, label: str | None) -> list[tuple[Path, str]]:
    """(run dir, label) for each run ``path`` stands for: itself, or each job of a sweep dir.

    Reading a sweep dir as one run would merge its jobs' events into one line (the same epochs, the
    last writer winning), so each job found below it is a run of its own.
    """
    if not path.is_dir():
        raise PetsegError(f"run dir {path} does not exist")
    jobs = [] if is_run_dir(path) else find_runs(path)
    if not jobs:
        return [(path, label or path.name)]  # a run dir (read_scalars says if it holds no events)
    labels = [
        " ".join(own) or job.relative_to(path).as_posix()
        for job, own in zip(jobs, varying_overrides(jobs), strict=True)
    ]
    if len(set(labels)) < len(labels):  # the same overrides twice (two sweeps in one folder): use paths
        labels = [job.relative_to(path).as_posix() for job in jobs]
    return [(job, f"{label} {text}" if label else text) for job, text in zip(jobs, labels, strict=True)]


def load_series(paths: list[Path], labels: list[str] | None = None) -> list[Series]:
    """The curves ``paths`` stand for (see runs_of); ``labels``: one per path, or None."""
    if labels is not None and len(labels) != len(paths):
        raise PetsegError(f"{len(paths)} runs but {len(labels)} labels")
    if labels is None and len(paths) > 1:
        labels = [path.name for path in paths]  # several sweeps: say which one a job belongs to
    runs = [run for i, path in enumerate(paths) for run in runs_of(path, labels[i] if labels else None)]
    return [Series(label, run_dir, read_scalars(run_dir)) for run_dir, label in runs]


def draw(series: list[Series], title: str = "Dice per epoch") -> Figure:
    """The figure: per run one colour, train/dice dashed and val/dice solid."""
    # A bare Figure draws with the Agg canvas, whatever backend pyplot would pick: fine on a server.
    fig = Figure(figsize=(8, 5), dpi=120)
    ax = fig.subplots()
    colours = rcParams["axes.prop_cycle"].by_key()["color"]
    for i, one in enumerate(series):
        colour = colours[i % len(colours)]
        for tag, style in zip(TAGS, ("--", "-"), strict=True):
            if one.points[tag]:
                epochs, values = zip(*one.points[tag], strict=True)
                ax.plot(
                    epochs, values, style, color=colour, marker="o", markersize=3, label=f"{one.label} {tag}"
                )
    ax.set_xlabel("epoch")
    ax.set_ylabel("Dice (train: at input size; val: dice_256, reference protocol)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small" if len(series) > 4 else None)
    fig.tight_layout()
    return fig


def save(fig: Figure, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out


def summary_line(one: Series) -> str:
    val = one.points["val/dice"]
    if not val:
        return f"{one.label}: no val/dice yet"
    epoch, best = max(val, key=lambda point: point[1])
    return f"{one.label}: {len(val)} epoch(s), best val/dice {best:.4f} (epoch {epoch})"


def labels_of(value: object) -> list[str] | None:
    """``labels=[a,b]`` (or one label without brackets) as text; null: the dir names."""
    if value is None:
        return None
    items = list(value) if isinstance(value, ListConfig) else [value]
    if any(isinstance(item, DictConfig | ListConfig) for item in items):
        raise PetsegError(f"labels: write one text per run, e.g. labels=[UNet,R34]; got {value}")
    return [str(item) for item in items]


def main(argv: list[str] | None = None) -> int:
    def run() -> int:
        cfg = load_cli_config("curves", sys.argv[1:] if argv is None else argv)
        series = load_series(as_paths(cfg.runs, "runs"), labels_of(cfg.labels))
        out = as_optional_path(cfg.out, "out") or project_path("outputs/curves.png")
        save(draw(series, "" if cfg.title is None else str(cfg.title)), out)
        print("\n".join(summary_line(one) for one in series))
        print(f"curves of {len(series)} run(s) written to {out}")
        return 0

    return run_command(run)


if __name__ == "__main__":
    sys.exit(main())
