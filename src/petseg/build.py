"""The one place a training config becomes objects: ``build(cfg) -> RunObjects``.

Model (models/ registry), datasets and loaders (oxford_pet.py), the conversion of their uint8 batches
into model inputs (model_input.py), optimiser and schedule (optim.py), loss (losses.py), runtime
(device, precision, layout, threads: runtime.py), and the wrappers that train the model (DDP,
torch.compile). The Trainer receives these built objects and knows nothing of YAML.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader

from models import build_model
from petseg.callbacks import ExportBest, MidEpochSave, TensorBoardLog, ThreadTuning
from petseg.data_settings import DataSettings
from petseg.datasets import SegmentationDataset, build_dataset, resolve_data
from petseg.distributed import SINGLE, DistInfo, wrap_model
from petseg.ema import EMA
from petseg.errors import PetsegError
from petseg.loaders import build_dataloader
from petseg.model_input import ModelInput
from petseg.optim import constant
from petseg.run_objects import RunObjects
from petseg.runtime import Runtime, setup_runtime
from petseg.settings import RunSettings, TrainSettings, run_settings
from petseg.signals import StopSignals, shield_workers
from petseg.thread_tuner import tuner_for
from petseg.trainer import Trainer
from petseg.transforms import AugSettings
from utils import seed_everything

log = logging.getLogger("petseg.train")


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


def _train_loader(
    data: DataSettings, aug: AugSettings, seed: int, size: int, dist: DistInfo
) -> tuple[SegmentationDataset, DataLoader]:
    """The train split at image size ``size`` and its loader (seeded order, this rank's shard)."""
    sized = data if size == data.image_size else replace(data, image_size=size)
    dataset = build_dataset(sized, aug, "train")
    shard = {"rank": dist.rank, "world_size": dist.world_size}
    loader = build_dataloader(dataset, data, train=True, seed=seed, **shard)
    shield_workers(loader)
    return dataset, loader


def _record_resolved(data_cfg: DictConfig, data: DataSettings) -> None:
    """Write what the data decided (a folder's ``channels: auto``, ``mean``/``std: null``) into the
    config: checkpoints save it (evaluation and inference use those numbers) and model.in_channels
    follows data.channels."""
    if data_cfg.channels == "auto":
        data_cfg.channels = data.channels
    for key in ("mean", "std"):
        if data_cfg[key] is None:
            data_cfg[key] = list(getattr(data, key))


def build(cfg: DictConfig, dist: DistInfo = SINGLE, settings: RunSettings | None = None) -> RunObjects:
    """Seed, set up the runtime, and build every object of a training run from ``cfg`` and its
    settings (``run_settings(cfg)`` unless the caller read them already)."""
    settings = settings or run_settings(cfg)
    trainer_cfg, train = cfg.trainer, settings.train
    data = resolve_data(settings.data)
    _record_resolved(cfg.data, data)  # before the model: its in_channels follow data.channels
    loss_fn = build_loss(cfg.loss)
    seed = int(trainer_cfg.seed)
    seed_everything(seed, bool(trainer_cfg.deterministic))  # before the model: its init draws from torch
    runtime = setup_runtime(trainer_cfg, dist)
    model = runtime.prepare(build_model(**cfg.model))
    model = _sync_batchnorm(model, bool(trainer_cfg.sync_batchnorm), dist, runtime.device)
    aug = settings.aug
    train_set, train_loader = _train_loader(data, aug, seed, train.image_size, dist)
    smaller = {size: _train_loader(data, aug, seed, size, dist)[1] for size in train.train_sizes()[:-1]}
    val_set = build_dataset(data, aug, "valid")
    val_loader = build_dataloader(val_set, data, train=False, rank=dist.rank, world_size=dist.world_size)
    shield_workers(val_loader)
    steps_per_epoch = len(train_loader) // train.accumulate
    if train.limit_train_batches is not None:
        steps_per_epoch = min(steps_per_epoch, train.limit_train_batches)
    if steps_per_epoch == 0:
        per = f" per process ({dist.world_size} processes)" if dist.enabled else ""
        step = (
            f"{data.batch_size} x trainer.accumulate={train.accumulate}"
            if train.accumulate > 1
            else data.batch_size
        )
        raise PetsegError(
            f"the train split has {len(train_set)} images, fewer than one step of "
            f"{step}{per}: lower data.batch_size"
        )
    optimizer = build_optimizer(cfg.optim, model, runtime.device)
    # DDP (several processes) and the compiled wrapper share parameters with `model`, which is what
    # checkpoints save and evaluation runs (DDP's forward would sync buffers, and the eval shards
    # differ in length, so eval must not go through it).
    train_model = runtime.compile_model(wrap_model(model, dist))
    return RunObjects(
        runtime=runtime,
        model_input=ModelInput.of(data, runtime),
        model=model,
        train_model=train_model,
        train_set=train_set,
        val_set=val_set,
        train_loader=train_loader,
        val_loader=val_loader,
        steps_per_epoch=steps_per_epoch,
        optimizer=optimizer,
        scheduler=build_scheduler(cfg.sched, optimizer, steps_per_epoch, train.epochs),
        loss_fn=loss_fn,
        scaler=_scaler(runtime),
        thread_tuner=tuner_for(trainer_cfg, runtime.device, dist.enabled),
        smaller_train_loaders=smaller,
    )


def build_trainer(
    cfg: DictConfig,
    built: RunObjects,
    run_dir: str | Path,
    dist: DistInfo = SINGLE,
    stop: StopSignals | None = None,
    choices: dict[str, str] | None = None,
    run: RunSettings | None = None,
) -> Trainer:
    """The Trainer of ``built`` with its settings and callbacks, as ``cfg`` says (its settings
    ``run``, read by ``run_settings(cfg)`` unless given)."""
    run = run or run_settings(cfg)
    settings = run.train
    run_dir = Path(run_dir)
    callbacks: list = [TensorBoardLog(run_dir, cfg, dict(choices or {}))]
    if built.thread_tuner is not None:
        callbacks.append(ThreadTuning(built.thread_tuner))
    if settings.ema is not None:
        callbacks.append(EMA(built.model, settings.ema))  # before the saves below: they save its update
    if settings.save_every_n_steps or settings.save_every_n_minutes:
        callbacks.append(MidEpochSave(settings.save_every_n_steps, settings.save_every_n_minutes))
    callbacks.append(ExportBest(run_dir, run.export))
    config = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(config, dict)
    return Trainer(built, settings, run_dir, config, dist, stop, callbacks, choices)


def trainer_for_step(
    runtime: Runtime,
    model_input: ModelInput,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    grad_clip: float | None,
) -> Trainer:
    """A Trainer with only what ``Trainer.train_step`` uses (no data, a constant schedule, no
    callbacks): benchmarks time the real step on synthetic uint8 batches with it."""

    built = RunObjects(
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
    settings = TrainSettings(epochs=1, batch_size=1, image_size=256, grad_clip=grad_clip)
    return Trainer(built, settings, Path("."), config={})
