"""Everything about continuing a stopped run (``trainer.resume=<run dir or .pth>``), in one place.

- ``continue_in_resumed_run``: on the command line, before Hydra starts, point Hydra at the resumed
  run's dir, so train.log and the TensorBoard log go on where they were.
- ``config_for_resume``: the config the resumed run trains with: the checkpoint's, with only the
  settings of ``RESUME_MAY_CHANGE`` taken from the command line.
- ``check_resumable``: a checkpoint this run can continue (same model, data size, process count).
- ``resume_trainer``: load such a checkpoint into a Trainer.
- ``resume_command``: the command a stopped run prints.

What the trainer restores (weights, optimiser, schedule, scaler, progress, random states) is its
``Trainer.load_state_dict``; the data order and augmentation are a function of (seed, epoch, position)
(``sampler.EpochSampler``), so with ``trainer.deterministic=true`` a resumed run ends bit-identical to one
never stopped.
"""

from __future__ import annotations

import logging
import shlex
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from petseg.checkpoint import load_checkpoint
from petseg.errors import PetsegError
from petseg.hydra_args import hydra_quote, is_multirun
from petseg.paths import python_command
from petseg.trainer_view import TrainerView
from petseg.upgrade import upgrade_config

log = logging.getLogger("petseg.train")

# What a resumed run may change: where and how fast it runs, what it logs and exports, how long it goes
# on. Everything else (model, data, augmentation, optimiser, schedule, loss, seed, sizes) is the
# checkpoint's: a different value would silently make a different run out of the same directory.
RESUME_MAY_CHANGE = (
    "trainer.resume",
    "trainer.epochs",
    "trainer.device",
    "trainer.threads",
    "trainer.compile",
    "trainer.channels_last",
    "trainer.retain_host_memory",
    "trainer.cudnn_benchmark",
    "trainer.deterministic",
    "trainer.sync_batchnorm",
    "trainer.overlays",
    "trainer.checkpoint",
    "data.root",
    "data.num_workers",
    "data.cache_dir",
)


def resolve_resume(path: str | Path) -> Path:
    """The checkpoint ``trainer.resume`` means: a run dir stands for its last.pth, a file for itself."""
    path = Path(path).expanduser()
    candidate = path / "last.pth" if path.is_dir() else path
    if path.is_dir() and not candidate.is_file() and (path / ".hydra").is_dir():
        raise PetsegError(
            f"trainer.resume={path}: this run stopped before its first save (last.pth is written every "
            "trainer.checkpoint.every_n_minutes inside an epoch and at each epoch's end): nothing to "
            "resume, start it again"
        )
    if not candidate.is_file():
        raise PetsegError(
            f"trainer.resume={path}: no checkpoint there (give a run dir holding last.pth, or a .pth file)"
        )
    return candidate


def resume_command(run_dir: Path) -> str:
    """The shell command that continues the run in ``run_dir``, correct as written from here."""
    script = Path(__file__).resolve().parents[1] / "train.py"
    return f"{python_command(script)} {shlex.quote('trainer.resume=' + hydra_quote(str(run_dir)))}"


# ------------------------------------------------------------------------------------ command line
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


# ------------------------------------------------------------------------------------------ config
class _Absent:
    def __repr__(self) -> str:
        return "<not set>"


_ABSENT = _Absent()


def _may_change(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in RESUME_MAY_CHANGE)


