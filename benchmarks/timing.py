"""How the benchmarks time: the one timing loop (untimed warm-up calls, then timed ones, on the wall
and the CPU clock), our own train step as they time it (the real ``Trainer.train_step``, via
``petseg.build.trainer_for_step``, on a synthetic batch), the CPU a number came from, and the
``src/train.py`` processes that the whole-run benchmarks time.

Imported by the scripts in this folder (they put src/ on sys.path first); it has no command line.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

ROOT = Path(__file__).resolve().parents[1]
# src/ first, even when it is already on sys.path further down: a script's own folder comes first, and
# its benchmarks/models.py would otherwise shadow src/models (the model registry).
if sys.path[:1] != [str(ROOT / "src")]:
    sys.path.insert(0, str(ROOT / "src"))

from models import build_model  # noqa: E402
from petseg.build import build_loss, build_optimizer, trainer_for_step  # noqa: E402
from petseg.model_input import ModelInput  # noqa: E402
from petseg.runtime import Runtime, cpu_bf16_units, cpu_has_avx512  # noqa: E402
from petseg.trainer import Trainer  # noqa: E402

CLOCKS = ("wall", "cpu")
# Appended to a train.py run that is timed, not kept: one validation batch, no checkpoints.
TIMED_RUN = (
    "trainer.limit_val_batches=1",
    "trainer.checkpoint.save_last=false",
    "trainer.checkpoint.save_best=false",
)


# ------------------------------------------------------------------------------ the timing loop
@dataclass(frozen=True)
class Timing:
    """One timed window: ``steps`` calls took ``wall`` seconds of wall time and ``cpu`` of CPU time."""

    steps: int
    wall: float
    cpu: float

    def seconds(self, clock: str) -> float:
        """``cpu`` for clock "cpu", else ``wall``."""
        return self.cpu if clock == "cpu" else self.wall


def time_steps(
    step: Callable[[], object],
    steps: int,
    *,
    warmup: int = 0,
    sync: Callable[[], None] | None = None,
    cpu_clock: Callable[[], float] = time.process_time,
    wall_clock: Callable[[], float] = time.perf_counter,
) -> Timing:
    """Call ``step`` ``warmup`` times untimed, then ``steps`` times timed on both clocks.

    ``sync`` (e.g. ``torch.cuda.synchronize``) runs before the clocks start and before they stop, so
    queued device work is counted where it was issued. The CPU clock is this process's CPU time unless
    given (loader.py adds its workers'): with one thread on a busy machine it counts the work, not the
    waiting for a core.
    """
    for _ in range(warmup):
        step()
    if sync is not None:
        sync()
    wall, cpu = wall_clock(), cpu_clock()
    for _ in range(steps):
        step()
    if sync is not None:
        sync()
    return Timing(steps, wall_clock() - wall, cpu_clock() - cpu)


def step_seconds(
    step: Callable[[], object],
    steps: int,
    *,
    warmup: int = 0,
    after: Callable[[float], None] | None = None,
    wall_clock: Callable[[], float] = time.perf_counter,
) -> list[float]:
    """The wall seconds of each of the last ``steps`` of ``warmup + steps`` calls of ``step``. Every call
    is timed and passed to ``after`` (a thread tuner learns from warm-up steps too)."""
    times = []
    for _ in range(warmup + steps):
        start = wall_clock()
        step()
        seconds = wall_clock() - start
        if after is not None:
            after(seconds)
        times.append(seconds)
    return times[warmup:]


def device_sync(device: torch.device) -> Callable[[], None] | None:
    """What ``time_steps`` needs to wait for ``device``'s queued work; None on the CPU."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return None


def add_clock_option(parser: argparse.ArgumentParser, cpu_means: str) -> None:
    """``--clock wall|cpu`` (default wall); ``cpu_means``: what the cpu clock counts in this script."""
    parser.add_argument("--clock", choices=CLOCKS, default="wall", help=f"cpu: {cpu_means}")


# ----------------------------------------------------------------------------------- our step
def default_configs(device: str) -> tuple[DictConfig, DictConfig, DictConfig]:
    """configs/trainer/default.yaml (its device set to ``device``), optim/adamw.yaml, loss/bce_dice.yaml."""
    trainer = OmegaConf.load(ROOT / "configs" / "trainer" / "default.yaml")
    trainer.device = device
    optim = OmegaConf.load(ROOT / "configs" / "optim" / "adamw.yaml")
    loss = OmegaConf.load(ROOT / "configs" / "loss" / "bce_dice.yaml")
    return trainer, optim, loss


def data_defaults() -> DictConfig:
    """configs/data/oxford_pet.yaml: the normalisation every timed step's ModelInput uses."""
    return OmegaConf.load(ROOT / "configs" / "data" / "oxford_pet.yaml")


def our_trainer(model_name: str, runtime: Runtime, trainer_cfg: DictConfig) -> Trainer:
    """A Trainer whose ``train_step`` is train.py's for ``model_name`` under ``runtime``: the model
    (``runtime.prepare``d), the optim group's AdamW (fused on CPU and CUDA), BCE + Dice,
    ``trainer_cfg.grad_clip``, ModelInput of the data defaults; no data, a constant schedule."""
    _, optim_cfg, loss_cfg = default_configs(str(runtime.device))
    model = runtime.prepare(build_model(model_name))
    optimizer = build_optimizer(optim_cfg, model, runtime.device)
    clip = None if trainer_cfg.grad_clip is None else float(trainer_cfg.grad_clip)
    model_input = ModelInput.of(data_defaults(), runtime)
    return trainer_for_step(runtime, model_input, model, optimizer, build_loss(loss_cfg), clip)


def synthetic_batch(batch_size: int, size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A batch as the loader gives one, in host memory: uint8 images and {0, 1} uint8 masks (every
    timed step moves and normalises it, like training's)."""
    g = torch.Generator().manual_seed(seed)
    return {
        "image": torch.randint(0, 256, (batch_size, 3, size, size), generator=g, dtype=torch.uint8),
        "mask": torch.randint(0, 2, (batch_size, 1, size, size), generator=g, dtype=torch.uint8),
    }


# ------------------------------------------------------------------------------------- the CPU
def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _cpu_model() -> str:
    """lscpu's model name (else /proc/cpuinfo's, else platform.processor())."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_description() -> str:
    """'<lscpu model name>, <AMX | AVX512-BF16, no AMX | AVX-512 without BF16 | AVX2-only>, N cores':
    which CPU a table came from, and whether it has the bf16 units trainer.amp=auto uses."""
    # The same tests trainer.amp/channels_last=auto make (petseg.runtime), so a table names the CPU
    # kind whose defaults it measured; the flags only add AVX-512/AVX2 where torch's kernels lack them.
    amx = cpu_bf16_units() == "AMX"
    bf16 = torch.cpu._is_avx512_bf16_supported()
    flags = _cpu_flags()
    if amx:
        units = "AMX" + (" + AVX512-BF16" if bf16 else "")
    elif bf16:
        units = "AVX512-BF16, no AMX"
    elif "avx512f" in flags or cpu_has_avx512():
        units = "AVX-512 without BF16, no AMX"
    elif "avx2" in flags or torch.backends.cpu.get_cpu_capability() == "AVX2":
        units = "AVX2-only (no AVX-512, no AMX)"
    else:
        units = "no AVX2"
    return f"{_cpu_model()}, {units}, {os.cpu_count()} cores"


# ----------------------------------------------------------------------------- train.py processes
def train_command(root: str, run_dir: Path, *overrides: str) -> list[str]:
    """``python src/train.py`` on ``root`` (a partial copy allowed) in ``run_dir``, exporting nothing,
    then ``overrides`` (a recipe ``experiment=<name>`` or ``model=<name>``, sizes, ...; the last value of
    a key wins)."""
    return [
        sys.executable,
        str(ROOT / "src" / "train.py"),
        f"data.root={root}",
        "data.allow_missing=true",
        "trainer.checkpoint.export_dir=null",
        f"hydra.run.dir={run_dir}",
        *overrides,
    ]


def process_seconds(cmd: list[str]) -> float:
    """Wall seconds of ``cmd`` run from the repository root, its output discarded; a failure raises."""
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start
