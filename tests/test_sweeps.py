"""Sweeps end to end: Optuna search, the submitit local launcher, and the sweep summary table."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml

from curves import read_scalars
from test_e2e import run, tiny_overrides

pytestmark = pytest.mark.slow


def job_dirs(sweep: Path) -> list[Path]:
    return sorted(p.parent.parent for p in sweep.rglob(".hydra/overrides.yaml"))


def test_optuna_search_runs_trials_and_summary_ranks_them(tmp_path: Path):
    sweep = tmp_path / "optuna"
    overrides = tiny_overrides(tmp_path, epochs=1)
    run(
        "train.py",
        "hparams_search=optuna",
        *overrides,
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.sampler.n_startup_trials=2",
        f"hydra.sweep.dir={sweep}",
    )
    jobs = job_dirs(sweep)
    assert len(jobs) == 2
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    # Optuna maximised what train.py returned: the best val Dice among the trials
    best = max(max(v for _, v in read_scalars(job, ("val/dice",))["val/dice"]) for job in jobs)
    assert results["best_value"] == pytest.approx(best, abs=1e-6)
    sampled = [yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()) for job in jobs]
    assert all(any(o.startswith("optim.lr=") for o in trial) for trial in sampled)

    out = run("sweep_summary.py", f"sweep_dir={sweep}")
    with (sweep / "summary.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2
    dice = [float(r["best val dice_256"]) for r in rows]
    assert dice == sorted(dice, reverse=True) and dice[0] == pytest.approx(best, abs=1e-4)
    assert all("optim.lr=" in r["overrides"] for r in rows)  # the varying overrides are shown
    assert "data.root" not in rows[0]["overrides"]  # the shared ones are not
    # ... and the shared ones lead the table, so the summary says the whole recipe (issue 26).
    shared = next(line for line in out.stdout.splitlines() if line.startswith("Every job: "))
    assert "debug=tiny" in shared and "data.root=" in shared and "optim.lr=" not in shared
    assert (sweep / "summary.md").read_text().startswith(shared)
    assert "best val dice_256" in out.stdout


def test_submitit_local_launcher_runs_each_job(tmp_path: Path):
    sweep = tmp_path / "local"
    overrides = tiny_overrides(tmp_path, epochs=1)
    run(
        "train.py",
        "-m",
        "hydra/launcher=local",
        "hydra.launcher.cpus_per_task=1",
        *overrides,
        "optim.lr=1e-3,1e-4",
        f"hydra.sweep.dir={sweep}",
    )
    jobs = job_dirs(sweep)
    assert len(jobs) == 2
    for job in jobs:
        assert (job / "best.pth").is_file()
        assert read_scalars(job, ("val/dice",))["val/dice"]
    assert (sweep / ".submitit").is_dir()  # really went through submitit


def test_summary_of_a_missing_dir_is_one_line_error(tmp_path: Path):
    result = run("sweep_summary.py", f"sweep_dir={tmp_path / 'nope'}", check=False)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "does not exist" in result.stderr
