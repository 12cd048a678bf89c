"""What every command shares: its YAML defaults with key=value overrides, and clean user errors."""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.errors import CompactHydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from petseg.errors import PetsegError

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
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
    "debug": "debug recipe",
}


def config_options(group: str) -> list[str]:
    """The options of a config group: the YAML files in configs/<group>/, sorted."""
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def unknown_option_message(group: str, option: str) -> str:
    word = GROUP_WORDS.get(group, group)
    valid = ", ".join(config_options(group)) or "none"
    return f"unknown {word} '{option}' ({group}={option}); valid: {valid}"


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


def is_multirun() -> bool:
    """Whether this process runs a job of a Hydra multirun (-m, a sweep)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    except (ImportError, ValueError):
        return False


# ------------------------------------------------------------------- train.py's Hydra command line
def quiet_other_ranks(argv: list[str]) -> list[str]:
    """Under torchrun, Hydra runs in every process: only rank 0 may create the run dir, its .hydra/
    record and train.log. The others get a run dir of '.' (exists: nothing is created) and no Hydra
    output or log file; the trainer hands them rank 0's run dir. Sweeps and torchrun do not mix."""
    if not (os.environ.get("WORLD_SIZE") or os.environ.get("SLURM_NTASKS")):
        return argv  # no launcher: skip importing torch (via distributed.py) before Hydra parses
    from petseg.distributed import launched_info

    info = launched_info()
    if not info.enabled:
        return argv
    if "-m" in argv or "--multirun" in argv:
        raise PetsegError(
            "torchrun trains one run on several processes; run sweeps (-m) without torchrun, "
            "or give each sweep job its GPUs through a launcher"
        )
    if info.is_main:
        return argv
    keep = [a for a in argv if not a.lstrip("+").startswith(("hydra.run.dir=", "hydra.output_subdir="))]
    return [*keep, "hydra.run.dir=.", "hydra.output_subdir=null", "hydra/job_logging=disabled"]


def hydra_error_message(err: CompactHydraException) -> str:
    """One line for Hydra's complaint about the command line (an unknown option, key or syntax)."""
    if isinstance(err, MissingConfigException) and err.missing_cfg_file and "/" in err.missing_cfg_file:
        group, option = err.missing_cfg_file.rsplit("/", 1)
        return unknown_option_message(group, option)
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


def run_hydra_main(main: Callable[[], Any], argv: list[str] | None = None) -> int:
    """Run a ``@hydra.main`` function on ``argv`` (default: the command line), with every user mistake
    one line and code 2.

    Hydra prints its own errors (an unknown group option or key, bad override syntax) over several
    lines with exit code 1, the code of internal failures too; with HYDRA_FULL_ERROR set it raises
    them instead, and its composition errors (CompactHydraException) are told apart here. Internal
    errors keep their traceback and exit code 1.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    saved_argv, saved_full_error = sys.argv, os.environ.get("HYDRA_FULL_ERROR")
    try:
        from petseg.resume import continue_in_resumed_run

        argv = quiet_other_ranks(continue_in_resumed_run(argv))
        sys.argv = [saved_argv[0] if saved_argv else "train.py", *argv]
        os.environ["HYDRA_FULL_ERROR"] = "1"
        main()
        return 0
    except SystemExit as done:  # main's sys.exit(code), Hydra's --help
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    except PetsegError as err:
        print(f"error: {err}", file=sys.stderr)
        return USAGE_ERROR
    except CompactHydraException as err:
        print(f"error: {hydra_error_message(err)}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt as err:  # Ctrl-C before training started, or a second signal during it
        print(f"error: interrupted{f' ({err})' if str(err) else ''}", file=sys.stderr)
        return getattr(err, "exit_code", 130)
    finally:
        sys.argv = saved_argv
        if saved_full_error is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = saved_full_error
