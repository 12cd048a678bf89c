"""Per-epoch train/val Dice of two or more runs, read from their TensorBoard logs, in one PNG.

    python src/curves.py outputs/2026-11-26/10-00-00_unet outputs/2026-11-26/10-30-00_resnet34_unet \
        --labels UNet ResNet34-UNet --out docs/figures/curves.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from petseg.errors import PetsegError

TAGS = ("train/dice", "val/dice")


def read_scalars(run_dir: str | Path, tags: tuple[str, ...] = TAGS) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(epoch, value), ...]} from every event file under run_dir (later writes win)."""
    from petseg.tb import read_events

    if not any(Path(run_dir).rglob("events.out.tfevents.*")):
        raise PetsegError(f"no TensorBoard event files under {run_dir}")
    events = read_events(run_dir)
    return {tag: sorted((step, value) for step, (value, _) in events.get(tag, {}).items()) for tag in tags}


def plot_curves(run_dirs: list[Path], labels: list[str], out: Path, title: str = "Dice per epoch") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (run_dir, label) in enumerate(zip(run_dirs, labels, strict=True)):
        series = read_scalars(run_dir)
        colour = colours[i % len(colours)]
        for tag, style in zip(TAGS, ("--", "-"), strict=True):
            if series[tag]:
                epochs, values = zip(*series[tag], strict=True)
                ax.plot(epochs, values, style, color=colour, marker="o", markersize=3, label=f"{label} {tag}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("Dice (train: at input size; val: dice_256, reference protocol)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    from petseg.cli import run_command

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (holding tb/ event files)")
    parser.add_argument("--labels", nargs="+", help="one label per run (default: the run dir names)")
    parser.add_argument("--out", type=Path, default=Path("outputs/curves.png"))
    parser.add_argument("--title", default="Dice per epoch")
    args = parser.parse_args(argv)

    def run() -> int:
        labels = args.labels or [run.name for run in args.runs]
        if len(labels) != len(args.runs):
            raise PetsegError(f"{len(args.runs)} runs but {len(labels)} labels")
        out = plot_curves(args.runs, labels, args.out, args.title)
        print(f"curves written to {out}")
        return 0

    return run_command(run)


if __name__ == "__main__":
    sys.exit(main())
