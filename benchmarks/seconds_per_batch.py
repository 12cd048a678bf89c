"""Seconds per training batch of whole training processes, start-up cancelled out: each row runs twice,
with ``--short`` and ``--long`` train batches (one epoch, one validation batch), and the difference of
the two wall times is divided by ``long - short``.

Rows are the real ``src/train.py`` with overrides, or ``plain``: the plain fp32 loop of time_to_dice.py's
``plain`` leg (benchmarks/plain.py: PIL decoding in 2 workers, torch.optim.AdamW, default layout) on the
same network and data.

    .venv/bin/python benchmarks/seconds_per_batch.py --root ../shared/data/oxford-iiit-pet \\
        --size 128 --batch-size 16 --rows default plain "cache=false" "cache=true workers=0"

A row's name is ``default`` (train.py as it is) or space-separated short overrides: ``cache=true|false``
(data.cache), ``workers=N`` (data.num_workers), ``fp32`` (trainer.amp=off trainer.channels_last=false).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from timing import ROOT, TIMED_RUN, cpu_description, process_seconds, train_command

SHORT = {"cache": "data.cache", "workers": "data.num_workers"}


def overrides(row: str) -> list[str]:
    if row == "default":
        return []
    out = []
    for part in row.split():
        if part == "fp32":
            out += ["trainer.amp=off", "trainer.channels_last=false"]
        else:
            key, value = part.split("=", 1)
            out.append(f"{SHORT.get(key, key)}={value}")
    return out


def command(args: argparse.Namespace, row: str, batches: int, run_dir: Path) -> list[str]:
    common = [f"--root={args.root}", f"--size={args.size}", f"--batch-size={args.batch_size}"]
    if row == "plain":
        return [
            sys.executable,
            str(ROOT / "benchmarks" / "time_to_dice.py"),
            "--_plain",
            *common,
            "--epochs=1",
            f"--limit-batches={batches}",
            f"--out={run_dir}",
        ]
    return train_command(
        args.root,
        run_dir,
        "model=resnet34_unet",
        f"data.image_size={args.size}",
        f"data.batch_size={args.batch_size}",
        "trainer.epochs=1",
        f"trainer.limit_train_batches={batches}",
        *TIMED_RUN,
        *overrides(row),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--rows", nargs="+", default=["default", "plain"])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--short", type=int, default=8)
    parser.add_argument("--long", type=int, default=48)
    args = parser.parse_args()
    args.root = str(Path(args.root).resolve())
    print(
        f"{cpu_description()}; resnet34_unet {args.size} px, batch {args.batch_size}, "
        f"batches {args.short} vs {args.long}\n"
    )
    print("| row | s/batch | images/s | vs plain |\n|---|---:|---:|---:|")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for row in args.rows:
            if row != "plain":  # an untimed run builds a missing data cache, so neither timed run does
                process_seconds(command(args, row, 1, Path(tmp) / "warm"))
            times = [
                process_seconds(command(args, row, n, Path(tmp) / f"{i}"))
                for i, n in enumerate((args.short, args.long))
            ]
            results[row] = (times[1] - times[0]) / (args.long - args.short)
            plain = results.get("plain")
            ratio = f"{plain / results[row]:.2f}x" if plain and row != "plain" else "-"
            print(
                f"| {row} | {results[row]:.3f} | {args.batch_size / results[row]:.1f} | {ratio} |", flush=True
            )
    if "plain" in results:
        for row, seconds in results.items():
            if row != "plain":
                print(f"{row}: {results['plain'] / seconds:.2f}x faster per batch than plain")
    return 0


if __name__ == "__main__":
    sys.exit(main())
