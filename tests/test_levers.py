"""The speed levers of the training loop, each a config key: the weights' EMA (trainer.ema), gradient
accumulation (trainer.accumulate), progressive resizing (trainer.size_schedule) and the linear
schedule (sched=linear); and a run using all of them resumed mid-epoch ends bit-identical."""

from __future__ import annotations

import copy
import dataclasses
import signal
from pathlib import Path

import pytest
import torch

from conftest import compose_train, params
from petseg.build import build, build_trainer
from petseg.callbacks import Callback
from petseg.checkpoint import load_checkpoint, model_from_checkpoint
from petseg.ema import EMA
from petseg.errors import PetsegError
from petseg.evaluation import evaluate
from petseg.optim import linear_factor
from petseg.resume import config_for_resume
from petseg.run import fit
from petseg.settings import TrainSettings
from petseg.signals import TrainingInterrupted
from test_resume import assert_identical

pytestmark = pytest.mark.usefixtures("torch_settings_restored")


# ----------------------------------------------------------------------------------------- EMA
def test_ema_follows_the_weights_with_a_ramped_decay() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ema = EMA(model, decay=0.9)
    start = params(ema.module).clone()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    model[1].num_batches_tracked += 5
    ema.update()  # decay min(0.9, 1/10) = 0.1: 90 % of the way to the new weights
    assert torch.allclose(params(ema.module), start + 0.9, atol=1e-6)
    assert int(ema.module[1].num_batches_tracked) == 5  # integer buffers are copied
    for _ in range(200):
        ema.update()
    assert ema.current_decay() == 0.9
    assert torch.allclose(params(ema.module), params(model), atol=1e-6)
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_the_no_ema_score_and_overlays_come_on_report_epochs_only() -> None:
    # first, every 5th and last of 12 epochs; overlays off (every_n_epochs 0) means no report epochs
    settings = TrainSettings(epochs=12, batch_size=2, image_size=64, overlay_every=5, overlay_count=4)
    assert [e + 1 for e in range(12) if settings.is_report_epoch(e)] == [1, 5, 10, 12]
    assert [settings.overlays_at(e) for e in (0, 1, 4, 11)] == [4, 0, 4, 4]
    assert not any(TrainSettings(epochs=3, batch_size=2, image_size=64).is_report_epoch(e) for e in range(3))


def test_trainer_ema_key_is_checked() -> None:
    from petseg.value_checks import check_decay

    assert check_decay(None) is None and check_decay(0.999) == 0.999
    for bad in (1, 0, 1.5, "yes", True):
        with pytest.raises(PetsegError, match="trainer.ema"):
            check_decay(bad)


def test_with_ema_validation_best_pth_and_evaluation_use_the_averaged_weights(tmp_path: Path) -> None:
    cfg = compose_train(tmp_path, "model.base_width=4", "trainer.epochs=1", "trainer.ema=0.9")
    run_dir = tmp_path / "run"
    fit(cfg, run_dir)
    best, last = load_checkpoint(run_dir / "best.pth"), load_checkpoint(run_dir / "last.pth")
    assert "train_weights" not in best and "optimizer" not in best  # what evaluation needs
    assert torch.equal(best["model"]["head.weight"], last["model"]["head.weight"])  # epoch 1 is both
    assert not torch.equal(  # last.pth keeps the trained weights too, for resume
        torch.cat([v.flatten().float() for v in last["model"].values()]),
        torch.cat([v.flatten().float() for v in last["train_weights"].values()]),
    )
    # evaluate.py loads "model": its validation Dice is the one training logged.
    built = build(cfg)
    metrics = evaluate(
        model_from_checkpoint(best).to(built.runtime.device),
        built.val_loader,
        built.model_input,
        threshold=0.5,
        progress=False,
    )
    assert metrics["dice"] == pytest.approx(best["history"][-1]["val/dice"], abs=1e-6)
    # ... and the trained weights are scored beside them, so what the EMA gains shows in every epoch.
    raw = evaluate(
        model_from_checkpoint({**best, "model": last["train_weights"]}).to(built.runtime.device),
        built.val_loader,
        built.model_input,
        progress=False,
    )
    assert raw["dice"] == pytest.approx(best["history"][-1]["val/dice_raw"], abs=1e-6)


# -------------------------------------------------------------------------------- accumulation
def test_accumulated_micro_batches_step_once_with_their_mean_gradient(tmp_path: Path) -> None:
    # fp32: under bf16 autocast (auto on AVX512-BF16 / AMX CPUs) two half-batches round differently
    # from one whole batch, and the comparison below is to 1e-5.
    cfg = compose_train(
        tmp_path,
        *("model.base_width=4", "trainer.accumulate=2", "trainer.grad_clip=null", "sched=none"),
        *("trainer.amp=off", "trainer.channels_last=false"),
    )
    built = build(cfg)
    sgd = torch.optim.SGD(built.model.parameters(), lr=1.0)
    built = dataclasses.replace(
        built, optimizer=sgd, scheduler=torch.optim.lr_scheduler.LambdaLR(sgd, lambda _: 1.0)
    )
    trainer = build_trainer(cfg, built, tmp_path / "run")
    assert trainer.steps_per_epoch == len(built.train_loader) // 2
    built.train_loader.sampler.set_epoch(0)
    batches = list(trainer._step_batches(built.train_loader))[0]
    assert len(batches) == 2

    twin = copy.deepcopy(built.model).train()
    for batch in batches:  # what accumulation must equal: the mean of the micro-batches' gradients
        images, masks = built.model_input(batch)
        (built.loss_fn(twin(images).float(), masks) / 2).backward()
    expected = params(twin) - torch.cat([p.grad.flatten() for p in twin.parameters()])

    loss_sum, _dice_sum, n = trainer.train_step(batches).tolist()
    assert n == 2 * cfg.data.batch_size
    assert torch.allclose(params(built.model), expected, atol=1e-5)