def _differences(asked: Any, saved: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """Leaves (dotted key, asked, saved) where ``asked`` differs from ``saved``; keys the checkpoint
    predates are not differences (they take today's value)."""
    if saved is _ABSENT:
        return []
    if isinstance(asked, dict) and isinstance(saved, dict):
        found = []
        for key in saved:
            sub = f"{prefix}.{key}" if prefix else str(key)
            found += _differences(asked.get(key, _ABSENT), saved[key], sub)
        return found
    return [] if asked == saved else [(prefix, asked, saved)]


def _conflicts(asked: dict, saved: dict, overrides: list[str]) -> list[tuple[str, Any, Any]]:
    """Each (key, asked, saved) where an override that may not change asks for another value than the
    checkpoint's. A group override (``model=unet``) is compared as the whole group it composes,
    ``experiment=...`` as the whole config."""
    conflicts: list[tuple[str, Any, Any]] = []
    for override in overrides:
        key = override.lstrip("+~").split("=", 1)[0]
        if _may_change(key):
            continue
        parts = key.split(".")
        if parts[0] in saved:  # a key or a group of the config
            node_asked, node_saved = asked, saved
            for part in parts:
                node_asked = node_asked.get(part, _ABSENT) if isinstance(node_asked, dict) else _ABSENT
                node_saved = node_saved.get(part, _ABSENT) if isinstance(node_saved, dict) else _ABSENT
            found = _differences(node_asked, node_saved, key)
        else:  # a global group such as experiment=...: it may set anything
            found = _differences(asked, saved)
        conflicts += [c for c in found if not _may_change(c[0]) and c not in conflicts]
    return conflicts


def config_for_resume(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """The config a run resumed with ``cfg.trainer.resume`` uses: the checkpoint's own.

    ``overrides`` are the command line's (Hydra's task overrides). Those of ``RESUME_MAY_CHANGE``
    replace the checkpoint's values. Any other override must agree with the checkpoint (repeating the
    original command line is fine), else this is a PetsegError listing each conflict: silently training
    a different recipe into the same run dir would make its history and TensorBoard curves lie.
    Keys the checkpoint predates take today's YAML defaults (``upgrade.upgrade_config``). Also a
    PetsegError: a weights-only file, a run that already trained all its epochs, a multirun.
    """
    path = resolve_resume(cfg.trainer.resume)
    if is_multirun():
        raise PetsegError("trainer.resume continues one run; it cannot be used in a multirun (-m, sweeps)")
    ckpt = load_checkpoint(path, mmap=True)  # only the config and progress are read here
    if "optimizer" not in ckpt or "progress" not in ckpt:
        raise PetsegError(f"{path} holds weights only (an exported model); resume from a run's last.pth")
    saved = OmegaConf.to_container(upgrade_config(ckpt["config"]), resolve=True)
    assert isinstance(saved, dict)
    conflicts = _conflicts(OmegaConf.to_container(cfg, resolve=True), saved, overrides)
    if conflicts:
        shown = ", ".join(f"{k}={a!r} (checkpoint: {s!r})" for k, a, s in conflicts[:6])
        more = f" and {len(conflicts) - 6} more" if len(conflicts) > 6 else ""
        raise PetsegError(
            f"trainer.resume={cfg.trainer.resume} keeps the checkpoint's config, but this command asks for "
            f"{shown}{more}; drop those overrides (a resumed run may only change "
            f"{', '.join(RESUME_MAY_CHANGE[1:])}) or start a new run"
        )
    changed = {
        key: OmegaConf.select(cfg, key)
        for key in (o.lstrip("+~").split("=", 1)[0] for o in overrides)
        if _may_change(key)
    }
    effective = OmegaConf.create(saved)
    for key, value in changed.items():
        OmegaConf.update(effective, key, value, force_add=True)
    effective.trainer.resume = str(cfg.trainer.resume)
    done, epochs = int(ckpt["progress"]["epoch"]), int(effective.trainer.epochs)
    if done >= epochs:
        raise PetsegError(
            f"{path} has already trained all {done} epochs of its run; to go on, resume with "
            f"trainer.epochs=<more than {done}>"
        )
    shown = sorted(f"{k}={v}" for k, v in changed.items() if k != "trainer.resume")
    log.info("resuming with the checkpoint's config%s", f"; changed: {', '.join(shown)}" if shown else "")
    OmegaConf.set_struct(effective, True)
    return effective


def check_resumable(
    ckpt: dict[str, Any], path: Path, cfg: DictConfig, train_images: int, world_size: int
) -> None:
    """A PetsegError unless this run (``cfg``, its train split's size, its process count) can continue
    the checkpoint ``ckpt`` read from ``path``."""
    if "optimizer" not in ckpt or "progress" not in ckpt:
        raise PetsegError(f"{path} holds weights only (an exported model); resume from a run's last.pth")
    saved_model = ckpt["config"]["model"]["name"]
    if saved_model != cfg.model.name:
        raise PetsegError(f"{path} holds a '{saved_model}' model, but the config asks for '{cfg.model.name}'")
    # data.root may move on resume, but the data order is a function of the train split's size.
    if ckpt.get("train_images", train_images) != train_images:
        raise PetsegError(
            f"{path} was trained on {ckpt['train_images']} train images, but {cfg.data.root} "
            f"has {train_images}: resume on the same data"
        )
    saved_world = int(ckpt.get("world_size", 1))
    if saved_world != world_size and int(ckpt["progress"]["step"]) > 0:
        raise PetsegError(
            f"{path} was saved mid-epoch by {saved_world} process(es); resume it with the same "
            f"number (now {world_size}), or from a checkpoint saved at an epoch's end"
        )


def resume_trainer(trainer: TrainerView, path: Path, cfg: DictConfig) -> None:
    """Continue in ``trainer`` (built from ``cfg``) the run saved at ``path`` (a PetsegError if this
    run cannot)."""
    ckpt = load_checkpoint(path)
    check_resumable(ckpt, path, cfg, len(trainer.built.train_set), trainer.dist.world_size)
    try:
        trainer.load_state_dict(ckpt)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise PetsegError(f"{path} cannot be resumed by this run: {reason[:200]}") from None
    trainer.resumed_from = path
    trainer.choices = dict(ckpt.get("choices") or trainer.choices)  # the original run's, not this command's
    log.info("resumed from %s %s", path, trainer.progress.where(trainer.steps_per_epoch))
