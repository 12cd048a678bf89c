"""End-to-end: the real commands (train, evaluate, inference, curves, multirun) on the committed sample.

Tiny widths and 32 px images keep each run to seconds; the point is the wiring, not the score.
Every run exports to a temporary folder, so the shipped saved_models/ is never touched.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tiny
from curves import read_scalars
from helpers import ROOT, SAMPLE
from petseg.checkpoint import load_checkpoint, model_from_checkpoint

SCALARS = ("train/loss", "train/dice", "val/loss", "val/dice", "lr")

pytestmark = pytest.mark.slow


def tiny_overrides(tmp: Path, epochs: int = 2) -> list[str]:
    """An ``epochs``-epoch run of the tiny recipe with a width-4 UNet, exporting to tmp/saved."""
    return tiny(
        "model=unet",
        "model.base_width=4",
        "data.batch_size=4",
        f"trainer.epochs={epochs}",
        f"trainer.checkpoint.export_dir={tmp / 'saved'}",
        "trainer.limit_train_batches=null",  # a whole run: it exports (tiny's caps make a smoke run)
        "trainer.limit_val_batches=null",
        tmp=tmp,
    )


def run(
    script: str, *args: str, check: bool = True, timeout: int = 300, cwd: Path = ROOT
) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "src" / script), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{script} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real training run shared by the tests below; returns its run dir."""
    tmp = tmp_path_factory.mktemp("train")
    run_dir = tmp / "run"
    run("train.py", *tiny_overrides(tmp), f"hydra.run.dir={run_dir}")
    return run_dir


def test_training_writes_every_scalar_every_epoch(trained: Path):
    scalars = read_scalars(trained, SCALARS)
    for tag in SCALARS:
        assert [step for step, _ in scalars[tag]] == [1, 2], tag
        assert all(np.isfinite(value) for _, value in scalars[tag]), tag
    for tag in ("train/dice", "val/dice"):
        assert all(0.0 <= value <= 1.0 for _, value in scalars[tag])


def test_training_writes_overlays(trained: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = list((trained / "tb").glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(events), size_guidance={"images": 0})
    acc.Reload()
    assert [e.step for e in acc.Images("val/overlays")] == [1, 2]


def test_checkpoints_hold_weights_config_epoch_and_metrics(trained: Path):
    for name in ("last.pth", "best.pth"):
        ckpt = load_checkpoint(trained / name)
        assert ckpt["config"]["model"]["name"] == "unet"
        assert ckpt["config"]["data"]["image_size"] == 32
        assert ckpt["epoch"] in (1, 2)
        assert 0.0 <= ckpt["metrics"]["val/dice"] <= 1.0
        model = model_from_checkpoint(ckpt)
        assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 1, 32, 32)
    last, best = load_checkpoint(trained / "last.pth"), load_checkpoint(trained / "best.pth")
    assert last["epoch"] == 2
    assert best["metrics"]["val/dice"] == max(r["val/dice"] for r in last["history"])
    # best.pth holds what evaluation needs; the optimiser moments (2x the weights with AdamW) only last.pth
    assert "optimizer" in last and "optimizer" not in best and "rng" not in best
    assert (trained / "best.pth").stat().st_size < 0.5 * (trained / "last.pth").stat().st_size
    exported = load_checkpoint(trained.parent / "saved" / "unet.pth")
    assert "optimizer" not in exported  # a deployable copy: weights, config, metrics
    assert all(torch.equal(exported["model"][k], best["model"][k]) for k in best["model"])


def _per_image(csv_path: Path) -> list[dict[str, str]]:
    import csv

    with csv_path.open() as fh:
        return list(csv.DictReader(fh))


def test_evaluate_command_writes_json_and_per_image_csv(trained: Path, tmp_path: Path):
    out = tmp_path / "metrics.json"
    result = run("evaluate.py", f"checkpoint={trained / 'best.pth'}", "split=test", f"output={out}")
    metrics = json.loads(out.read_text())
    assert set(metrics) == {"dice_256", "dice_native", "dice_input", "n", "tta"}
    assert metrics["tta"] == "none"
    test_names = [line.split()[0] for line in (SAMPLE / "annotations" / "test.txt").read_text().splitlines()]
    assert metrics["n"] == len(test_names)
    rows = _per_image(tmp_path / "metrics_per_image.csv")
    assert [r["name"] for r in rows] == test_names
    assert set(rows[0]) == {
        "name",
        "species",
        "breed",
        "fg_fraction",
        "dice_256",
        "dice_native",
        "dice_input",
    }
    for protocol in ("dice_256", "dice_native", "dice_input"):
        assert set(metrics[protocol]) == {"mean", "pooled", "pixel_error"}
        assert 0.0 <= metrics[protocol]["pooled"] <= 1.0 and 0.0 <= metrics[protocol]["pixel_error"] <= 1.0
        assert metrics[protocol]["mean"] == pytest.approx(
            np.mean([float(r[protocol]) for r in rows]), abs=1e-6
        )
    # The reference protocol is printed first, and says what it is.
    lines = result.stdout.splitlines()
    first = next(i for i, line in enumerate(lines) if "dice_" in line)
    assert "dice_256" in lines[first] and "reference protocol" in lines[first]
    assert f"{metrics['dice_256']['mean']:.4f}" in lines[first]


