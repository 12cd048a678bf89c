"""Segmentation losses: the ``_target_`` of the `loss` config group (weights in its YAML)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice per image, averaged: the differentiable twin of the reported metric.

    eps smooths images with little foreground so their gradients do not explode.
    """
    prob = torch.sigmoid(logits.float()).flatten(1)
    target = target.float().flatten(1)
    intersection = (prob * target).sum(1)
    total = prob.sum(1) + target.sum(1)
    return (1 - (2 * intersection + eps) / (total + eps)).mean()


class SegmentationLoss(nn.Module):
    """bce_weight * BCE-with-logits + dice_weight * soft Dice loss."""

    def __init__(self, bce_weight: float, dice_weight: float) -> None:
        super().__init__()
        if bce_weight < 0 or dice_weight < 0 or bce_weight + dice_weight == 0:
            raise ValueError("loss weights must be >= 0 and not both 0")
        self.bce_weight = bce_weight
        self.dice_weight = dice_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = logits.new_zeros((), dtype=torch.float32)
        if self.bce_weight:
            bce = F.binary_cross_entropy_with_logits(logits.float(), target.float())
            loss = loss + self.bce_weight * bce
        if self.dice_weight:
            loss = loss + self.dice_weight * soft_dice_loss(logits, target)
        return loss
