"""Smoke tests of every script in benchmarks/: each runs as a real subprocess, for a few batches at 32 px
on the committed sample (tests/data/oxford-iiit-pet), and must exit 0 with real output (a table row
with numbers, a file written). The numbers themselves mean nothing at this size; the wiring does.

segmentation_models_pytorch is optional: the smp rows run under a stand-in package that fails to
import, so the scripts' "skipping smp" path is what is tested, whether or not smp is installed.
Everything a run writes goes under pytest's tmp_path.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SAMPLE_ROOT
from helpers import ROOT

BENCH = ROOT / "benchmarks"
NUMBER = r"-?\d+(?:\.\d+)?"
SMOKED = {  # script -> the test below that runs it
    "busy_machine.py": "test_busy_machine",
    "crowded_machine.py": "test_crowded_machine",
    "loader.py": "test_loader",
    "models.py": "test_models",
    "seconds_per_batch.py": "test_seconds_per_batch",
    "time_to_dice.py": "test_time_to_dice",
    "train_speed.py": "test_train_speed",
}


def run_bench(
    script: str, *args: str, tmp: Path, timeout: int = 300, hide_smp: bool = False
) -> subprocess.CompletedProcess:
    """``python benchmarks/<script> *args`` from ``tmp``; its result, asserted to have exited 0."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0"}
    if hide_smp:
        shim = tmp / "no_smp" / "segmentation_models_pytorch"
        shim.mkdir(parents=True, exist_ok=True)
        (shim / "__init__.py").write_text('raise ImportError("hidden by tests/test_benchmarks.py")\n')
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(shim.parent), env.get("PYTHONPATH")) if p)
    result = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    assert result.returncode == 0, (
        f"{script} exited {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    )
    return result


def table_row(text: str, first_cell: str) -> list[str]:
    """The cells of the Markdown table row whose first cell is ``first_cell``."""
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no table row {first_cell!r} in:\n{text}")


def number(cell: str) -> float:
    match = re.match(NUMBER, cell)
    assert match, f"not a number: {cell!r}"
    return float(match.group())


# ------------------------------------------------------------------------------------- fast checks
def test_every_benchmark_script_has_a_smoke_test():
    scripts = {p.name for p in BENCH.glob("*.py")}
    assert scripts == set(SMOKED), "a script in benchmarks/ without a smoke test here (or a stale entry)"
    assert all(name in globals() for name in SMOKED.values())


def test_time_to_dice_legs_parse():
    sys.path.insert(0, str(BENCH))
    try:
        from time_to_dice import parse_legs
    finally:
        sys.path.remove(str(BENCH))
    legs = parse_legs(["plain", "experiment=cpu_unet model.base_width=8", "experiment=cpu_unet"])
    assert [leg.experiment for leg in legs] == [None, "cpu_unet", "cpu_unet"]
    assert legs[1].overrides == ("model.base_width=8",)
    assert len({leg.slug for leg in legs}) == 3  # a folder each
    for bad in ("petseg", "experiment=no_such_recipe", "plain trainer.epochs=1", "experiment="):
        with pytest.raises(ValueError):
            parse_legs([bad])


# ---------------------------------------------------------------------------------- the scripts
@pytest.mark.slow
def test_loader(tmp_path: Path):
    out = run_bench(
        "loader.py",
        *("--root", str(SAMPLE_ROOT), "--size", "32", "--batch-size", "2", "--workers", "0"),
        *("--warmup", "1", "--batches", "3", "--repeats", "1", "--cache-dir", str(tmp_path / "cache")),
        tmp=tmp_path,
    ).stdout
    assert "cache built" in out
    for mode in ("false", "true"):
        assert number(table_row(out, mode)[1]) > 0
    assert any((tmp_path / "cache").iterdir())


@pytest.mark.slow
def test_models(tmp_path: Path):
    out = run_bench(
        "models.py",
        *(
            "--size",
            "64",
            "--batch-size",
            "2",
            "--steps",
            "1",
        ),  # 64: at 32 px its batch-1 FLOP count meets a 1x1 BatchNorm
        tmp=tmp_path,
        hide_smp=True,
    ).stdout
    assert "skipping smp_unet_resnet34: segmentation_models_pytorch not usable" in out
    for model in ("unet", "resnet34_unet"):
        cells = table_row(out, model)
        assert cells[1].endswith("M") and number(cells[1]) > 0  # parameters
        assert all(number(c) > 0 for c in cells[2:])  # GFLOPs, images/s, CPU-s per image


@pytest.mark.slow
def test_train_speed(tmp_path: Path):
    out = run_bench(
        "train_speed.py",
        *("--device", "cpu", "--models", "resnet34_unet", "smp_unet_resnet34"),
        *("--size", "32", "--batch-size", "2", "--steps", "1", "--repeats", "1", "--warmup", "0"),
        tmp=tmp_path,
        hide_smp=True,
    ).stdout
    assert "skipping smp_unet_resnet34" in out
    cells = table_row(out, "resnet34_unet (default)")
    assert number(cells[6]) > 0 and number(cells[8]) > 0  # train and eval images/s
    assert number(cells[10]) >= 0  # peak RSS growth, MB


@pytest.mark.slow
def test_busy_machine(tmp_path: Path):
    out = run_bench(
        "busy_machine.py",
        *("--rows", "libgomp", "--size", "32", "--batch-size", "2", "--steps", "1", "--warmup", "1"),
        tmp=tmp_path,
    ).stdout
    cells = table_row(out, "libgomp")
    alone, busy = number(cells[1]), number(cells[2])
    assert alone > 0 and busy > 0 and cells[3].endswith("x")


@pytest.mark.slow
# A train.py row (channels_last pinned: 'auto' may time both layouts first, seconds of resnet34_unet
# steps that are not what this test is about) and the plain loop of time_to_dice.py.
@pytest.mark.parametrize("row", ["cache=false workers=0 trainer.channels_last=false", "plain"])
def test_seconds_per_batch(tmp_path: Path, row: str):
    out = run_bench(
        "seconds_per_batch.py",
        *("--root", str(SAMPLE_ROOT), "--size", "32", "--batch-size", "2", "--short", "1", "--long", "3"),
        *("--rows", row),
        tmp=tmp_path,
    ).stdout
    assert "cores" in out.splitlines()[0]  # time_to_dice.cpu_description()
    cells = table_row(out, row)
    number(cells[1]), number(cells[2])  # s/batch, images/s (at this size either may be noise)


@pytest.mark.slow
def test_time_to_dice(tmp_path: Path):
    """Both kinds of leg, a few batches each: an experiment recipe (with a leg override) and the plain
    loop; each scored on the test split from its best.pth, a table, JSON and the plot written."""
    out_dir = tmp_path / "out"
    unet = "experiment=cpu_unet model.base_width=4"
    out = run_bench(
        "time_to_dice.py",
        *("--root", str(SAMPLE_ROOT), "--out", str(out_dir), "--legs", unet, "plain"),
        *("--epochs", "1", "--size", "32", "--batch-size", "2", "--limit-batches", "2", "--poll", "0.5"),
        *("--overrides", "debug=tiny", f"data.cache_dir={tmp_path / 'cache'}"),
        *("--eval-overrides", "data.num_workers=0"),
        tmp=tmp_path,
    ).stdout
    assert "cores" in out.splitlines()[0]  # cpu_description()
    results = {r["leg"]: r for r in json.loads((out_dir / "time_to_dice.json").read_text())}
    assert set(results) == {unet, "plain"}
    table = (out_dir / "time_to_dice.md").read_text()
    for leg, result in results.items():
        assert result["returncode"] == 0
        [point] = result["timeline"]  # one epoch: one val/dice point
        assert 0.0 <= point["val_dice"] <= 1.0 and point["minutes"] > 0
        assert result["test"]["n"] == 5 and 0.0 <= result["test"]["dice_256"]["mean"] <= 1.0
        assert (Path(result["dir"]) / "best_test_metrics.json").is_file()
        cells = table_row(table, f"`{leg}`")
        assert cells[2:5] == ["not reached"] * 3  # 0.85 / 0.88 / 0.90 at 32 px after 2 batches
        assert number(cells[-1]) == pytest.approx(result["test"]["dice_256"]["mean"], abs=1e-4)
    assert table_row(table, f"`{unet}`")[1].startswith("unet, 32 px, batch 2, 1 epoch")
    assert table_row(table, "`plain`")[1] == "resnet34_unet, 32 px, batch 2, 1 epoch, fp32"
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out_dir / "time_to_dice.png").stat().st_size > 0
    else:
        assert "no plot: matplotlib is not importable" in out


@pytest.mark.slow
def test_crowded_machine(tmp_path: Path):
    """train.py alone and beside one real train.py competitor, on the sample at 32 px: each s/batch is
    the measured run's own second epoch (never start-up noise), against a fair share of n + 1."""
    out = run_bench(
        "crowded_machine.py",
        *("--model", "unet", "--size", "32", "--batch-size", "2", "--batches", "3"),
        *("--settle", "2", "--competitors", "0", "1", "--overrides", "model.base_width=4"),
        tmp=tmp_path,
    ).stdout
    alone, crowded = table_row(out, "0"), table_row(out, "1")
    assert number(alone[1]) > 0 and number(crowded[1]) > 0
    assert number(alone[2]) == 1.0 and number(alone[3]) == 1.0
    assert number(crowded[3]) == 2.0  # two processes share the cores the run had alone
    assert number(crowded[4]) == pytest.approx(number(crowded[2]) / 2.0, abs=0.01)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a CUDA machine runs the real check")
def test_gpu_check_without_cuda_says_so_in_one_line_and_exits_2(tmp_path: Path):
    done = subprocess.run(
        ["bash", str(BENCH / "gpu_check.sh"), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("gpu_check: no CUDA device here"), done.stderr
    assert done.stdout == ""
