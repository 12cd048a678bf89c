"""fp16 autocast with loss scaling (trainer.amp=fp16), the CUDA path, run on the CPU where torch allows
it (torch.amp.GradScaler("cpu")): the step scales the loss, skips a step whose gradients overflowed
and lowers the scale, and the scaler's state travels in last.pth through a resume (issue 29)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from conftest import compose_train, first_batch, params
from petseg.build import build, build_trainer

pytestmark = pytest.mark.usefixtures("torch_settings_restored")


def fp16_trainer(tmp_path: Path):  # noqa: ANN201
    cfg = compose_train(tmp_path, "model.base_width=4", "trainer.amp=fp16", "trainer.grad_clip=1.0")
    built = build(cfg)
    assert built.runtime.amp_dtype == torch.float16 and built.scaler.is_enabled()
    return build_trainer(cfg, built, tmp_path / "run"), built


def test_an_fp16_step_trains_with_a_scaled_loss(tmp_path: Path) -> None:
    trainer, built = fp16_trainer(tmp_path)
    scale = built.scaler.get_scale()
    before = params(built.model)
    loss_sum, _dice, n = trainer.train_step(first_batch(built)).tolist()
    assert n > 0 and torch.isfinite(torch.tensor(loss_sum))  # the unscaled loss is reported
    assert loss_sum / n < 10  # not the scaled one (the scale starts at 65536)
    assert not torch.equal(params(built.model), before)
    assert built.scaler.get_scale() == scale  # no overflow: the scale stays until growth_interval


def test_an_overflowing_step_is_skipped_and_the_scale_lowered(tmp_path: Path) -> None:
    """Without the scaler in the step, inf gradients would reach the optimiser and the weights."""
    trainer, built = fp16_trainer(tmp_path)
    loss_fn = built.loss_fn
    built.loss_fn = lambda logits, masks: loss_fn(logits, masks) * float("inf")  # type: ignore[assignment]
    trainer.built = built
    before, scale = params(built.model), built.scaler.get_scale()
    trainer.train_step(first_batch(built))
    assert torch.equal(params(built.model), before)  # skipped: weights untouched, still finite
    assert built.scaler.get_scale() == scale * built.scaler.get_backoff_factor()


def test_the_scaler_state_is_saved_and_resumed(tmp_path: Path) -> None:
    trainer, built = fp16_trainer(tmp_path)
    trainer.train_step(first_batch(built))
    built.scaler.update(1234.0)  # a scale no fresh scaler has
    state = copy.deepcopy(trainer.state_dict())
    assert state["scaler"]["scale"] == pytest.approx(1234.0)
    other, other_built = fp16_trainer(tmp_path / "b")
    other.load_state_dict(state)
    assert other_built.scaler.get_scale() == pytest.approx(1234.0)
