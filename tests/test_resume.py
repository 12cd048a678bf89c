"""Crash safety: exact resume after SIGKILL / SIGTERM / SIGINT, TensorBoard without duplicate epochs,
the resume config rules, and atomic checkpoint writes.

The signal tests run the real train.py as subprocesses on the committed sample (32 px, width 4, one
thread, deterministic kernels) and compare every tensor of the final last.pth with a run never stopped.
Processes that do not depend on each other run at the same time to keep the wall time down.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from conftest import tiny
from helpers import ROOT
from petseg import checkpoint as checkpoint_module
from petseg.checkpoint import load_checkpoint, save_checkpoint
from petseg.errors import PetsegError
from petseg.paths import CONFIG_DIR
from petseg.resume import config_for_resume, continue_in_resumed_run
from petseg.run import fit

SCALARS = ("train/loss", "train/dice", "val/loss", "val/dice", "val/dice_pooled", "lr")


def recipe(tmp: Path) -> list[str]:
    """2 epochs of 9 steps (18 train images, batch 2); last.pth also every 2 steps, inside epochs."""
    return tiny(
        "model=unet",
        "model.base_width=4",
        "trainer.deterministic=true",
        "trainer.overlays.count=1",
        "trainer.checkpoint.every_n_steps=2",
        f"trainer.checkpoint.export_dir={tmp / 'saved'}",
        "trainer.limit_train_batches=null",  # a whole run: it exports (tiny's caps make a smoke run)
        "trainer.limit_val_batches=null",
    )


def start(*args: str, log: Path) -> subprocess.Popen:
    """train.py in the background, stdout and stderr into one log file."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0"}
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, str(ROOT / "src" / "train.py"), *args],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )


def finish(process: subprocess.Popen, log: Path, expect: int, timeout: float = 600) -> str:
    code = process.wait(timeout=timeout)
    text = log.read_text(errors="replace")
    assert code == expect, f"exit code {code}, expected {expect}\n{text[-4000:]}"
    return text


def signal_after_a_save(*targets: tuple[subprocess.Popen, Path, int], timeout: float = 600) -> None:
    """Send each (process, run dir, signal) its signal as soon as its last.pth is (re)written, i.e. in
    the middle of training. All are watched at once: processes sharing a busy machine run at very
    different speeds, and waiting for one could let another finish first."""
    waiting = {}
    for process, run_dir, signum in targets:
        last = run_dir / "last.pth"
        waiting[last] = (process, signum, last.stat().st_ino if last.exists() else None)
    deadline = time.monotonic() + timeout
    while waiting and time.monotonic() < deadline:
        for last, (process, signum, before) in list(waiting.items()):
            if last.exists() and last.stat().st_ino != before:  # a rename: a new save is complete
                process.send_signal(signum)
                del waiting[last]
            elif process.poll() is not None:
                pytest.fail(f"training exited ({process.returncode}) before it saved a checkpoint")
        time.sleep(0.01)
    for process, _, _ in waiting.values():
        process.kill()
    assert not waiting, "no checkpoint appeared in time"


def printed_resume(text: str) -> list[str]:
    """The arguments of the resume command the run printed (after '<this python> src/train.py'): correct
    as written, its interpreter is this very one (the venv's, activated or not)."""
    found = re.findall(r"Resume with:\s*\n\s*(\S+) (\S+) (.+)", text)
    assert found, text[-3000:]
    python, script, args = found[-1]
    assert Path(python).absolute() == Path(sys.executable).absolute()  # the test runs from ROOT
    assert (ROOT / script).resolve() == ROOT / "src" / "train.py"
    return shlex.split(args)


