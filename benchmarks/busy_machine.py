"""Seconds per training step alone and beside one other CPU-bound process, per thread setting.

On a 2-core machine torch's OpenMP pool has one thread per core. When another process takes one core
(a second run, an evaluation, a browser), the thread that loses its core holds up every parallel
region, and with OpenMP's default wait policy the other thread spin-waits for it. Each row runs in a
fresh process (OpenMP reads its environment once, at load) with the trainer's step under the project's
runtime defaults (src/petseg/runtime.py; Trainer.train_step, as benchmarks/train_speed.py times it), first
alone, then while a pure-Python busy loop (one CPU-bound thread) runs beside it.

    .venv/bin/python benchmarks/busy_machine.py --size 128 --batch-size 16 --steps 6

Rows (``--rows``): ``active`` (OMP_WAIT_POLICY=ACTIVE: spin), ``libgomp`` (the library's default:
spin ~300k iterations, then sleep), ``passive`` (OMP_WAIT_POLICY=PASSIVE: sleep at once),
``threads1`` (torch.set_num_threads(1), default policy), ``auto`` (``trainer.threads: auto``: all cores,
thread_tuner.ThreadTuner timing every step; at least 12 warm-up steps so it can settle).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

from petseg.runtime import setup_runtime  # noqa: E402  (src/ on sys.path first)
from petseg.thread_tuner import ThreadTuner  # noqa: E402
from timing import default_configs, our_trainer, step_seconds, synthetic_batch  # noqa: E402

ROWS = {
    "active": {"OMP_WAIT_POLICY": "ACTIVE"},
    "libgomp": {},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    "threads1": {"PETSEG_BENCH_THREADS": "1"},
    "auto": {"PETSEG_BENCH_TUNER": "1"},
}
_OWN = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "PETSEG_BENCH_THREADS", "PETSEG_BENCH_TUNER")


def worker(args: argparse.Namespace) -> None:
    if os.environ.get("PETSEG_BENCH_THREADS"):
        torch.set_num_threads(int(os.environ["PETSEG_BENCH_THREADS"]))
    trainer_cfg = default_configs("cpu")[0]
    # The trainer's own step (forward, loss, backward, clip, optimiser step) on a synthetic batch.
    trainer = our_trainer(args.model, setup_runtime(trainer_cfg), trainer_cfg)
    batch = synthetic_batch(args.batch_size, args.size)
    trainer.model.train()
    tuner = None
    if os.environ.get("PETSEG_BENCH_TUNER"):
        tuner = ThreadTuner((torch.get_num_threads(), 1), torch.set_num_threads)
    times = step_seconds(
        lambda: trainer.train_step(batch),
        args.steps,
        warmup=max(args.warmup, 12 if tuner else 0),
        after=tuner.after_step if tuner is not None else None,
    )
    print(json.dumps({"median": statistics.median(times), "times": times}), flush=True)


def measure(args: argparse.Namespace, row: str, busy: bool) -> float:
    env = {k: v for k, v in os.environ.items() if k not in _OWN} | ROWS[row]
    competitor = None
    if busy:
        competitor = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        time.sleep(1)
    try:
        out = subprocess.run(
            [sys.executable, __file__, "--_worker", *sys.argv[1:]],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        if competitor is not None:
            competitor.kill()
            competitor.wait()
    return json.loads(out.strip().splitlines()[-1])["median"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--model", default="resnet34_unet")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--_worker", dest="worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return 0
    print("| row | alone s/step | beside 1 busy process s/step | slowdown |\n|---|---:|---:|---:|")
    for row in args.rows:
        alone, busy = measure(args, row, False), measure(args, row, True)
        print(f"| {row} | {alone:.2f} | {busy:.2f} | {busy / alone:.1f}x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
