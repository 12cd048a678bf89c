"""Score a checkpoint on a split by the reference protocol and two others (petseg/evaluation.py).

    python src/evaluate.py checkpoint=saved_models/unet.pth split=test
    python src/evaluate.py checkpoint=... split=test data.root=<root> data.allow_missing=true tta=flip
    python src/evaluate.py checkpoint=... split=test output=outputs/eval/unet.json report=true

It rebuilds the checkpoint's own data pipeline for the split, runs the one evaluation loop that
training's validation runs too (``petseg.evaluation.evaluate``), prints ``dice_256`` (the headline),
``dice_native`` and ``dice_input``, and writes them as JSON with a per-image CSV beside it;
``report=true`` adds per-breed tables and best/worst galleries.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from petseg.checkpoint import load_checkpoint, model_from_checkpoint
from petseg.checks import check_model_fits_data
from petseg.cli import run_command
from petseg.command_config import load_cli_config
from petseg.data_settings import data_settings
from petseg.datasets import build_dataset
from petseg.evaluation import PROTOCOLS, check_tta, evaluate, format_protocols
from petseg.evaluation_report import breed_of, species_of, write_report
from petseg.loaders import build_dataloader
from petseg.model_input import ModelInput
from petseg.paths import PROJECT_ROOT, project_path
from petseg.runtime import setup_runtime
from petseg.scoring_data import scoring_data
from petseg.transforms import aug_settings
from petseg.upgrade import upgrade_config
from petseg.value_checks import check_device, check_threshold


def evaluate_checkpoint(cfg: DictConfig, report_dir: Path | None = None) -> dict[str, Any]:
    """Load a checkpoint, rebuild its data pipeline for ``cfg.split`` and score it by every protocol;
    with ``report_dir``, also write the per-breed tables and galleries there."""
    tta = check_tta(cfg.tta)
    check_threshold(cfg.threshold, "threshold")
    check_device(cfg.device, "device")
    ckpt = load_checkpoint(cfg.checkpoint)
    train_cfg = upgrade_config(ckpt["config"])
    data_cfg, where = scoring_data(train_cfg.data, cfg.data)
    print(f"data: {where}", flush=True)  # first: which copy is scored, before any work on it
    data = data_settings(data_cfg)  # the checkpoint's data settings with this command's data.* keys
    check_model_fits_data(train_cfg.model.name, data)
    runtime = setup_runtime(OmegaConf.merge(train_cfg.trainer, {"device": cfg.device}), device_key="device")
    model = runtime.prepare(model_from_checkpoint(ckpt))
    dataset = build_dataset(data, aug_settings(train_cfg.aug), cfg.split)
    loader = build_dataloader(dataset, data, train=False)
    model_input = ModelInput.of(data, runtime)
    metrics = evaluate(
        model,
        loader,
        model_input,
        threshold=float(cfg.threshold),
        desc=f"eval {cfg.split}",
        native=True,
        tta=tta,
        headline=data.headline,
    )
    if report_dir is not None:
        per_image = {row["name"]: row["dice_256"] for row in metrics["per_image"]}
        write_report(
            model,
            model_input,
            dataset,
            per_image,
            report_dir,
            int(cfg.gallery_size),
            float(cfg.threshold),
            tta,
        )
    return {
        "model": train_cfg.model.name,
        "split": cfg.split,
        "image_size": data.image_size,
        "missing": len(getattr(dataset, "missing", [])),
        "metrics": metrics,
        "tta": tta,
    }


def metrics_json(metrics: dict[str, Any], tta: bool) -> dict[str, Any]:
    """What evaluate.py writes: exactly dice_256, dice_native, dice_input ({"mean", "pooled"}), n, tta."""
    return {p: metrics["protocols"][p] for p in PROTOCOLS} | {
        "n": metrics["count"],
        "tta": "flip" if tta else "none",
    }


PER_IMAGE_COLUMNS = ("name", "species", "breed", "fg_fraction", *PROTOCOLS)


def write_per_image_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """One row per image: name, species, breed, foreground fraction (256x256 truth), each protocol's Dice."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=PER_IMAGE_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({"species": species_of(row["name"]), "breed": breed_of(row["name"])} | row)


def per_image_csv_path(output: Path) -> Path:
    return output.with_name(f"{output.stem}_per_image.csv")


def default_output(checkpoint: str, split: str) -> Path:
    """Beside the checkpoint, except for one in the project outside outputs/ (saved_models/): then
    under outputs/eval/, so that no command writes into tracked folders."""
    ckpt = Path(checkpoint).absolute()
    name = f"{ckpt.stem}_{split}_metrics.json"
    outputs = project_path("outputs")
    if ckpt.is_relative_to(PROJECT_ROOT) and not ckpt.is_relative_to(outputs):
        return outputs / "eval" / name
    return ckpt.with_name(name)


def main(argv: list[str] | None = None) -> int:
    def run() -> int:
        cfg = load_cli_config("evaluate", sys.argv[1:] if argv is None else argv)
        output = Path(cfg.output) if cfg.output else default_output(cfg.checkpoint, cfg.split)
        # The report goes beside the metrics it explains: <output stem>/ unless report_dir says where.
        report_dir = (
            (Path(cfg.report_dir) if cfg.report_dir else output.with_suffix("")) if cfg.report else None
        )
        result = evaluate_checkpoint(cfg, report_dir)
        metrics = result["metrics"]
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(metrics_json(metrics, result["tta"]), indent=2) + "\n")
        per_image = per_image_csv_path(output)
        write_per_image_csv(metrics["per_image"], per_image)
        missing = f", {result['missing']} listed images missing" if result["missing"] else ""
        print(
            f"{result['model']} on {result['split']}: {metrics['count']} images{missing}; model input "
            f"{result['image_size']} px, flip TTA {'on' if result['tta'] else 'off'}"
        )
        print("\n".join(format_protocols(metrics["protocols"], result["image_size"])))
        print(f"metrics written to {output}, per-image scores to {per_image}")
        if report_dir is not None:
            print(f"report (per-breed tables, best/worst galleries) written to {report_dir}")
        return 0

    return run_command(run)


if __name__ == "__main__":
    sys.exit(main())
