"""Old checkpoints keep loading: their config is brought to today's keys in one place
(``petseg.upgrade.upgrade_config``), from today's YAML, and builds the same objects."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from helpers import ROOT
from petseg.build import build_loss, build_optimizer, build_scheduler
from petseg.checkpoint import load_checkpoint
from petseg.upgrade import group_yaml, upgrade_config

# Configs as checkpoints written before optim/sched/loss named a _target_ stored them.
OLD = {
    "model": {"name": "unet", "base_width": 4},
    "optim": {"name": "adamw", "lr": 0.002, "weight_decay": 0.0, "betas": [0.9, 0.99]},
    "sched": {"name": "cosine", "warmup_fraction": 0.3, "min_lr_ratio": 0.001},  # the old onecycle
    "loss": {"name": "dice", "bce_weight": 0.0, "dice_weight": 1.0},
    "data": {"root": "somewhere", "image_size": 64},
    "trainer": {"epochs": 3},
}


def test_an_old_config_gets_todays_targets_and_keys_and_keeps_its_values() -> None:
    cfg = upgrade_config(OLD)
    assert cfg.optim._target_ == "petseg.optim.adamw" and "name" not in cfg.optim
    assert (cfg.optim.lr, cfg.optim.betas, cfg.optim.fused) == (0.002, [0.9, 0.99], "auto")
    assert cfg.sched._target_ == "petseg.optim.warmup_cosine" and cfg.sched.warmup_fraction == 0.3
    assert cfg.loss._target_ == "petseg.losses.SegmentationLoss" and cfg.loss.bce_weight == 0.0
    assert cfg.model.upsample == "transpose" and cfg.model.base_width == 4  # model YAML under the saved
    assert cfg.data.image_size == 64 and cfg.data.cache is True  # today's default for a newer key
    assert cfg.trainer.epochs == 3 and cfg.trainer.threads == "auto"
    assert cfg.monitor == "val/dice"


def test_the_upgraded_config_builds_the_objects_it_describes() -> None:
    cfg = upgrade_config(OLD)
    model = torch.nn.Conv2d(3, 1, 3)
    optimizer = build_optimizer(cfg.optim, model, torch.device("cpu"))
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.param_groups[0]["betas"] == (0.9, 0.99)
    schedule = build_scheduler(cfg.sched, optimizer, steps_per_epoch=10, epochs=1)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.002 / 3)  # step 0 of a 3-step warm-up
    del schedule
    loss = build_loss(cfg.loss)
    assert (loss.bce_weight, loss.dice_weight) == (0.0, 1.0)


def test_todays_configs_are_left_as_they_are() -> None:
    today = OmegaConf.to_container(upgrade_config(OLD), resolve=True)
    assert OmegaConf.to_container(upgrade_config(today), resolve=True) == today
    assert group_yaml("sched", "onecycle").warmup_epochs == 1  # in-group defaults are applied


@pytest.mark.parametrize("name", ["unet", "resnet34_unet"])
def test_the_shipped_checkpoints_upgrade(name: str) -> None:
    ckpt = load_checkpoint(ROOT / "saved_models" / f"{name}.pth")
    cfg = upgrade_config(ckpt["config"])
    assert cfg.model.name == name and cfg.optim._target_.startswith("petseg.optim.")
    assert cfg.data.image_size == ckpt["config"]["data"]["image_size"]
