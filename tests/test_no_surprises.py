"""Nothing a user has is replaced silently, and every run has a dir of its own that it names
(issue: no surprises). Driven through the real train.py, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from petseg.checkpoint import load_checkpoint
from test_e2e import run, tiny_overrides

ROOT = Path(__file__).resolve().parents[1]
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


def test_runs_started_together_get_a_dir_each_and_say_which(tmp_path: Path) -> None:
    """Two runs started in the same second, with the default run dir (relative to where they start)."""
    args = [
        *tiny_overrides(tmp_path, epochs=1),
        "trainer.limit_train_batches=1",
        "trainer.limit_val_batches=1",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0"}
    procs = [
        subprocess.Popen(
            [sys.executable, str(ROOT / "src" / "train.py"), *args],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    run_dirs = sorted(p.parent for p in (tmp_path / "outputs").rglob("train.log"))
    assert len(run_dirs) == 2  # not one dir with two interleaved logs
    for out, proc in zip(outputs, procs, strict=True):
        mine = [d for d in run_dirs if d.name.endswith(f"_{proc.pid}")]
        assert len(mine) == 1 and f"run dir: {mine[0]}" in out
        assert "checkpoints: " in out and str(mine[0] / "best.pth") in out
