"""The objects of one training run, as petseg/build.py builds them from its config and the Trainer
and its callbacks receive them."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader

from petseg.datasets import SegmentationDataset
from petseg.model_input import ModelInput
from petseg.runtime import Runtime
from petseg.thread_tuner import ThreadTuner


@dataclass
class RunObjects:
    """Everything a training run needs, built from its config."""

    runtime: Runtime
    model_input: ModelInput  # uint8 batches -> the model's float inputs on its device
    model: nn.Module  # what checkpoints save and evaluation runs
    train_model: nn.Module  # the same parameters, wrapped for training (DDP, torch.compile) or itself
    train_set: SegmentationDataset  # at the final training size, data.image_size
    val_set: SegmentationDataset
    train_loader: DataLoader  # of train_set
    val_loader: DataLoader
    steps_per_epoch: int  # optimiser steps (of trainer.accumulate batches each)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loss_fn: nn.Module
    scaler: torch.amp.GradScaler
    thread_tuner: ThreadTuner | None
    # The train loaders of the smaller sizes of trainer.size_schedule, by size (same images, order and
    # augmentation seeds as train_loader; each size has its own cache entry).
    smaller_train_loaders: dict[int, DataLoader] = field(default_factory=dict)

    def train_loader_at(self, size: int) -> DataLoader:
        """The train loader of image size ``size``."""
        return self.smaller_train_loaders.get(size, self.train_loader)
