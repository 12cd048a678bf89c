"""Evaluation reports: Dice per breed and per species, and a gallery of the best and worst predictions.

Used by ``python src/evaluate.py checkpoint=... split=test report=true``; the tables and pictures land in
the report folder so a user can regenerate every figure of docs/REPORT.md for their own runs.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from petseg.evaluation import predict_logits
from petseg.model_input import ModelInput
from petseg.pictures import comparison_rows
from utils import binarize


def breed_of(name: str) -> str:
    """'american_pit_bull_terrier_12' -> 'american_pit_bull_terrier' (the release's file naming)."""
    return name.rsplit("_", 1)[0]


def species_of(name: str) -> str:
    """The release names cat breeds with a capital first letter and dog breeds in lower case."""
    return "cat" if name[:1].isupper() else "dog"


def group_dice(per_image: dict[str, float], key: Callable[[str], str]) -> list[dict[str, object]]:
    """Mean Dice per group (breed or species), worst group first, with image counts and min/max."""
    groups: dict[str, list[float]] = defaultdict(list)
    for name, dice in per_image.items():
        groups[key(name)].append(dice)
    rows = [
        {
            "group": group,
            "images": len(values),
            "mean_dice": float(np.mean(values)),
            "min_dice": float(np.min(values)),
            "max_dice": float(np.max(values)),
        }
        for group, values in groups.items()
    ]
    return sorted(rows, key=lambda r: r["mean_dice"])


def write_table(rows: list[dict[str, object]], csv_path: Path, title: str) -> str:
    """Save rows as CSV and return them as a Markdown table."""
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    header = f"| {title} | images | mean dice_256 | min | max |\n|---|---:|---:|---:|---:|\n"
    body = "".join(
        f"| {r['group']} | {r['images']} | {r['mean_dice']:.4f} | {r['min_dice']:.4f} "
        f"| {r['max_dice']:.4f} |\n"
        for r in rows
    )
    return header + body


def gallery(
    entries: list[tuple[str, float, np.ndarray, np.ndarray, np.ndarray]], path: Path, tile: int = 160
) -> Path:
    """Rows of [image | ground truth | prediction] with the name and Dice written above each row."""
    samples = [(image, truth, pred) for _name, _dice, image, truth, pred in entries]
    captions = [
        f"{name}  Dice {dice:.3f}   (image | ground truth | prediction)" for name, dice, *_ in entries
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(comparison_rows(samples, tile, captions)).save(path)
    return path


@torch.no_grad()
def write_report(
    model: nn.Module,
    model_input: ModelInput,
    dataset: Any,
    per_image: dict[str, float],
    out_dir: Path,
    gallery_size: int,
    threshold: float,
    tta: bool = False,
) -> None:
    """Per-breed and per-species Dice tables (CSV + Markdown) and best/worst prediction galleries of
    ``dataset`` (an OxfordPetDataset), from the per-image ``dice_256`` of an evaluation."""
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
            logits = predict_logits(model, model_input.images(item["image"][None]), model_input.runtime, tta)
            pred = binarize(logits, threshold)[0, 0].cpu().numpy()
            image = item["image"].permute(1, 2, 0).numpy()
            entries.append((name, per_image[name], image, item["mask"][0].numpy() > 0, pred))
        gallery(entries, out_dir / f"gallery_{label}.png")
