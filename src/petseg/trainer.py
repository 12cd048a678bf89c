"""The one training loop: built objects in (``petseg.build``), best validation Dice out.

``Trainer.train_step`` is one optimisation step and nothing else. ``train_epoch`` runs the steps with a
progress bar, agreeing across processes on the metrics and a stop request in one collective per step;
``validate`` scores the valid split with ``evaluate()`` by the reference protocol; ``fit`` runs the
epochs, logs to TensorBoard and saves ``last.pth`` (everything needed to resume: ``state_dict``) and
``best.pth`` (by ``cfg.monitor``); at the end the best weights are exported to
``<export_dir>/<model name>.pth``. Test images are never touched here.

Around the step, not inside it: checkpoints are written atomically, also every
``trainer.checkpoint.every_n_steps`` steps; SIGINT/SIGTERM finish the step in flight, save last.pth,
print the resume command and exit with 128 + the signal number (``petseg.signals``); a non-finite loss or
weight stops the run with a ``PetsegError`` naming epoch and step, before anything non-finite reaches
last.pth. Setting a run up (signals, processes, run dir): ``petseg.run``; continuing one: ``petseg.resume``.

Several processes (``torchrun``): the model is wrapped in DistributedDataParallel; each rank trains on
its shard of every epoch and validates on its shard, with metrics summed over ranks, so the logged
numbers equal a single-process evaluation of the same weights. Only rank 0 writes logs, TensorBoard
events and checkpoints.
"""

from __future__ import annotations

import logging
import math
import signal
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from petseg.build import Built
from petseg.checkpoint import copy_checkpoint, export_best, save_checkpoint
from petseg.distributed import (
    SINGLE,
    DistInfo,
    all_sum,
    broadcast_buffers,
)
from petseg.errors import PetsegError, TrainingDiverged
from petseg.evaluation import ReferenceTargets, evaluate
from petseg.pictures import comparison_rows
from petseg.progress import Progress, epoch_line, epoch_record
from petseg.resume import resume_command
from petseg.signals import StopSignals, TrainingInterrupted
from petseg.tb import write_epoch, write_hparams_start, write_run_end
from utils import binarize, capture_rng, dice_per_image, restore_rng

log = logging.getLogger("petseg.train")


def overlays_wanted(epoch: int, trainer: DictConfig) -> int:
    """How many overlays validation of ``epoch`` (0-based) writes: trainer.overlays.count every n
    epochs, the first and the last; 0 on the others."""
    every, epochs = int(trainer.overlays.every_n_epochs or 0), int(trainer.epochs)
    on = every > 0 and ((epoch + 1) % every == 0 or epoch + 1 == epochs or epoch == 0)
    return int(trainer.overlays.count) if on else 0


