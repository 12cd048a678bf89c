"""Training entrypoint: `python src/train.py model=resnet34_unet optim.lr=3e-4`.

Composes configs/train.yaml with its groups, validates the result, trains, and returns the best
validation Dice so Hydra sweepers (e.g. Optuna) can optimise it.

    python src/train.py trainer.resume=<run dir or its .pth> [trainer.epochs=N]

continues a stopped run in that run's dir and TensorBoard log (train.log is appended to; the Hydra
files of the resumed invocation go to <run dir>/.hydra/resume-<n>/). The checkpoint's config is used;
an override that conflicts with it is an error, except trainer.epochs and settings that do not change
the computation (see ``trainer.config_for_resume``). Giving ``hydra.run.dir=<other dir>`` as well
branches the run into that dir instead.

Several processes: ``torchrun --nproc_per_node=N src/train.py <overrides>`` trains one run with
DistributedDataParallel (src/trainer.py); rank 0 owns the run dir and its logs, the other ranks write
nothing (their Hydra output is switched off on the command line, before Hydra starts).

In a multirun, a job whose loss diverges (NaN/inf) is logged and returns the best val Dice it reached
before (0 if none), so the sweep goes on and Optuna learns that region is bad; any other user mistake
still stops the sweep.

Exit codes: 0 done; 2 a user mistake (config, files, data, a diverging loss), one line on stderr, no
traceback; 128 + signal number after SIGINT/SIGTERM (130, 143), with last.pth saved and the resume
command printed; 1 an internal error (with its traceback).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException, MissingConfigException
from hydra.types import RunMode
from omegaconf import DictConfig

from cli import CONFIG_DIR, USAGE_ERROR, hydra_quote, resolve_resume, unknown_option_message
from errors import PetsegError, TrainingDiverged

log = logging.getLogger("petseg.train")

# Launchers that run jobs in fresh processes (submitit locally or on SLURM) unpickle this module's
# task function there: they need src/ importable, as it is for `python src/train.py`.
_SRC = str(Path(__file__).resolve().parent)
if _SRC not in os.environ.get("PYTHONPATH", "").split(os.pathsep):
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_SRC, os.environ.get("PYTHONPATH")) if p)


# An absolute config_path: Hydra reads a relative one as a package path when this module is imported
# (as by tests calling cli()) rather than run as a script.
@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def main(cfg: DictConfig) -> float:
    # torch and the rest load here, after Hydra read the command line: a mistake in it is reported
    # in a second, and a Ctrl-C during these imports is caught by cli().
    from trainer import TrainingInterrupted, config_for_resume, fit
    from validation import validate_choices, validate_train_config

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        validate_choices(hydra_cfg.runtime.choices)
        if cfg.trainer.resume:
            cfg = config_for_resume(cfg, list(hydra_cfg.overrides.task))
        validate_train_config(cfg)
        return fit(cfg, run_dir)
    except TrainingDiverged as err:
        if hydra_cfg.mode != RunMode.MULTIRUN:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(USAGE_ERROR)
        # What the sweeper optimises: the best val Dice reached before diverging, 0 (the worst Dice)
        # if no epoch finished. Not NaN: the Optuna sweeper cannot record a NaN trial and would stop.
        score = max(err.best_metric, 0.0)
        log.error("job %s diverged, the sweep goes on (its score: %.4f): %s", hydra_cfg.job.num, score, err)
        return score
    except TrainingInterrupted as stop:
        log.warning("%s", stop)
        sys.exit(stop.exit_code)
    except PetsegError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(USAGE_ERROR)


# ----------------------------------------------------------------------------------- command line
def _override(arg: str) -> tuple[str, str] | None:
    """(key, value) of a `key=value` / `+key=value` / `++key=value` argument, value unquoted."""
    key, sep, value = arg.partition("=")
    if not sep or key.startswith("-"):
        return None
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        value = value[1:-1]
    return key.lstrip("+"), value


def continue_in_resumed_run(argv: list[str]) -> list[str]:
    """With ``trainer.resume=X`` and no ``hydra.run.dir``, make Hydra use X's run dir, not a fresh one.

    Done on the command line, before Hydra starts, so Hydra's own logging (train.log) and outputs go
    to the resumed run from the first line; its files for this invocation go to .hydra/resume-<n>/
    so that the run's original .hydra/ record stays as it was.
    """
    given = dict(pair for pair in map(_override, argv) if pair is not None)  # the last value wins
    resume = given.get("trainer.resume")
    if resume in (None, "", "null", "None") or "hydra.run.dir" in given:
        return argv
    if "-m" in argv or "--multirun" in argv:
        raise PetsegError("trainer.resume continues one run; it cannot be used in a multirun (-m, sweeps)")
    run_dir = resolve_resume(resume).resolve().parent
    previous = len(list((run_dir / ".hydra").glob("resume-*")))
    return [
        *argv,
        f"hydra.run.dir={hydra_quote(str(run_dir))}",
        f"hydra.output_subdir={hydra_quote(f'.hydra/resume-{previous + 1}')}",
    ]


def quiet_other_ranks(argv: list[str]) -> list[str]:
    """Under torchrun, Hydra runs in every process: only rank 0 may create the run dir, its .hydra/
    record and train.log. The others get a run dir of '.' (exists: nothing is created) and no Hydra
    output or log file; the trainer hands them rank 0's run dir. Sweeps and torchrun do not mix."""
    if not (os.environ.get("WORLD_SIZE") or os.environ.get("SLURM_NTASKS")):
        return argv  # no launcher: skip importing torch (via distributed.py) before Hydra parses
    from distributed import launched_info

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


def cli(argv: list[str] | None = None) -> int:
    """`python src/train.py [overrides]`: Hydra's main, with every user mistake one line and code 2.

    Hydra prints its own errors (an unknown group option or key, bad override syntax) over several
    lines with exit code 1, the code of internal failures too; with HYDRA_FULL_ERROR set it raises
    them instead, and its composition errors (CompactHydraException) are told apart here. Internal
    errors keep their traceback and exit code 1.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    saved_argv, saved_full_error = sys.argv, os.environ.get("HYDRA_FULL_ERROR")
    try:
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


if __name__ == "__main__":
    sys.exit(cli())
