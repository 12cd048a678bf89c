"""DataLoaders with a reproducible order and augmentation: seeded workers and resumable epoch samplers.
Items cross from the workers as the dataset makes them, uint8 (petseg.model_input normalises them)."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from petseg.data_settings import DataSettings, as_data_settings
from petseg.sampler import EpochSampler, ShardSampler


def worker_init_fn(worker_id: int) -> None:
    """Seed numpy, random and the dataset's augmentation stream differently in each worker.

    torch gives each worker ``base_seed + worker_id`` where base_seed comes from the loader's generator,
    so this is reproducible for a fixed seed and differs between epochs. Without it, forked workers
    would all start from copies of the same albumentations state and augment identically.
    """
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    info = torch.utils.data.get_worker_info()
    dataset = _pet_dataset(info.dataset) if info is not None else None
    if dataset is not None:
        dataset.reseed(seed)
    # Not cv2.setNumThreads(1) here, although it saved ~10% of a worker's CPU in benchmarks/loader.py:
    # in a forked worker whose parent already used OpenCV's thread pool it can deadlock (seen in the
    # test suite under gdb).


def _pet_dataset(dataset: Any) -> Any:
    """The dataset with a ``reseed`` method inside Subset and friends, or None."""
    while dataset is not None and not hasattr(dataset, "reseed") and hasattr(dataset, "dataset"):
        dataset = dataset.dataset
    return dataset if hasattr(dataset, "reseed") else None


def build_dataloader(
    dataset: Dataset,
    data: DataSettings | Any,
    train: bool,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader:
    """DataLoader with a reproducible order and augmentation for a given seed.

    Train: a sampler.EpochSampler (shuffled per epoch from (seed, epoch), resumable mid-epoch through
    ``loader.sampler.set_epoch(epoch, start=...)``, and one augmentation seed per sample), last incomplete
    batch dropped (a batch of 1 breaks BatchNorm; a split smaller than one batch gives no batch, which
    the trainer reports). Valid/test: list order, every sample, no augmentation.

    Under DDP (``world_size`` > 1) each rank loads its shard: train, every world_size-th position of
    the same per-epoch permutation (equal lengths, so ranks step in lockstep); valid/test, every
    world_size-th image without padding, so summed metrics count each image exactly once.

    ``data``: data.batch_size and data.num_workers (a data config is read by data_settings first).
    """
    data = as_data_settings(data)
    batch_size, num_workers = data.batch_size, data.num_workers
    # Seeds the workers' base seed (numpy/random in worker_init_fn) reproducibly.
    generator = torch.Generator()
    generator.manual_seed(seed)
    if num_workers == 0 and hasattr(dataset, "reseed"):
        dataset.reseed(seed)  # in-process loading of plain indices: no worker_init_fn runs
    if train:
        sampler: Any = EpochSampler(len(dataset), seed=seed, shuffle=True, rank=rank, world_size=world_size)
    else:
        sampler = ShardSampler(len(dataset), rank, world_size) if world_size > 1 else None
    common: dict[str, Any] = dict(
        batch_size=batch_size,
        sampler=sampler,
        drop_last=train,
        num_workers=num_workers,
        generator=generator,
        persistent_workers=num_workers > 0,
    )
    # Pinned (CUDA): the uint8 batches are copied to the device asynchronously (ModelInput).
    pin = torch.cuda.is_available()
    return DataLoader(
        dataset, worker_init_fn=worker_init_fn if num_workers > 0 else None, pin_memory=pin, **common
    )
