"""Where and how tensors run: device, mixed precision, memory format. Shared by every loop."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import sys
from dataclasses import dataclass

import torch
from omegaconf import DictConfig
from torch import nn

from petseg.distributed import SINGLE, DistInfo
from petseg.errors import PetsegError

AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


# trainer.amp=auto and trainer.channels_last=auto. CUDA: bf16 autocast (where supported) and NHWC, which
# lets cuDNN use tensor-core kernels without transposes. CPU: it depends on the CPU's bf16 units
# (cpu_bf16_units). With AMX tiles (Intel Sapphire Rapids and later) or AVX512-BF16 (e.g. AMD Zen 4)
# oneDNN runs bf16 NHWC convolutions much faster than fp32; without them bf16 is emulated and slower, so
# fp32 stays. The fp32 layout follows the vector width (cpu_has_avx512): oneDNN's NHWC fp32 kernels beat
# the default layout with AVX-512 and do not with AVX2 only (the figures: benchmarks/README.md).
def cpu_bf16_units() -> str | None:
    """'AMX' or 'AVX512-BF16' when this CPU has native bf16 matrix/vector units, else None."""
    cpu = getattr(torch, "cpu", None)
    if cpu is not None and getattr(cpu, "_is_amx_tile_supported", lambda: False)():
        return "AMX"
    if cpu is not None and getattr(cpu, "_is_avx512_bf16_supported", lambda: False)():
        return "AVX512-BF16"
    return None


def cpu_has_avx512() -> bool:
    """Whether torch's CPU kernels run with AVX-512 here (False on AVX2-only CPUs)."""
    return torch.backends.cpu.get_cpu_capability().startswith("AVX512")


def _auto_amp_layout(device: torch.device) -> tuple[str, bool, str]:
    """(amp, channels_last, why) that 'auto' means on ``device``."""
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", True, "CUDA with bf16: bf16 autocast + channels_last"
        return "off", True, "CUDA without bf16: fp32 + channels_last"
    if device.type == "cpu":
        units = cpu_bf16_units()
        if units:
            return "bf16", True, f"CPU has {units}: bf16 autocast + channels_last (~1.7-4x faster than fp32)"
        if cpu_has_avx512():
            return "off", True, "CPU with AVX-512 but without AMX or AVX512-BF16: fp32 + channels_last"
        return "off", False, "CPU without AMX or AVX512-BF16, AVX2 only: fp32, default layout"
    return "off", False, f"{device.type}: fp32, default layout"


# glibc mallopt() parameters (malloc.h). Defaults: big blocks (>= 128 KiB, adaptive up to 32 MiB) are
# mmap'd and unmapped on free, the heap top is trimmed back to the OS at 128 KiB, and every thread
# (oneDNN/OpenMP workers) gets its own arena. A CPU train step allocates and frees ~1 GB of activations
# and gradients, so each step faulted in and zeroed fresh pages again; keeping freed memory in one arena
# avoids that (the step time it saves: benchmarks/README.md). The price: the process keeps its peak memory
# mapped instead of handing it back between steps (the peak itself does not change).
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -2, -3, -8
_RETAIN_SETTINGS = (
    (_M_ARENA_MAX, 1),  # one arena: a block freed by one thread is reused by the next allocation
    (_M_MMAP_THRESHOLD, 1 << 30),  # serve blocks up to 1 GiB from the heap, not fresh mmaps
    (_M_TRIM_THRESHOLD, (1 << 31) - 1),  # do not shrink the heap between steps (the largest C int)
    (_M_TOP_PAD, 1 << 28),  # grow it in 256 MiB steps (fewer brk calls)
)
_retained = False


def retain_freed_memory() -> bool:
    """Tune glibc's malloc to keep freed memory for reuse (see above); True if it is in effect.

    Process-wide and one-way, like torch.set_num_threads; a no-op (False) off Linux/glibc.
    DataLoader workers forked later inherit it.
    """
    global _retained
    if _retained:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _retained = all(mallopt(param, value) == 1 for param, value in _RETAIN_SETTINGS)
    return _retained


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    compile: bool = False
    retain_memory: bool = False
    why: str = ""  # what 'auto' chose for amp/channels_last and why (logged, stored in checkpoints)

    def describe(self) -> dict[str, str | bool]:
        """The resolved precision and layout, for logs and checkpoints."""
        amp = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.amp_dtype]
        return {"device": str(self.device), "amp": amp, "channels_last": self.channels_last, "why": self.why}

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def prepare(self, model: nn.Module) -> nn.Module:
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def compile_model(self, model: nn.Module) -> nn.Module:
        """``torch.compile(model)`` when compile is on (the wrapper shares the model's parameters, so
        checkpoints keep using ``model``); the model itself otherwise."""
        return torch.compile(model) if self.compile else model


