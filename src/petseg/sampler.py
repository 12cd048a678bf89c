"""Seeded, resumable, shardable samplers: data order and augmentation follow from (seed, epoch).

``EpochSampler`` (training) yields ``(index, augmentation_seed)`` pairs; the dataset seeds its
augmentation pipeline with the second number. So the i-th sample of epoch e is the same image with the
same augmentation whatever the number of workers, whether workers persist, and whether the run was
stopped and resumed mid-epoch. Under DDP every rank draws the same permutation and takes every
world_size-th position of it, so the ranks' shards are disjoint and together cover the epoch.

``ShardSampler`` (evaluation) splits a split in list order without padding (DistributedSampler
would repeat images to even out the shards, and so count them twice in the Dice).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class EpochSampler(Sampler[tuple[int, int]]):
    def __init__(
        self, size: int, seed: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world of size {world_size}")
        self.size = size
        self.seed = int(seed)
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's order; ``start`` skips that many of this rank's samples (mid-epoch resume)."""
        self.epoch = epoch
        self.start = start

    @property
    def per_rank(self) -> int:
        # Equal shard lengths keep the ranks' step counts (and DDP's collective calls) in lockstep.
        return self.size // self.world_size if self.world_size > 1 else self.size

    def __len__(self) -> int:
        return max(self.per_rank - self.start, 0)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator) if self.shuffle else torch.arange(self.size)
        seeds = torch.randint(0, 2**31 - 1, (self.size,), generator=generator)
        positions = range(self.rank, self.per_rank * self.world_size, self.world_size)
        for position in list(positions)[self.start :]:
            yield int(order[position]), int(seeds[position])


class ShardSampler(Sampler[int]):
    """Every world_size-th index starting at rank, in order; shards may differ in length by one."""

    def __init__(self, size: int, rank: int = 0, world_size: int = 1) -> None:
        self.size, self.rank, self.world_size = size, rank, world_size

    def __len__(self) -> int:
        return len(range(self.rank, self.size, self.world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.size, self.world_size))
