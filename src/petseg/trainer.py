"""The one training loop: built objects and plain settings in (``petseg.build.build_trainer``), best
validation Dice out.

``train_step`` is one optimisation step (``settings.accumulate`` micro-batches); ``train_epoch`` runs
them at the epoch's size (``settings.size_at``), one collective per step for metrics and stop requests;
``validate`` scores the valid split by the reference protocol (``evaluate()``); ``fit`` runs the epochs
and saves ``last.pth`` (``state_dict``: all resume needs) and ``best.pth`` (by ``settings.monitor``).
Test images are never touched. TensorBoard, thread tuning, mid-epoch saves, EMA and the export are
callbacks (``petseg.callbacks``). SIGINT/SIGTERM save last.pth and exit 128 + signal; a non-finite loss
or weight stops the run before it reaches last.pth. Under torchrun each rank trains and validates on
its shard, metrics summed over ranks; only rank 0 writes. Setting a run up: ``petseg.run``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from petseg.callbacks import callback_states, load_callback_states
from petseg.checkpoint import evaluation_state, save_checkpoint
from petseg.distributed import SINGLE, DistInfo, all_sum, broadcast_buffers
from petseg.ema import EMA
from petseg.errors import PetsegError, TrainingDiverged
from petseg.evaluation import ReferenceTargets, evaluate
from petseg.progress import Progress, epoch_line, epoch_record
from petseg.resume import resume_command
from petseg.run_objects import RunObjects
from petseg.settings import TrainSettings
from petseg.signals import StopSignals, TrainingInterrupted
from utils import binarize, capture_rng, dice_per_image, restore_rng

log = logging.getLogger("petseg.train")


class Trainer:
    """Trains the built objects of one run (``petseg.build``) as ``settings`` say; ``callbacks``
    (petseg.callbacks) do what is not the step: logs, thread tuning, mid-epoch saves, EMA, export.

    ``record`` is what checkpoints say about the run besides its state: the resolved config (so
    evaluation rebuilds the model from the file alone), the chosen group options, the runtime.
    """

    def __init__(
        self,
        built: RunObjects,
        settings: TrainSettings,
        run_dir: Path,
        config: dict[str, Any],
        dist: DistInfo = SINGLE,
        stop: StopSignals | None = None,
        callbacks: Sequence[Any] = (),
        choices: dict[str, str] | None = None,
    ) -> None:
        self.built, self.settings, self.config, self.dist = built, settings, config, dist
        self.run_dir = Path(run_dir)
        # Only a flag that handlers set: a Trainer used without fit() just never sees a signal.
        self.stop = stop if stop is not None else StopSignals()
        self.callbacks = list(callbacks)
        self.ema: EMA | None = next((c for c in self.callbacks if isinstance(c, EMA)), None)
        self.model, self.runtime = built.model, built.runtime
        self.optimizer, self.scheduler, self.scaler = built.optimizer, built.scheduler, built.scaler
        self.steps_per_epoch = built.steps_per_epoch  # optimiser steps (of settings.accumulate batches)
        self.current_size = settings.size_at(0)
        self.val_targets: ReferenceTargets | None = None  # made at the first validation
        self.progress = Progress()
        self.saved_at = time.monotonic()  # of last.pth, for trainer.checkpoint.every_n_minutes
        self.resumed_from: Path | None = None
        self.choices = dict(choices or {})  # the option of each config group (HParams tab, checkpoints)

    @property
    def eval_model(self) -> torch.nn.Module:
        """The weights validation scores and best.pth keeps: the EMA's when trainer.ema is on."""
        return self.ema.module if self.ema is not None else self.model

    # ------------------------------------------------------------------------------------ the step
    def train_step(self, batches: dict[str, Any] | Sequence[dict[str, Any]]) -> torch.Tensor:
        """One optimisation step on ``batches`` (one batch, or the micro-batches of a gradient
        accumulation): forward, loss, backward for each, then clip and step once. Returns this
        process's [loss sum, Dice sum, image count] as a tensor (no host sync, no I/O)."""
        batches = [batches] if isinstance(batches, dict) else list(batches)
        self.optimizer.zero_grad(set_to_none=True)
        sums = []
        for i, batch in enumerate(batches):
            images, masks = self.built.model_input(batch)
            # DDP all-reduces the gradients on the last micro-batch only.
            last = i == len(batches) - 1
            sync = (
                contextlib.nullcontext()
                if last
                else getattr(self.built.train_model, "no_sync", contextlib.nullcontext)()
            )
            with sync:
                with self.runtime.autocast():
                    logits = self.built.train_model(images)
                loss = self.built.loss_fn(logits.float(), masks)
                self.scaler.scale(loss / len(batches)).backward()
            n = len(images)
            dice_sum = dice_per_image(binarize(logits.detach(), self.settings.threshold), masks > 0.5).sum()
            sums.append(
                torch.stack(
                    [loss.detach().float() * n, dice_sum.float(), torch.tensor(float(n), device=loss.device)]
                )
            )
        if self.settings.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.settings.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return torch.stack(sums).sum(0)

    def _step_batches(self, loader: Any) -> Iterator[list[dict[str, Any]]]:
        """The loader's batches in groups of settings.accumulate (an incomplete last group is dropped)."""
        group: list[dict[str, Any]] = []
        for batch in loader:
            group.append(batch)
            if len(group) == self.settings.accumulate:
                yield group
                group = []

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """The steps of epoch ``epoch`` (0-based) from where progress stands; its mean loss and Dice."""
        progress, steps, settings = self.progress, self.steps_per_epoch, self.settings
        self.current_size = settings.size_at(epoch)
        loader = self.built.train_loader_at(self.current_size)
        # Resuming mid-epoch: the sampler skips the samples of the steps already trained.
        loader.sampler.set_epoch(epoch, start=progress.step * settings.batch_size * settings.accumulate)
        self.model.train()
        size = f" at {self.current_size} px" if settings.size_schedule else ""
        desc = f"epoch {epoch + 1}/{settings.epochs}{size}"
        # `with`: the bar is closed on any exit, so an error or the resume command gets its own line.
        with tqdm(
            total=steps, initial=progress.step, desc=desc, dynamic_ncols=True, disable=not self.dist.is_main
        ) as bar:
            for batches in self._step_batches(loader) if progress.step < steps else ():
                started = time.perf_counter()
                sums = self.train_step(batches)
                # One collective per step: every rank sees the global sums (the same NaN stops every
                # rank) and whether any rank was asked to stop.
                loss_sum, dice_sum, n, stop = self._all_sum(
                    [*sums.tolist(), 1.0 if self.stop.signum else 0.0]
                )
                if not math.isfinite(loss_sum):
                    raise self._non_finite(
                        f"loss became {loss_sum / n} at epoch {epoch + 1}, step {progress.step + 1}"
                    )
                progress.add_step(loss_sum, dice_sum, int(n))
                for callback in self.callbacks:
                    callback.after_step(self, time.perf_counter() - started)
                bar.update(1)
                bar.set_postfix({k: f"{v:.4f}" for k, v in progress.means().items()})
                if stop:
                    self._interrupt(self.stop.signum or signal.SIGTERM)
                if progress.step >= steps:
                    break  # limit_train_batches: do not load a batch that will not be used
        return progress.means()

    def validate(self, epoch: int) -> tuple[dict[str, Any], list]:
        """Metrics of the valid split (``evaluate()``) for the evaluated weights (``eval_model``), and
        overlay samples on overlay epochs."""
        samples: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        want = self.settings.overlays_at(epoch)

        def keep(batch: dict[str, Any], logits: torch.Tensor, _dice: torch.Tensor) -> None:
            pred = binarize(logits, self.settings.threshold)
            for i in range(min(want - len(samples), len(logits))):
                image = batch["image"][i].permute(1, 2, 0).numpy()  # the uint8 item, as loaded
                samples.append((image, batch["mask"][i, 0].numpy() > 0, pred[i, 0].cpu().numpy()))

        if self.val_targets is None:
            # val/dice is the reference protocol's (256x256 masks), so runs at any image size compare;
            # the 256x256 masks are made once, here, and kept.
            self.val_targets = ReferenceTargets.of(self.built.val_set, keep=True)
        # Each rank's BatchNorm statistics followed its own last batches: score rank 0's (the saved ones).
        broadcast_buffers(self.eval_model, self.dist)
        common = dict(
            loss_fn=self.built.loss_fn,
            threshold=self.settings.threshold,
            limit_batches=self.settings.limit_val_batches,
            progress=self.dist.is_main,
            dist=self.dist,
            targets=self.val_targets,
            headline=self.settings.headline,
        )
        desc = f"valid {epoch + 1}/{self.settings.epochs}"
        on_batch = keep if want and self.dist.is_main else None
        metrics = evaluate(
            self.eval_model,
            self.built.val_loader,
            self.built.model_input,
            desc=desc,
            on_batch=on_batch,
            **common,
        )
        if self.ema is not None and self.settings.is_report_epoch(epoch):
            # The trained weights too, so what the average gains is measured, not assumed; on the first,
            # the last and every overlays.every_n_epochs-th epoch only: a second pass every epoch cost
            # ~4 min of a 67-min CPU run.
            broadcast_buffers(self.model, self.dist)
            raw = evaluate(
                self.model, self.built.val_loader, self.built.model_input, desc=f"{desc} (no EMA)", **common
            )
            metrics["dice_raw"] = raw["dice"]
        return metrics, samples

    def fit(self) -> float:
        """Train the remaining epochs; the best monitored validation metric."""
        progress = self.progress
        started = time.time()
        try:
            for callback in self.callbacks:
                callback.before_fit(self)
            for epoch in range(progress.epoch, self.settings.epochs):
                self._check_stop()  # a signal during setup, validation or the last save
                train_metrics = self.train_epoch(epoch)
                val_metrics, samples = self.validate(epoch)
                self._end_epoch(epoch, train_metrics, val_metrics, samples)
            minutes = (time.time() - started) / 60
            log.info(
                "done in %.1f min: best val Dice %.4f at epoch %d",
                minutes,
                progress.best_metric,
                progress.best_epoch,
            )
            for callback in self.callbacks:
                callback.after_fit(self, time.time() - started)
        finally:
            for callback in self.callbacks:
                getattr(callback, "close", lambda: None)()
        return progress.best_metric

    # ------------------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything a checkpoint holds: the evaluated weights ("model": the EMA's when on, what
        evaluation loads), the trained ones when they differ ("train_weights"), config, progress,
        optimiser, schedule, scaler, callback states, RNG states."""
        progress = self.progress
        weights = self.model.state_dict()
        trained = {} if self.ema is None else {"train_weights": weights}
        return {
            "model": self.eval_model.state_dict(),
            **trained,
            "config": self.config,
            "epoch": progress.epoch,
            "metrics": progress.history[-1] if progress.history else {},
            "best": {"metric": progress.best_metric, "epoch": progress.best_epoch},
            "history": progress.history,
            "progress": asdict(progress),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "callbacks": callback_states(self.callbacks),
            "rng": capture_rng(),
            "train_images": len(self.built.train_set),
            "world_size": self.dist.world_size,
            "runtime": self.runtime.describe(),  # what the 'auto' settings became, and why
            "choices": self.choices,
        }

    def load_state_dict(self, ckpt: dict[str, Any]) -> None:
        """Continue from a ``state_dict()`` (weights, optimiser, schedule, scaler, progress, callbacks,
        RNGs)."""
        self.model.load_state_dict(ckpt.get("train_weights", ckpt["model"]))
        if self.ema is not None:
            if "train_weights" not in ckpt:
                raise PetsegError("it was trained without trainer.ema, which a resumed run cannot add")
            self.ema.module.load_state_dict(ckpt["model"])
        elif "train_weights" in ckpt:
            raise PetsegError("it was trained with trainer.ema, which a resumed run cannot drop")
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        load_callback_states(self.callbacks, ckpt.get("callbacks", {}))
        self.progress = Progress(**ckpt["progress"])
        self.current_size = self.settings.size_at(self.progress.epoch)
        restore_rng(ckpt["rng"])

    def save(self, name: str, for_evaluation: bool = False) -> Path:
        """Write the state to ``<run dir>/<name>`` (rank 0), or with ``for_evaluation`` only what
        evaluation reads (best.pth); never a non-finite weight."""
        # A weight that overflowed must never replace the last good checkpoint. The weights are the
        # same on every rank (DDP), so every rank takes the same branch; only rank 0 writes.
        for key, value in self.model.state_dict().items():
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise self._non_finite(f"weight {key} became non-finite {self._where()}")
        path = self.run_dir / name
        if name == "last.pth":
            self.saved_at = time.monotonic()
        if not self.dist.is_main:
            return path
        state = self.state_dict()
        return save_checkpoint(path, evaluation_state(state) if for_evaluation else state)

    # ------------------------------------------------------------------------------------ helpers
    def _all_sum(self, values: list[float]) -> list[float]:
        return all_sum(values, self.dist, self.runtime.device)

    def _where(self) -> str:
        return self.progress.where(self.steps_per_epoch)

    def _non_finite(self, what: str) -> PetsegError:
        last = self.run_dir / "last.pth"
        kept = f"the last good checkpoint is {last}" if last.is_file() else "no checkpoint was saved yet"
        return TrainingDiverged(
            f"{what}: stopping ({kept}); lower optim.lr or set trainer.grad_clip",
            best_metric=self.progress.best_metric,
        )

    def _check_stop(self) -> None:
        """Between steps: stop if any rank was asked to (all ranks must stop at the same point, or the
        others would wait forever in the next collective)."""
        if self._all_sum([1.0 if self.stop.signum else 0.0])[0] > 0:
            self._interrupt(self.stop.signum or signal.SIGTERM)

    def _interrupt(self, signum: int) -> None:
        path = self.save("last.pth")
        raise TrainingInterrupted(
            f"stopped by {signal.Signals(signum).name} {self._where()}; state saved to {path}. "
            f"Resume with:\n  {resume_command(self.run_dir)}",
            exit_code=128 + signum,
        )

    def _end_epoch(self, epoch: int, train: dict[str, float], val: dict[str, Any], samples: list) -> None:
        if val["loss"] is not None and not math.isfinite(val["loss"]):
            raise self._non_finite(f"validation loss became {val['loss']} at epoch {epoch + 1}")
        record = epoch_record(epoch + 1, train, val, self.optimizer.param_groups[0]["lr"])
        for callback in self.callbacks:
            callback.after_epoch(self, record, samples)
        improved = self.progress.end_epoch(record, self.settings.monitor)
        log.info(
            "%s%s",
            epoch_line(record, self.settings.epochs, self.settings.headline),
            "  *best*" if improved else "",
        )
        if self.settings.save_last:
            self.save("last.pth")
        if improved and self.settings.save_best:
            self.save("best.pth", for_evaluation=True)  # what evaluation needs, not the optimiser
