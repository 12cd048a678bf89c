"""What a run writes to TensorBoard: per-epoch scalars and overlays, and the HParams tab (every run's
hyperparameters beside its final metrics).

``tensorboard --logdir outputs/multirun/<sweep>`` then lists the jobs of a sweep as rows of one table
(and parallel-coordinates plot) with their settings and best validation Dice. Written into the run's own
``tb/`` log (not the timestamped sub-run ``SummaryWriter.add_hparams`` makes), so scalars, images and
hparams of a run stay one run in TensorBoard: the session start at the beginning (a crashed run still
shows its settings), the metrics and the session end when training finishes.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

# What the tab shows per run (the trainer logs them as scalars at the end, at step = epochs trained).
METRICS = (
    "hparams/best_val_dice",
    "hparams/best_epoch",
    "hparams/final_val_dice",
    "hparams/final_train_dice",
    "hparams/minutes",
)
# Whole groups a sweep varies, and single keys of the others worth a column.
GROUPS = ("model", "optim", "sched", "loss", "aug")
KEYS = (
    "data.image_size",
    "data.batch_size",
    "trainer.epochs",
    "trainer.seed",
    "trainer.grad_clip",
    "trainer.amp",
)

HParam = bool | int | float | str


def hparam_values(cfg: DictConfig, choices: Mapping[str, str] | None = None) -> dict[str, HParam]:
    """The config's hyperparameters as flat ``group.key`` -> bool/int/float/str (TensorBoard's types),
    led by the option chosen in each group (``choices``: Hydra's, e.g. {"optim": "adamw"})."""
    container = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(container, dict)
    flat: dict[str, HParam] = {}

    for group, option in (choices or {}).items():
        if group in GROUPS:
            flat[group] = str(option)

    def add(key: str, value: Any) -> None:
        if isinstance(value, dict):
            for sub, inner in value.items():
                if sub not in ("_target_", "_partial_"):  # the option name above says it
                    add(f"{key}.{sub}", inner)
        elif isinstance(value, bool | int | float | str):
            flat[key] = value
        else:  # None, lists (betas, decoder widths): shown as text
            flat[key] = "null" if value is None else str(value)

    for group in GROUPS:
        if group in container:
            add(group, container[group])
    for key in KEYS:
        value = OmegaConf.select(cfg, key, default=None)
        add(key, value)
    return flat


def write_hparams_start(
    writer: SummaryWriter, cfg: DictConfig, choices: Mapping[str, str] | None = None
) -> None:
    experiment, session_start, _ = hparams(hparam_values(cfg, choices), dict.fromkeys(METRICS, 0.0))
    writer.file_writer.add_summary(experiment)
    writer.file_writer.add_summary(session_start)
    writer.flush()


def write_hparams_end(writer: SummaryWriter, metrics: dict[str, float], step: int) -> None:
    """Log ``metrics`` (keys of METRICS) and close the session: the run shows as finished."""
    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise ValueError(f"not hparams metrics: {sorted(unknown)}")
    for key, value in metrics.items():
        writer.add_scalar(key, value, step)
    _, _, session_end = hparams({}, {})
    writer.file_writer.add_summary(session_end)
    writer.flush()


def write_epoch(writer: SummaryWriter, record: dict[str, float], overlays: Any = None) -> None:
    """One epoch's scalars (every key of ``record`` but 'epoch', at step = the 1-based epoch) and, if
    given, its validation overlay picture (HWC uint8)."""
    step = int(record["epoch"])
    for key, value in record.items():
        if key != "epoch":
            writer.add_scalar(key, value, step)
    if overlays is not None:
        writer.add_image("val/overlays", overlays, step, dataformats="HWC")
    writer.flush()


def write_run_end(
    writer: SummaryWriter, history: list[dict[str, float]], best: tuple[float, int], seconds: float
) -> None:
    """The HParams metrics of a finished run (``best``: best val Dice and its epoch) and the session end."""
    last = history[-1] if history else {}
    metrics = {
        "hparams/best_val_dice": best[0],
        "hparams/best_epoch": float(best[1]),
        "hparams/final_val_dice": last.get("val/dice", float("nan")),
        "hparams/final_train_dice": last.get("train/dice", float("nan")),
        "hparams/minutes": seconds / 60,  # of this invocation (a resumed run: since the resume)
    }
    write_hparams_end(writer, metrics, int(last.get("epoch", 0)))


def read_events(run_dir: str | Path) -> dict[str, dict[int, tuple[float, float]]]:
    """Every scalar under ``run_dir``: {tag: {step: (value, wall time)}}, from all its event files in
    the order they were written (a resumed run's later writes win); {} when there are none."""
    files = sorted(Path(run_dir).rglob("events.out.tfevents.*"), key=lambda f: f.stat().st_mtime)
    events: dict[str, dict[int, tuple[float, float]]] = {}
    for file in files:
        acc = EventAccumulator(str(file), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            for event in acc.Scalars(tag):
                events.setdefault(tag, {})[event.step] = (event.value, event.wall_time)
    return events
