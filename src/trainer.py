"""The one training loop: config in, best validation Dice out.

Every epoch: train, validate with ``evaluate()``, log to TensorBoard, save ``last.pth`` (everything
needed to resume) and ``best.pth`` (by validation Dice). At the end the best weights are exported to
``<export_dir>/<model name>.pth``. Test images are never touched here.
"""

from __future__ import annotations

import logging
import math
import random
import shutil
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from checkpoint import export_weights, load_checkpoint, save_checkpoint
from errors import PetsegError
from evaluate import evaluate
from losses import build_loss
from models import build_model
from optim import build_optimizer, build_scheduler
from oxford_pet import build_dataloader, build_dataset
from runtime import Runtime, runtime_from_config
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


class StopSignals:
    """Turn SIGINT/SIGTERM into a flag checked after each step, so the step in flight completes."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.signum is not None:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signum = signum
        log.warning(
            "%s received: finishing the current step, then saving last.pth", signal.Signals(signum).name
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
def resolve_resume(path: str | Path) -> Path:
    """A run dir means its last.pth; a file is used as is."""
    path = Path(path)
    candidate = path / "last.pth" if path.is_dir() else path
    if not candidate.is_file():
        raise PetsegError(
            f"trainer.resume={path}: no checkpoint found (expected a run dir with last.pth or a .pth)"
        )
    return candidate


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


# ------------------------------------------------------------------------------------------- fit
class Trainer:
    """Builds everything from the config once, then runs epochs; one instance per run."""

    def __init__(self, cfg: DictConfig, run_dir: Path) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        t = cfg.trainer
        seed_everything(int(t.seed), bool(t.deterministic))
        self.runtime: Runtime = runtime_from_config(t)
        self.model = self.runtime.prepare(build_model(**cfg.model))
        self.train_set = build_dataset(cfg.data, cfg.aug, "train")
        self.val_set = build_dataset(cfg.data, cfg.aug, "valid")
        self.train_loader = build_dataloader(self.train_set, cfg.data, train=True, seed=int(t.seed))
        self.val_loader = build_dataloader(self.val_set, cfg.data, train=False)
        self.steps_per_epoch = len(self.train_loader)
        if t.limit_train_batches is not None:
            self.steps_per_epoch = min(self.steps_per_epoch, int(t.limit_train_batches))
        if self.steps_per_epoch == 0:
            raise PetsegError(
                f"the train split has {len(self.train_set)} images, fewer than one batch of "
                f"{cfg.data.batch_size}: lower data.batch_size"
            )
        self.optimizer = build_optimizer(cfg.optim, self.model, self.runtime.device)
        self.scheduler = build_scheduler(cfg.sched, self.optimizer, self.steps_per_epoch, int(t.epochs))
        self.loss_fn = build_loss(cfg.loss)
        self.scaler = torch.amp.GradScaler(
            self.runtime.device.type, enabled=self.runtime.amp_dtype == torch.float16
        )
        self.progress = Progress()
        if t.resume:
            self._restore(resolve_resume(t.resume))
        # The compiled wrapper shares parameters with self.model; checkpoints use self.model.
        self.train_model = torch.compile(self.model) if t.compile else self.model
        self.threshold = float(t.threshold)
        log.info(
            "model %s (%.2fM params) on %s, amp=%s, channels_last=%s; %d train / %d valid images",
            cfg.model.name,
            sum(p.numel() for p in self.model.parameters()) / 1e6,
            self.runtime.device,
            self.runtime.amp_dtype,
            self.runtime.channels_last,
            len(self.train_set),
            len(self.val_set),
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
        }

    def _restore(self, path: Path) -> None:
        ckpt = load_checkpoint(path)
        if "optimizer" not in ckpt or "progress" not in ckpt:
            raise PetsegError(
                f"{path} holds weights only (an export or best.pth); resume from a run's last.pth"
            )
        saved_model = ckpt["config"]["model"]["name"]
        if saved_model != self.cfg.model.name:
            raise PetsegError(
                f"{path} holds a '{saved_model}' model, but the config asks for '{self.cfg.model.name}'"
            )
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.progress = Progress(**ckpt["progress"])
        restore_rng(ckpt["rng"])
        log.info("resumed from %s at epoch %d, step %d", path, self.progress.epoch + 1, self.progress.step)

    def _save(self, name: str) -> Path:
        return save_checkpoint(self.run_dir / name, self._state())

    # ------------------------------------------------------------------------------------ epochs
    def fit(self) -> float:
        t = self.cfg.trainer
        epochs = int(t.epochs)
        # purge_step drops events a crashed run logged after its last checkpoint: no duplicate epochs.
        purge = self.progress.epoch + 1 if self.progress.epoch or self.progress.step else None
        writer = SummaryWriter(log_dir=str(self.run_dir / "tb"), purge_step=purge)
        started = time.time()
        try:
            with StopSignals() as stop:
                for epoch in range(self.progress.epoch, epochs):
                    train_metrics = self._train_epoch(epoch, epochs, stop)
                    val_metrics, samples = self._validate(epoch, epochs)
                    self._end_epoch(epoch, epochs, train_metrics, val_metrics, samples, writer)
        finally:
            writer.close()
        log.info(
            "done in %.1f min: best val Dice %.4f at epoch %d",
            (time.time() - started) / 60,
            self.progress.best_metric,
            self.progress.best_epoch,
        )
        self._export()
        return self.progress.best_metric

    def _train_epoch(self, epoch: int, epochs: int, stop: StopSignals) -> dict[str, float]:
        p = self.progress
        self.train_loader.sampler.set_epoch(epoch, start=p.step * int(self.cfg.data.batch_size))
        self.model.train()
        clip = self.cfg.trainer.grad_clip
        bar = tqdm(
            total=self.steps_per_epoch, initial=p.step, desc=f"epoch {epoch + 1}/{epochs}", dynamic_ncols=True
        )
        for batch in self.train_loader:
            if p.step >= self.steps_per_epoch:
                break
            images = self.runtime.to_input(batch["image"])
            masks = batch["mask"].to(self.runtime.device, non_blocking=True)
            self.optimizer.zero_grad(set_to_none=True)
            with self.runtime.autocast():
                logits = self.train_model(images)
            loss = self.loss_fn(logits.float(), masks)
            loss_value = loss.detach().item()
            if not math.isfinite(loss_value):
                raise PetsegError(
                    f"loss became {loss_value} at epoch {epoch + 1}, step {p.step + 1}: stopping. "
                    f"The last good checkpoint is {self.run_dir / 'last.pth'}; "
                    "try a lower optim.lr or trainer.grad_clip"
                )
            self.scaler.scale(loss).backward()
            if clip is not None:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), float(clip))
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            n = len(images)
            p.loss_sum += loss_value * n
            p.dice_sum += float(dice_per_image(binarize(logits.detach(), self.threshold), masks > 0.5).sum())
            p.seen += n
            p.step += 1
            p.global_step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{p.loss_sum / p.seen:.4f}", dice=f"{p.dice_sum / p.seen:.4f}")
            if stop.signum is not None:
                bar.close()
                self._interrupt(stop.signum)
            every = self.cfg.trainer.checkpoint.get("every_n_steps")
            if every and p.global_step % int(every) == 0 and p.step < self.steps_per_epoch:
                self._save("last.pth")
        bar.close()
        return {"loss": p.loss_sum / max(p.seen, 1), "dice": p.dice_sum / max(p.seen, 1)}

    def _interrupt(self, signum: int) -> None:
        path = self._save("last.pth")
        raise TrainingInterrupted(
            f"stopped by {signal.Signals(signum).name} at epoch {self.progress.epoch + 1}, step "
            f"{self.progress.step}; state saved to {path}. Resume with:\n"
            f"  python src/train.py trainer.resume={self.run_dir} hydra.run.dir={self.run_dir}",
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

        metrics = evaluate(
            self.model,
            self.val_loader,
            self.runtime,
            loss_fn=self.loss_fn,
            threshold=self.threshold,
            limit_batches=self.cfg.trainer.limit_val_batches,
            desc=f"valid {epoch + 1}/{epochs}",
            on_batch=keep if want else None,
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
        writer: SummaryWriter,
    ) -> None:
        p = self.progress
        step = epoch + 1  # TensorBoard x axis: epochs, 1-based
        lr = self.optimizer.param_groups[0]["lr"]
        record = {
            "epoch": step,
            "train/loss": train_metrics["loss"],
            "train/dice": train_metrics["dice"],
            "val/loss": val_metrics["loss"],
            "val/dice": val_metrics["dice"],
            "val/dice_pooled": val_metrics["dice_pooled"],
            "lr": lr,
        }
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
            "epoch %d/%d  train loss %.4f dice %.4f | val loss %.4f dice %.4f (pooled %.4f)%s",
            step,
            epochs,
            record["train/loss"],
            record["train/dice"],
            record["val/loss"],
            record["val/dice"],
            record["val/dice_pooled"],
            "  *best*" if improved else "",
        )
        ckpt_cfg = self.cfg.trainer.checkpoint
        if ckpt_cfg.save_last or improved:
            # last.pth is written even when save_last is off and only best is wanted: best.pth is a copy.
            self._save("last.pth")
        if improved and ckpt_cfg.save_best:
            shutil.copyfile(self.run_dir / "last.pth", self.run_dir / ".best.pth.tmp")
            Path(self.run_dir / ".best.pth.tmp").replace(self.run_dir / "best.pth")

    def _export(self) -> None:
        ckpt_cfg = self.cfg.trainer.checkpoint
        if not ckpt_cfg.export_dir or not (self.run_dir / "best.pth").is_file():
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
    """Train as the config says, in ``run_dir``; returns the best validation Dice."""
    return Trainer(cfg, Path(run_dir)).fit()
