"""Train-step and eval throughput of our models under the project's runtime settings, against
segmentation_models_pytorch's Unet(resnet34) trained the plain way; every row in its own process.

Rows (``--models`` x ``--variants``):

* ``default``: what ``python src/train.py`` does on this device: runtime.setup_runtime() on
  configs/trainer/default.yaml (amp / channels_last / retain_host_memory 'auto' resolved here, compile
  as configured), optim.build_optimizer (AdamW, fused on CPU and CUDA), losses.build_loss (BCE + Dice),
  grad clipping as configured: ``Trainer.train_step`` itself (src/petseg/trainer.py) on a synthetic
  batch, with a constant schedule (petseg.build.trainer_for_step); no data loading.
* explicit settings joined by '+': ``fp32`` or ``bf16`` (autocast), ``cl`` (channels_last),
  ``compile`` (torch.compile, inductor), e.g. ``fp32+cl`` or ``bf16+cl+compile``; the rest as in
  default (setup_runtime still runs, so retained host memory on CPU applies to these rows too).
* ``smp_unet_resnet34``, the reference: ``smp.Unet(encoder_name="resnet34", encoder_weights=None)``,
  fp32, default memory format, ``torch.optim.AdamW`` with its own defaults for the device, the same
  loss, batch, lr and weight decay; no clipping, no compile, and nothing of src/petseg/runtime.py: its process
  keeps torch's and glibc's defaults. Its row is the denominator of the "vs smp" column.
* ``smp_runtime`` (opt-in): the same smp network and plain step, but in a process set up by
  setup_runtime (on CPU: retain_freed_memory()) and with fused AdamW, i.e. what our runtime
  gives any network; it shows how much of a difference is the runtime rather than the network.

Process layout: the runtime's malloc tuning is process-wide and one-way, so each row lives in its own
persistent worker process (this script with ``--_worker <row>``), started one after the other. A worker
builds its row, times the first train step, runs ``--warmup`` untimed train (and eval) steps, then
answers one-line commands on stdin ("train N", "eval N", "memory", "quit") with one JSON line on
stdout. The parent keeps the rows interleaved: in each of ``--repeats`` rounds it asks row 0 for
``--turn-warmup`` untimed and ``--turn-steps`` timed train steps, then row 1, ..., until every row has
done ``--steps``, then the same for eval; only one worker computes at a time, and load from something
else slows every row alike. The untimed step per turn matters: while a process waits for its turn, the
memory it freed (the plain reference hands its activations back to the kernel every step) goes cold,
and without it the reference's first step back measured ~25 % slower than back-to-back training. The
median round is reported, and per round the ratio of each row to the reference. ``--clock cpu
--threads 1`` counts the worker's CPU time instead of wall time: a busy-machine estimate of the work
per image. Compile time shows in the "1st step" column.

Memory, measured inside each worker: CPU, peak RSS growth (VmHWM after all its steps minus VmRSS just
before building the model; Linux /proc, else resource.getrusage; no psutil); CUDA,
torch.cuda.max_memory_allocated over the row's train steps (weights, optimizer state, activations).
"epoch" is the full 3312-image train split at the measured train rate (model only: the loader is
benchmarks/loader.py).

    .venv/bin/python benchmarks/train_speed.py                   # CPU: the default rows + smp
    .venv/bin/python benchmarks/train_speed.py --models resnet34_unet smp_unet_resnet34 smp_runtime
    .venv/bin/python benchmarks/train_speed.py --variants default fp32 fp32+cl fp32+compile
    .venv/bin/python benchmarks/train_speed.py --device cuda     # default, fp32, bf16, bf16+cl, +compile

The reference needs ``pip install --no-deps -r requirements-bench.txt``; without it those rows are
skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from petseg.build import build_loss  # noqa: E402  (src/ on sys.path first)
from petseg.model_input import ModelInput  # noqa: E402
from petseg.optim import FUSED_ADAMW_DEVICES  # noqa: E402
from petseg.runtime import Runtime, resolve_device, setup_runtime  # noqa: E402
from petseg.trainer import Trainer  # noqa: E402
from plain import SMP, drop_unusable_smp, plain_train_step, smp_unet  # noqa: E402
from timing import (  # noqa: E402
    add_clock_option,
    cpu_description,
    data_defaults,
    default_configs,
    device_sync,
    our_trainer,
    synthetic_batch,
    time_steps,
)

OURS = ("unet", "resnet34_unet")
SMP_RUNTIME = "smp_runtime"
TRAIN_SPLIT = 3312  # images in the full train split (3680 trainval lines minus every 10th)
CPU_VARIANTS = ("default",)
CUDA_VARIANTS = ("default", "fp32", "bf16", "bf16+cl", "bf16+cl+compile")


# ----------------------------------------------------------------------------------------- rows
@dataclass(frozen=True)
class RowSpec:
    """What a row is; built only inside its worker process."""

    label: str
    model_name: str  # unet, resnet34_unet or SMP
    variant: str  # default, fp32+cl, ... for ours; "plain" or "runtime" for smp


@dataclass
class Row:
    """A row as built in its worker."""

    spec: RowSpec
    runtime: Runtime
    model_input: ModelInput  # the uint8 batch -> normalised float input on the device, as in training
    clip: float | None
    model: nn.Module
    step_model: nn.Module
    optimizer: torch.optim.Optimizer
    trainer: Trainer | None = None  # ours: the Trainer whose train_step is timed


@dataclass
class RowResult:
    """A row as the parent sees it: its worker's answers."""

    spec: RowSpec
    info: dict[str, Any] = field(default_factory=dict)
    train: list[float] = field(default_factory=list)
    eval: list[float] = field(default_factory=list)
    memory_mb: float | None = None


