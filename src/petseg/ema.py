"""An exponential moving average of the weights (``trainer.ema``): a callback that follows every
optimiser step; validation, best.pth and the export use its weights.

The averaged copy smooths the last steps' noise, so a short run's weights score like a longer run's
(airbench, timm's ModelEmaV2). Its decay ramps up as ``min(decay, (1 + n) / (10 + n))`` after n updates:
with a fixed 0.999 the first thousand steps would keep mostly the random initial weights, which a
20-minute CPU run never outgrows. Float buffers (BatchNorm's running statistics) are averaged like the
parameters; integer ones (the batch counters) are copied.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from petseg.callbacks import Callback
from petseg.trainer_view import TrainerView


class EMA(Callback):
    """The averaged copy ``module`` of ``model``; ``after_step`` updates it."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self._pairs_float, self._pairs_copy = self._pairs(model)

    def _pairs(self, model: nn.Module) -> tuple[tuple[list, list], list]:
        ours, theirs = self.module.state_dict(keep_vars=True), model.state_dict(keep_vars=True)
        floats = [k for k, v in ours.items() if v.is_floating_point()]
        copies = [(ours[k], theirs[k]) for k in ours if k not in floats]
        return ([ours[k].data for k in floats], [theirs[k].data for k in floats]), copies

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        averaged, current = self._pairs_float
        torch._foreach_lerp_(averaged, current, 1.0 - self.current_decay())
        for ours, theirs in self._pairs_copy:
            ours.copy_(theirs)
        self.updates += 1

    # ------------------------------------------------------------------ callback protocol
    def after_step(self, trainer: TrainerView, seconds: float) -> None:
        self.update()

    def state_dict(self) -> dict[str, Any]:
        # The averaged weights themselves are the checkpoint's "model" (what it scores with).
        return {"updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.updates = int(state["updates"])
