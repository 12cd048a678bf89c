"""Compare our models with segmentation_models_pytorch's Unet(resnet34) on the CPU.

For each model: parameters, forward+backward GFLOPs per image (torch.utils.flop_counter, which
counts matmul/conv FLOPs only, 2 per multiply-add), plain train-step throughput (plain.py's
plain_train_step: torch.optim.AdamW + BCEWithLogits, fp32; one warm-up step, then --steps timed
steps) and eval throughput (no_grad), each as
images per wall-clock second and as CPU seconds per image (robust to other load on the machine).
Prints a Markdown table for the README.

    .venv/bin/python benchmarks/models.py --steps 3
    .venv/bin/python benchmarks/models.py --models unet resnet34_unet --size 320 --batch-size 4

The reference needs ``.venv/bin/pip install --no-deps -r requirements-bench.txt`` (``--no-deps``:
without it pip replaces the pinned CPU torch, see that file); without it that row is skipped.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from models import build_model  # noqa: E402  (needs src/ on sys.path first)
from plain import SMP, drop_unusable_smp, plain_train_step, smp_unet  # noqa: E402
from timing import cpu_description, time_steps  # noqa: E402

BUILDERS: dict[str, Callable[[], nn.Module]] = {
    "unet": lambda: build_model("unet"),
    "resnet34_unet": lambda: build_model("resnet34_unet"),
    SMP: smp_unet,
}


def gflops_per_image(model: nn.Module, size: int) -> float:
    """Forward + backward GFLOPs for one size x size image (batch 1, train mode)."""
    model.train()
    x = torch.randn(1, 3, size, size)
    y = torch.zeros(1, 1, size, size)
    counter = FlopCounterMode(display=False)
    with counter:
        nn.functional.binary_cross_entropy_with_logits(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 1e9


def throughput(run: Callable[[], None], batch_size: int, steps: int) -> tuple[float, float]:
    """(images per wall-clock second, CPU seconds of this process per image), after one warm-up call
    (allocator, oneDNN kernel selection, optimizer state).

    The CPU time is reported too because it barely changes when other processes compete for the
    cores, while wall-clock throughput then drops; on an idle machine CPU-s/image is about
    threads / (images/s).
    """
    timing = time_steps(run, steps, warmup=1)
    images = batch_size * steps
    return images / timing.wall, timing.cpu / images


def benchmark(name: str, batch_size: int, size: int, steps: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = BUILDERS[name]()
    params = sum(p.numel() for p in model.parameters())
    gflops = gflops_per_image(model, size)

    x = torch.randn(batch_size, 3, size, size)
    y = (torch.rand(batch_size, 1, size, size) > 0.5).float()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    bce = nn.functional.binary_cross_entropy_with_logits

    def train() -> None:
        plain_train_step(model, optimizer, bce, x, y)

    train_rate, train_cpu = throughput(train, batch_size, steps)

    model.eval()

    def infer() -> None:
        with torch.no_grad():
            model(x)

    evaluate, eval_cpu = throughput(infer, batch_size, steps)
    return {
        "params": params,
        "gflops": gflops,
        "train": train_rate,
        "train_cpu": train_cpu,
        "eval": evaluate,
        "eval_cpu": eval_cpu,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--size", type=int, default=256, help="square input side (multiple of 32)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps after one warm-up step")
    parser.add_argument("--models", nargs="+", choices=list(BUILDERS), default=list(BUILDERS))
    args = parser.parse_args(argv)

    names = drop_unusable_smp(args.models)
    cpu = cpu_description()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu}; "
        f"batch {args.batch_size}, {args.size}x{args.size}, {args.steps} timed steps"
    )
    print()
    print(
        "| model | params | fwd+bwd GFLOPs / image | train images/s | eval images/s "
        "| train CPU-s / image | eval CPU-s / image |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in names:
        r = benchmark(name, args.batch_size, args.size, args.steps)
        print(
            f"| {name} | {r['params'] / 1e6:.2f}M | {r['gflops']:.1f} | {r['train']:.2f} | {r['eval']:.2f} "
            f"| {r['train_cpu']:.2f} | {r['eval_cpu']:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