def parse_variant(variant: str) -> tuple[torch.dtype | None, bool, bool] | None:
    """(amp dtype, channels_last, compile) of an explicit variant ('bf16+cl+compile'); None for default."""
    if variant == "default":
        return None
    parts = set(variant.split("+"))
    unknown = parts - {"fp32", "bf16", "fp16", "cl", "compile"}
    if unknown or len(parts & {"fp32", "bf16", "fp16"}) != 1:
        raise SystemExit(f"bad variant {variant!r}: use default, or fp32|bf16|fp16 [+cl] [+compile]")
    amp = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[
        next(p for p in ("fp32", "bf16", "fp16") if p in parts)
    ]
    return amp, "cl" in parts, "compile" in parts


def variant_runtime(variant: str, trainer: DictConfig) -> Runtime:
    """The project's default runtime, or the explicit settings of ``variant`` on top of it."""
    explicit = parse_variant(variant)  # first: a typo fails before setup_runtime tunes anything
    base = setup_runtime(trainer)
    if explicit is None:
        return base
    amp, channels_last, compile_model = explicit
    return Runtime(
        device=base.device,
        amp_dtype=amp,
        channels_last=channels_last,
        compile=compile_model,
        retain_memory=base.retain_memory,
    )


def row_specs(args: argparse.Namespace) -> list[RowSpec]:
    specs = [
        RowSpec(f"{name} ({variant})", name, variant)
        for name in OURS
        if name in args.models
        for variant in args.variants
    ]
    if SMP in args.models:
        specs.append(RowSpec(f"{SMP} (plain fp32)", SMP, "plain"))
    if SMP_RUNTIME in args.models:
        specs.append(RowSpec(f"{SMP} (plain + our runtime)", SMP, "runtime"))
    return specs


def build_row(spec: RowSpec, args: argparse.Namespace) -> Row:
    """Build ``spec`` in this (worker) process. Only our rows and smp_runtime call setup_runtime."""
    trainer_cfg, optim_cfg, _ = default_configs(args.device)
    if spec.variant == "plain":
        runtime = Runtime(device=resolve_device(args.device))  # torch's defaults, malloc untouched
    else:
        runtime = variant_runtime("default" if spec.model_name == SMP else spec.variant, trainer_cfg)
    torch.manual_seed(0)
    if spec.model_name != SMP:  # our rows time the trainer's own step
        trainer = our_trainer(spec.model_name, runtime, trainer_cfg)
        model = trainer.model
        model_input, clip = trainer.built.model_input, trainer.settings.grad_clip
        return Row(
            spec, runtime, model_input, clip, model, runtime.compile_model(model), trainer.optimizer, trainer
        )
    model = runtime.prepare(smp_unet())
    lr, weight_decay = float(optim_cfg.lr), float(optim_cfg.weight_decay)
    if spec.variant == "plain":
        # Same lr/weight decay, torch's AdamW otherwise as it comes (foreach on CUDA, no fusing).
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    else:
        fused = runtime.device.type in FUSED_ADAMW_DEVICES
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, fused=fused)
    model_input = ModelInput.of(data_defaults(), runtime)
    return Row(spec, runtime, model_input, None, model, runtime.compile_model(model), optimizer)


