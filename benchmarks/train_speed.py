"""Train-step and eval throughput of our models under the project's runtime settings, against
segmentation_models_pytorch's Unet(resnet34) trained the plain way, in the same process.

Rows (``--variants``):

* ``default``: what ``python src/train.py`` does on this device: runtime.runtime_from_config() on
  configs/trainer/default.yaml (amp / channels_last 'auto' resolved here, compile as configured),
  optim.build_optimizer (AdamW, fused on CUDA), losses.build_loss (BCE + Dice), grad clipping as
  configured, zero_grad(set_to_none=True): the trainer's step without data loading.
* explicit settings joined by '+': ``fp32`` or ``bf16`` (autocast), ``cl`` (channels_last),
  ``compile`` (torch.compile, inductor), e.g. ``fp32+cl`` or ``bf16+cl+compile``; the rest as in default.
* the reference, always: ``smp.Unet(encoder_name="resnet34", encoder_weights=None)``, fp32, default
  memory format, ``torch.optim.AdamW`` with its own defaults for the device, the same loss, batch,
  lr and weight decay; no clipping, no compile. Its row is the denominator of the "vs smp" column.

Timing: every row is built and warmed up (``--warmup`` untimed steps) first; then, in each of
``--repeats`` rounds, the rows take turns one step at a time for ``--steps`` timed steps each, so load
from something else slows every row alike; the median round is reported. ``--clock cpu --threads 1``
counts this process's CPU time instead of wall time: a busy-machine estimate of the work per image.
Compile time shows in the "1st step" column. Memory: CUDA, torch.cuda.max_memory_allocated over the
row's train steps (weights, optimizer state and activations); CPU, the peak RSS growth of a fresh
subprocess that builds the row and runs warm-up + 2 train steps (Linux /proc or resource.getrusage;
no psutil). "epoch" is the full 3312-image train split at the measured train rate (model only: the
loader is benchmarks/loader.py).

    .venv/bin/python benchmarks/train_speed.py                   # CPU: the default rows + smp
    .venv/bin/python benchmarks/train_speed.py --variants default fp32 fp32+cl fp32+compile
    .venv/bin/python benchmarks/train_speed.py --device cuda     # default, fp32, bf16, bf16+cl, +compile

The reference needs ``pip install --no-deps -r requirements-bench.txt``; without it that row is skipped.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from losses import build_loss  # noqa: E402  (needs src/ on sys.path first)
from models import build_model  # noqa: E402
from optim import build_optimizer  # noqa: E402
from runtime import Runtime, runtime_from_config  # noqa: E402
from utils import resolve_device  # noqa: E402

OURS = ("unet", "resnet34_unet")
SMP = "smp_unet_resnet34"
TRAIN_SPLIT = 3312  # images in the full train split (3680 trainval lines minus every 10th)
CPU_VARIANTS = ("default",)
CUDA_VARIANTS = ("default", "fp32", "bf16", "bf16+cl", "bf16+cl+compile")


# ------------------------------------------------------------------------------------ reference
def import_smp():  # -> module; untyped: smp is optional
    """segmentation_models_pytorch, importable beside a torchvision whose C extension cannot load.

    PyPI's torchvision is built against CUDA torch; beside torch +cpu its _C library fails to load and
    ``import torchvision`` then dies registering fake kernels for torchvision::nms/qnms, ops that were
    never defined (requirements-bench.txt). Declaring those two schemas first lets the pure-Python
    parts import; smp's ResNet encoder uses none of torchvision's ops, so the reference is unchanged.
    Nothing is done when torchvision loads normally.
    """
    import importlib.util

    spec = importlib.util.find_spec("torchvision")
    if spec is not None and spec.submodule_search_locations:
        loads = False
        for folder in spec.submodule_search_locations:
            for lib in Path(folder).glob("_C*.so"):
                try:
                    torch.ops.load_library(str(lib))
                    loads = True
                except (OSError, RuntimeError):
                    pass
        if not loads and not hasattr(torch.ops.torchvision, "nms"):
            _SHIM.append(torch.library.Library("torchvision", "DEF"))  # kept alive: ops live with it
            for op in ("nms", "qnms"):
                _SHIM[-1].define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    import segmentation_models_pytorch

    return segmentation_models_pytorch


_SHIM: list[torch.library.Library] = []


def smp_unavailable_reason() -> str | None:
    try:
        import_smp()
    except Exception as exc:  # noqa: BLE001  (a broken torchvision raises RuntimeError, not ImportError)
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    return None


# ----------------------------------------------------------------------------------------- rows
@dataclass
class Row:
    label: str
    model_name: str
    variant: str
    runtime: Runtime
    clip: float | None
    build_optimizer: Callable[[nn.Module], torch.optim.Optimizer]
    model: nn.Module | None = None
    step_model: nn.Module | None = None
    optimizer: torch.optim.Optimizer | None = None
    first_step_s: float = 0.0
    train: list[float] = field(default_factory=list)
    eval: list[float] = field(default_factory=list)
    memory_mb: float | None = None


def default_configs(device: str) -> tuple[DictConfig, DictConfig, DictConfig]:
    trainer = OmegaConf.load(REPO / "configs" / "trainer" / "default.yaml")
    trainer.device = device
    optim = OmegaConf.load(REPO / "configs" / "optim" / "adamw.yaml")
    loss = OmegaConf.load(REPO / "configs" / "loss" / "bce_dice.yaml")
    return trainer, optim, loss


def variant_runtime(variant: str, trainer: DictConfig) -> Runtime:
    """The project's default runtime, or the explicit settings of ``variant`` ('bf16+cl+compile')."""
    base = runtime_from_config(trainer)
    if variant == "default":
        return base
    parts = set(variant.split("+"))
    unknown = parts - {"fp32", "bf16", "fp16", "cl", "compile"}
    if unknown or not parts & {"fp32", "bf16", "fp16"}:
        raise SystemExit(f"bad variant {variant!r}: use default, or fp32|bf16|fp16 [+cl] [+compile]")
    amp = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[
        next(p for p in ("fp32", "bf16", "fp16") if p in parts)
    ]
    return Runtime(device=base.device, amp_dtype=amp, channels_last="cl" in parts, compile="compile" in parts)