def assert_identical(a: Any, b: Any, where: str = "") -> None:
    """Exact equality, recursively: tensors (values and dtype), floats bit for bit, containers."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys {set(a) ^ set(b)}"
        for key in a:
            assert_identical(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_same_final_state(reference: Path, resumed: Path) -> None:
    ref, res = load_checkpoint(reference / "last.pth"), load_checkpoint(resumed / "last.pth")
    assert ref["epoch"] == res["epoch"] == 2
    # Everything but the config (which records trainer.resume) must be bit-identical.
    for key in set(ref) | set(res):
        if key != "config":
            assert_identical(ref[key], res[key], key)
    assert ref["history"][-1]["val/dice"] == res["history"][-1]["val/dice"]
    assert len(ref["optimizer"]["state"]) > 0  # Adam moments were compared, not an empty state


def tensorboard_steps(run_dir: Path) -> dict[str, list[int]]:
    """Steps of each scalar and of the overlays as TensorBoard shows them (all files, purges applied)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    steps = {tag: [e.step for e in acc.Scalars(tag)] for tag in SCALARS}
    steps["val/overlays"] = [e.step for e in acc.Images("val/overlays")]
    return steps


# ------------------------------------------------------------------------------ signals, subprocesses
@pytest.mark.slow
def test_resume_after_sigkill_sigterm_and_sigint_is_bit_identical(tmp_path: Path):
    ref_dir, kill_dir, term_dir = tmp_path / "reference", tmp_path / "killed", tmp_path / "stopped"
    overrides = recipe(tmp_path)
    # Stage 1, in parallel: a run left alone, one SIGKILLed and one SIGTERMed mid-training.
    reference = start(*overrides, f"hydra.run.dir={ref_dir}", log=tmp_path / "reference.log")
    killed = start(*overrides, f"hydra.run.dir={kill_dir}", log=tmp_path / "killed.log")
    stopped = start(*overrides, f"hydra.run.dir={term_dir}", log=tmp_path / "stopped.log")
    signal_after_a_save((killed, kill_dir, signal.SIGKILL), (stopped, term_dir, signal.SIGTERM))
    finish(killed, tmp_path / "killed.log", -signal.SIGKILL)
    text = finish(stopped, tmp_path / "stopped.log", 128 + signal.SIGTERM)
    assert "SIGTERM received: finishing the current step" in text
    assert "Traceback" not in text
    stopped_at = load_checkpoint(term_dir / "last.pth")["progress"]
    assert stopped_at["global_step"] < 18  # really stopped in the middle

    # Stage 2: resume the killed run by its dir alone; resume the stopped one with the printed
    # command and Ctrl-C (SIGINT) it after its next save.
    resume_args = printed_resume(text)
    assert resume_args == [f"trainer.resume={term_dir}"]
    killed_resumed = start(f"trainer.resume={kill_dir}", log=tmp_path / "killed2.log")
    interrupted = start(*resume_args, log=tmp_path / "stopped2.log")
    signal_after_a_save((interrupted, term_dir, signal.SIGINT))
    text = finish(interrupted, tmp_path / "stopped2.log", 128 + signal.SIGINT)
    assert "Traceback" not in text
    interrupted_at = load_checkpoint(term_dir / "last.pth")["progress"]
    assert stopped_at["global_step"] < interrupted_at["global_step"] < 18

    # Stage 3: resume the stopped run a second time, again with the command it printed.
    resume_args = printed_resume(text)
    finish(start(*resume_args, log=tmp_path / "stopped3.log"), tmp_path / "stopped3.log", 0)
    finish(killed_resumed, tmp_path / "killed2.log", 0)
    finish(reference, tmp_path / "reference.log", 0)

    for run_dir in (kill_dir, term_dir):
        assert_same_final_state(ref_dir, run_dir)
        # The same run dir and TensorBoard log, each epoch exactly once.
        assert tensorboard_steps(run_dir) == {tag: [1, 2] for tag in (*SCALARS, "val/overlays")}
        assert not list(run_dir.glob(".*.tmp"))  # a save the SIGKILL cut short was cleaned up
    assert [p.name for p in sorted((term_dir / ".hydra").glob("resume-*"))] == ["resume-1", "resume-2"]
    assert (kill_dir / ".hydra" / "resume-1" / "overrides.yaml").is_file()
    assert (term_dir / ".hydra" / "config.yaml").read_text() == (
        ref_dir / ".hydra" / "config.yaml"
    ).read_text()
    log = (term_dir / "train.log").read_text()
    assert log.count("resumed from") == 2 and "stopped by SIGTERM" in log and "stopped by SIGINT" in log