def train_step(row: Row, loss_fn: nn.Module, batch: dict[str, torch.Tensor]) -> None:
    """Our rows: Trainer.train_step itself (src/petseg/trainer.py), on a synthetic batch. The
    segmentation_models_pytorch rows: the plain step a user would write (plain.plain_train_step)."""
    if row.trainer is not None:
        row.model.train()
        row.trainer.train_step(batch)
        return
    row.step_model.train()
    images, masks = row.model_input(batch)
    plain_train_step(
        row.step_model, row.optimizer, loss_fn, images, masks, clip=row.clip, autocast=row.runtime.autocast()
    )


def eval_step(row: Row, batch: dict[str, torch.Tensor]) -> None:
    """evaluate()'s forward: eval mode, no grad, autocast, same memory format."""
    row.step_model.eval()
    with torch.no_grad(), row.runtime.autocast():
        row.step_model(row.model_input.images(batch["image"])).float()


# --------------------------------------------------------------------------------------- memory
def _status_kb(field_name: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_rss_kb() -> int:
    hwm = _status_kb("VmHWM")
    if hwm is not None:
        return hwm
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak  # bytes on macOS, KiB elsewhere


def current_rss_kb() -> int:
    rss = _status_kb("VmRSS")
    return rss if rss is not None else peak_rss_kb()


# --------------------------------------------------------------------------------------- worker
def run_worker(args: argparse.Namespace, index: int) -> None:
    """One row in this process: build, warm up, say "ready", then answer commands until "quit"."""
    spec = row_specs(args)[index]
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    loss_fn = build_loss(default_configs(args.device)[2])
    batch = synthetic_batch(args.batch_size, args.size)
    rss_before = current_rss_kb()
    row = build_row(spec, args)
    rt = row.runtime
    sync = device_sync(device)

    def train() -> None:
        train_step(row, loss_fn, batch)

    def evaluate() -> None:
        eval_step(row, batch)

    first = time_steps(train, 1, sync=sync).wall
    warmup = args.warmup + (2 if rt.compile else 0)
    time_steps(train, 0, warmup=max(warmup - 1, 0), sync=sync)  # the rest of the row's warm-up
    if args.eval:
        time_steps(evaluate, 0, warmup=warmup, sync=sync)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    amp = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[rt.amp_dtype]
    _answer(
        {
            "ready": spec.label,
            "pid": os.getpid(),
            "amp": amp,
            "channels_last": rt.channels_last,
            "compile": rt.compile,
            "retain_memory": rt.retain_memory,
            "fused_adamw": bool(row.optimizer.defaults.get("fused")),
            "clip": row.clip,
            "threads": torch.get_num_threads(),
            "first_step_s": first,
        }
    )
    for line in sys.stdin:
        command, *rest = line.split()
        if command in ("train", "eval"):
            steps, untimed = int(rest[0]), int(rest[1]) if len(rest) > 1 else 0
            # untimed: the turn's re-warm-up, see --turn-warmup
            timing = time_steps(train if command == "train" else evaluate, steps, warmup=untimed, sync=sync)
            _answer({"seconds": timing.seconds(args.clock)})
        elif command == "memory":
            if device.type == "cuda":
                mb = torch.cuda.max_memory_allocated(device) / 2**20
            else:
                mb = (peak_rss_kb() - rss_before) / 1024
            _answer({"memory_mb": mb})
        elif command == "quit":
            return
        else:
            raise SystemExit(f"worker: unknown command {line!r}")


def _answer(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


class Worker:
    """The parent's handle on one row's process."""

    def __init__(self, argv: list[str], index: int, label: str) -> None:
        self.label = label
        cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--_worker", str(index)]
        # stderr is inherited: a worker's warnings and tracebacks show up as they happen.
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("{"):
                return json.loads(line)
            print(f"  [{self.label}] {line.rstrip()}", flush=True)  # stray prints of the libraries
        raise SystemExit(f"worker of {self.label!r} exited (rc {self.proc.wait()}); see its error above")

    def ask(self, command: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


def run_rows(args: argparse.Namespace, worker_argv: list[str], device: torch.device) -> list[RowResult]:
    results = [RowResult(spec) for spec in row_specs(args)]
    workers: list[Worker] = []
    try:
        for i, result in enumerate(results):  # one at a time: a building row has the machine to itself
            workers.append(Worker(worker_argv, i, result.spec.label))
            result.info = workers[-1].read()
            info = result.info
            print(
                f"  built {result.spec.label} (pid {info['pid']}): first train step "
                f"{info['first_step_s']:.1f} s; retained host memory "
                f"{'on' if info['retain_memory'] else 'off'}, "
                f"fused AdamW {'on' if info['fused_adamw'] else 'off'}, clip {info['clip']}, "
                f"{info['threads']} threads",
                flush=True,
            )
        turn = max(1, min(args.turn_steps, args.steps))
        for round_ in range(args.repeats):
            # Rows take turns, `turn` steps at a time, so load that comes and goes hits every row alike.
            for what, times in (("train", "train"), ("eval", "eval")) if args.eval else (("train", "train"),):
                seconds = [0.0] * len(results)
                done = 0
                while done < args.steps:
                    n = min(turn, args.steps - done)
                    for i, worker in enumerate(workers):
                        seconds[i] += float(worker.ask(f"{what} {n} {args.turn_warmup}")["seconds"])
                    done += n
                for result, s in zip(results, seconds, strict=True):
                    getattr(result, times).append(args.batch_size * args.steps / s)
            rates = ", ".join(f"{r.spec.label} {r.train[-1]:.2f}" for r in results)
            print(f"  round {round_ + 1}: train images/s: {rates}", flush=True)
        if args.memory:
            for result, worker in zip(results, workers, strict=True):
                result.memory_mb = float(worker.ask("memory")["memory_mb"])
    finally:
        for worker in workers:
            worker.close()
    return results


# ----------------------------------------------------------------------------------------- main
def _duration(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def print_table(args: argparse.Namespace, results: list[RowResult], what: str, cuda: bool) -> None:
    ref = next((r for r in results if r.spec.variant == "plain"), None)
    ref_train = statistics.median(ref.train) if ref else None
    ref_eval = statistics.median(ref.eval) if ref and ref.eval else None
    memory_what = "peak CUDA MB" if cuda else "peak RSS growth MB"
    print()
    print(f"**{what}** (batch {args.batch_size}, {args.size}x{args.size})")
    print()
    print(
        f"| model (settings) | amp | channels_last | compile | retained host memory | fused AdamW "
        f"| train images/s | vs smp | eval images/s | vs smp | {memory_what} | epoch (3312 images) "
        f"| 1st step s |"
    )
    print("|---|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        train = statistics.median(r.train)
        evals = statistics.median(r.eval) if r.eval else None
        i = r.info
        cells = [
            r.spec.label,
            i["amp"],
            "yes" if i["channels_last"] else "no",
            "yes" if i["compile"] else "no",
            "yes" if i["retain_memory"] else "no",
            "yes" if i["fused_adamw"] else "no",
            f"{train:.2f}",
            f"{train / ref_train:.2f}x" if ref_train else "-",
            f"{evals:.2f}" if evals else "-",
            f"{evals / ref_eval:.2f}x" if evals and ref_eval else "-",
            f"{r.memory_mb:.0f}" if r.memory_mb is not None else "-",
            _duration(TRAIN_SPLIT / train),
            f"{i['first_step_s']:.1f}",
        ]
        print("| " + " | ".join(cells) + " |")
    if ref is None:
        return
    print()
    for r in results:
        if r is ref:
            continue
        per_round = ", ".join(f"{a / b:.2f}x" for a, b in zip(r.train, ref.train, strict=True))
        print(f"train ratio per round, {r.spec.label} / {ref.spec.label}: {per_round}")
    runtime_ref = next((r for r in results if r.spec.variant == "runtime"), None)
    if runtime_ref is not None:
        for r in results:
            if r.spec.model_name in OURS:
                per_round = ", ".join(
                    f"{a / b:.2f}x" for a, b in zip(r.train, runtime_ref.train, strict=True)
                )
                median = statistics.median(r.train) / statistics.median(runtime_ref.train)
                print(
                    f"train ratio per round, {r.spec.label} / {runtime_ref.spec.label}: {per_round} "
                    f"(medians: {median:.2f}x)"
                )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--models",
        nargs="+",
        choices=[*OURS, SMP, SMP_RUNTIME],
        default=[*OURS, SMP],
        help=f"{SMP_RUNTIME}: smp's network and plain step under our runtime (opt-in)",
    )
    parser.add_argument(
        "--variants", nargs="+", help="default: 'default' on CPU; fp32/bf16/cl/compile on CUDA"
    )
    parser.add_argument("--batch-size", type=int, help="default 8 on CPU, 32 on CUDA")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, help="timed steps per row and round (default 3 CPU, 20 CUDA)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; rows take turns, medians reported")
    parser.add_argument(
        "--turn-steps", type=int, help="timed steps a row runs per turn (default: all --steps)"
    )
    parser.add_argument(
        "--turn-warmup",
        type=int,
        default=1,
        help="untimed steps at the start of every turn (default 1): while other rows run, a waiting "
        "process's freed memory and caches go cold, which would slow only its first step back",
    )
    parser.add_argument(
        "--warmup", type=int, help="untimed steps per row (default 1 CPU, 5 CUDA; +2 compiled)"
    )
    parser.add_argument("--no-eval", dest="eval", action="store_false", help="train steps only")
    parser.add_argument("--no-memory", dest="memory", action="store_false", help="skip the memory column")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    add_clock_option(
        parser, "rate per CPU-second of the row's process (CPU only; for a busy machine, with --threads 1)"
    )
    parser.add_argument("--_worker", dest="worker", type=int, help=argparse.SUPPRESS)
    raw_argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(raw_argv)

    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    if cuda and args.clock == "cpu":
        parser.error("--clock cpu measures host CPU time: use it with --device cpu")
    args.device = str(device)
    args.variants = args.variants or list(CUDA_VARIANTS if cuda else CPU_VARIANTS)
    for variant in args.variants:
        parse_variant(variant)
    args.batch_size = args.batch_size or (32 if cuda else 8)
    args.steps = args.steps or (20 if cuda else 3)
    args.turn_steps = args.turn_steps or args.steps
    args.warmup = args.warmup if args.warmup is not None else (5 if cuda else 1)
    if args.worker is not None:
        run_worker(args, args.worker)
        return
    args.models = drop_unusable_smp(args.models, (SMP, SMP_RUNTIME))
    if not row_specs(args):
        parser.error("no rows to run")
    # Workers get the resolved settings, so every row runs exactly what the parent announces.
    worker_argv = [
        *("--device", args.device, "--batch-size", str(args.batch_size), "--size", str(args.size)),
        *("--steps", str(args.steps), "--warmup", str(args.warmup), "--clock", args.clock),
        *("--models", *args.models, "--variants", *args.variants),
        *(("--threads", str(args.threads)) if args.threads else ()),
        *(() if args.eval else ("--no-eval",)),
    ]
    what = torch.cuda.get_device_name(device) if cuda else cpu_description()
    print(
        f"{what}; torch {torch.__version__}; batch {args.batch_size}, {args.size}x{args.size}; "
        f"{args.warmup} warm-up steps, {args.repeats} rounds x {args.steps} timed steps "
        f"({args.turn_steps} per turn, after {args.turn_warmup} untimed); one process per row"
        + ("; CPU-time clock (images per CPU-second)" if args.clock == "cpu" else ""),
        flush=True,
    )
    results = run_rows(args, worker_argv, device)
    print_table(args, results, what, cuda)


if __name__ == "__main__":
    main()