def make_rows(args: argparse.Namespace, device: str) -> list[Row]:
    trainer, optim_cfg, _ = default_configs(device)
    rows = []
    for name in args.models:
        if name == SMP:
            continue
        for variant in args.variants:
            runtime = variant_runtime(variant, trainer)
            rows.append(
                Row(
                    label=f"{name} ({variant})",
                    model_name=name,
                    variant=variant,
                    runtime=runtime,
                    clip=trainer.grad_clip,
                    build_optimizer=lambda m, rt=runtime: build_optimizer(optim_cfg, m, rt.device),
                )
            )
    if SMP in args.models:
        plain = Runtime(device=resolve_device(device))
        rows.append(
            Row(
                label=f"{SMP} (plain fp32)",
                model_name=SMP,
                variant="plain",
                runtime=plain,
                clip=None,
                # Same lr/weight decay, torch's AdamW otherwise as it comes (foreach on CUDA, no fusing).
                build_optimizer=lambda m: torch.optim.AdamW(
                    m.parameters(), lr=float(optim_cfg.lr), weight_decay=float(optim_cfg.weight_decay)
                ),
            )
        )
    return rows


def build(row: Row) -> None:
    torch.manual_seed(0)
    if row.model_name == SMP:
        smp = import_smp()
        model = smp.Unet(encoder_name="resnet34", encoder_weights=None, in_channels=3, classes=1)
    else:
        model = build_model(row.model_name)
    row.model = row.runtime.prepare(model)
    row.step_model = row.runtime.compile_model(row.model)
    row.optimizer = row.build_optimizer(row.model)