class Trainer:
    """Trains the built objects of one run (``petseg.build``) as ``cfg.trainer`` says."""

    def __init__(
        self,
        cfg: DictConfig,
        built: Built,
        run_dir: Path,
        dist: DistInfo = SINGLE,
        stop: StopSignals | None = None,
        choices: Mapping[str, str] | None = None,
    ) -> None:
        self.cfg, self.built, self.run_dir, self.dist = cfg, built, Path(run_dir), dist
        # Only a flag that handlers set: a Trainer used without fit() just never sees a signal.
        self.stop = stop if stop is not None else StopSignals()
        self.model, self.runtime = built.model, built.runtime
        self.optimizer, self.scheduler, self.scaler = built.optimizer, built.scheduler, built.scaler
        self.grad_clip = None if cfg.trainer.grad_clip is None else float(cfg.trainer.grad_clip)
        self.threshold = float(cfg.trainer.threshold)
        self.val_targets: ReferenceTargets | None = None  # made at the first validation
        self.progress = Progress()
        self.saved_at = time.monotonic()  # of last.pth, for trainer.checkpoint.every_n_minutes
        self.resumed_from: Path | None = None
        self.choices = dict(choices or {})  # the option of each config group (HParams tab, checkpoints)

    # ------------------------------------------------------------------------------------ the step
    def train_step(self, batch: dict[str, Any]) -> torch.Tensor:
        """One optimisation step on ``batch``: forward, loss, backward, clip, step. Returns this
        process's [loss sum, Dice sum, image count] as a tensor (no host sync, no I/O)."""
        images, masks = self.built.model_input(batch)
        self.optimizer.zero_grad(set_to_none=True)
        with self.runtime.autocast():
            logits = self.built.train_model(images)
        loss = self.built.loss_fn(logits.float(), masks)
        self.scaler.scale(loss).backward()
        if self.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        n = len(images)
        dice_sum = dice_per_image(binarize(logits.detach(), self.threshold), masks > 0.5).sum()
        return torch.stack(
            [loss.detach().float() * n, dice_sum.float(), torch.tensor(float(n), device=loss.device)]
        )

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """The steps of epoch ``epoch`` (0-based) from where progress stands; its mean loss and Dice."""
        progress, steps = self.progress, self.built.steps_per_epoch
        # Resuming mid-epoch: the sampler skips the samples of the steps already trained.
        self.built.train_loader.sampler.set_epoch(epoch, start=progress.step * int(self.cfg.data.batch_size))
        self.model.train()
        desc = f"epoch {epoch + 1}/{self.cfg.trainer.epochs}"
        # `with`: the bar is closed on any exit, so an error or the resume command gets its own line.
        with tqdm(
            total=steps, initial=progress.step, desc=desc, dynamic_ncols=True, disable=not self.dist.is_main
        ) as bar:
            for batch in self.built.train_loader if progress.step < steps else ():
                started = time.perf_counter()
                sums = self.train_step(batch)
                # One collective per step: every rank sees the global sums (the same NaN stops every
                # rank) and whether any rank was asked to stop.
                loss_sum, dice_sum, n, stop = self._all_sum(
                    [*sums.tolist(), 1.0 if self.stop.signum else 0.0]
                )
                if not math.isfinite(loss_sum):
                    raise self._non_finite(
                        f"loss became {loss_sum / n} at epoch {epoch + 1}, step {progress.step + 1}"
                    )
                if self.built.thread_tuner is not None:
                    self.built.thread_tuner.after_step(time.perf_counter() - started)
                progress.add_step(loss_sum, dice_sum, int(n))
                bar.update(1)
                bar.set_postfix({k: f"{v:.4f}" for k, v in progress.means().items()})
                if stop:
                    self._interrupt(self.stop.signum or signal.SIGTERM)
                if progress.step >= steps:
                    break  # limit_train_batches: do not load a batch that will not be used
                if self._mid_epoch_save_due():
                    self._save("last.pth")  # the epoch's end saves anyway
        return progress.means()

    def validate(self, epoch: int) -> tuple[dict[str, Any], list]:
        """Metrics of the valid split (``evaluate()``), and overlay samples on overlay epochs."""
        samples: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        want = overlays_wanted(epoch, self.cfg.trainer)

        def keep(batch: dict[str, Any], logits: torch.Tensor, _dice: torch.Tensor) -> None:
            pred = binarize(logits, self.threshold)
            for i in range(min(want - len(samples), len(logits))):
                image = batch["image"][i].permute(1, 2, 0).numpy()  # the uint8 item, as loaded
                samples.append((image, batch["mask"][i, 0].numpy() > 0, pred[i, 0].cpu().numpy()))

        if self.val_targets is None:
            # val/dice is the reference protocol's (256x256 masks), so runs at any image size compare;
            # the 256x256 masks are made once, here, and kept.
            self.val_targets = ReferenceTargets.of(self.built.val_set, keep=True)
        # Each rank's BatchNorm statistics followed its own last batches: score rank 0's (the saved ones).
        broadcast_buffers(self.model, self.dist)
        metrics = evaluate(
            self.model,
            self.built.val_loader,
            self.built.model_input,
            loss_fn=self.built.loss_fn,
            threshold=self.threshold,
            limit_batches=self.cfg.trainer.limit_val_batches,
            progress=self.dist.is_main,
            desc=f"valid {epoch + 1}/{self.cfg.trainer.epochs}",
            on_batch=keep if want and self.dist.is_main else None,
            dist=self.dist,
            targets=self.val_targets,
        )
        return metrics, samples

    def fit(self) -> float:
        """Train the remaining epochs; the best monitored validation metric."""
        progress, epochs = self.progress, int(self.cfg.trainer.epochs)
        # On resume, TensorBoard drops every event an earlier process logged from the next epoch on
        # (a crash after logging an epoch but before saving it): each epoch appears once in the log.
        purge = progress.epoch + 1 if self.resumed_from is not None else None
        writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=purge) if self.dist.is_main else None
        if writer is not None:
            write_hparams_start(writer, self.cfg, self.choices)
        started = time.time()
        try:
            for epoch in range(progress.epoch, epochs):
                self._check_stop()  # a signal during setup, validation or the last save
                train_metrics = self.train_epoch(epoch)
                val_metrics, samples = self.validate(epoch)
                self._end_epoch(epoch, train_metrics, val_metrics, samples, writer)
            if writer is not None:
                best = (progress.best_metric, progress.best_epoch)
                write_run_end(writer, progress.history, best, time.time() - started)
        finally:
            if writer is not None:
                writer.close()
        best_metric, best_epoch = progress.best_metric, progress.best_epoch
        minutes = (time.time() - started) / 60
        log.info("done in %.1f min: best val Dice %.4f at epoch %d", minutes, best_metric, best_epoch)
        if self.dist.is_main:
            exported = export_best(self.run_dir, self.cfg, best_metric, best_epoch)
            saved = [self.run_dir / n for n in ("best.pth", "last.pth") if (self.run_dir / n).is_file()]
            log.info("checkpoints: %s", ", ".join(map(str, [*saved, *([exported] if exported else [])])))
        return best_metric

    # ------------------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything a checkpoint holds: weights, config, progress, optimiser, schedule, RNG states."""
        progress = self.progress
        return {
            "model": self.model.state_dict(),
            "config": OmegaConf.to_container(self.cfg, resolve=True),
            "epoch": progress.epoch,
            "metrics": progress.history[-1] if progress.history else {},
            "best": {"metric": progress.best_metric, "epoch": progress.best_epoch},
            "history": progress.history,
            "progress": asdict(progress),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": capture_rng(),
            "train_images": len(self.built.train_set),
            "world_size": self.dist.world_size,
            "runtime": self.runtime.describe(),  # what the 'auto' settings became, and why
            "choices": self.choices,
        }

    def load_state_dict(self, ckpt: dict[str, Any]) -> None:
        """Continue from a ``state_dict()`` (weights, optimiser, schedule, scaler, progress, RNGs)."""
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.progress = Progress(**ckpt["progress"])
        restore_rng(ckpt["rng"])

    # ------------------------------------------------------------------------------------ helpers
    def _all_sum(self, values: list[float]) -> list[float]:
        return all_sum(values, self.dist, self.runtime.device)

    def _where(self) -> str:
        return self.progress.where(self.built.steps_per_epoch)

    def _mid_epoch_save_due(self) -> bool:
        """last.pth inside an epoch: every n steps, and every n minutes (so a long first epoch killed
        by the machine's end still leaves a state to resume)."""
        ckpt = self.cfg.trainer.checkpoint
        steps, minutes = int(ckpt.every_n_steps or 0), float(ckpt.every_n_minutes or 0)
        if steps and self.progress.global_step % steps == 0:
            return True
        return minutes > 0 and time.monotonic() - self.saved_at >= minutes * 60

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
        if name == "last.pth":
            self.saved_at = time.monotonic()
        return save_checkpoint(path, self.state_dict()) if self.dist.is_main else path

    def _check_stop(self) -> None:
        """Between steps: stop if any rank was asked to (all ranks must stop at the same point, or the
        others would wait forever in the next collective)."""
        if self._all_sum([1.0 if self.stop.signum else 0.0])[0] > 0:
            self._interrupt(self.stop.signum or signal.SIGTERM)

    def _interrupt(self, signum: int) -> None:
        path = self._save("last.pth")
        raise TrainingInterrupted(
            f"stopped by {signal.Signals(signum).name} {self._where()}; state saved to {path}. "
            f"Resume with:\n  {resume_command(self.run_dir)}",
            exit_code=128 + signum,
        )

    def _end_epoch(
        self,
        epoch: int,
        train: dict[str, float],
        val: dict[str, Any],
        samples: list,
        writer: SummaryWriter | None,
    ) -> None:
        if val["loss"] is not None and not math.isfinite(val["loss"]):
            raise self._non_finite(f"validation loss became {val['loss']} at epoch {epoch + 1}")
        record = epoch_record(epoch + 1, train, val, self.optimizer.param_groups[0]["lr"])
        if writer is not None:
            write_epoch(writer, record, comparison_rows(samples, len(samples[0][0])) if samples else None)
        improved = self.progress.end_epoch(record, self.cfg.monitor)
        log.info("%s%s", epoch_line(record, int(self.cfg.trainer.epochs)), "  *best*" if improved else "")
        ckpt_cfg = self.cfg.trainer.checkpoint
        if ckpt_cfg.save_last or improved:
            # last.pth is written even when save_last is off and only best is wanted: best.pth is a copy.
            self._save("last.pth")
        if improved and ckpt_cfg.save_best and self.dist.is_main:
            copy_checkpoint(self.run_dir / "last.pth", self.run_dir / "best.pth")
