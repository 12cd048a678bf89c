"""Evaluation reports: Dice per breed and per species, and a gallery of the best and worst predictions.

Used by ``python src/evaluate.py checkpoint=... split=test report=true``; the tables and pictures land in
the report folder so a user can regenerate every figure of docs/REPORT.md for their own runs.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from petseg.pictures import comparison_rows


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
