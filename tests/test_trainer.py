"""The Trainer on injected objects: ``train_step`` is one optimisation step and nothing else, and
``state_dict``/``load_state_dict`` carry a run from one Trainer to another exactly."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

from conftest import compose_train, first_batch, params
from petseg.build import build, build_trainer
from utils import binarize, dice_per_image

pytestmark = pytest.mark.usefixtures("torch_settings_restored")


def tiny_cfg(tmp: Path, *extra: str) -> DictConfig:
    return compose_train(tmp, "model.base_width=4", "data.batch_size=4", "trainer.deterministic=true", *extra)


def test_train_step_steps_once_and_returns_the_batch_sums(tmp_path: Path) -> None:
    cfg = tiny_cfg(tmp_path)
    built = build(cfg)
    trainer = build_trainer(cfg, built, tmp_path / "run")
    batch = first_batch(built)
    before, lr_before = params(built.model), built.optimizer.param_groups[0]["lr"]

    # What the step must report, computed here from a copy of the model before the step.
    twin = copy.deepcopy(built.model).train()
    with torch.no_grad(), built.runtime.autocast():  # the runtime's precision and layout, as the step
        images, masks = built.model_input(batch)
        logits = twin(images).float()
    expected_loss = float(built.loss_fn(logits, masks)) * len(logits)
    expected_dice = float(dice_per_image(binarize(logits, trainer.settings.threshold), masks > 0.5).sum())

    loss_sum, dice_sum, n = trainer.train_step(batch).tolist()
    assert n == len(batch["image"]) == 4
    assert loss_sum == pytest.approx(expected_loss, rel=1e-4)
    assert dice_sum == pytest.approx(expected_dice, abs=1e-5)
    assert not torch.equal(params(built.model), before)  # the optimiser stepped
    assert built.optimizer.param_groups[0]["lr"] != lr_before  # and the schedule (warm-up) too
    assert trainer.progress.global_step == 0  # bookkeeping is train_epoch's, not the step's
    assert not (tmp_path / "run").exists()  # no I/O


def test_train_step_clips_the_gradient(tmp_path: Path) -> None:
    """With plain SGD (lr 1) injected, a step moves the weights by exactly the clipped gradient."""
    cfg = tiny_cfg(tmp_path, "trainer.grad_clip=0.001", "sched=none")
    built = build(cfg)
    sgd = torch.optim.SGD(built.model.parameters(), lr=1.0)
    built = dataclasses.replace(
        built, optimizer=sgd, scheduler=torch.optim.lr_scheduler.LambdaLR(sgd, lambda _: 1.0)
    )
    trainer = build_trainer(cfg, built, tmp_path / "run")
    before = params(built.model)
    trainer.train_step(first_batch(built))
    moved = float((params(built.model) - before).norm())
    assert moved == pytest.approx(0.001, rel=1e-3)


def test_state_dict_carries_a_run_to_another_trainer_exactly(tmp_path: Path) -> None:
    cfg = tiny_cfg(tmp_path)
    first = build_trainer(cfg, build(cfg), tmp_path / "a")
    batch = first_batch(first.built)
    first.train_step(batch)
    first.progress.add_step(1.0, 0.5, 4)
    state = copy.deepcopy(first.state_dict())  # as if through a file: no tensors shared with `first`

    torch.manual_seed(123)  # another init: everything must come from the state
    second = build_trainer(cfg, build(tiny_cfg(tmp_path, "trainer.seed=7")), tmp_path / "b")
    second.load_state_dict(state)
    assert torch.equal(params(first.model), params(second.model))
    assert second.progress == first.progress

    first.train_step(batch)
    second.train_step(batch)  # same optimiser moments and schedule position: the same next step
    assert torch.equal(params(first.model), params(second.model))
    assert second.optimizer.param_groups[0]["lr"] == first.optimizer.param_groups[0]["lr"]
