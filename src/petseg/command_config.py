"""The command line of the key=value commands (evaluate, inference, demo, curves, sweep_summary and the
data command of oxford_pet.py): configs/<name>.yaml, its ``--help``, overrides checked against its keys,
and the typed reading of path, list and flag values."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from petseg.config_keys import dotted_keys, override_key, unknown_key_message
from petseg.errors import PetsegError
from petseg.paths import CONFIG_DIR


def command_help(name: str) -> str:
    """``--help`` of a key=value command: the usage lines at the top of configs/<name>.yaml, then each
    key with its default and the comment beside it (the YAML is the one place both are written)."""
    usage: list[str] = []
    keys: list[str] = []
    pending: list[str] = []  # comment lines between keys describe the key below them
    for line in (CONFIG_DIR / f"{name}.yaml").read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            (pending if keys else usage).append(line.lstrip("# ").rstrip())
        elif line and not line.startswith(" "):
            setting, _, comment = line.partition("#")
            key, _, default = setting.partition(":")
            keys.append(f"  {key.strip() + '=' + (default.strip() or 'null'):<24} {comment.strip()}".rstrip())
            keys.extend(f"  {'':<24} {text}" for text in pending)
            pending = []
    return "\n".join([*usage, "", "keys (key=value; ??? = required):", *keys])


def load_cli_config(name: str, argv: list[str]) -> DictConfig:
    """configs/<name>.yaml overridden by `key=value` arguments; unknown keys are an error.

    Sub-trees left empty in the YAML (such as `data: {}`) take any key: they are overrides that the
    command checks against the checkpoint's own config.
    """
    if any(arg in ("-h", "--help") for arg in argv):
        print(command_help(name))
        raise SystemExit(0)
    base = OmegaConf.load(CONFIG_DIR / f"{name}.yaml")
    OmegaConf.set_struct(base, True)
    for key, value in OmegaConf.to_container(base, resolve=False).items():
        if value == {}:
            OmegaConf.set_struct(base[key], False)
    bad = [arg for arg in argv if "=" not in arg or arg.startswith("=")]
    if bad:
        raise PetsegError(f"arguments must look like key=value, got: {' '.join(bad)}")
    tree = OmegaConf.to_container(base, resolve=False)
    known = dotted_keys(tree)
    open_trees = {key for key, value in tree.items() if value == {}}  # data: {} takes data.<any>
    for arg in argv:
        key = override_key(arg)[1]
        if key not in known and key.split(".", 1)[0] not in open_trees:
            raise PetsegError(unknown_key_message(key, arg, known))
    try:
        cfg = OmegaConf.merge(base, OmegaConf.from_dotlist(argv))
    except OmegaConfBaseException as err:
        valid = ", ".join(str(k) for k in base)
        raise PetsegError(f"{str(err).splitlines()[0]} (valid keys: {valid})") from None
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise PetsegError(f"missing required argument(s): {', '.join(f'{k}=...' for k in missing)}")
    return cfg


def _path(item: object, key: str, quoted: str) -> Path:
    if item is None or item == "":
        raise PetsegError(f"{key}: an empty value is not a path")
    if not isinstance(item, str):
        kind = type(item).__name__.removesuffix("Config").lower()  # ListConfig -> list
        what = {"bool": "true/false", "int": "a number", "float": "a number", "dict": "a mapping"}
        raise PetsegError(
            f"{key}: YAML read this value as {what.get(kind, 'a ' + kind)} ({item!r}), not a path; "
            f"quote it: {quoted}"
        )
    return Path(item)


def as_paths(value: object, key: str) -> list[Path]:
    """``key``'s value as one or more paths: a list (``key=[a,b]``, read as YAML) or one path without
    brackets. An item YAML reads as other than text (``10:00`` is a number, ``on`` a bool, ``a: b`` a
    mapping) is refused, not used as another path; in quotes it stays text."""
    if not isinstance(value, ListConfig | list):
        return [_path(value, key, f"{key}=\"'...'\"")]
    if not value:
        raise PetsegError(f"{key}=[] names no path")
    return [_path(item, key, f"{key}=\"['...']\"") for item in value]


def as_path(value: object, key: str) -> Path:
    """One path: null, an empty value or a list is refused, as as_paths refuses an item."""
    return _path(value, key, f"{key}=\"'...'\"")


def as_optional_path(value: object, key: str) -> Path | None:
    """A path key whose null means the command's default."""
    return None if value is None else as_path(value, key)


def as_flag(value: object, key: str) -> bool:
    """A true/false key; anything else (``verify=maybe``, ``verify=1``) is refused, not taken as true."""
    if not isinstance(value, bool):
        raise PetsegError(f"{key} must be true or false, got {value}")
    return value
