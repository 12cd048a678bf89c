"""The one evaluation loop, and the command that scores a checkpoint on a split.

    python src/evaluate.py checkpoint=saved_models/unet.pth split=test
    python src/evaluate.py checkpoint=... split=test data.root=<root> data.allow_missing=true

Training's validation calls ``evaluate()`` too, so validation and test numbers are computed the same way.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from tqdm import tqdm

from distributed import SINGLE, DistInfo, all_gather_list, all_sum
from runtime import Runtime
from utils import DiceMeter, binarize


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    runtime: Runtime,
    loss_fn: nn.Module | None = None,
    threshold: float = 0.5,
    limit_batches: int | None = None,
    progress: bool = True,
    desc: str = "eval",
    on_batch: Any = None,
    dist: DistInfo = SINGLE,
) -> dict[str, Any]:
    """Score a model on a loader: mean per-image Dice, pooled Dice, mean loss, image count.

    ``on_batch(batch, logits, dice)`` lets callers (overlays, galleries) see predictions without a
    second pass. Returns also ``per_image``: a list of (name, dice) pairs.

    Under DDP (``dist.enabled``) every rank scores its shard (sampler.ShardSampler: every
    world_size-th image, no padding) and the counts are summed over ranks, so every rank returns the
    numbers a single process computes on the whole split; per_image is put back in list order.
    """
    was_training = model.training
    model.eval()
    meter = DiceMeter()
    names: list[str] = []
    loss_sum, loss_count = 0.0, 0
    total = len(loader) if limit_batches is None else min(len(loader), limit_batches)
    bar = tqdm(loader, total=total, desc=desc, leave=False, disable=not progress, dynamic_ncols=True)
    for index, batch in enumerate(bar):
        if limit_batches is not None and index >= limit_batches:
            break
        images = runtime.to_input(batch["image"])
        masks = batch["mask"].to(runtime.device, non_blocking=True)
        with runtime.autocast():
            logits = model(images)
        logits = logits.float()
        if loss_fn is not None:
            loss_sum += float(loss_fn(logits, masks)) * len(images)
            loss_count += len(images)
        dice = meter.update(binarize(logits, threshold), masks > 0.5)
        names.extend(batch["name"])
        if on_batch is not None:
            on_batch(batch, logits, dice)
        bar.set_postfix(dice=f"{meter.mean:.4f}")
    model.train(was_training)
    per_image = list(zip(names, meter.per_image, strict=True))
    if dist.enabled:
        sums = [meter.intersection, meter.total, loss_sum, loss_count]
        meter.intersection, meter.total, loss_sum, loss_count = all_sum(sums, dist, runtime.device)
        per_image = interleave_shards(all_gather_list([per_image], dist))
        meter.per_image = [dice for _, dice in per_image]
        meter.count = len(per_image)
        meter.dice_sum = sum(meter.per_image)  # in list order: the single-process sum, term for term
    return {
        "dice": meter.mean,
        "dice_pooled": meter.pooled,
        "loss": loss_sum / loss_count if loss_count else None,
        "count": meter.count,
        "per_image": per_image,
    }


def interleave_shards(shards: list[list[Any]]) -> list[Any]:
    """Undo ShardSampler's split: rank r's k-th item is item r + k * world_size of the whole list."""
    merged: list[Any] = []
    for k in range(max((len(s) for s in shards), default=0)):
        merged.extend(shard[k] for shard in shards if k < len(shard))
    return merged


# ------------------------------------------------------------------------------------------ command
def evaluate_checkpoint(cfg: DictConfig) -> dict[str, Any]:
    """Load a checkpoint, rebuild its data pipeline for ``cfg.split`` and score it."""
    from checkpoint import load_checkpoint, model_from_checkpoint
    from oxford_pet import build_dataloader, build_dataset
    from runtime import runtime_from_config

    ckpt = load_checkpoint(cfg.checkpoint)
    train_cfg = OmegaConf.create(ckpt["config"])
    data_cfg = merge_data_overrides(train_cfg.data, cfg.data)
    runtime = runtime_from_config(OmegaConf.merge(train_cfg.trainer, {"device": cfg.device}))
    model = runtime.prepare(model_from_checkpoint(ckpt))
    dataset = build_dataset(data_cfg, train_cfg.aug, cfg.split)
    loader = build_dataloader(dataset, data_cfg, train=False)
    metrics = evaluate(model, loader, runtime, threshold=float(cfg.threshold), desc=f"eval {cfg.split}")
    per_image = {name: dice for name, dice in metrics["per_image"]}
    if cfg.report:
        report_dir = (
            Path(cfg.report_dir)
            if cfg.report_dir
            else default_output(cfg.checkpoint, cfg.split).with_suffix("")
        )
        write_report(
            model, runtime, dataset, per_image, report_dir, int(cfg.gallery_size), float(cfg.threshold)
        )
    return {
        "checkpoint": str(cfg.checkpoint),
        "model": train_cfg.model.name,
        "split": cfg.split,
        "data_root": str(data_cfg.root),
        "image_size": int(data_cfg.image_size),
        "threshold": float(cfg.threshold),
        "dice_mean": metrics["dice"],
        "dice_pooled": metrics["dice_pooled"],
        "count": metrics["count"],
        "missing": len(getattr(dataset, "missing", [])),
        "per_image": per_image,
    }


@torch.no_grad()
def write_report(
    model: nn.Module,
    runtime: Runtime,
    dataset: Any,
    per_image: dict[str, float],
    out_dir: Path,
    gallery_size: int,
    threshold: float,
) -> None:
    """Per-breed and per-species Dice tables (CSV + Markdown) and best/worst prediction galleries."""
    from report import breed_of, gallery, group_dice, species_of, write_table
    from utils import denormalize

    out_dir.mkdir(parents=True, exist_ok=True)
    tables = [
        write_table(group_dice(per_image, breed_of), out_dir / "per_breed.csv", "breed"),
        write_table(group_dice(per_image, species_of), out_dir / "per_species.csv", "species"),
    ]
    (out_dir / "per_group.md").write_text("\n".join(tables))
    ranked = sorted(per_image, key=per_image.__getitem__)
    index = {name: i for i, name in enumerate(dataset.names)}
    model.eval()
    for label, names in (("worst", ranked[:gallery_size]), ("best", ranked[::-1][:gallery_size])):
        entries = []
        for name in names:
            item = dataset[index[name]]
            with runtime.autocast():
                logits = model(runtime.to_input(item["image"][None]))
            pred = binarize(logits.float(), threshold)[0, 0].cpu().numpy()
            image = denormalize(item["image"], list(dataset.mean), list(dataset.std))
            entries.append((name, per_image[name], image, item["mask"][0].numpy() > 0.5, pred))
        gallery(entries, out_dir / f"gallery_{label}.png")


def merge_data_overrides(data_cfg: DictConfig, overrides: DictConfig) -> DictConfig:
    """The checkpoint's data settings with the keys given on the command line replaced."""
    from errors import PetsegError

    unknown = sorted(set(overrides) - set(data_cfg))
    if unknown:
        raise PetsegError(f"unknown data key(s) {', '.join(unknown)}; valid: {', '.join(sorted(data_cfg))}")
    return OmegaConf.merge(data_cfg, overrides)


def default_output(checkpoint: str, split: str) -> Path:
    return Path(checkpoint).with_name(f"{Path(checkpoint).stem}_{split}_metrics.json")


def main(argv: list[str] | None = None) -> int:
    from cli import load_cli_config, run_command

    def run() -> int:
        cfg = load_cli_config("evaluate", sys.argv[1:] if argv is None else argv)
        result = evaluate_checkpoint(cfg)
        output = Path(cfg.output) if cfg.output else default_output(cfg.checkpoint, cfg.split)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(result, indent=2) + "\n")
        print(
            f"{result['model']} on {result['split']} ({result['count']} images, {result['image_size']} px): "
            f"mean Dice {result['dice_mean']:.4f}, pooled Dice {result['dice_pooled']:.4f}"
        )
        print(f"metrics written to {output}")
        return 0

    return run_command(run)


if __name__ == "__main__":
    sys.exit(main())
