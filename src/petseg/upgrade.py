"""A checkpoint's config brought to today's keys: the one place old checkpoints are upgraded.

A checkpoint stores the config it was trained with. Keys added since then are filled from today's
group YAML (a setting has one default, and it is there), so resume, evaluation and inference read
every key without a Python-side default. Configs from before the optimiser, schedule and loss groups
named a ``_target_`` (they had ``name: adamw`` and the like) get the ``_target_`` of that option.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from petseg.paths import CONFIG_DIR

# Groups merged under the saved section as they are: by the saved `name` (data: oxford_pet, folder,
# isbi2012_em, ...), else this option (the only one when the checkpoint was written).
SINGLE_OPTION = {"data": "oxford_pet", "trainer": "default"}
# Groups whose option files each build one object: matched by the saved `name` (old) or `_target_`.
TARGET_GROUPS = ("optim", "sched", "loss")


def group_yaml(group: str, option: str) -> DictConfig:
    """configs/<group>/<option>.yaml with its in-group defaults list applied (as Hydra composes it)."""
    node = OmegaConf.load(CONFIG_DIR / group / f"{option}.yaml")
    merged = OmegaConf.create({})
    for entry in node.pop("defaults", []):
        merged = OmegaConf.merge(merged, node if entry == "_self_" else group_yaml(group, str(entry)))
    return OmegaConf.merge(merged, node)


def _option_like(group: str, saved: Mapping[str, Any]) -> DictConfig:
    """Today's YAML of the option ``saved`` was made from: by its old ``name``, else its ``_target_``."""
    options = sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))
    name = saved.get("name")
    if name is not None and "_target_" not in saved:
        return group_yaml(group, str(name)) if name in options else OmegaConf.create({})
    for option in options:
        candidate = group_yaml(group, option)
        if candidate.get("_target_") == saved.get("_target_"):
            return candidate
    return OmegaConf.create({})


def upgrade_config(saved: Mapping[str, Any]) -> DictConfig:
    """``saved`` (a checkpoint's config) with every key today's YAML defines and the saved one lacks."""
    cfg = OmegaConf.create(dict(saved))
    for group, option in SINGLE_OPTION.items():
        saved_group = cfg.get(group) or {}
        named = saved_group.get("name") if group == "data" else None
        if named is not None and (CONFIG_DIR / group / f"{named}.yaml").is_file():
            option = str(named)
        cfg[group] = OmegaConf.merge(group_yaml(group, option), saved_group)
    model_yaml = CONFIG_DIR / "model" / f"{cfg.model.get('name')}.yaml" if "model" in cfg else None
    if model_yaml is not None and model_yaml.is_file():
        cfg.model = OmegaConf.merge(OmegaConf.load(model_yaml), cfg.model)
    for group in TARGET_GROUPS:
        node = cfg.get(group)
        if node is None:
            continue
        values = OmegaConf.to_container(node, resolve=True)
        assert isinstance(values, dict)
        cfg[group] = OmegaConf.merge(
            _option_like(group, values), {k: v for k, v in values.items() if k != "name"}
        )
    if "monitor" not in cfg:
        cfg.monitor = OmegaConf.load(CONFIG_DIR / "train.yaml").monitor
    return cfg
