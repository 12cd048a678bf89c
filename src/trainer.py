"""The one training loop: config in, best validation Dice out.

Every epoch: train, validate with ``evaluate()``, log to TensorBoard, save ``last.pth`` (everything
needed to resume) and ``best.pth`` (by validation Dice). At the end the best weights are exported to
``<export_dir>/<model name>.pth``. Test images are never touched here.

Crash safety. Checkpoints are written atomically (``checkpoint.write_atomic``), also every
``trainer.checkpoint.every_n_steps`` steps inside an epoch. SIGINT (Ctrl-C) and SIGTERM finish the step
in flight, save last.pth, print the resume command and exit with 128 + the signal number (130, 143); a
second signal stops at once without saving. A non-finite loss or weights stop the run with a
``PetsegError`` naming epoch and step, before anything non-finite reaches last.pth.

Resume (``trainer.resume=<run dir or .pth>``) restores weights, optimiser, schedule, AMP scaler,
epoch/step, best metric, history and the Python/NumPy/torch random states; the data order and the
augmentation are a function of (seed, epoch, position) (``sampler.EpochSampler``), so with
``trainer.deterministic=true`` a resumed run ends bit-identical to one never stopped.
``config_for_resume`` says which config a resumed run uses.

Multi-process (``torchrun --nproc_per_node=N src/train.py ...``): the model is wrapped in
DistributedDataParallel; each rank trains on its shard of every epoch (``sampler.EpochSampler``) and
validates on its shard (``sampler.ShardSampler``), with metrics summed over ranks, so the logged numbers
equal a single-process evaluation of the same weights. Per step the ranks also agree on the loss and on
a stop request, so a NaN or a signal ends every rank at the same step. Only rank 0 writes logs,
TensorBoard events and checkpoints. ``trainer.sync_batchnorm`` converts BatchNorm to SyncBatchNorm.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import random
import shlex
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from checkpoint import (
    copy_checkpoint,
    export_weights,
    load_checkpoint,
    remove_partial_writes,
    save_checkpoint,
)
from cli import hydra_quote, resolve_resume
from distributed import (
    SINGLE,
    DistInfo,
    all_sum,
    broadcast_buffers,
    broadcast_object,
    init_distributed,
    shutdown,
    wrap_model,
)
from errors import PetsegError, TrainingDiverged
from evaluate import ReferenceTargets, evaluate
from losses import build_loss
from models import build_model
from optim import build_optimizer, build_scheduler
from oxford_pet import build_dataloader, build_dataset
from runtime import Runtime, runtime_from_config
from tb_hparams import write_hparams_end, write_hparams_start
from thread_tuner import ThreadTuner, tuner_for
from utils import binarize, denormalize, dice_per_image, overlay, seed_everything

log = logging.getLogger("petseg.train")


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM arrived; the state was saved. ``exit_code`` is 128 + the signal number."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class Progress:
    """Where a run stands; saved in every checkpoint so a resumed run continues exactly."""

    epoch: int = 0  # epochs completed
    step: int = 0  # batches of the current epoch already trained
    global_step: int = 0
    best_metric: float = -math.inf
    best_epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    # running sums of the current, unfinished epoch (so a mid-epoch resume reports the same means)
    loss_sum: float = 0.0
    dice_sum: float = 0.0
    seen: int = 0


class ForcedStop(KeyboardInterrupt):
    """A second SIGINT/SIGTERM: stop at once, unsaved (last.pth keeps the previous save)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"second {signal.Signals(signum).name}: stopped at once, without saving")
        self.exit_code = 128 + signum


class StopSignals:
    """Turn SIGINT/SIGTERM into a flag checked after each step, so the step in flight completes."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}
        self._first_at = 0.0
        # Seconds after the first signal in which another one counts as the same request. Under
        # torchrun a Ctrl-C reaches each worker twice: from the terminal, then forwarded by the agent.
        self.debounce_s = 0.0

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.signum is not None:  # a second signal: the user does not want to wait for the save
            if time.monotonic() - self._first_at < self.debounce_s:
                return
            raise ForcedStop(signum)
        self.signum = signum
        self._first_at = time.monotonic()
        log.warning(
            "%s received: finishing the current step, then saving last.pth (send it again to stop at "
            "once, unsaved)",
            signal.Signals(signum).name,
        )

    def __enter__(self) -> StopSignals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. some launchers): no graceful stop
                pass
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# --------------------------------------------------------------------------------- random states
def capture_rng() -> dict[str, Any]:
    """Every global random state, as types torch.load(weights_only=True) accepts."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------- helpers