def batch(args: argparse.Namespace, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, 3, args.size, args.size, generator=g)
    y = (torch.rand(args.batch_size, 1, args.size, args.size, generator=g) > 0.5).float()
    return x.to(device), y.to(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_step(row: Row, loss_fn: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """The trainer's step (src/trainer.py) minus data loading, metrics and the lr schedule."""
    assert row.step_model is not None and row.optimizer is not None and row.model is not None
    row.step_model.train()
    images = row.runtime.to_input(x)
    row.optimizer.zero_grad(set_to_none=True)
    with row.runtime.autocast():
        logits = row.step_model(images)
    loss = loss_fn(logits.float(), y)
    loss.backward()
    if row.clip is not None:
        torch.nn.utils.clip_grad_norm_(row.model.parameters(), float(row.clip))
    row.optimizer.step()


def eval_step(row: Row, x: torch.Tensor) -> None:
    """evaluate()'s forward: eval mode, no grad, autocast, same memory format."""
    assert row.step_model is not None
    row.step_model.eval()
    with torch.no_grad(), row.runtime.autocast():
        row.step_model(row.runtime.to_input(x)).float()


def timed(fn: Callable[[], None], steps: int, device: torch.device, clock: str = "wall") -> float:
    """Seconds for ``steps`` calls: wall time, or with ``clock="cpu"`` this process's CPU time (a
    busy-machine estimate of the work, meaningful with --threads 1: waiting for a core is not counted)."""
    now = time.process_time if clock == "cpu" else time.perf_counter
    sync(device)
    start = now()
    for _ in range(steps):
        fn()
    sync(device)
    return now() - start


# --------------------------------------------------------------------------------------- memory
def _rss_kb(field_name: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_rss_kb() -> int:
    hwm = _rss_kb("VmHWM")
    if hwm is not None:
        return hwm
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak  # bytes on macOS, KiB elsewhere


def current_rss_kb() -> int:
    rss = _rss_kb("VmRSS")
    return rss if rss is not None else peak_rss_kb()


def cpu_memory_probe(args: argparse.Namespace, row_index: int) -> float | None:
    """Peak RSS growth (MB) of a fresh process building ``row_index`` and training it for a few steps."""
    cmd = [sys.executable, __file__, *sys.argv[1:], "--_memory-probe", str(row_index)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=1800)
        return float(json.loads(out.stdout.strip().splitlines()[-1])["memory_mb"])
    except (subprocess.SubprocessError, ValueError, KeyError, IndexError) as e:
        print(f"  memory probe of row {row_index} failed: {e}", file=sys.stderr)
        return None


def run_memory_probe(args: argparse.Namespace, row_index: int) -> None:
    device = resolve_device(args.device)
    row = make_rows(args, args.device)[row_index]
    loss_fn = build_loss(default_configs(args.device)[2])
    x, y = batch(args, device)
    gc.collect()
    before = current_rss_kb()
    build(row)
    for _ in range(args.warmup + 2):
        train_step(row, loss_fn, x, y)
    print(json.dumps({"memory_mb": (peak_rss_kb() - before) / 1024}))


# ----------------------------------------------------------------------------------------- main
def fmt_rate(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}" if values else "-"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--models", nargs="+", choices=[*OURS, SMP], default=[*OURS, SMP])
    parser.add_argument(
        "--variants", nargs="+", help="default: 'default' on CPU; fp32/bf16/cl/compile on CUDA"
    )
    parser.add_argument("--batch-size", type=int, help="default 8 on CPU, 32 on CUDA")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, help="timed steps per row and round (default 3 CPU, 20 CUDA)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; rows take turns, medians reported")
    parser.add_argument(
        "--warmup", type=int, help="untimed steps per row (default 1 CPU, 5 CUDA; +2 compiled)"
    )
    parser.add_argument("--no-eval", dest="eval", action="store_false", help="train steps only")
    parser.add_argument("--no-memory", dest="memory", action="store_false", help="skip the memory column")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="cpu: rate per CPU-second of this process (CPU only; for a busy machine, with --threads 1)",
    )
    parser.add_argument("--_memory-probe", dest="memory_probe", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    if cuda and args.clock == "cpu":
        parser.error("--clock cpu measures host CPU time: use it with --device cpu")
    args.device = str(device)
    args.variants = args.variants or list(CUDA_VARIANTS if cuda else CPU_VARIANTS)
    args.batch_size = args.batch_size or (32 if cuda else 8)
    args.steps = args.steps or (20 if cuda else 3)
    args.warmup = args.warmup if args.warmup is not None else (5 if cuda else 1)
    if args.threads:
        torch.set_num_threads(args.threads)
    if SMP in args.models and (reason := smp_unavailable_reason()):
        print(f"skipping {SMP}: segmentation_models_pytorch not usable ({reason}).")
        print("  Install it with: .venv/bin/pip install --no-deps -r requirements-bench.txt")
        args.models = [m for m in args.models if m != SMP]
    if args.memory_probe is not None:
        run_memory_probe(args, args.memory_probe)
        return

    rows = make_rows(args, args.device)
    loss_fn = build_loss(default_configs(args.device)[2])
    x, y = batch(args, device)
    what = (
        torch.cuda.get_device_name(device)
        if cuda
        else f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    )
    print(
        f"{what}; torch {torch.__version__}, {torch.get_num_threads()} threads; batch {args.batch_size}, "
        f"{args.size}x{args.size}; {args.warmup} warm-up steps, "
        f"{args.repeats} rounds x {args.steps} timed steps"
        + ("; CPU-time clock (images per CPU-second)" if args.clock == "cpu" else ""),
        flush=True,
    )
    for row in rows:
        build(row)
        warmup = args.warmup + (2 if row.runtime.compile else 0)
        row.first_step_s = timed(lambda r=row: train_step(r, loss_fn, x, y), 1, device)
        timed(lambda r=row: train_step(r, loss_fn, x, y), max(warmup - 1, 0), device)
        if args.eval:
            timed(lambda r=row: eval_step(r, x), warmup, device)
        print(f"  built {row.label}: first train step {row.first_step_s:.1f} s", flush=True)

    for round_ in range(args.repeats):
        # Rows take turns step by step, so load that comes and goes hits every row alike.
        train_s = dict.fromkeys(range(len(rows)), 0.0)
        eval_s = dict.fromkeys(range(len(rows)), 0.0)
        for _ in range(args.steps):
            for i, row in enumerate(rows):
                if cuda:
                    torch.cuda.reset_peak_memory_stats(device)
                train_s[i] += timed(lambda r=row: train_step(r, loss_fn, x, y), 1, device, args.clock)
                if cuda:
                    peak = torch.cuda.max_memory_allocated(device) / 2**20
                    row.memory_mb = max(row.memory_mb or 0.0, peak)
        if args.eval:
            for _ in range(args.steps):
                for i, row in enumerate(rows):
                    eval_s[i] += timed(lambda r=row: eval_step(r, x), 1, device, args.clock)
        for i, row in enumerate(rows):
            row.train.append(args.batch_size * args.steps / train_s[i])
            if args.eval:
                row.eval.append(args.batch_size * args.steps / eval_s[i])
        rates = ", ".join(f"{r.label} {r.train[-1]:.2f}" for r in rows)
        print(f"  round {round_ + 1}: train images/s: {rates}", flush=True)

    if args.memory and not cuda:
        for i, row in enumerate(rows):
            row.memory_mb = cpu_memory_probe(args, i)

    ref = next((r for r in rows if r.model_name == SMP), None)
    ref_train = statistics.median(ref.train) if ref else None
    ref_eval = statistics.median(ref.eval) if ref and ref.eval else None
    memory_what = "peak CUDA MB" if cuda else "peak RSS growth MB"
    print()
    print(f"**{what}** (batch {args.batch_size}, {args.size}x{args.size})")
    print()
    print(
        f"| model (settings) | amp | channels_last | compile | train images/s | vs smp | eval images/s "
        f"| vs smp | {memory_what} | epoch (3312 images) | 1st step s |"
    )
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        train = statistics.median(row.train)
        evals = statistics.median(row.eval) if row.eval else None
        rt = row.runtime
        amp = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[rt.amp_dtype]
        cells = [
            row.label,
            amp,
            "yes" if rt.channels_last else "no",
            "yes" if rt.compile else "no",
            f"{train:.2f}",
            f"{train / ref_train:.2f}x" if ref_train else "-",
            f"{evals:.2f}" if evals else "-",
            f"{evals / ref_eval:.2f}x" if evals and ref_eval else "-",
            f"{row.memory_mb:.0f}" if row.memory_mb is not None else "-",
            _duration(TRAIN_SPLIT / train),
            f"{row.first_step_s:.1f}",
        ]
        print("| " + " | ".join(cells) + " |")


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


if __name__ == "__main__":
    main()
