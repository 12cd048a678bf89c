"""Where a training run stands (saved in every checkpoint), and what each finished epoch records."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Progress:
    """Where a run stands; saved in every checkpoint so a resumed run continues exactly."""

    epoch: int = 0  # epochs completed
    step: int = 0  # batches of the current epoch already trained
    global_step: int = 0
    best_metric: float = -math.inf
    best_epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    # running sums of the current, unfinished epoch (so a mid-epoch resume reports the same means)
    loss_sum: float = 0.0
    dice_sum: float = 0.0
    seen: int = 0

    def add_step(self, loss_sum: float, dice_sum: float, images: int) -> None:
        self.loss_sum, self.dice_sum, self.seen = (
            self.loss_sum + loss_sum,
            self.dice_sum + dice_sum,
            self.seen + images,
        )
        self.step, self.global_step = self.step + 1, self.global_step + 1

    def means(self) -> dict[str, float]:
        """Mean loss and Dice of the current epoch's steps so far."""
        return {"loss": self.loss_sum / max(self.seen, 1), "dice": self.dice_sum / max(self.seen, 1)}

    def where(self, steps_per_epoch: int) -> str:
        """For messages: 'before the first step', 'after epoch 2' or 'at epoch 3, step 5/9'."""
        if self.step == 0:
            return f"after epoch {self.epoch}" if self.epoch else "before the first step"
        return f"at epoch {self.epoch + 1}, step {self.step}/{steps_per_epoch}"

    def end_epoch(self, record: dict[str, float], monitor: str) -> bool:
        """Close the epoch ``record['epoch']`` with its metrics; whether ``monitor`` improved."""
        self.epoch, self.step, self.loss_sum, self.dice_sum, self.seen = int(record["epoch"]), 0, 0.0, 0.0, 0
        self.history.append(record)
        improved = record[monitor] > self.best_metric
        if improved:
            self.best_metric, self.best_epoch = record[monitor], self.epoch
        return improved


def epoch_record(epoch: int, train: dict[str, float], val: dict[str, Any], lr: float) -> dict[str, float]:
    """What one finished epoch logs and keeps in the history (``epoch`` 1-based)."""
    return {
        "epoch": epoch,
        "train/loss": train["loss"],
        "train/dice": train["dice"],
        "val/loss": val["loss"],
        "val/dice": val["dice"],
        "val/dice_pooled": val["dice_pooled"],
        "val/dice_input": val["protocols"]["dice_input"]["mean"],
        "val/pixel_error": val["pixel_error"],
        **({"val/dice_raw": val["dice_raw"]} if "dice_raw" in val else {}),  # trainer.ema: without it
        "lr": lr,
    }


def epoch_line(record: dict[str, float], epochs: int, headline: str = "dice_256") -> str:
    """The log line of one finished epoch (``val/dice`` is the ``headline`` protocol's)."""
    return (
        f"epoch {record['epoch']}/{epochs}  train loss {record['train/loss']:.4f} "
        f"dice {record['train/dice']:.4f}"
        f" | val loss {record['val/loss']:.4f} {headline} {record['val/dice']:.4f} (pooled "
        f"{record['val/dice_pooled']:.4f}, at input size {record['val/dice_input']:.4f}, pixel error "
        f"{record['val/pixel_error']:.4f}"
        + (f", without EMA {record['val/dice_raw']:.4f}" if "val/dice_raw" in record else "")
        + ")"
    )
