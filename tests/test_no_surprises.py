"""Nothing a user has is replaced silently, and every run has a dir of its own that it names
(issue: no surprises). Driven through the real train.py, as a user would."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT, SAMPLE, SHARED
from petseg.checkpoint import load_checkpoint
from test_e2e import run, tiny_overrides

pytestmark = pytest.mark.slow


def test_an_existing_export_is_kept_unless_the_command_asks_to_replace_it(tmp_path: Path) -> None:
    saved = tmp_path / "saved" / "unet.pth"
    saved.parent.mkdir()
    saved.write_bytes(b"the user's own model")
    args = tiny_overrides(tmp_path, epochs=1)

    kept = run("train.py", *args, f"hydra.run.dir={tmp_path / 'a'}")
    assert saved.read_bytes() == b"the user's own model"
    said = kept.stdout + kept.stderr
    assert f"{saved} already exists and was kept" in said
    assert str(tmp_path / "a" / "best.pth") in said  # where this run's weights are
    assert "trainer.checkpoint.overwrite=true" in said

    run("train.py", *args, "trainer.checkpoint.overwrite=true", f"hydra.run.dir={tmp_path / 'b'}")
    assert load_checkpoint(saved)["config"]["model"]["name"] == "unet"  # asked for: replaced


def test_a_smoke_run_never_exports(tmp_path: Path) -> None:
    export = tmp_path / "export"
    done = run(
        "train.py",
        *tiny_overrides(tmp_path, epochs=1),
        "trainer.limit_train_batches=2",
        f"trainer.checkpoint.export_dir={export}",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert not export.exists()
    assert "smoke run (trainer.limit_*): not exported" in done.stdout + done.stderr


def _train_from(cwd: Path, *args: str, count: int = 1) -> list[tuple[subprocess.Popen, str]]:
    """``count`` train.py processes started together from ``cwd``; each with its combined output."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0"}
    procs = [
        subprocess.Popen(
            [sys.executable, str(ROOT / "src" / "train.py"), *args],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for _ in range(count)
    ]
    return [(p, p.communicate(timeout=300)[0]) for p in procs]


@pytest.fixture
def project_runs():
    """Run dirs a test makes under the project's own outputs/ (the default place), removed after it."""
    made: list[Path] = []
    yield made
    for run_dir in made:
        shutil.rmtree(run_dir, ignore_errors=True)


def test_runs_started_together_get_a_dir_each_and_say_which(tmp_path: Path, project_runs: list) -> None:
    """Two runs started in the same second from another directory, with the default run dir: each gets
    its own under the project's outputs/, and nothing appears where they were started."""
    args = [
        *tiny_overrides(tmp_path, epochs=1),
        "trainer.limit_train_batches=1",
        "trainer.limit_val_batches=1",
    ]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = _train_from(elsewhere, *args, count=2)
    for proc, out in done:
        assert proc.returncode == 0, out
        said = [line.split("run dir: ", 1)[1].strip() for line in out.splitlines() if "run dir: " in line]
        assert len(said) == 1, out
        run_dir = Path(said[0])
        project_runs.append(run_dir)
        assert run_dir.name.endswith(f"_{proc.pid}") and run_dir.is_relative_to(ROOT / "outputs")
        assert (run_dir / "train.log").is_file()  # its own log, not one shared by both
        assert "checkpoints: " in out and str(run_dir / "best.pth") in out
    assert len({d for d in project_runs}) == 2
    assert list(elsewhere.iterdir()) == []  # no outputs/, saved_models/ or .cache/ here


def test_a_plain_relative_data_root_is_the_projects_and_dot_slash_is_the_shells(tmp_path: Path) -> None:
    from petseg.paths import PROJECT_ROOT, project_path

    here = Path.cwd()
    assert project_path("dataset/oxford-iiit-pet") == PROJECT_ROOT / "dataset" / "oxford-iiit-pet"
    assert project_path("./pets") == here / "pets" and project_path("../pets") == here / ".." / "pets"
    assert project_path(tmp_path) == tmp_path and project_path("~") == Path.home()
    # Through the real command, from another directory: tests/data/... is found under the project.
    rejected = run(
        "train.py", "data.root=tests/data/oxford-iiit-pet", "optim.lr=0", check=False, cwd=tmp_path
    )
    assert rejected.returncode == 2 and "optim.lr must be a positive float" in rejected.stderr
    missing = run("train.py", *tiny_overrides(tmp_path), "data.root=./pets", check=False, cwd=tmp_path)
    assert missing.returncode == 2
    assert f"dataset root {tmp_path / 'pets'} does not exist" in missing.stderr
    hint = missing.stderr.split("get the dataset with: ", 1)[1].split()
    assert Path(hint[0]) == Path(sys.executable) and Path(hint[1]) == ROOT / "src" / "oxford_pet.py"
    assert list(tmp_path.iterdir()) == [], "a rejected run leaves nothing where it was started"


def test_an_error_after_work_started_is_in_train_log(tmp_path: Path) -> None:
    # An lr that makes the loss explode: the run stops with one line, and its train.log says it too.
    run_dir = tmp_path / "run"
    done = run(
        "train.py",
        *tiny_overrides(tmp_path, epochs=2),
        "optim.lr=1e12",
        "trainer.grad_clip=null",
        f"hydra.run.dir={run_dir}",
        check=False,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    error = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(error) == 1 and "became" in error[0]
    assert error[0] in (run_dir / "train.log").read_text()


def test_a_sweep_prints_its_dir_at_start_and_end(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    done = run(
        "train.py",
        "-m",
        *tiny_overrides(tmp_path, epochs=1),
        "trainer.limit_train_batches=1",
        "trainer.limit_val_batches=1",
        "optim.lr=1e-3,3e-4",
        f"hydra.sweep.dir={sweep_dir}",
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("sweep dir: ")]
    assert len(lines) == 2 and lines[0] == f"sweep dir: {sweep_dir}", done.stdout
    assert "sweep_summary.py" in lines[1] and lines[1].endswith(f" sweep_dir={sweep_dir}")
    for job in ("0_unet", "1_unet"):
        assert f"run dir: {sweep_dir / job}" in done.stdout + done.stderr


def test_a_long_first_epoch_is_saved_by_time(tmp_path: Path) -> None:
    """trainer.checkpoint.every_n_minutes: a tiny value saves last.pth after every step of the epoch."""
    from conftest import compose_train
    from petseg.build import build, build_trainer

    cfg = compose_train(tmp_path, "trainer.epochs=1", "trainer.checkpoint.every_n_minutes=0.0001")
    trainer = build_trainer(cfg, build(cfg), tmp_path / "run")
    (tmp_path / "run").mkdir()
    saves: list[int] = []
    real_save = trainer.save
    trainer.save = lambda name: saves.append(trainer.progress.step) or real_save(name)  # type: ignore[method-assign]
    trainer.train_epoch(0)
    steps = trainer.built.steps_per_epoch
    assert steps >= 2 and saves == list(range(1, steps))  # after each step but the last (the epoch end saves)
    assert load_checkpoint(tmp_path / "run" / "last.pth")["progress"]["step"] == steps - 1


def test_resuming_a_run_that_died_before_its_first_save_says_so(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)  # what Hydra made before the run was killed
    done = run("train.py", f"trainer.resume={run_dir}", check=False)
    assert done.returncode == 2
    assert "this run stopped before its first save" in done.stderr and "start it again" in done.stderr


def test_train_help_says_where_each_option_is_explained() -> None:
    done = run("train.py", "--help")
    assert done.stdout.startswith("python src/train.py [group=option ...] [key=value ...]")
    assert "model: resnet34_unet, unet" in done.stdout  # the group options...
    assert "the comments in configs/<group>/<option>.yaml" in done.stdout  # ...and where they are explained


def test_a_run_rejected_for_its_data_is_one_line_and_leaves_no_dated_folder(tmp_path: Path) -> None:
    """With the default run dir (outputs/<date>/<time>_...): no 'run dir:' line naming a dir that is
    then removed, and no empty outputs/<date>/ left behind (issue 26)."""
    outputs = ROOT / "outputs"
    before = {p for p in outputs.rglob("*")} if outputs.is_dir() else set()
    done = run(
        "train.py", "model=resnet34_unet", "optim.lr=3e-4", f"data.root={tmp_path / 'no-pets'}", check=False
    )
    assert done.returncode == 2
    assert "run dir:" not in done.stdout + done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    after = {p for p in outputs.rglob("*")} if outputs.is_dir() else set()
    assert after <= before, sorted(after - before)


@pytest.mark.skipif(not SHARED.is_dir(), reason="needs the shared partial copy of the data")
def test_debug_tiny_on_real_data_caps_its_steps(tmp_path: Path) -> None:
    """debug=tiny is a smoke run on any data: at most 10 steps an epoch and 5 validation batches."""
    run_dir = tmp_path / "run"
    run(
        "train.py",
        "debug=tiny",
        f"data.root={SHARED}",
        "data.allow_missing=true",
        "model.base_width=4",
        "trainer.checkpoint.save_last=true",  # for its progress record
        f"data.cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={run_dir}",
    )
    progress = load_checkpoint(run_dir / "last.pth")["progress"]
    assert progress["epoch"] == 2 and progress["global_step"] == 20  # 1,428 train pairs: 714 steps uncapped


def test_evaluate_says_which_data_and_writes_outside_the_repository(tmp_path: Path) -> None:
    """The first line names the root and why; a checkpoint in saved_models/ gets its metrics under
    outputs/eval/, not beside it in a tracked folder (issue 26)."""
    wrote = [ROOT / "outputs" / "eval" / f"unet_test_metrics{s}" for s in (".json", "_per_image.csv")]
    existed = [p.exists() for p in wrote]
    try:
        done = run("evaluate.py", "checkpoint=saved_models/unet.pth", "split=test", f"data.root={SAMPLE}")
        first = done.stdout.splitlines()[0]
        assert first == "data: tests/data/oxford-iiit-pet (data.root as given)", done.stdout
        assert all(p.is_file() for p in wrote) and f"metrics written to {wrote[0]}" in done.stdout
        assert sorted(p.name for p in (ROOT / "saved_models").iterdir()) == sorted(
            subprocess.run(["git", "ls-files", "saved_models"], cwd=ROOT, capture_output=True, text=True)
            .stdout.replace("saved_models/", "")
            .split()
        )  # nothing untracked written there
    finally:
        for path, was in zip(wrote, existed, strict=True):
            if not was:
                path.unlink(missing_ok=True)


def test_evaluate_refuses_a_partial_copy_unless_told_whatever_the_checkpoint_says(tmp_path: Path) -> None:
    """saved_models/unet.pth was trained with data.allow_missing=true; scoring does not inherit it."""
    partial = Path(shutil.copytree(SAMPLE, tmp_path / "pets"))
    test_name = (partial / "annotations" / "test.txt").read_text().split()[0]
    (partial / "images" / f"{test_name}.jpg").unlink()
    args = ["evaluate.py", "checkpoint=saved_models/unet.pth", "split=test", f"data.root={partial}"]
    refused = run(*args, f"output={tmp_path / 'm.json'}", check=False)
    assert refused.returncode == 2 and "data.allow_missing=true" in refused.stderr, refused.stderr
    allowed = run(*args, "data.allow_missing=true", f"output={tmp_path / 'm.json'}")
    assert "1 listed images missing" in allowed.stdout


@pytest.mark.slow
def test_a_debug_tiny_smoke_run_writes_best_pth_only(tmp_path: Path) -> None:
    """A smoke run is not resumed: no last.pth (AdamW moments, 373 MB for the paper-width UNet), so
    its run dir holds what evaluation needs (issue 26: 560 MB for a 5-batch run once)."""
    run_dir = tmp_path / "run"
    run(
        "train.py",
        "debug=tiny",
        f"data.root={SAMPLE}",
        "model.base_width=4",
        f"data.cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={run_dir}",
    )
    assert (run_dir / "best.pth").is_file() and not (run_dir / "last.pth").exists()
