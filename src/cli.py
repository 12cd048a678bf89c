"""What every command shares: its YAML defaults with key=value overrides, and clean user errors."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from errors import PetsegError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
USAGE_ERROR = 2


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
