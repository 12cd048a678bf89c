"""A file that is not a petseg checkpoint is one line through the real commands: `<file> is not a petseg
checkpoint (<reason>)`, exit code 2, no traceback and none of torch's internal messages."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from conftest import SAMPLE_ROOT, tiny
from helpers import ROOT
from petseg.checkpoint import FORMAT, VERSION, load_checkpoint
from petseg.errors import PetsegError

SHIPPED = ROOT / "saved_models" / "resnet34_unet.pth"
# What torch says about files it cannot read; a user must never see any of it.
INTERNAL = ("Traceback", "pop from empty list", "EOFError", "PytorchStreamReader", "mmap", "miniz", "Warning")


def bad_files(folder: Path) -> dict[str, tuple[Path, str]]:
    """{case: (file, the reason its error gives in parentheses)}."""
    folder.mkdir()
    files: dict[str, tuple[Path, str]] = {}

    def add(case: str, reason: str) -> Path:
        files[case] = (folder / f"{case}.pth", reason)
        return files[case][0]

    add("text", "not a torch file").write_text("weights: 1, 2, 3\n")
    add("empty", "empty file").write_bytes(b"")
    data = SHIPPED.read_bytes()
    add("truncated", "truncated or corrupt torch file").write_bytes(data[: len(data) // 2])
    with zipfile.ZipFile(add("zip", "a zip archive, not a torch file"), "w") as archive:
        archive.writestr("notes/readme.txt", "not weights")
    weights = load_checkpoint(SHIPPED)["model"]
    torch.save(weights, add("state_dict", "a plain state_dict without the config"))
    torch.save({"format": FORMAT, "version": VERSION, "epoch": 3}, add("keys", "missing keys: model, config"))
    return files


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "src" / script), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0"},
    )


def assert_one_line(result: subprocess.CompletedProcess, expected: str) -> None:
    assert result.returncode == 2, (result.stdout[-2000:], result.stderr[-2000:])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [f"error: {expected}"], result.stderr
    assert not any(word in result.stdout + result.stderr for word in INTERNAL), result.stderr


@pytest.mark.slow
def test_bad_checkpoints_through_evaluate_inference_and_resume(tmp_path: Path):
    files = bad_files(tmp_path / "bad")
    image = SAMPLE_ROOT / "images" / "Bengal_100.jpg"
    out = tmp_path / "out"
    commands = {}
    # Every case's reason is checked by load_checkpoint below and through evaluate/inference in-process
    # (test_user_errors.py); here, in real processes, the two whose torch errors are the noisiest.
    for case in ("truncated", "zip"):
        path, reason = files[case]
        expected = f"{path} is not a petseg checkpoint ({reason})"
        commands[f"evaluate {case}"] = (
            ["evaluate.py", f"checkpoint={path}", f"output={out / 'm.json'}"],
            expected,
        )
        commands[f"inference {case}"] = (
            ["inference.py", f"checkpoint={path}", f"input={image}", f"output={out}"],
            expected,
        )
    # Resuming reads the checkpoint memory-mapped: a cut-off last.pth gets the same line.
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    truncated, reason = files["truncated"]
    (run_dir / "last.pth").write_bytes(truncated.read_bytes())
    commands["resume truncated"] = (
        ["train.py", *tiny(tmp=tmp_path), f"trainer.resume={run_dir}"],
        f"{run_dir / 'last.pth'} is not a petseg checkpoint ({reason})",
    )
    missing = tmp_path / "nope.pth"  # keeps its own message
    found = f"checkpoint not found: {missing}"
    commands["evaluate missing"] = (["evaluate.py", f"checkpoint={missing}"], found)
    commands["inference missing"] = (
        ["inference.py", f"checkpoint={missing}", f"input={image}", f"output={out}"],
        found,
    )
    with ThreadPoolExecutor(max_workers=4) as pool:  # each start-up imports torch: a few seconds
        results = dict(zip(commands, pool.map(lambda c: run(*c[0]), commands.values()), strict=True))
    for case, (_args, expected) in commands.items():
        assert_one_line(results[case], expected)
    assert not out.exists()  # nothing was written before the checkpoint was refused


def test_mmap_load_gives_the_same_reasons(tmp_path: Path):
    """resume.py loads with mmap=True, which torch refuses for non-zip files with its own message."""
    for path, reason in bad_files(tmp_path / "bad").values():
        for mmap in (False, True):
            with pytest.raises(PetsegError) as caught:
                load_checkpoint(path, mmap=mmap)
            assert str(caught.value) == f"{path} is not a petseg checkpoint ({reason})"


def test_the_shipped_checkpoint_still_loads_both_ways():
    for mmap in (False, True):
        ckpt = load_checkpoint(SHIPPED, mmap=mmap)
        assert ckpt["config"]["model"]["name"] == "resnet34_unet" and ckpt["model"]
