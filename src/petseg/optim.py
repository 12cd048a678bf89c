"""Optimisers and learning-rate schedules built from the `optim` and `sched` config groups."""

from __future__ import annotations

import math

import torch
from omegaconf import DictConfig

from petseg.errors import PetsegError

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "none")
FUSED_ADAMW_DEVICES = ("cuda", "cpu")  # devices torch has a fused AdamW kernel for (not mps here)


def build_optimizer(cfg: DictConfig, model: torch.nn.Module, device: torch.device) -> torch.optim.Optimizer:
    """AdamW or SGD over the model's parameters; BatchNorm and bias parameters get no weight decay."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": float(cfg.weight_decay)},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if cfg.name == "adamw":
        # The fused kernel updates all tensors in one pass instead of one op chain per tensor: on CPU
        # 21 ms instead of 111 ms per step for resnet34_unet's 24M parameters (torch 2.13, 2 cores).
        fused = _fused(cfg.get("fused", "auto"), device)
        return torch.optim.AdamW(groups, lr=float(cfg.lr), betas=tuple(cfg.betas), fused=fused)
    if cfg.name == "sgd":
        return torch.optim.SGD(
            groups, lr=float(cfg.lr), momentum=float(cfg.momentum), nesterov=bool(cfg.nesterov)
        )
    raise PetsegError(f"unknown optimizer '{cfg.name}'; valid: {', '.join(OPTIMIZERS)}")


def _fused(value: object, device: torch.device) -> bool:
    if value in ("auto", None):
        return device.type in FUSED_ADAMW_DEVICES
    if not isinstance(value, bool):
        raise PetsegError(f"optim.fused={value!r} is not one of auto, true, false")
    if value and device.type not in FUSED_ADAMW_DEVICES:
        raise PetsegError(f"optim.fused=true: torch has no fused AdamW for {device.type}; use auto")
    return value


def lr_factor(step: int, total_steps: int, warmup_steps: int, min_ratio: float) -> float:
    """Linear warm-up from ~0 to 1 over warmup_steps, then cosine from 1 down to min_ratio."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    progress = min(max(progress, 0.0), 1.0)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(
    cfg: DictConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int, epochs: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step schedule; 'none' keeps the lr constant (a LambdaLR of 1 keeps one code path)."""
    total = steps_per_epoch * epochs
    if cfg.name == "none":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    if cfg.name == "cosine":
        if cfg.get("warmup_fraction") is not None:
            warmup = int(round(float(cfg.warmup_fraction) * total))
        else:
            warmup = int(round(float(cfg.get("warmup_epochs", 0)) * steps_per_epoch))
        min_ratio = float(cfg.min_lr_ratio)
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step, total, min(warmup, total), min_ratio)
        )
    raise PetsegError(f"unknown schedule '{cfg.name}'; valid: {', '.join(SCHEDULES)}")
