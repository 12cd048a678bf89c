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


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False

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
    channels_last = trainer.get("channels_last", "auto")
    if channels_last == "auto":
        channels_last = device.type == "cuda"
    if device.type == "cuda":
        # Fixed input sizes: let cuDNN pick the fastest kernels once (off when determinism is asked).
        torch.backends.cudnn.benchmark = not bool(trainer.get("deterministic", False))
    return Runtime(device=device, amp_dtype=AMP_DTYPES[amp], channels_last=bool(channels_last))