def test_evaluate_with_flip_tta_says_so(trained: Path, tmp_path: Path):
    out = tmp_path / "tta.json"
    result = run(
        "evaluate.py", f"checkpoint={trained / 'best.pth'}", "split=test", f"output={out}", "tta=flip"
    )
    assert json.loads(out.read_text())["tta"] == "flip"
    assert "flip TTA on" in result.stdout
    bad = run("evaluate.py", f"checkpoint={trained / 'best.pth'}", "tta=rotate", check=False)
    assert bad.returncode == 2 and "tta must be one of none, flip" in bad.stderr


def test_evaluate_report_writes_group_tables_and_galleries(trained: Path, tmp_path: Path):
    import csv

    from petseg.evaluation_report import breed_of, species_of

    report_dir = tmp_path / "report"
    run(
        "evaluate.py",
        f"checkpoint={trained / 'best.pth'}",
        "split=test",
        f"output={tmp_path / 'm.json'}",
        "report=true",
        f"report_dir={report_dir}",
        "gallery_size=2",
    )
    per_image = {r["name"]: float(r["dice_256"]) for r in _per_image(tmp_path / "m_per_image.csv")}
    with (report_dir / "per_breed.csv").open() as fh:
        breeds = {row["group"]: row for row in csv.DictReader(fh)}
    assert set(breeds) == {breed_of(n) for n in per_image}
    for breed, row in breeds.items():
        scores = [d for n, d in per_image.items() if breed_of(n) == breed]
        assert float(row["mean_dice"]) == pytest.approx(np.mean(scores))
        assert int(row["images"]) == len(scores)
    with (report_dir / "per_species.csv").open() as fh:
        assert {row["group"] for row in csv.DictReader(fh)} == {species_of(n) for n in per_image}
    for label in ("best", "worst"):
        with Image.open(report_dir / f"gallery_{label}.png") as picture:
            assert picture.height > 2 * 100  # two rows


def test_report_goes_beside_the_output_and_says_where(trained: Path, tmp_path: Path):
    output = tmp_path / "elsewhere" / "unet_test.json"
    done = run(
        "evaluate.py",
        f"checkpoint={trained / 'best.pth'}",
        "split=test",
        f"output={output}",
        "report=true",
        "gallery_size=1",
    )
    report_dir = tmp_path / "elsewhere" / "unet_test"  # <output stem>/, not beside the checkpoint
    assert (report_dir / "per_breed.csv").is_file() and (report_dir / "gallery_best.png").is_file()
    assert (
        done.stdout.rstrip().splitlines()[-1]
        == f"report (per-breed tables, best/worst galleries) written to {report_dir}"
    )
    assert not list(trained.glob("best_test_metrics*"))


def test_inference_on_a_folder_writes_masks_overlays_and_grid(trained: Path, tmp_path: Path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("Bengal_100", "beagle_102"):
        shutil.copy(SAMPLE / "images" / f"{name}.jpg", inputs / f"{name}.jpg")
    out = tmp_path / "out"
    run("inference.py", f"checkpoint={trained / 'best.pth'}", f"input={inputs}", f"output={out}")
    for name in ("Bengal_100", "beagle_102"):
        with Image.open(inputs / f"{name}.jpg") as original:
            size = original.size
        with Image.open(out / f"{name}_mask.png") as mask:
            assert mask.size == size  # at the original size, not the model's 32 px
            assert set(np.unique(np.asarray(mask)).tolist()) <= {0, 255}
        with Image.open(out / f"{name}_overlay.png") as over:
            assert over.size == size and over.mode == "RGB"
    assert (out / "grid.png").is_file()


def test_inference_on_a_split_reports_the_same_dice_as_evaluate(trained: Path, tmp_path: Path):
    ckpt = trained / "best.pth"
    evaluated = run("evaluate.py", f"checkpoint={ckpt}", "split=test", f"output={tmp_path / 'm.json'}")
    predicted = run("inference.py", f"checkpoint={ckpt}", "split=test", f"output={tmp_path / 'pred'}")
    metrics = json.loads((tmp_path / "m.json").read_text())
    for protocol in ("dice_256", "dice_native"):
        line = next(line for line in predicted.stdout.splitlines() if line.strip().startswith(protocol))
        assert f"mean {metrics[protocol]['mean']:.4f}" in line, (evaluated.stdout, predicted.stdout)
    assert len(list((tmp_path / "pred").glob("*_mask.png"))) == metrics["n"]


def test_curves_command_writes_png(trained: Path, tmp_path: Path):
    out = tmp_path / "curves.png"
    run("curves.py", f"runs=[{trained},{trained}]", "labels=[a,b]", f"out={out}")
    with Image.open(out) as image:
        assert image.width > 200 and image.height > 200


def test_multirun_produces_one_run_per_value(tmp_path: Path):
    sweep = tmp_path / "sweep"
    overrides = tiny_overrides(tmp_path, epochs=1)
    run("train.py", "-m", *overrides, "optim.lr=1e-3,1e-4", f"hydra.sweep.dir={sweep}")
    runs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert len(runs) == 2
    for run_dir in runs:
        assert read_scalars(run_dir, ("val/dice",))["val/dice"]
        assert (run_dir / "best.pth").is_file()
    lrs = {load_checkpoint(r / "best.pth")["config"]["optim"]["lr"] for r in runs}
    assert lrs == {1e-3, 1e-4}
    assert not (tmp_path / "saved").exists()  # sweeps don't overwrite the exported model