# --------------------------------------------------------------------------------- in-process resume
def compose_train(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides))


@pytest.fixture(scope="module", autouse=True)
def torch_settings_restored() -> Iterator[None]:
    """In-process runs set torch's thread count and determinism (trainer.threads, .deterministic)."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 1-epoch run (in-process, fast: no new interpreter). Returns its run dir.

    One thread (trainer.threads=1 in the recipe): on a shared machine more would mostly wait.
    """
    tmp = tmp_path_factory.mktemp("resume")
    run_dir = tmp / "run"
    fit(compose_train(*recipe(tmp), "trainer.epochs=1"), run_dir)
    return run_dir


def test_resuming_from_an_older_checkpoint_logs_each_epoch_once(one_epoch_run: Path, tmp_path: Path):
    run_dir = tmp_path / "run"
    shutil.copytree(one_epoch_run, run_dir)
    shutil.copy(run_dir / "last.pth", run_dir / "epoch1.pth")
    resume = compose_train(f"trainer.resume={run_dir}", "trainer.epochs=2")
    fit(config_for_resume(resume, ["trainer.epochs=2", f"trainer.resume={run_dir}"]), run_dir)
    # Going back to epoch 1 and training epoch 2 again: TensorBoard must drop the first epoch-2 values.
    again = compose_train(f"trainer.resume={run_dir / 'epoch1.pth'}", "trainer.epochs=2")
    fit(config_for_resume(again, ["trainer.epochs=2"]), run_dir)
    assert tensorboard_steps(run_dir) == {tag: [1, 2] for tag in (*SCALARS, "val/overlays")}
    assert len(list((run_dir / "tb").glob("events.out.tfevents.*"))) == 3  # one log, three writers
    history = load_checkpoint(run_dir / "last.pth")["history"]
    assert [r["epoch"] for r in history] == [1, 2]


def test_resume_uses_the_checkpoint_config_and_rejects_conflicting_overrides(one_epoch_run: Path):
    saved = load_checkpoint(one_epoch_run / "last.pth")["config"]
    resume = f"trainer.resume={one_epoch_run}"

    # Only trainer.resume and trainer.epochs given: everything else is the checkpoint's.
    cfg = config_for_resume(compose_train(resume, "trainer.epochs=3"), [resume, "trainer.epochs=3"])
    assert cfg.model.base_width == 4 and cfg.data.image_size == 32 and cfg.trainer.epochs == 3
    assert cfg.data.root == saved["data"]["root"]

    # Repeating the original command line is fine; runtime settings may change.
    same = [*recipe(one_epoch_run.parent), "trainer.epochs=3", "trainer.device=cpu", "data.num_workers=1"]
    cfg = config_for_resume(compose_train(*same, resume), [*same, resume])
    assert cfg.data.num_workers == 1 and cfg.trainer.device == "cpu"

    conflicts = {
        "optim.lr=0.5": "optim.lr=0.5 (checkpoint: 0.001)",
        "model=resnet34_unet": "model.name='resnet34_unet' (checkpoint: 'unet')",
        "model=unet": "model.base_width=64 (checkpoint: 4)",  # the group as composed now
        "data.image_size=64": "data.image_size=64 (checkpoint: 32)",
        "experiment=cpu_unet": "model.base_width=64 (checkpoint: 4)",
    }
    for override, shown in conflicts.items():
        with pytest.raises(PetsegError) as err:
            config_for_resume(compose_train(resume, "trainer.epochs=3", override), [resume, override])
        assert shown in str(err.value) and "\n" not in str(err.value), override

    with pytest.raises(PetsegError, match="already trained all 1 epochs"):
        config_for_resume(compose_train(resume), [resume])  # trainer.epochs=1 from the checkpoint