def resolve_device(name: str = "auto", dist: DistInfo = SINGLE) -> torch.device:
    """The one device resolution: 'auto' picks CUDA, then Apple MPS, then CPU; any other value is
    passed to torch.device. Under DDP each rank owns one GPU (its local rank); on CPU all ranks share
    the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            device = torch.device("cuda")
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            device = torch.device("mps")
        else:
            device = torch.device("cpu")
    else:
        device = torch.device(name)
    if dist.enabled and device.type == "cuda":
        return torch.device("cuda", dist.local_rank)
    return device


def setup_runtime(
    trainer: DictConfig, dist: DistInfo = SINGLE, device_key: str = "trainer.device"
) -> Runtime:
    """Resolve the 'auto' settings of the trainer group into concrete choices for this machine (and,
    under DDP, this rank: its own GPU), and apply the process-wide ones: torch's thread count, malloc's
    retention of freed memory, cuDNN's autotuner."""
    device = resolve_device(str(trainer.device), dist)
    if trainer.threads not in (None, "auto"):  # auto: all cores, tuned by thread_tuner in training
        torch.set_num_threads(int(trainer.threads))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PetsegError(
            f"{device_key}={trainer.device} but CUDA is not available here; use {device_key}=auto"
        )
    auto_amp, auto_layout, auto_why = _auto_amp_layout(device)
    amp = str(trainer.amp)
    why = []
    if amp == "auto":
        amp = auto_amp
    else:
        why.append(f"amp={amp} as set")
    if amp not in AMP_DTYPES:
        raise PetsegError(f"trainer.amp={amp} is not one of auto, {', '.join(AMP_DTYPES)}")
    channels_last = _auto_bool(trainer, "channels_last")
    if channels_last is None:
        channels_last = auto_layout
    else:
        why.append(f"channels_last={channels_last} as set")
    if len(why) < 2:
        why.insert(0, f"auto: {auto_why}")
    # No 'auto': compiling is opt-in on every device. The first steps pay a compile of minutes (more
    # on a small CPU), and inductor needs a C++ compiler (CPU) or Triton (CUDA) a plain install may lack.
    compile_model = bool(_auto_bool(trainer, "compile", allow_auto=False))
    # On CPU, activations live in host memory: keep freed blocks instead of re-faulting them every
    # step (retain_freed_memory). On accelerators host allocations are small; leave malloc alone.
    retain = _auto_bool(trainer, "retain_host_memory")
    if retain is None:
        retain = device.type == "cpu"
    retain = retain and retain_freed_memory()
    # Fixed input sizes: let cuDNN time its kernels once and keep the fastest. Its choice may differ
    # from run to run, so auto turns it off when determinism is asked.
    benchmark = _auto_bool(trainer, "cudnn_benchmark")
    deterministic = bool(trainer.deterministic)
    if benchmark and deterministic:
        raise PetsegError("trainer.cudnn_benchmark=true contradicts trainer.deterministic=true; drop one")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = (not deterministic) if benchmark is None else benchmark
    return Runtime(
        device=device,
        amp_dtype=AMP_DTYPES[amp],
        channels_last=channels_last,
        compile=compile_model,
        retain_memory=retain,
        why="; ".join(why),
    )


def _auto_bool(trainer: DictConfig, key: str, allow_auto: bool = True) -> bool | None:
    """trainer.<key> as True/False, or None for 'auto' (and null); anything else is a user error: a
    typo such as 'flase', or 'auto' where none is allowed, would otherwise count as true."""
    value = trainer[key]
    if isinstance(value, bool):
        return value
    if allow_auto and (value is None or value == "auto"):
        return None
    if not allow_auto and value is None:
        return False
    choices = "auto, true, false" if allow_auto else "true, false"
    raise PetsegError(f"trainer.{key}={value!r} is not one of {choices}")
