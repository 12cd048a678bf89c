"""Smoke tests of every script in benchmarks/: each runs as a real subprocess, for a few batches at 32 px
on the committed sample (tests/data/oxford-iiit-pet), and must exit 0 with real output (a table row
with numbers, a file written). The numbers themselves mean nothing at this size; the wiring does.

segmentation_models_pytorch is optional: the smp rows run under a stand-in package that fails to
import, so the scripts' "skipping smp" path is what is tested, whether or not smp is installed.
Everything a run writes goes under pytest's tmp_path. The shared modules (plain.py: the plain step,
Dataset and loop, the optional smp; timing.py: the timing loop, our step, the CPU) have fast unit tests.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import default_collate

from conftest import SAMPLE_ROOT
from helpers import CONFIG_DIR, ROOT
from petseg.build import build_loss
from petseg.transforms import build_transform

BENCH = ROOT / "benchmarks"
SHARED_MODULES = {"plain.py", "timing.py"}  # imported by the scripts; no command line of their own
NUMBER = r"-?\d+(?:\.\d+)?"
SMOKED = {  # script -> the test below that runs it
    "busy_machine.py": "test_busy_machine",
    "crowded_machine.py": "test_crowded_machine",
    "independent_dice.py": "test_independent_dice",
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


def bench_import(name: str) -> ModuleType:
    """benchmarks/<name>.py as its scripts import it (their folder first on sys.path)."""
    sys.path.insert(0, str(BENCH))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCH))


# ------------------------------------------------------------------------------------- fast checks
def test_every_benchmark_script_has_a_smoke_test():
    files = {p.name: p.read_text() for p in BENCH.glob("*.py")}
    scripts = {name for name, text in files.items() if '__name__ == "__main__"' in text}
    assert scripts == set(SMOKED), "a script in benchmarks/ without a smoke test here (or a stale entry)"
    assert set(files) - scripts == SHARED_MODULES, "a module in benchmarks/ neither a script nor shared"
    assert all(name in globals() for name in SMOKED.values())


def test_every_script_has_its_one_line_in_the_readme():
    readme = (BENCH / "README.md").read_text()
    for script in [*SMOKED, "gpu_check.sh"]:
        rows = [line for line in readme.splitlines() if line.startswith(f"| `{script}` |")]
        assert len(rows) == 1, f"benchmarks/README.md: {len(rows)} table lines for {script}"


def test_no_script_carries_a_copy_of_a_train_step():
    """The plain step is plain.py's (the only optimiser step written in benchmarks/); our step is the
    real Trainer.train_step, built in one place (timing.our_trainer, via petseg.build.trainer_for_step)."""
    texts = {p.name: p.read_text() for p in BENCH.glob("*.py")}
    assert {name for name, text in texts.items() if re.search(r"\.step\(\)", text)} == {"plain.py"}
    assert {name for name, text in texts.items() if "trainer_for_step(" in text} == {"timing.py"}
    assert {name for name, text in texts.items() if "import segmentation_models_pytorch" in text} == {
        "plain.py"
    }


def test_time_steps_counts_warm_up_calls_apart_from_the_timed_ones():
    timing = bench_import("timing")
    calls: list[int] = []
    syncs: list[int] = []
    result = timing.time_steps(
        lambda: calls.append(1),
        3,
        warmup=2,
        sync=lambda: syncs.append(len(calls)),
        wall_clock=lambda: float(len(calls)),  # one "second" per call so far
        cpu_clock=lambda: 10.0 * len(calls),
    )
    assert len(calls) == 5  # 2 untimed + 3 timed
    assert (result.steps, result.wall, result.cpu) == (3, 3.0, 30.0)
    assert (result.seconds("wall"), result.seconds("cpu")) == (3.0, 30.0)
    assert syncs == [2, 5]  # before the clocks start and before they stop
    warm = timing.time_steps(lambda: calls.append(1), 0, warmup=4, wall_clock=lambda: float(len(calls)))
    assert len(calls) == 9 and warm.wall == 0.0  # a warm-up alone times nothing


def test_step_seconds_shows_every_step_to_after_and_returns_the_timed_ones():
    timing = bench_import("timing")
    now = [0.0]
    done = [0]

    def step() -> None:  # the k-th call takes k seconds
        done[0] += 1
        now[0] += done[0]

    seen: list[float] = []
    times = timing.step_seconds(step, 3, warmup=2, after=seen.append, wall_clock=lambda: now[0])
    assert seen == [1.0, 2.0, 3.0, 4.0, 5.0]  # a thread tuner sees the warm-up steps too
    assert times == [3.0, 4.0, 5.0] and statistics.median(times) == 4.0


def test_plain_train_step_learns_on_a_real_sample_batch():
    """The one plain step (zero_grad, forward, BCE + Dice, backward, clip, AdamW) on a batch of the
    plain Dataset (PIL-decoded sample pairs): its loss goes down and every parameter moves."""
    plain = bench_import("plain")
    data = OmegaConf.load(CONFIG_DIR / "data" / "oxford_pet.yaml")
    mean, std = (np.array(list(data[key]), dtype=np.float32) for key in ("mean", "std"))
    transform = build_transform(OmegaConf.load(CONFIG_DIR / "aug" / "default.yaml"), 32, train=False)
    dataset = plain.PlainPetFiles(SAMPLE_ROOT, "train", transform, mean, std)
    batch = default_collate([dataset[i] for i in range(4)])
    assert batch["image"].shape == (4, 3, 32, 32) and set(batch["mask"].unique().tolist()) <= {0.0, 1.0}
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 1, 1)
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05)
    loss_fn = build_loss(OmegaConf.load(CONFIG_DIR / "loss" / "bce_dice.yaml"))
    before = [p.detach().clone() for p in model.parameters()]
    losses = [
        float(plain.plain_train_step(model, optimizer, loss_fn, batch["image"], batch["mask"], clip=1.0))
        for _ in range(8)
    ]
    assert losses[-1] < losses[0], losses
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_without_smp_the_one_message_says_how_to_install_it(monkeypatch, capsys):
    plain = bench_import("plain")
    monkeypatch.setitem(sys.modules, "segmentation_models_pytorch", None)  # its import fails, as if missing
    kept = plain.drop_unusable_smp(["unet", plain.SMP, "smp_runtime"], (plain.SMP, "smp_runtime"))
    assert kept == ["unet"]
    skipping, install = capsys.readouterr().out.splitlines()
    assert skipping.startswith(f"skipping {plain.SMP}, smp_runtime: segmentation_models_pytorch not usable (")
    assert "import of segmentation_models_pytorch halted" in skipping  # the reason, in one line
    assert install == f"  Install it with: {plain.INSTALL_COMMAND} (see the comments there)"
    assert plain.drop_unusable_smp(["unet"]) == ["unet"] and capsys.readouterr().out == ""


def test_time_to_dice_legs_parse():
    parse_legs = bench_import("time_to_dice").parse_legs
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


def test_independent_dice_counts_an_image_with_no_pet_predicted_or_true_as_perfect():
    dice = bench_import("independent_dice").dice
    empty = np.zeros((4, 4), dtype=bool)
    half = np.zeros((4, 4), dtype=bool)
    half[:2] = True
    assert dice(empty, empty) == 1.0 and dice(half, empty) == 0.0
    assert dice(half, half) == 1.0 and dice(half, np.ones((4, 4), dtype=bool)) == pytest.approx(2 * 8 / 24)


@pytest.mark.slow
def test_independent_dice(tmp_path: Path):
    """The second implementation of the protocol agrees with src/evaluate.py's dice_256 on the sample's
    five test pairs, for a shipped checkpoint (they differ only in how the input is shrunk: PIL bilinear
    here, area there)."""
    checkpoint = ROOT / "saved_models" / "resnet34_unet.pth"
    out = run_bench(
        "independent_dice.py", "--root", str(SAMPLE_ROOT), "--checkpoint", str(checkpoint), tmp=tmp_path
    )
    ours = json.loads(out.stdout.splitlines()[-1])
    assert ours["images"] == 5 and ours["missing"] == 0
    metrics = tmp_path / "metrics.json"
    evaluate = [sys.executable, str(ROOT / "src" / "evaluate.py"), f"checkpoint={checkpoint}", "split=test"]
    evaluate += [
        f"data.root={SAMPLE_ROOT}",
        "data.num_workers=0",
        f"data.cache_dir={tmp_path}",
        f"output={metrics}",
    ]
    subprocess.run(evaluate, cwd=tmp_path, check=True, capture_output=True, timeout=300)
    theirs = json.loads(metrics.read_text())
    assert ours["dice_256"] == pytest.approx(theirs["dice_256"]["mean"], abs=0.02)


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


@pytest.mark.slow  # a subprocess of a real command
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


@pytest.mark.slow  # a subprocess of a real command
def test_scripts_find_the_model_registry_when_src_is_already_on_the_path():
    # With src/ on PYTHONPATH (behind the script's own folder), benchmarks/models.py once shadowed
    # src/models and every script that imports timing.py died at start-up (seen in a clean-clone CI).
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    for script in ("seconds_per_batch.py", "train_speed.py"):
        result = subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / script), "--help"],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("usage:")