def test_resume_rejects_missing_and_weights_only_checkpoints(one_epoch_run: Path, tmp_path: Path):
    with pytest.raises(PetsegError, match="no checkpoint there"):
        config_for_resume(compose_train(f"trainer.resume={tmp_path / 'nothing'}"), [])
    exported = one_epoch_run.parent / "saved" / "unet.pth"
    with pytest.raises(PetsegError, match="weights only"):
        config_for_resume(compose_train(f"trainer.resume={exported}", "trainer.epochs=5"), [])


def test_resume_continues_in_the_resumed_run_dir(tmp_path: Path):
    run_dir = tmp_path / "a run, with odd chars"
    (run_dir / ".hydra" / "resume-1").mkdir(parents=True)
    (run_dir / "last.pth").write_bytes(b"")
    argv = continue_in_resumed_run([f"trainer.resume={run_dir}", "trainer.epochs=9"])
    assert argv[:2] == [f"trainer.resume={run_dir}", "trainer.epochs=9"]
    assert argv[2:] == [f"hydra.run.dir='{run_dir}'", "hydra.output_subdir=.hydra/resume-2"]
    # A checkpoint file: its folder; an explicit hydra.run.dir: a branch, left alone.
    assert continue_in_resumed_run([f"trainer.resume={run_dir / 'last.pth'}"])[1].endswith(f"{run_dir}'")
    explicit = [f"trainer.resume={run_dir}", "hydra.run.dir=/elsewhere"]
    assert continue_in_resumed_run(explicit) == explicit
    assert continue_in_resumed_run(["trainer.resume=null", "x=1"]) == ["trainer.resume=null", "x=1"]
    with pytest.raises(PetsegError, match="multirun"):
        continue_in_resumed_run(["-m", f"trainer.resume={run_dir}"])
    with pytest.raises(PetsegError, match="no checkpoint there"):
        continue_in_resumed_run([f"trainer.resume={tmp_path / 'missing'}"])


# ------------------------------------------------------------------------------ atomic checkpoints
def _state(value: float) -> dict[str, Any]:
    return {"model": {"w": torch.full((256, 256), value)}, "config": {"model": {"name": "unet"}}}


@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_a_failed_save_keeps_the_previous_checkpoint_and_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: BaseException
):
    target = tmp_path / "last.pth"
    save_checkpoint(target, _state(1.0))
    real_save = torch.save

    def save_half_then_fail(obj: Any, fh: Any, *args: Any, **kwargs: Any) -> None:
        real_save(obj, fh, *args, **kwargs)
        fh.truncate(fh.tell() // 2)  # half a file is on disk when the failure hits
        raise failure

    monkeypatch.setattr(checkpoint_module.torch, "save", save_half_then_fail)
    expected = PetsegError if isinstance(failure, OSError) else KeyboardInterrupt
    with pytest.raises(expected) as err:
        save_checkpoint(target, _state(2.0))
    if expected is PetsegError:
        assert f"cannot write {target}" in str(err.value) and "No space left" in str(err.value)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]  # no temp litter
    assert torch.equal(torch.load(target, weights_only=True)["model"]["w"], torch.full((256, 256), 1.0))


def test_checkpoints_are_written_with_the_usual_file_mode(tmp_path: Path):
    umask = os.umask(0o022)
    try:
        path = save_checkpoint(tmp_path / "last.pth", _state(1.0))
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644


def test_leftovers_of_a_killed_save_are_removed(tmp_path: Path):
    (tmp_path / ".last.pth.123.abcd.tmp").write_bytes(b"partial")
    (tmp_path / "keep.txt").write_text("x")
    assert [p.name for p in checkpoint_module.remove_partial_writes(tmp_path)] == [".last.pth.123.abcd.tmp"]
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
