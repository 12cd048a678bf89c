"""The one place a training config becomes objects: ``build(cfg) -> Built``.

Model (models/ registry), datasets and loaders (oxford_pet.py), the conversion of their uint8 batches
into model inputs (model_input.py), optimiser and schedule (optim.py), loss (losses.py), runtime
(device, precision, layout, threads: runtime.py), and the wrappers that train the model (DDP,
torch.compile). The Trainer receives these built objects and knows nothing of YAML.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader

from models import build_model
from oxford_pet import OxfordPetDataset, build_dataset
from petseg.distributed import SINGLE, DistInfo, wrap_model
from petseg.errors import PetsegError
from petseg.loaders import build_dataloader
from petseg.model_input import ModelInput
from petseg.runtime import Runtime, setup_runtime
from petseg.signals import shield_workers
from petseg.thread_tuner import ThreadTuner, tuner_for
from utils import seed_everything

log = logging.getLogger("petseg.train")


@dataclass
class Built:
    """Everything a training run needs, built from its config."""

    runtime: Runtime
    model_input: ModelInput  # uint8 batches -> the model's float inputs on its device
    model: nn.Module  # what checkpoints save and evaluation runs
    train_model: nn.Module  # the same parameters, wrapped for training (DDP, torch.compile) or itself
    train_set: OxfordPetDataset
    val_set: OxfordPetDataset
    train_loader: DataLoader
    val_loader: DataLoader
    steps_per_epoch: int
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loss_fn: nn.Module
    scaler: torch.amp.GradScaler
    thread_tuner: ThreadTuner | None


def _instantiate(node: DictConfig, group: str) -> Any:
    """``hydra.utils.instantiate(node)``; a bad ``_target_`` or argument is one line naming the group."""
    try:
        return instantiate(node)
    except InstantiationException as err:
        cause = err.__cause__ if err.__cause__ is not None else err
        if isinstance(cause, PetsegError):
            raise cause from None
        reason = (str(cause).strip().splitlines() or [type(cause).__name__])[-1]
        raise PetsegError(f"{group}: cannot build {node.get('_target_')}: {reason}") from None


def build_optimizer(cfg: DictConfig, model: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    """The `optim` group's optimiser over ``model``'s parameters."""
    return _call(_instantiate(cfg, "optim"), "optim", model, device)


def build_scheduler(
    cfg: DictConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int, epochs: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """The `sched` group's per-step schedule."""
    return _call(_instantiate(cfg, "sched"), "sched", optimizer, steps_per_epoch, epochs)


def build_loss(cfg: DictConfig) -> nn.Module:
    """The `loss` group's loss module."""
    return _instantiate(cfg, "loss")


def _call(partial: Any, group: str, *args: Any) -> Any:
    """Call an instantiated ``_partial_`` with what only the run knows; a wrong value is one line."""
    try:
        return partial(*args)
    except (TypeError, ValueError) as err:
        raise PetsegError(f"{group}: {err}") from None


def _scaler(runtime: Runtime) -> torch.amp.GradScaler:
    """Loss scaling, needed only for fp16 autocast (bf16 and fp32 keep the exponent range)."""
    return torch.amp.GradScaler(runtime.device.type, enabled=runtime.amp_dtype == torch.float16)


def _sync_batchnorm(model: nn.Module, wanted: bool, dist: DistInfo, device: torch.device) -> nn.Module:
    if not wanted:
        return model
    if not dist.enabled:
        log.info("trainer.sync_batchnorm is only used with several processes (torchrun)")
        return model
    if device.type != "cuda":
        raise PetsegError("trainer.sync_batchnorm needs CUDA devices (SyncBatchNorm has no CPU kernel)")
    # Statistics over the global batch; same parameters and buffers, so checkpoints load anywhere.
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def build(cfg: DictConfig, dist: DistInfo = SINGLE) -> Built:
    """Seed, set up the runtime, and build every object of a training run from ``cfg``."""
    trainer_cfg = cfg.trainer
    loss_fn = build_loss(cfg.loss)
    seed_everything(
        int(trainer_cfg.seed), bool(trainer_cfg.deterministic)
    )  # before the model: its init draws from torch
    runtime = setup_runtime(trainer_cfg, dist)
    model = runtime.prepare(build_model(**cfg.model))
    model = _sync_batchnorm(model, bool(trainer_cfg.sync_batchnorm), dist, runtime.device)
    train_set = build_dataset(cfg.data, cfg.aug, "train")
    val_set = build_dataset(cfg.data, cfg.aug, "valid")
    shard = {"rank": dist.rank, "world_size": dist.world_size}
    train_loader = build_dataloader(train_set, cfg.data, train=True, seed=int(trainer_cfg.seed), **shard)
    val_loader = build_dataloader(val_set, cfg.data, train=False, **shard)
    shield_workers(train_loader)
    shield_workers(val_loader)
    steps_per_epoch = len(train_loader)
    if trainer_cfg.limit_train_batches is not None:
        steps_per_epoch = min(steps_per_epoch, int(trainer_cfg.limit_train_batches))
    if steps_per_epoch == 0:
        per = f" per process ({dist.world_size} processes)" if dist.enabled else ""
        raise PetsegError(
            f"the train split has {len(train_set)} images, fewer than one batch of "
            f"{cfg.data.batch_size}{per}: lower data.batch_size"
        )
    optimizer = build_optimizer(cfg.optim, model, runtime.device)
    # DDP (several processes) and the compiled wrapper share parameters with `model`, which is what
    # checkpoints save and evaluation runs (DDP's forward would sync buffers, and the eval shards
    # differ in length, so eval must not go through it).
    train_model = runtime.compile_model(wrap_model(model, dist))
    return Built(
        runtime=runtime,
        model_input=ModelInput.of(cfg.data, runtime),
        model=model,
        train_model=train_model,
        train_set=train_set,
        val_set=val_set,
        train_loader=train_loader,
        val_loader=val_loader,
        steps_per_epoch=steps_per_epoch,
        optimizer=optimizer,
        scheduler=build_scheduler(cfg.sched, optimizer, steps_per_epoch, int(trainer_cfg.epochs)),
        loss_fn=loss_fn,
        scaler=_scaler(runtime),
        thread_tuner=tuner_for(trainer_cfg, runtime.device, dist.enabled),
    )


def built_for_step(
    runtime: Runtime,
    model_input: ModelInput,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
) -> Built:
    """A Built with only what ``Trainer.train_step`` uses (no data, a constant schedule): benchmarks
    time the real step on synthetic uint8 batches with it."""
    from petseg.optim import constant

    return Built(
        runtime=runtime,
        model_input=model_input,
        model=model,
        train_model=runtime.compile_model(model),
        train_set=None,  # type: ignore[arg-type]
        val_set=None,  # type: ignore[arg-type]
        train_loader=None,  # type: ignore[arg-type]
        val_loader=None,  # type: ignore[arg-type]
        steps_per_epoch=1,
        optimizer=optimizer,
        scheduler=constant(optimizer, 1, 1),
        loss_fn=loss_fn,
        scaler=_scaler(runtime),
        thread_tuner=None,
    )