def _worker_init(worker_id: int, inner: Callable[[int], None] | None) -> None:
    # Ctrl-C reaches every process of the terminal's group, a scheduler's SIGTERM often too: a loader
    # worker that died of it would break the batch the main process still needs to finish its step.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if inner is not None:
        inner(worker_id)


def shield_workers(loader: torch.utils.data.DataLoader) -> None:
    """Let the loader's worker processes ignore SIGINT/SIGTERM; the main process handles them."""
    if loader.num_workers > 0:
        # A partial of a module-level function: picklable for the spawn start method too.
        loader.worker_init_fn = functools.partial(_worker_init, inner=loader.worker_init_fn)


def resume_command(run_dir: Path) -> str:
    """The shell command that continues the run in ``run_dir``, with train.py's path from here."""
    script = Path(__file__).resolve().with_name("train.py")
    try:
        shown = os.path.relpath(script)
    except ValueError:  # another drive (Windows)
        shown = str(script)
    if shown.startswith(".."):
        shown = str(script)
    return f"python {shlex.quote(shown)} {shlex.quote('trainer.resume=' + hydra_quote(str(run_dir)))}"


def overlay_grid(samples: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> np.ndarray:
    """Rows of [image | ground truth tinted | prediction tinted] as one HWC uint8 picture."""
    rows = [np.concatenate([img, overlay(img, gt), overlay(img, pred)], axis=1) for img, gt, pred in samples]
    return np.concatenate(rows, axis=0)


def is_multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    except (ImportError, ValueError):
        return False


# ------------------------------------------------------------------------------------ resume config
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
    "data.cache_workers",
)


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


