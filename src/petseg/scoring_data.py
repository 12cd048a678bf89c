"""The data settings a checkpoint is scored or predicted with (evaluate.py, inference.py split=...): its
own, with the command line's ``data.*`` keys, and one rule for which root and whether a partial copy
is allowed."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from petseg.config_keys import unknown_key_message
from petseg.errors import PetsegError
from petseg.paths import CONFIG_DIR, project_path, shown_path
from petseg.upgrade import group_yaml


def merge_data_overrides(data_cfg: DictConfig, overrides: DictConfig) -> DictConfig:
    """The checkpoint's data settings with the keys given on the command line replaced."""
    for key in overrides:
        if key not in data_cfg:
            known = [f"data.{k}" for k in data_cfg]
            raise PetsegError(unknown_key_message(f"data.{key}", f"data.{key}={overrides[key]}", known))
    return OmegaConf.merge(data_cfg, overrides)


def scoring_data(train_data: DictConfig, overrides: DictConfig) -> tuple[DictConfig, str]:
    """The data settings a checkpoint is scored with, and one line saying which root and why.

    The root: ``data.root`` if given; else the data group's default (dataset/oxford-iiit-pet) when a
    copy is there; else the root the checkpoint was trained on. ``data.allow_missing`` is never the
    checkpoint's: a partial copy is refused as in train.py unless the command line allows it.
    """
    data_cfg = merge_data_overrides(train_data, overrides)
    option = str(train_data.get("name") or "oxford_pet")
    default = group_yaml("data", option if (CONFIG_DIR / "data" / f"{option}.yaml").is_file() else "folder")
    if "allow_missing" not in overrides:
        data_cfg.allow_missing = default.allow_missing
    if "root" in overrides:
        why = "data.root as given"
    elif default.root and project_path(default.root).is_dir() and any(project_path(default.root).iterdir()):
        data_cfg.root, why = default.root, "the data group's default root"
    else:
        why = f"the checkpoint's training root (no copy at {default.root}; data.root=... to choose)"
    root = project_path(data_cfg.root).resolve()  # normalised: no '..' in what is printed
    data_cfg.root = str(root)
    return data_cfg, f"{shown_path(root, Path.cwd())} ({why})"
