"""curves.py draws one pair of lines per run: a sweep dir stands for each of its jobs, labelled by the
overrides that set it apart, instead of one line merging every job's events."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

import curves
from test_e2e import run, tiny_overrides

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real two-job multirun of the tiny recipe (one epoch each); its job dirs are numbered."""
    tmp = tmp_path_factory.mktemp("sweep")
    sweep = tmp / "lr"
    run("train.py", "-m", *tiny_overrides(tmp, epochs=1), "optim.lr=1e-3,1e-4", f"hydra.sweep.dir={sweep}")
    assert len(jobs(sweep)) == 2
    return sweep


def jobs(sweep: Path) -> list[Path]:
    return sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))


def best_line(label: str, job: Path) -> str:
    epoch, best = max(curves.read_scalars(job)["val/dice"], key=lambda point: point[1])
    return f"{label}: 1 epoch(s), best val/dice {best:.4f} (epoch {epoch})"


def test_a_sweep_dir_is_one_line_per_job_labelled_by_its_overrides(sweep: Path, tmp_path: Path):
    first, second = jobs(sweep)
    # Labelled as Hydra recorded each job (1e-3 parsed as 0.001); data.root etc. are the same for both.
    out = tmp_path / "curves.png"
    result = run("curves.py", f"runs={sweep}", f"out={out}")  # one run or sweep: no brackets needed
    assert result.stdout.splitlines() == [
        best_line("optim.lr=0.001", first),
        best_line("optim.lr=0.0001", second),
        f"curves of 2 run(s) written to {out}",
    ]
    with Image.open(out) as picture:
        assert picture.format == "PNG"

    series = curves.load_series([sweep])
    assert [(s.label, s.run_dir) for s in series] == [
        ("optim.lr=0.001", first),
        ("optim.lr=0.0001", second),
    ]
    for one in series:  # each job's own events, not the sweep's merged ones
        assert one.points == curves.read_scalars(one.run_dir)
    assert series[0].points["train/dice"] != series[1].points["train/dice"]  # lr 10x apart
    figure = curves.draw(series)
    (axes,) = figure.axes
    assert len(axes.lines) == 4  # train (dashed) and val (solid) per job
    assert [text.get_text() for text in axes.get_legend().get_texts()] == [
        "optim.lr=0.001 train/dice",
        "optim.lr=0.001 val/dice",
        "optim.lr=0.0001 train/dice",
        "optim.lr=0.0001 val/dice",
    ]


def test_labels_name_sweeps_and_runs_alike(sweep: Path, tmp_path: Path):
    first, second = jobs(sweep)
    out = tmp_path / "mixed.png"
    result = run("curves.py", f"runs=[{sweep},{first}]", "labels=[lr,first]", f"out={out}")
    assert result.stdout.splitlines() == [
        best_line("lr optim.lr=0.001", first),
        best_line("lr optim.lr=0.0001", second),
        best_line("first", first),  # a job dir given itself is a run
        f"curves of 3 run(s) written to {out}",
    ]
    wrong = run("curves.py", f"runs=[{sweep},{first}]", "labels=one", f"out={out}", check=False)
    assert wrong.returncode == 2
    assert wrong.stderr.splitlines() == ["error: 2 runs but 1 labels"]