def config_for_resume(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """The config a run resumed with ``cfg.trainer.resume`` uses: the checkpoint's own.

    ``overrides`` are the command line's (Hydra's task overrides). Those of ``RESUME_MAY_CHANGE``
    (trainer.epochs, trainer.device, data.root, ...) replace the checkpoint's values. Any other
    override must agree with the checkpoint (repeating the original command line is fine), else this
    is a PetsegError listing each conflict: silently training a different recipe into the same run dir
    would make its history and TensorBoard curves lie. A group override (``model=unet``) is compared
    as the whole group it composes, ``experiment=...`` as the whole config. trainer.* keys the
    checkpoint predates take today's defaults. Also a PetsegError: a weights-only file, a run that
    already trained all its epochs, a multirun.
    """
    path = resolve_resume(cfg.trainer.resume)
    if is_multirun():
        raise PetsegError("trainer.resume continues one run; it cannot be used in a multirun (-m, sweeps)")
    ckpt = load_checkpoint(path, mmap=True)  # only the config and progress are read here
    if "optimizer" not in ckpt or "progress" not in ckpt:
        raise PetsegError(f"{path} holds weights only (an exported model); resume from a run's last.pth")
    saved = ckpt["config"]
    asked = OmegaConf.to_container(cfg, resolve=True)
    conflicts: list[tuple[str, Any, Any]] = []
    changed: dict[str, Any] = {}
    for override in overrides:
        key = override.lstrip("+~").split("=", 1)[0]
        if _may_change(key):
            changed[key] = OmegaConf.select(cfg, key)
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
    if conflicts:
        shown = ", ".join(f"{k}={a!r} (checkpoint: {s!r})" for k, a, s in conflicts[:6])
        more = f" and {len(conflicts) - 6} more" if len(conflicts) > 6 else ""
        raise PetsegError(
            f"trainer.resume={cfg.trainer.resume} keeps the checkpoint's config, but this command asks for "
            f"{shown}{more}; drop those overrides (a resumed run may only change "
            f"{', '.join(RESUME_MAY_CHANGE[1:])}) or start a new run"
        )
    effective = OmegaConf.create(saved)
    today = OmegaConf.create(OmegaConf.to_container(cfg.trainer, resolve=True))
    effective.trainer = OmegaConf.merge(today, effective.trainer)
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


# ------------------------------------------------------------------------------------------- fit
class Trainer:
    """Builds everything from the config once, then runs epochs; one instance per run."""

    def __init__(
        self, cfg: DictConfig, run_dir: Path, stop: StopSignals | None = None, dist: DistInfo = SINGLE
    ) -> None:
        self.cfg = cfg
        self.dist = dist
        # Every rank works in rank 0's run dir (Hydra gave the others a dummy one); only rank 0 writes.
        self.run_dir = Path(broadcast_object(str(run_dir), dist))
        # Only a flag that handlers set: a Trainer built without fit() just never sees a signal.
        self.stop = stop if stop is not None else StopSignals()
        if dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            for leftover in remove_partial_writes(self.run_dir):
                log.info("removed %s, left by a save that was killed", leftover.name)
        t = cfg.trainer
        seed_everything(int(t.seed), bool(t.deterministic))
        self.runtime: Runtime = runtime_from_config(t, dist)
        self.model = self.runtime.prepare(build_model(**cfg.model))
        if t.get("sync_batchnorm", False):
            if not dist.enabled:
                log.info("trainer.sync_batchnorm is only used with several processes (torchrun)")
            elif self.runtime.device.type != "cuda":
                raise PetsegError(
                    "trainer.sync_batchnorm needs CUDA devices (SyncBatchNorm has no CPU kernel)"
                )
            else:
                # Statistics over the global batch; same parameters and buffers, so checkpoints load anywhere.
                self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.train_set = build_dataset(cfg.data, cfg.aug, "train")
        self.val_set = build_dataset(cfg.data, cfg.aug, "valid")
        shard = {"rank": dist.rank, "world_size": dist.world_size}
        self.train_loader = build_dataloader(self.train_set, cfg.data, train=True, seed=int(t.seed), **shard)
        self.val_loader = build_dataloader(self.val_set, cfg.data, train=False, **shard)
        # val/dice is the reference protocol's (256x256 masks), so runs at any image size compare; the
        # 256x256 masks are made once, at the first validation, and kept.
        self.val_targets = ReferenceTargets.of(self.val_set, keep=True)
        shield_workers(self.train_loader)
        shield_workers(self.val_loader)
        self.steps_per_epoch = len(self.train_loader)
        if t.limit_train_batches is not None:
            self.steps_per_epoch = min(self.steps_per_epoch, int(t.limit_train_batches))
        if self.steps_per_epoch == 0:
            per = f" per process ({dist.world_size} processes)" if dist.enabled else ""
            raise PetsegError(
                f"the train split has {len(self.train_set)} images, fewer than one batch of "
                f"{cfg.data.batch_size}{per}: lower data.batch_size"
            )
        self.optimizer = build_optimizer(cfg.optim, self.model, self.runtime.device)
        self.scheduler = build_scheduler(cfg.sched, self.optimizer, self.steps_per_epoch, int(t.epochs))
        self.loss_fn = build_loss(cfg.loss)
        self.scaler = torch.amp.GradScaler(
            self.runtime.device.type, enabled=self.runtime.amp_dtype == torch.float16
        )
        self.progress = Progress()
        self.resumed_from: Path | None = None
        if t.resume:
            self._restore(resolve_resume(t.resume))
        # DDP (several processes) and the compiled wrapper share parameters with self.model, which is
        # what checkpoints save and evaluation runs (DDP's forward would sync buffers, and the eval
        # shards differ in length, so eval must not go through it).
        self.train_model = wrap_model(self.model, dist)
        if t.compile:
            self.train_model = torch.compile(self.train_model)
        self.threshold = float(t.threshold)
        self.thread_tuner: ThreadTuner | None = tuner_for(t, self.runtime.device, dist.enabled)
        log.info(
            "model %s (%.2fM params) on %s, %s, channels_last=%s (%s); %d train / %d valid images%s",
            cfg.model.name,
            sum(p.numel() for p in self.model.parameters()) / 1e6,
            self.runtime.device,
            self.runtime.describe()["amp"],
            self.runtime.channels_last,
            self.runtime.why,
            len(self.train_set),
            len(self.val_set),
            f"; {dist.world_size} processes (DDP), global batch {dist.world_size * int(cfg.data.batch_size)}"
            if dist.enabled
            else "",
        )

    # ------------------------------------------------------------------------------ checkpoints
    def _state(self) -> dict[str, Any]:
        return {
            "model_name": self.cfg.model.name,
            "model": self.model.state_dict(),
            "config": OmegaConf.to_container(self.cfg, resolve=True),
            "epoch": self.progress.epoch,
            "metrics": self.progress.history[-1] if self.progress.history else {},
            "best": {"metric": self.progress.best_metric, "epoch": self.progress.best_epoch},
            "history": self.progress.history,
            "progress": asdict(self.progress),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": capture_rng(),
            "train_images": len(self.train_set),
            "world_size": self.dist.world_size,
            "runtime": self.runtime.describe(),  # what the 'auto' settings became, and why
        }

    def _restore(self, path: Path) -> None:
        ckpt = load_checkpoint(path)
        if "optimizer" not in ckpt or "progress" not in ckpt:
            raise PetsegError(f"{path} holds weights only (an exported model); resume from a run's last.pth")
        saved_model = ckpt["config"]["model"]["name"]
        if saved_model != self.cfg.model.name:
            raise PetsegError(
                f"{path} holds a '{saved_model}' model, but the config asks for '{self.cfg.model.name}'"
            )
        # data.root may move on resume, but the data order is a function of the train split's size.
        if ckpt.get("train_images", len(self.train_set)) != len(self.train_set):
            raise PetsegError(
                f"{path} was trained on {ckpt['train_images']} train images, but {self.cfg.data.root} "
                f"has {len(self.train_set)}: resume on the same data"
            )
        saved_world = int(ckpt.get("world_size", 1))
        if saved_world != self.dist.world_size and int(ckpt["progress"]["step"]) > 0:
            raise PetsegError(
                f"{path} was saved mid-epoch by {saved_world} process(es); resume it with the same "
                f"number (now {self.dist.world_size}), or from a checkpoint saved at an epoch's end"
            )
        try:
            self.model.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
            self.scaler.load_state_dict(ckpt["scaler"])
            self.progress = Progress(**ckpt["progress"])
            restore_rng(ckpt["rng"])
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise PetsegError(f"{path} cannot be resumed by this run: {reason[:200]}") from None
        self.resumed_from = path
        log.info("resumed from %s %s", path, self._where())

    def _where(self) -> str:
        """Where training stands, for messages: 'after epoch 2' or 'at epoch 3, step 5/9'."""
        p = self.progress
        if p.step == 0:
            return f"after epoch {p.epoch}" if p.epoch else "before the first step"
        return f"at epoch {p.epoch + 1}, step {p.step}/{self.steps_per_epoch}"

    def _non_finite(self, what: str) -> PetsegError:
        last = self.run_dir / "last.pth"
        kept = f"the last good checkpoint is {last}" if last.is_file() else "no checkpoint was saved yet"
        return TrainingDiverged(
            f"{what}: stopping ({kept}); lower optim.lr or set trainer.grad_clip",
            best_metric=self.progress.best_metric,
        )

    def _save(self, name: str) -> Path:
        # A weight that overflowed must never replace the last good checkpoint. The weights are the
        # same on every rank (DDP), so every rank takes the same branch; only rank 0 writes.
        for key, value in self.model.state_dict().items():
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise self._non_finite(f"weight {key} became non-finite {self._where()}")
        path = self.run_dir / name
        return save_checkpoint(path, self._state()) if self.dist.is_main else path

    # ------------------------------------------------------------------------------------ epochs
    def fit(self) -> float:
        t = self.cfg.trainer
        epochs = int(t.epochs)
        # On resume, TensorBoard drops every event an earlier process logged from the next epoch on
        # (a crash after logging an epoch but before saving it, or a resume from an older checkpoint):
        # each epoch then appears exactly once in the same log.
        purge = self.progress.epoch + 1 if self.resumed_from is not None else None
        writer = None
        if self.dist.is_main:
            writer = SummaryWriter(log_dir=str(self.run_dir / "tb"), purge_step=purge)
            write_hparams_start(writer, self.cfg)
        started = time.time()
        try:
            for epoch in range(self.progress.epoch, epochs):
                self._check_stop()  # a signal during setup, validation or the last save
                train_metrics = self._train_epoch(epoch, epochs)
                val_metrics, samples = self._validate(epoch, epochs)
                self._end_epoch(epoch, epochs, train_metrics, val_metrics, samples, writer)
            if writer is not None:
                self._write_final_metrics(writer, time.time() - started)
        finally:
            if writer is not None:
                writer.close()
        log.info(
            "done in %.1f min: best val Dice %.4f at epoch %d",
            (time.time() - started) / 60,
            self.progress.best_metric,
            self.progress.best_epoch,
        )
        self._export()
        return self.progress.best_metric

    def _write_final_metrics(self, writer: SummaryWriter, seconds: float) -> None:
        p = self.progress
        last = p.history[-1] if p.history else {}
        metrics = {
            "hparams/best_val_dice": p.best_metric,
            "hparams/best_epoch": float(p.best_epoch),
            "hparams/final_val_dice": last.get("val/dice", float("nan")),
            "hparams/final_train_dice": last.get("train/dice", float("nan")),
            "hparams/minutes": seconds / 60,  # of this invocation (a resumed run: since the resume)
        }
        write_hparams_end(writer, metrics, p.epoch)

    def _train_epoch(self, epoch: int, epochs: int) -> dict[str, float]:
        p = self.progress
        # Resuming mid-epoch: the sampler skips the samples of the steps already trained.
        self.train_loader.sampler.set_epoch(epoch, start=p.step * int(self.cfg.data.batch_size))
        self.model.train()
        clip = self.cfg.trainer.grad_clip
        every = int(self.cfg.trainer.checkpoint.get("every_n_steps") or 0)
        # `with`: the bar is closed on any exit, so an error or the resume command gets its own line.
        with tqdm(
            total=self.steps_per_epoch,
            initial=p.step,
            desc=f"epoch {epoch + 1}/{epochs}",
            dynamic_ncols=True,
            disable=not self.dist.is_main,
        ) as bar:
            for batch in self.train_loader if p.step < self.steps_per_epoch else ():
                started = time.perf_counter()
                images = self.runtime.to_input(batch["image"])
                masks = batch["mask"].to(self.runtime.device, non_blocking=True)
                self.optimizer.zero_grad(set_to_none=True)
                with self.runtime.autocast():
                    logits = self.train_model(images)
                loss = self.loss_fn(logits.float(), masks)
                n = len(images)
                dice_sum = float(dice_per_image(binarize(logits.detach(), self.threshold), masks > 0.5).sum())
                # Under DDP every rank sees the global sums, so the same NaN stops every rank.
                loss_total, dice_sum, n = all_sum(
                    [loss.detach().item() * n, dice_sum, float(n)], self.dist, self.runtime.device
                )
                n = int(n)
                loss_value = loss_total / n
                if not math.isfinite(loss_value):
                    raise self._non_finite(
                        f"loss became {loss_value} at epoch {epoch + 1}, step {p.step + 1}"
                    )
                self.scaler.scale(loss).backward()
                if clip is not None:
                    self.scaler.unscale_(self.optimizer)
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), float(clip))
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.scheduler.step()
                if self.thread_tuner is not None:
                    self.thread_tuner.after_step(time.perf_counter() - started)
                p.loss_sum += loss_total
                p.dice_sum += dice_sum
                p.seen += n
                p.step += 1
                p.global_step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{p.loss_sum / p.seen:.4f}", dice=f"{p.dice_sum / p.seen:.4f}")
                self._check_stop()
                if p.step >= self.steps_per_epoch:
                    break  # limit_train_batches: do not load a batch that will not be used
                if every and p.global_step % every == 0:
                    self._save("last.pth")  # mid-epoch; the epoch's end saves anyway
        return {"loss": p.loss_sum / max(p.seen, 1), "dice": p.dice_sum / max(p.seen, 1)}

    def _check_stop(self) -> None:
        signum = self.stop.signum
        if self.dist.enabled:
            # A collective: a signal may reach one rank a step before another, yet all must stop at
            # the same step (or none), or the others would wait forever in the next all-reduce.
            anyone = all_sum([1.0 if signum else 0.0], self.dist, self.runtime.device)[0] > 0
            signum = (signum or signal.SIGTERM) if anyone else None
        if signum is not None:
            self._interrupt(int(signum))

    def _interrupt(self, signum: int) -> None:
        path = self._save("last.pth")
        raise TrainingInterrupted(
            f"stopped by {signal.Signals(signum).name} {self._where()}; state saved to {path}. "
            f"Resume with:\n  {resume_command(self.run_dir)}",
            exit_code=128 + signum,
        )

    def _validate(self, epoch: int, epochs: int) -> tuple[dict[str, Any], list]:
        samples: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        overlays = self.cfg.trainer.overlays
        want = int(overlays.count) if self._overlay_epoch(epoch, epochs) else 0
        mean, std = list(self.cfg.data.mean), list(self.cfg.data.std)

        def keep(batch: dict[str, Any], logits: torch.Tensor, _dice: torch.Tensor) -> None:
            pred = binarize(logits, self.threshold)
            for i in range(min(want - len(samples), len(logits))):
                samples.append(
                    (
                        denormalize(batch["image"][i], mean, std),
                        batch["mask"][i, 0].numpy() > 0.5,
                        pred[i, 0].cpu().numpy(),
                    )
                )

        # Each rank's BatchNorm statistics followed its own last batches: score rank 0's (the saved ones).
        broadcast_buffers(self.model, self.dist)
        metrics = evaluate(
            self.model,
            self.val_loader,
            self.runtime,
            loss_fn=self.loss_fn,
            threshold=self.threshold,
            limit_batches=self.cfg.trainer.limit_val_batches,
            progress=self.dist.is_main,
            desc=f"valid {epoch + 1}/{epochs}",
            on_batch=keep if want and self.dist.is_main else None,
            dist=self.dist,
            targets=self.val_targets,
        )
        return metrics, samples

    def _overlay_epoch(self, epoch: int, epochs: int) -> bool:
        every = int(self.cfg.trainer.overlays.every_n_epochs or 0)
        return every > 0 and ((epoch + 1) % every == 0 or epoch + 1 == epochs or epoch == 0)

    def _end_epoch(
        self,
        epoch: int,
        epochs: int,
        train_metrics: dict[str, float],
        val_metrics: dict[str, Any],
        samples: list,
        writer: SummaryWriter | None,
    ) -> None:
        p = self.progress
        step = epoch + 1  # TensorBoard x axis: epochs, 1-based
        if val_metrics["loss"] is not None and not math.isfinite(val_metrics["loss"]):
            raise self._non_finite(f"validation loss became {val_metrics['loss']} at epoch {step}")
        lr = self.optimizer.param_groups[0]["lr"]
        record = {
            "epoch": step,
            "train/loss": train_metrics["loss"],
            "train/dice": train_metrics["dice"],
            "val/loss": val_metrics["loss"],
            "val/dice": val_metrics["dice"],
            "val/dice_pooled": val_metrics["dice_pooled"],
            "val/dice_input": val_metrics["protocols"]["dice_input"]["mean"],
            "lr": lr,
        }
        if writer is not None:
            for key, value in record.items():
                if key != "epoch":
                    writer.add_scalar(key, value, step)
            if samples:
                writer.add_image("val/overlays", overlay_grid(samples), step, dataformats="HWC")
            writer.flush()
        p.epoch, p.step = step, 0
        p.loss_sum = p.dice_sum = 0.0
        p.seen = 0
        p.history.append(record)
        monitored = record[self.cfg.monitor]
        improved = monitored > p.best_metric
        if improved:
            p.best_metric, p.best_epoch = monitored, step
        log.info(
            "epoch %d/%d  train loss %.4f dice %.4f | val loss %.4f dice_256 %.4f (pooled %.4f, "
            "at input size %.4f)%s",
            step,
            epochs,
            record["train/loss"],
            record["train/dice"],
            record["val/loss"],
            record["val/dice"],
            record["val/dice_pooled"],
            record["val/dice_input"],
            "  *best*" if improved else "",
        )
        ckpt_cfg = self.cfg.trainer.checkpoint
        if ckpt_cfg.save_last or improved:
            # last.pth is written even when save_last is off and only best is wanted: best.pth is a copy.
            self._save("last.pth")
        if improved and ckpt_cfg.save_best and self.dist.is_main:
            copy_checkpoint(self.run_dir / "last.pth", self.run_dir / "best.pth")

    def _export(self) -> None:
        ckpt_cfg = self.cfg.trainer.checkpoint
        if not self.dist.is_main or not ckpt_cfg.export_dir or not (self.run_dir / "best.pth").is_file():
            return
        if is_multirun() and not ckpt_cfg.export_in_multirun:
            log.info(
                "multirun: not exporting to %s (set trainer.checkpoint.export_in_multirun=true)",
                ckpt_cfg.export_dir,
            )
            return
        target = Path(ckpt_cfg.export_dir) / f"{self.cfg.model.name}.pth"
        export_weights(
            load_checkpoint(self.run_dir / "best.pth"), target, half=bool(ckpt_cfg.half_precision_export)
        )
        log.info(
            "best weights (val Dice %.4f, epoch %d) exported to %s",
            self.progress.best_metric,
            self.progress.best_epoch,
            target,
        )


def fit(cfg: DictConfig, run_dir: str | Path) -> float:
    """Train as the config says, in ``run_dir``; returns the best validation Dice.

    Signal handling starts before the setup, so a Ctrl-C while data and model load also ends in a
    saved last.pth and the resume command rather than a traceback.
    """
    with StopSignals() as stop:
        dist = init_distributed()
        try:
            if dist.enabled:
                stop.debounce_s = 2.0
                if not dist.is_main:
                    logging.getLogger("petseg").setLevel(logging.WARNING)  # rank 0 tells the story
            return Trainer(cfg, Path(run_dir), stop, dist).fit()
        finally:
            shutdown(dist)
