"""Where and how tensors run: device, mixed precision, memory format. Shared by every loop."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from omegaconf import DictConfig
from torch import nn

from errors import PetsegError
from utils import resolve_device

AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


# trainer.channels_last=auto per device type. NHWC lets cuDNN use tensor-core kernels without
# transposes (CUDA). On CPU oneDNN runs NHWC too, but for this project's train step it measured
# slower on an AVX2 EPYC (resnet34_unet +6 %, unet +25 % CPU time per step; benchmarks/README.md,
# `benchmarks/train_speed.py --variants fp32 fp32+cl`), so auto keeps the default layout there.
AUTO_CHANNELS_LAST = {"cuda": True, "cpu": False}


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    compile: bool = False

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def to_input(self, tensor: torch.Tensor) -> torch.Tensor:
        """Move a batch to the device (async from pinned memory) in the model's memory format."""
        tensor = tensor.to(self.device, non_blocking=True)
        if self.channels_last and tensor.ndim == 4:
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        return tensor

    def prepare(self, model: nn.Module) -> nn.Module:
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def compile_model(self, model: nn.Module) -> nn.Module:
        """``torch.compile(model)`` when compile is on (the wrapper shares the model's parameters, so
        checkpoints keep using ``model``); the model itself otherwise."""
        return torch.compile(model) if self.compile else model


def runtime_from_config(trainer: DictConfig) -> Runtime:
    """Resolve the 'auto' settings of the trainer group into concrete choices for this machine."""
    device = resolve_device(str(trainer.device))
    if trainer.get("threads"):
        torch.set_num_threads(int(trainer.threads))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PetsegError(
            f"trainer.device={trainer.device} but CUDA is not available here; use trainer.device=auto"
        )
    amp = str(trainer.get("amp", "auto"))
    if amp == "auto":
        # bf16 needs no loss scaling and is fast on tensor cores; on CPU it is slower than fp32.
        amp = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "off"
    if amp not in AMP_DTYPES:
        raise PetsegError(f"trainer.amp={amp} is not one of auto, {', '.join(AMP_DTYPES)}")
    channels_last = _auto_bool(trainer, "channels_last")
    if channels_last is None:
        channels_last = AUTO_CHANNELS_LAST.get(device.type, False)  # mps and others: the safe layout
    # No 'auto': compiling is opt-in on every device. The first steps pay a compile of minutes (more
    # on a small CPU), and inductor needs a C++ compiler (CPU) or Triton (CUDA) a plain install may lack.
    compile_model = bool(_auto_bool(trainer, "compile", default=False, allow_auto=False))
    if device.type == "cuda":
        # Fixed input sizes: let cuDNN pick the fastest kernels once (off when determinism is asked).
        torch.backends.cudnn.benchmark = not bool(trainer.get("deterministic", False))
    return Runtime(
        device=device, amp_dtype=AMP_DTYPES[amp], channels_last=channels_last, compile=compile_model
    )


def _auto_bool(
    trainer: DictConfig, key: str, default: bool | str = "auto", allow_auto: bool = True
) -> bool | None:
    """trainer.<key> as True/False, or None for 'auto' (and null); anything else is a user error: a
    typo such as 'flase', or 'auto' where none is allowed, would otherwise count as true."""
    value = trainer.get(key, default)
    if isinstance(value, bool):
        return value
    if allow_auto and (value is None or value == "auto"):
        return None
    if not allow_auto and value is None:
        return False
    choices = "auto, true, false" if allow_auto else "true, false"
    raise PetsegError(f"trainer.{key}={value!r} is not one of {choices}")
