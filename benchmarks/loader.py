"""Data-loading throughput alone: images/s out of the training DataLoader, with and without data.cache.

No model runs: this is the rate at which the loader could feed one. Each mode builds the train split
exactly as training does (build_dataset + build_dataloader, the default augmentation, persistent
workers), drops ``--warmup`` batches (worker start-up, first page faults), then times ``--batches``
batches. Modes alternate (decode, cache, decode, cache, ...) ``--repeats`` times and the median of each
is reported, so a machine that is busy with something else slows both alike. The one-off cache build is
timed separately and excluded.

Items leave the workers as the dataset makes them (uint8), and each batch is turned into the model's
float input by petseg.model_input.ModelInput on the CPU, as a CPU training step does: the rate is that
of the batches a model could consume.

    .venv/bin/python benchmarks/loader.py                       # shared partial copy, 256 px, 2 workers
    .venv/bin/python benchmarks/loader.py --workers 0 --batches 20 --repeats 3
    .venv/bin/python benchmarks/loader.py --modes cache --clock cpu
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import torch  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from oxford_pet import build_dataset  # noqa: E402  needs src/ on sys.path first
from petseg.loaders import build_dataloader  # noqa: E402
from petseg.model_input import ModelInput  # noqa: E402
from petseg.runtime import Runtime  # noqa: E402
from timing import add_clock_option, cpu_description, time_steps  # noqa: E402

MODES = ("decode", "cache")


def data_config(args: argparse.Namespace, cache: bool) -> DictConfig:
    cfg = OmegaConf.load(REPO / "configs" / "data" / "oxford_pet.yaml")
    overrides = {
        "root": str(args.root),
        "allow_missing": args.allow_missing,
        "image_size": args.size,
        "batch_size": args.batch_size,
        "num_workers": args.workers,
        "cache": cache,
        "cache_dir": str(args.cache_dir),
    }
    return OmegaConf.merge(cfg, overrides)


def batches(loader: DataLoader) -> Iterator[dict]:
    """Batches forever, epoch after epoch (a partial train split may be shorter than warm-up + timing)."""
    epoch = 0
    while True:
        loader.sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def _process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def loader_cpu_seconds(loader: DataLoader) -> float:
    """CPU time of this process plus the loader's (persistent) worker processes."""
    iterator = getattr(loader, "_iterator", None)
    workers = getattr(iterator, "_workers", []) if iterator is not None else []
    return time.process_time() + sum(_process_cpu_seconds(w.pid) for w in workers)


def measure(
    loader: DataLoader, model_input: ModelInput, warmup: int, count: int, clock: str = "wall"
) -> float:
    """Images/s over ``count`` batches (each turned into model input) after ``warmup`` untimed ones;
    with ``clock="cpu"``, images per CPU-second of the main and worker processes (the work, whatever
    else the machine is busy with)."""
    stream = (model_input(batch)[0] for batch in batches(loader))
    sizes: list[int] = []

    def step() -> None:
        sizes.append(len(next(stream)))

    # The CPU clock is read after the warm-up: the persistent workers exist by then.
    cpu_clock = (lambda: loader_cpu_seconds(loader)) if clock == "cpu" else time.process_time
    timing = time_steps(step, count, warmup=warmup, cpu_clock=cpu_clock)
    return sum(sizes[warmup:]) / timing.seconds(clock)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=REPO.parent / "shared" / "data" / "oxford-iiit-pet")
    parser.add_argument(
        "--no-allow-missing", dest="allow_missing", action="store_false", help="fail on a partial copy"
    )
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=10, help="untimed batches per measurement")
    parser.add_argument("--batches", type=int, default=60, help="timed batches per measurement")
    parser.add_argument("--repeats", type=int, default=2, help="alternating measurements per mode")
    parser.add_argument("--cache-dir", type=Path, default=REPO / ".cache" / "petseg")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    add_clock_option(parser, "images per CPU-second of main + worker processes (Linux; for a busy machine)")
    args = parser.parse_args(argv)

    aug = OmegaConf.load(REPO / "configs" / "aug" / "default.yaml")
    loaders: dict[str, DataLoader] = {}
    for mode in args.modes:
        cfg = data_config(args, cache=mode == "cache")
        start = time.perf_counter()
        dataset = build_dataset(cfg, aug, "train")
        setup = time.perf_counter() - start
        if dataset.cache is not None:
            state = "built" if dataset.cache.built else "reused (already on disk)"
            print(f"cache {state} in {setup:.1f} s for {len(dataset)} images ({args.cache_dir})")
        loaders[mode] = build_dataloader(dataset, cfg, train=True, seed=0)
    model_input = ModelInput.of(cfg, Runtime(device=torch.device("cpu")))

    print(
        f"{cpu_description()}; train split of {args.root} "
        f"({len(dataset)} images), {args.size}x{args.size}, batch {args.batch_size}, "
        f"{args.workers} workers, aug=default; "
        f"{args.warmup} warm-up + {args.batches} timed batches, "
        f"{args.repeats} alternating repeats"
        + ("; CPU-time clock (images per CPU-second, main + workers)" if args.clock == "cpu" else "")
    )
    rates: dict[str, list[float]] = {key: [] for key in loaders}
    for repeat in range(args.repeats):
        for key, loader in loaders.items():
            rate = measure(loader, model_input, args.warmup, args.batches, args.clock)
            rates[key].append(rate)
            print(f"  repeat {repeat + 1}: {key:<12} {rate:7.1f} images/s", flush=True)
    print()
    unit = "images/CPU-s" if args.clock == "cpu" else "images/s"
    print(f"| data.cache | {unit} (median) | runs | vs decode |")
    print("|---|---:|---|---:|")
    base = statistics.median(rates["decode"]) if "decode" in rates else None
    for mode in loaders:
        median = statistics.median(rates[mode])
        ratio = f"{median / base:.2f}x" if base else "-"
        runs = ", ".join(f"{r:.1f}" for r in rates[mode])
        print(f"| {'true' if mode == 'cache' else 'false'} | {median:.1f} | {runs} | {ratio} |")


if __name__ == "__main__":
    main()