def test_accumulation_that_leaves_no_step_is_one_line(tmp_path: Path) -> None:
    cfg = compose_train(tmp_path, "model.base_width=4", "trainer.accumulate=100")
    with pytest.raises(PetsegError, match="fewer than one step of 2 x trainer.accumulate=100"):
        build(cfg)


# --------------------------------------------------------------------------- progressive resizing
def test_size_schedule_phases() -> None:
    settings = TrainSettings(epochs=6, batch_size=2, image_size=128, size_schedule=((64, 2), (96, 3)))
    assert [settings.size_at(e) for e in range(6)] == [64, 64, 96, 96, 96, 128]
    assert settings.train_sizes() == [64, 96, 128]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("[[48,1]]", "multiple of 32"),
        ("[[128,1]]", "multiple of 32 between 32 and data.image_size=64"),
        ("[[32,2]]", "leave at least one epoch at the final size"),
        ("[[32,0]]", "at least one epoch"),
        ("[32,1]", "is not a \\[size, epochs\\] pair"),
        ("32", "must be null or a list"),
    ],
)
def test_bad_size_schedules_are_one_line(tmp_path: Path, value: str, message: str) -> None:
    cfg = compose_train(tmp_path, "data.image_size=64", f"trainer.size_schedule={value}")
    with pytest.raises(PetsegError, match=message):
        build(cfg)


def test_each_phase_trains_at_its_size_and_validates_at_the_final_one(tmp_path: Path) -> None:
    cfg = compose_train(
        tmp_path, "model.base_width=4", "data.image_size=64", "trainer.size_schedule=[[32,1]]"
    )
    built = build(cfg)
    seen: list[tuple[int, tuple[int, ...]]] = []

    class Shapes(Callback):
        def after_step(self, trainer, seconds: float) -> None:  # noqa: ANN001
            seen.append((trainer.progress.epoch, trainer.current_size))

    trainer = build_trainer(cfg, built, tmp_path / "run")
    trainer.callbacks.append(Shapes())
    original = trainer.train_step
    shapes: list[tuple[int, ...]] = []
    trainer.train_step = lambda b: shapes.append(tuple(b[0]["image"].shape)) or original(b)  # type: ignore[method-assign]
    trainer.fit()
    assert {s for _, s in seen if _ == 0} == {32} and {s for e, s in seen if e == 1} == {64}
    assert shapes[0][-2:] == (32, 32) and shapes[-1][-2:] == (64, 64)
    assert built.train_loader_at(32).dataset.names == built.train_set.names  # same images, another size
    history = trainer.progress.history
    assert len(history) == 2 and all(0 <= h["val/dice"] <= 1 for h in history)


# --------------------------------------------------------------------------------------- schedule
def test_linear_schedule_warms_up_then_falls_to_its_floor_at_the_last_step() -> None:
    total, warmup = 100, 10
    factors = [linear_factor(s, total, warmup, 0.0) for s in range(total)]
    assert factors[0] == pytest.approx(0.1) and factors[warmup - 1] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[warmup:], factors[warmup + 1 :], strict=False))
    assert factors[-1] == pytest.approx(0.0)
    assert linear_factor(total - 1, total, warmup, 0.1) == pytest.approx(0.1)


# ------------------------------------------------------------------------------- exact resume
class StopAfter(Callback):
    """Ask the run to stop (as SIGTERM would) after ``step`` optimiser steps."""

    def __init__(self, step: int) -> None:
        self.step = step

    def after_step(self, trainer, seconds: float) -> None:  # noqa: ANN001
        if trainer.progress.global_step == self.step:
            trainer.stop.signum = signal.SIGTERM


def test_a_run_with_every_lever_resumed_mid_epoch_ends_bit_identical(tmp_path: Path) -> None:
    overrides = (
        "model.base_width=4",
        "trainer.deterministic=true",
        "trainer.epochs=3",
        "data.image_size=64",
        "trainer.size_schedule=[[32,1]]",
        "trainer.accumulate=2",
        "trainer.ema=0.9",
        "sched=linear",
    )
    cfg = compose_train(tmp_path, *overrides)
    fit(cfg, tmp_path / "reference")

    run_dir = tmp_path / "stopped"
    built = build(cfg)
    trainer = build_trainer(cfg, built, run_dir)
    steps = trainer.steps_per_epoch
    trainer.callbacks.append(StopAfter(steps + 1))  # in the second epoch, the first at 64 px
    run_dir.mkdir()
    with pytest.raises(TrainingInterrupted):
        trainer.fit()
    stopped_at = load_checkpoint(run_dir / "last.pth")["progress"]
    assert stopped_at["epoch"] == 1 and 0 < stopped_at["step"] < steps  # mid-epoch, in the 64 px phase

    resumed = compose_train(tmp_path, *overrides, f"trainer.resume={run_dir}")
    fit(config_for_resume(resumed, [f"trainer.resume={run_dir}"]), run_dir)
    ref, res = load_checkpoint(tmp_path / "reference" / "last.pth"), load_checkpoint(run_dir / "last.pth")
    assert ref["epoch"] == res["epoch"] == 3
    for key in set(ref) | set(res):
        if key != "config":
            assert_identical(ref[key], res[key], key)
    assert ref["callbacks"]["EMA"]["updates"] == 3 * steps
