"""DataLoaders with a reproducible order and augmentation: seeded workers, resumable epoch samplers,
and compact (uint8) items from the workers expanded to the model's float batches in this process."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from oxford_pet import OxfordPetDataset
from petseg.errors import PetsegError


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


def compact_worker_init_fn(worker_id: int) -> None:
    """worker_init_fn, then switch this worker's copy of the dataset to compact (uint8) items."""
    worker_init_fn(worker_id)
    info = torch.utils.data.get_worker_info()
    dataset = _pet_dataset(info.dataset) if info is not None else None
    if isinstance(dataset, OxfordPetDataset):
        dataset._compact_items = True


def _pet_dataset(dataset: Any) -> Any:
    """The dataset with a ``reseed`` method inside Subset and friends, or None."""
    while dataset is not None and not hasattr(dataset, "reseed") and hasattr(dataset, "dataset"):
        dataset = dataset.dataset
    return dataset if hasattr(dataset, "reseed") else None


def expand_batch(batch: dict[str, Any], lut: np.ndarray, pin_memory: bool = False) -> dict[str, Any]:
    """A collated batch of compact items -> the batch of the float items: normalised float32 image
    (N,3,S,S) through the dataset's lookup table and float32 mask (N,1,S,S), bit-identical to collating
    ``dataset[i]``; float (non-compact) tensors pass through. ``pin_memory``: the outputs are allocated
    in pinned memory (CUDA), so the trainer's non-blocking copy to the device stays asynchronous."""
    out = dict(batch)
    image = batch.get("image")
    if isinstance(image, torch.Tensor) and image.dtype == torch.uint8:
        expanded = torch.empty(image.shape, dtype=torch.float32, pin_memory=pin_memory)
        import cv2

        src, dst = image.numpy(), expanded.numpy()
        # cv2.LUT is ~2.5x faster than np.take here. At most 2**17 pixels per call: OpenCV runs a LUT of
        # 2**18 or more on its thread pool, which this (forking) main process had better not start.
        rows = max(1, (1 << 17) // max(1, src.shape[-1]))
        for n in range(src.shape[0]):
            for c in range(src.shape[1]):
                for r in range(0, src.shape[2], rows):
                    cv2.LUT(src[n, c, r : r + rows], lut[c], dst=dst[n, c, r : r + rows])
        out["image"] = expanded
    mask = batch.get("mask")
    if isinstance(mask, torch.Tensor) and mask.dtype == torch.uint8:
        expanded = torch.empty(mask.shape, dtype=torch.float32, pin_memory=pin_memory)
        # numpy, not Tensor.copy_: torch's parallel cast waits for its OpenMP threads, which the
        # training step keeps busy (16 ms instead of 0.3 ms per batch on a loaded 2-core machine).
        np.copyto(expanded.numpy(), mask.numpy(), casting="unsafe")
        out["mask"] = expanded
    if pin_memory:
        for key, value in out.items():
            if isinstance(value, torch.Tensor) and not value.is_pinned():
                out[key] = value.pin_memory()
    return out


class CompactLoader(DataLoader):
    """A DataLoader whose workers send compact items (uint8 image (3,S,S) and mask (1,S,S)): a float32
    batch of 8 at 256 px is 8.4 MB through shared memory, the uint8 one 2.1 MB. Each batch is expanded
    here, in the main process, by expand_batch, so iterating yields exactly the batches of a plain
    DataLoader over the same dataset (float32, normalised). Pinning (CUDA) is done by expand_batch on
    the expanded tensors instead of by the DataLoader's pin thread on the uint8 ones."""

    def __init__(self, dataset: Dataset, *, lut: np.ndarray, pin_expanded: bool, **kwargs: Any) -> None:
        super().__init__(dataset, **kwargs)
        self._lut = lut
        self._pin_expanded = pin_expanded

    def __iter__(self) -> Any:
        for batch in super().__iter__():
            yield expand_batch(batch, self._lut, self._pin_expanded)


def build_dataloader(
    dataset: Dataset,
    data_cfg: Any,
    train: bool,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    compact: bool = True,
) -> DataLoader:
    """DataLoader with a reproducible order and augmentation for a given seed.

    Train: a sampler.EpochSampler (shuffled per epoch from (seed, epoch), resumable mid-epoch through
    ``loader.sampler.set_epoch(epoch, start=...)``, and one augmentation seed per sample), last incomplete
    batch dropped (a batch of 1 breaks BatchNorm; a split smaller than one batch gives no batch, which
    the trainer reports). Valid/test: list order, every sample, no augmentation.

    Under DDP (``world_size`` > 1) each rank loads its shard: train, every world_size-th position of
    the same per-epoch permutation (equal lengths, so ranks step in lockstep); valid/test, every
    world_size-th image without padding, so summed metrics count each image exactly once.

    With workers and ``compact`` (the default), an OxfordPetDataset's items cross the process boundary
    as uint8 and a CompactLoader expands them to the same float batches in this process;
    ``compact=False`` ships the float items themselves (benchmarks/loader.py compares the two).
    """
    from petseg.sampler import (
        EpochSampler,
        ShardSampler,
    )  # src/petseg/sampler.py: the trainer relies on set_epoch()

    batch_size, num_workers = int(data_cfg.batch_size), int(data_cfg.num_workers)
    if batch_size < 1 or num_workers < 0:
        raise PetsegError(
            f"data.batch_size must be >= 1 and data.num_workers >= 0 (got {batch_size}, {num_workers})"
        )
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
    pin = torch.cuda.is_available()
    pet = _pet_dataset(dataset)
    if compact and num_workers > 0 and isinstance(pet, OxfordPetDataset):
        # Workers send uint8 items, expanded to the same float batches here (benchmarks/README.md).
        return CompactLoader(
            dataset,
            lut=pet._lut,
            pin_expanded=pin,
            worker_init_fn=compact_worker_init_fn,
            pin_memory=False,
            **common,
        )
    return DataLoader(
        dataset, worker_init_fn=worker_init_fn if num_workers > 0 else None, pin_memory=pin, **common
    )
