"""Seconds per batch of a real ``src/train.py`` alone and beside 1, 2 and 3 other real ``train.py``
runs, against a fair share of the cores.

Each competitor is a long train.py run (the same recipe, its own run dir) started first and killed at
the end. The measured train.py runs two epochs of ``--batches`` train batches; its s/batch is the time
between its two epochs' val/dice events in its own TensorBoard log (as time_to_dice.py and
sweep_summary.py time epochs), over ``--batches``: the second epoch only, so start-up, the data cache
and the first-epoch warm-up are out of it. Alone, the run uses every core; beside n
competitors a fair share of the machine is 1/(n+1) of it, so a fair slowdown is n + 1 (2 cores, 3
competitors: 4x). The table gives each case's slowdown against that.

    .venv/bin/python benchmarks/crowded_machine.py --root ../shared/data/oxford-iiit-pet --size 64 \\
        --batch-size 8 --competitors 0 1 2 3

``--overrides`` go to every train.py (measured and competitors), e.g. ``trainer.threads=1`` or
``data.num_workers=2`` to see where the time goes.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from petseg.tb import read_events  # noqa: E402  needs src/ on sys.path first
from timing import TIMED_RUN, process_seconds, train_command  # noqa: E402


def command(args: argparse.Namespace, run_dir: Path, batches: int, epochs: int = 1) -> list[str]:
    return train_command(
        args.root,
        run_dir,
        f"model={args.model}",
        f"data.image_size={args.size}",
        f"data.batch_size={args.batch_size}",
        f"data.cache_dir={args.cache_dir}",
        f"trainer.epochs={epochs}",
        f"trainer.limit_train_batches={batches}",
        *TIMED_RUN,
        *args.overrides,
    )


def second_epoch_seconds(run_dir: Path) -> float:
    """Seconds between the ends of epochs 1 and 2 of a run: the wall times of its val/dice events."""
    ends = read_events(run_dir)["val/dice"]
    return ends[2][1] - ends[1][1]


def seconds_per_batch(args: argparse.Namespace, tmp: Path, competitors: int) -> float:
    rivals = [
        subprocess.Popen(
            command(args, tmp / f"rival{competitors}_{i}", 10_000, epochs=100),
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for i in range(competitors)
    ]
    run_dir = tmp / f"measured{competitors}"
    try:
        time.sleep(args.settle if competitors else 0)  # past their start-up, into their steps
        process_seconds(command(args, run_dir, args.batches, epochs=2))
    finally:
        for rival in rivals:
            rival.kill()
            rival.wait()
    return second_epoch_seconds(run_dir) / args.batches


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=str(ROOT / "tests" / "data" / "oxford-iiit-pet"))
    parser.add_argument("--model", default="resnet34_unet")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=30, help="train batches per epoch of the measured run")
    parser.add_argument("--settle", type=float, default=20.0, help="seconds the competitors run first")
    parser.add_argument("--competitors", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--overrides", nargs="*", default=[])
    args = parser.parse_args()
    args.root = str(Path(args.root).resolve())
    cores = os.cpu_count() or 1
    print(
        f"{args.model} {args.size} px, batch {args.batch_size}, {cores} cores; overrides: "
        f"{' '.join(args.overrides) or '(none)'}\n"
    )
    print("| competitors | s/batch | slowdown | fair share | vs fair share |\n|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        args.cache_dir = str(Path(tmp) / "cache")
        process_seconds(command(args, Path(tmp) / "warm", 1))  # builds the data cache once, untimed
        alone = None
        for n in sorted(args.competitors):
            seconds = seconds_per_batch(args, Path(tmp), n)
            alone = alone if alone is not None else seconds
            fair = float(n + 1)
            slowdown = seconds / alone if alone else float("nan")
            print(
                f"| {n} | {seconds:.3f} | {slowdown:.2f}x | {fair:.1f}x | {slowdown / fair:.2f} |", flush=True
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
