"""What every command shares: its YAML defaults with key=value overrides, and clean user errors."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from errors import PetsegError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
USAGE_ERROR = 2
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
}


def config_options(group: str) -> list[str]:
    """The options of a config group: the YAML files in configs/<group>/, sorted."""
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def unknown_option_message(group: str, option: str) -> str:
    word = GROUP_WORDS.get(group, group)
    valid = ", ".join(config_options(group)) or "none"
    return f"unknown {word} '{option}' ({group}={option}); valid: {valid}"


def load_cli_config(name: str, argv: list[str]) -> DictConfig:
    """configs/<name>.yaml overridden by `key=value` arguments; unknown keys are an error.

    Sub-trees left empty in the YAML (such as `data: {}`) take any key: they are overrides that the
    command checks against the checkpoint's own config.
    """
    base = OmegaConf.load(CONFIG_DIR / f"{name}.yaml")
    OmegaConf.set_struct(base, True)
    for key, value in OmegaConf.to_container(base, resolve=False).items():
        if value == {}:
            OmegaConf.set_struct(base[key], False)
    bad = [arg for arg in argv if "=" not in arg or arg.startswith("=")]
    if bad:
        raise PetsegError(f"arguments must look like key=value, got: {' '.join(bad)}")
    try:
        cfg = OmegaConf.merge(base, OmegaConf.from_dotlist(argv))
    except OmegaConfBaseException as err:
        valid = ", ".join(str(k) for k in base)
        raise PetsegError(f"{str(err).splitlines()[0]} (valid keys: {valid})") from None
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise PetsegError(f"missing required argument(s): {', '.join(f'{k}=...' for k in missing)}")
    return cfg


def run_command(body: Callable[[], int]) -> int:
    """Run a command body: a PetsegError is one line on stderr and exit code 2, never a traceback."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return body()
    except PetsegError as err:
        print(f"error: {err}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


# Characters Hydra's override grammar takes unquoted in a value (not ',' '=' '~' '$' spaces quotes brackets).
_HYDRA_PLAIN = re.compile(r"[\w\-+./:@%]+")


def hydra_quote(value: str) -> str:
    """``value`` written so a Hydra ``key=value`` override reads it back verbatim (e.g. a path)."""
    if _HYDRA_PLAIN.fullmatch(value):
        return value
    quote = "'" if "'" not in value else '"'
    return f"{quote}{value}{quote}"


def resolve_resume(path: str | Path) -> Path:
    """The checkpoint ``trainer.resume`` means: a run dir stands for its last.pth, a file for itself."""
    path = Path(path).expanduser()
    candidate = path / "last.pth" if path.is_dir() else path
    if not candidate.is_file():
        raise PetsegError(
            f"trainer.resume={path}: no checkpoint there (give a run dir holding last.pth, or a .pth file)"
        )
    return candidate
