"""A resumable, seeded sampler: the data order and every augmentation follow from (seed, epoch).

It yields ``(index, augmentation_seed)`` pairs; the dataset seeds its augmentation pipeline with the
second number. So the i-th sample of epoch e is the same image with the same augmentation whatever the
number of workers, whether workers persist, and whether the run was stopped and resumed mid-epoch.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class EpochSampler(Sampler[tuple[int, int]]):
    def __init__(self, size: int, seed: int = 0, shuffle: bool = True) -> None:
        self.size = size
        self.seed = int(seed)
        self.shuffle = shuffle
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's order; ``start`` skips that many samples (resuming mid-epoch)."""
        self.epoch = epoch
        self.start = start

    def __len__(self) -> int:
        return self.size - self.start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator) if self.shuffle else torch.arange(self.size)
        seeds = torch.randint(0, 2**31 - 1, (self.size,), generator=generator)
        for position in range(self.start, self.size):
            yield int(order[position]), int(seeds[position])
