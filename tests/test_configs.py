"""Every option of every config group, and every experiment recipe, composes, passes the config
checks and builds a run that takes a training step (on the committed sample, via debug=tiny)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import compose_train
from helpers import DATA_DIR
from petseg.build import build, build_trainer
from petseg.checks import check_train_config
from petseg.config_keys import config_options
from petseg.paths import CONFIG_DIR

GROUPS = ("model", "data", "aug", "optim", "sched", "loss", "trainer", "experiment", "debug")
OPTIONS = [(group, option) for group in GROUPS for option in config_options(group)]
# Options for data other than the pets run on the committed EM slices (6 of them, 128 px).
EM = (
    f"data.root={DATA_DIR / 'isbi2012-em-sample'}",
    "data.split.ranges={train: [0, 4], valid: [4, 5], test: [5, 6]}",
)
OTHER_DATA = {
    ("data", "folder"): EM[:1],
    ("data", "isbi2012_em"): (*EM, "data.crop=32"),
    ("experiment", "isbi_unet"): (*EM, "data.crop=32", "model.base_width=4"),
}


def test_every_group_has_options() -> None:
    assert all(config_options(group) for group in GROUPS)
    assert {p.name for p in CONFIG_DIR.iterdir() if p.is_dir()} == {*GROUPS, "hparams_search", "hydra"}


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_option_composes_checks_and_builds(group: str, option: str, tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    try:
        cfg = compose_train(tmp_path, f"{group}={option}", *OTHER_DATA.get((group, option), ()))
        if group == "model":
            assert cfg.model.name == option
        check_train_config(cfg)
        built = build(cfg)
        trainer = build_trainer(cfg, built, tmp_path / "run")
        built.train_loader.sampler.set_epoch(0)
        loss_sum, _dice_sum, n = trainer.train_step(next(iter(built.train_loader))).tolist()
        assert n == cfg.data.batch_size and torch.isfinite(torch.tensor(loss_sum))
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(False)


def test_the_optuna_search_composes(tmp_path: Path) -> None:
    cfg = compose_train(tmp_path, "hparams_search=optuna")
    check_train_config(cfg)
