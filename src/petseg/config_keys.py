"""What a user may type as a key or group option, and the one-line messages when they type another
("did you mean"): for train.py's Hydra command line and the key=value commands alike."""

from __future__ import annotations

import difflib
import re
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import CompactHydraException, MissingConfigException
from omegaconf import OmegaConf

from petseg.errors import PetsegError
from petseg.paths import CONFIG_DIR

# How messages name train.py's config groups (configs/<group>/<option>.yaml).
GROUP_WORDS = {
    "model": "model",
    "data": "dataset config",
    "aug": "augmentation",
    "optim": "optimizer",
    "sched": "schedule",
    "loss": "loss",
    "trainer": "trainer config",
    "experiment": "experiment",
    "hparams_search": "hyper-parameter search",
    "debug": "debug recipe",
}


def config_options(group: str) -> list[str]:
    """The options of a config group: the YAML files in configs/<group>/, sorted."""
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def unknown_option_message(group: str, option: str) -> str:
    word = GROUP_WORDS.get(group, group)
    valid = ", ".join(config_options(group)) or "none"
    return f"unknown {word} '{option}' ({group}={option}); valid: {valid}"


def override_key(arg: str) -> tuple[str, str]:
    """('+', 'optim.lrr') for '+optim.lrr=1e-3'; ('', 'epochs') for 'epochs=1' (also '~key')."""
    key = arg.split("=", 1)[0]
    stripped = key.lstrip("+~")
    return key[: len(key) - len(stripped)], stripped


def _is_group(key: str) -> bool:
    """A config group (model, experiment, hydra/launcher, ...), not a key inside the config."""
    return "." not in key and (key.startswith("hydra/") or (CONFIG_DIR / key).is_dir())


def known_keys(argv: list[str]) -> list[str]:
    """Every key (dotted, nested ones too) of train.py's config composed with the group choices of
    ``argv``: what a key=value override may set."""
    groups = [a for a in argv if "=" in a and not a.startswith(("+", "~")) and _is_group(override_key(a)[1])]
    GlobalHydra.instance().clear()  # a failed run may have left Hydra initialised
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose("train", overrides=groups)
    except Exception:  # noqa: BLE001  (a bad group choice: its own error comes from Hydra)
        return []
    finally:
        GlobalHydra.instance().clear()
    return dotted_keys(OmegaConf.to_container(cfg, resolve=False))


def dotted_keys(tree: Any, prefix: str = "") -> list[str]:
    """Every key of a nested dict, dotted: 'trainer', 'trainer.checkpoint', 'trainer.checkpoint.overwrite'."""
    keys: list[str] = []
    for name, value in tree.items():
        keys.append(prefix + str(name))
        if isinstance(value, dict):
            keys.extend(dotted_keys(value, f"{prefix}{name}."))
    return keys


def unknown_key_message(key: str, override: str, known: list[str]) -> str:
    """'unknown key ... did you mean ...': the same key name elsewhere (epochs -> trainer.epochs),
    then the closest spellings. Never a '+' to add it: a key the config lacks would be ignored."""
    last = key.rsplit(".", 1)[-1]
    settable = [k for k in known if not any(part.startswith("_") for part in k.split("."))]  # not _target_
    same_name = [k for k in settable if k.rsplit(".", 1)[-1] == last and k != key]
    close = difflib.get_close_matches(key, settable, n=2, cutoff=0.8)
    # A misspelt name under the wrong group or none (epoch=3 -> trainer.epochs): the closest last parts.
    names = {k.rsplit(".", 1)[-1] for k in settable}
    near = difflib.get_close_matches(last, sorted(names), n=2, cutoff=0.8)
    near_name = [k for n in near for k in settable if k.rsplit(".", 1)[-1] == n and k != key]
    suggestions = list(dict.fromkeys([*same_name, *close, *near_name]))
    hint = f"did you mean {' or '.join(suggestions[:3])}?" if suggestions else "--help lists the keys"
    return f"unknown key '{key}' ({override}); {hint}"


def check_added_keys(argv: list[str]) -> None:
    """Refuse `+key=value` / `++key=value` for a key the config does not define: Hydra would add it
    and the run would silently ignore it (a typo such as +optim.lrr=1e-3)."""
    added = [a for a in argv if "=" in a and a.startswith("+")]
    added = [
        a for a in added if not _is_group(override_key(a)[1]) and not override_key(a)[1].startswith("hydra.")
    ]
    if not added:
        return
    known = known_keys(argv)
    for arg in added:
        key = override_key(arg)[1]
        if known and key not in known:
            raise PetsegError(unknown_key_message(key, arg, known))


_NOT_IN_STRUCT = re.compile(r"Could not override '([^']+)'")


def hydra_error_message(err: CompactHydraException, argv: list[str] | None = None) -> str:
    """One line for Hydra's complaint about the command line (an unknown option, key or syntax)."""
    if isinstance(err, MissingConfigException) and err.missing_cfg_file and "/" in err.missing_cfg_file:
        group, option = err.missing_cfg_file.rsplit("/", 1)
        return unknown_option_message(group, option)
    unknown = _NOT_IN_STRUCT.match(str(err))
    if unknown and argv is not None:
        # Hydra's own text advises `+key=value`, which would add a key that nothing reads.
        key = unknown.group(1)
        override = next((a for a in argv if override_key(a)[1] == key), key)
        return unknown_key_message(key, override, known_keys(argv))
    lines = []
    for line in str(err).splitlines():
        if line.startswith(("Config search path", "See https://")):
            break  # Hydra's details for its developers
        if line.strip():
            lines.append(line.strip())
    cause = err.__cause__
    if cause is not None and str(cause).strip():
        lines.append(f"({str(cause).strip().splitlines()[0]})")
    override = getattr(err, "override", None)  # OverrideParseException: the argument it choked on
    if override:
        lines.insert(0, f"cannot parse override '{override}':")
    return " ".join(lines) or type(err).__name__
