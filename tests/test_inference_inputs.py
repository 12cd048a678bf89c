"""inference.py on a folder of awkward inputs: each usable image gets its mask and overlay at its own
size, each bad file one error line, the others go on, and the exit code says whether any failed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image

import inference
from models import build_model
from petseg import pictures
from petseg.checkpoint import save_checkpoint
from petseg.cli import CONFIG_DIR

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "tests" / "data" / "oxford-iiit-pet"
HUGE = (8000, 6000)  # width, height: 48 MP


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained width-4 UNet at 32 px, saved the way train.py saves: no training needed here."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["model.base_width=4", "data.image_size=32", f"data.root={SAMPLE}"])
    torch.manual_seed(0)
    model = build_model(**cfg.model)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    config = OmegaConf.to_container(cfg, resolve=True)
    return save_checkpoint(path, {"model": model.state_dict(), "config": config})


def make_inputs(folder: Path) -> tuple[dict[str, tuple[int, int]], list[str]]:
    """Write the awkward inputs; returns {usable file: (width, height)} and the bad file names."""
    folder.mkdir()
    shutil.copy(SAMPLE / "images" / "Bengal_100.jpg", folder / "photo.jpg")
    Image.fromarray(np.linspace(0, 255, 40 * 30).reshape(30, 40).astype(np.uint8), "L").save(
        folder / "gray.png"
    )
    rgba = np.zeros((21, 33, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, np.arange(33, dtype=np.uint8)[None] * 7  # red, half transparent
    Image.fromarray(rgba, "RGBA").save(folder / "rgba.png")
    Image.new("RGB", (1, 1), (10, 200, 30)).save(folder / "dot.png")
    big = Image.new("RGB", HUGE, (90, 120, 150))
    big.paste((240, 200, 120), (2000, 1500, 6000, 4500))  # something pet-sized to segment
    big.save(folder / "huge.jpg", quality=80)
    usable = {}
    for name in ("photo.jpg", "gray.png", "rgba.png", "dot.png", "huge.jpg"):
        with Image.open(folder / name) as im:
            usable[name] = im.size

    (folder / "notes.txt").write_text("not an image\n")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "cut.jpg").write_bytes((SAMPLE / "images" / "Bengal_100.jpg").read_bytes()[:600])
    (folder / "gone.jpg").symlink_to(folder / "no-such-file.jpg")
    bad = ["notes.txt", "empty.jpg", "cut.jpg", "gone.jpg"]
    if os.geteuid() != 0:  # root reads a mode-000 file anyway
        (folder / "locked.png").write_bytes((folder / "gray.png").read_bytes())
        (folder / "locked.png").chmod(0)
        bad.append("locked.png")
    (folder / "subfolder").mkdir()  # not an input
    (folder / ".hidden.png").write_bytes((folder / "gray.png").read_bytes())  # not an input
    return usable, bad


@pytest.mark.slow
def test_a_folder_of_awkward_inputs(tiny_checkpoint: Path, tmp_path: Path):
    usable, bad = make_inputs(tmp_path / "in")
    out = tmp_path / "out"
    with open(tmp_path / "stdout", "wb") as so, open(tmp_path / "stderr", "wb") as se:
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "src" / "inference.py"), f"checkpoint={tiny_checkpoint}"]
            + [f"input={tmp_path / 'in'}", f"output={out}", "device=cpu"],
            cwd=ROOT,
            stdout=so,
            stderr=se,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    stdout, stderr = (tmp_path / "stdout").read_text(), (tmp_path / "stderr").read_text()
    assert process.returncode == 1, stdout + stderr  # some failed
    assert "Traceback" not in stderr
    errors = [line.split("\r")[-1] for line in stderr.splitlines() if "error:" in line]
    assert len(errors) == len(bad), errors
    for name in bad:  # one line each, naming the file
        assert sum(name in line for line in errors) == 1, (name, errors)
    assert f"{len(usable)} image(s) predicted, {len(bad)} failed" in stdout

    for name, size in usable.items():
        stem = Path(name).stem
        with Image.open(out / f"{stem}_mask.png") as mask:
            assert mask.size == size and mask.mode == "L"
            assert set(np.unique(np.asarray(mask)).tolist()) <= {0, 255}
        with Image.open(out / f"{stem}_overlay.png") as tinted:
            assert tinted.size == size and tinted.mode == "RGB"
    assert not any(Path(name).stem in p.name for name in bad for p in out.iterdir())
    with Image.open(out / "grid.png") as grid:
        assert grid.size == (4 * inference.GRID_TILE, 2 * inference.GRID_TILE)  # 5 overlays, 4 a row
    # A 48 MP image stays memory-sane: no full-size float copies of the photo (ru_maxrss is in KiB).
    assert usage.ru_maxrss < 2_000_000, f"peak RSS {usage.ru_maxrss / 1e6:.2f} GB"


def test_banded_overlay_is_the_same_picture(monkeypatch: pytest.MonkeyPatch):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (50, 31, 3), dtype=np.uint8)
    mask = rng.random((50, 31)) > 0.5
    monkeypatch.setattr(pictures, "OVERLAY_ROWS", 7)  # several bands and a short last one
    # The tint written out: (1 - alpha) * pixel + alpha * colour on the foreground, rounded.
    expected = image.astype(np.float32)
    colour = np.asarray(pictures.OVERLAY_COLOUR, np.float32)
    expected[mask] = (1 - pictures.OVERLAY_ALPHA) * expected[mask] + pictures.OVERLAY_ALPHA * colour
    assert np.array_equal(pictures.overlay(image, mask), expected.round().astype(np.uint8))
    assert np.array_equal(pictures.overlay(image, mask)[~mask], image[~mask])


def test_output_names_do_not_collide():
    files = [Path("a/cat.jpg"), Path("a/cat.png"), Path("a/dog.jpg")]
    assert inference.output_names(files) == ["cat_jpg", "cat_png", "dog"]


def test_a_single_1x1_image_is_predicted_in_process(tiny_checkpoint: Path, tmp_path: Path):
    Image.new("RGB", (1, 1), (0, 0, 0)).save(tmp_path / "dot.png")
    code = inference.main(
        [f"checkpoint={tiny_checkpoint}", f"input={tmp_path / 'dot.png'}", f"output={tmp_path}"]
    )
    assert code == 0
    with Image.open(tmp_path / "dot_mask.png") as mask:
        assert mask.size == (1, 1)
