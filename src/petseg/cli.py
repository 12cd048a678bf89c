"""What every command shares: its YAML defaults with key=value overrides, and clean user errors."""

from __future__ import annotations

import difflib
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
    tree = OmegaConf.to_container(base, resolve=False)
    known = _dotted_keys(tree)
    open_trees = {key for key, value in tree.items() if value == {}}  # data: {} takes data.<any>
    for arg in argv:
        key = _override_key(arg)[1]
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


# ------------------------------------------------------------------------------ unknown keys
def _override_key(arg: str) -> tuple[str, str]:
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
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    groups = [a for a in argv if "=" in a and not a.startswith(("+", "~")) and _is_group(_override_key(a)[1])]
    GlobalHydra.instance().clear()  # a failed run may have left Hydra initialised
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose("train", overrides=groups)
    except Exception:  # noqa: BLE001  (a bad group choice: its own error comes from Hydra)
        return []
    finally:
        GlobalHydra.instance().clear()
    return _dotted_keys(OmegaConf.to_container(cfg, resolve=False))


def _dotted_keys(tree: Any, prefix: str = "") -> list[str]:
    """Every key of a nested dict, dotted: 'trainer', 'trainer.checkpoint', 'trainer.checkpoint.overwrite'."""
    keys: list[str] = []
    for name, value in tree.items():
        keys.append(prefix + str(name))
        if isinstance(value, dict):
            keys.extend(_dotted_keys(value, f"{prefix}{name}."))
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
        a
        for a in added
        if not _is_group(_override_key(a)[1]) and not _override_key(a)[1].startswith("hydra.")
    ]
    if not added:
        return
    known = known_keys(argv)
    for arg in added:
        key = _override_key(arg)[1]
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
        override = next((a for a in argv if _override_key(a)[1] == key), key)
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
        check_added_keys(argv)
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
        print(f"error: {hydra_error_message(err, argv)}", file=sys.stderr)
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
