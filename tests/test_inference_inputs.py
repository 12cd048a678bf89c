"""inference.py on folders of awkward inputs: each usable image (sub-folders too) gets its mask and
overlay at its own size, each bad image one error line, other files one 'skipped' line, the others go
on, and the exit code says whether any image failed."""

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
from helpers import ROOT, SAMPLE
from models import build_model
from petseg import pictures
from petseg.checkpoint import save_checkpoint
from petseg.paths import CONFIG_DIR

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


def make_inputs(folder: Path) -> tuple[dict[str, tuple[int, int]], list[str], list[str]]:
    """Write the awkward inputs; returns {usable file: (width, height)}, the bad image files (they
    claim to be images and are not usable) and the skipped ones (not images), all relative paths."""
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
    (folder / "subfolder").mkdir()  # searched too; same name as the top photo, its own outputs
    shutil.copy(SAMPLE / "images" / "Abyssinian_5.jpg", folder / "subfolder" / "photo.jpg")
    shutil.copy(SAMPLE / "images" / "Abyssinian_5.jpg", folder / "subfolder" / "IMG_0001")  # no extension
    usable = {}
    for name in ("photo.jpg", "gray.png", "rgba.png", "dot.png", "huge.jpg", "subfolder/photo.jpg"):
        with Image.open(folder / name) as im:
            usable[name] = im.size
    usable["subfolder/IMG_0001"] = usable["subfolder/photo.jpg"]

    (folder / "notes.txt").write_text("not an image\n")  # not an image: skipped, not a failure
    (folder / "subfolder" / "README.md").write_text("# my pets\n")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "cut.jpg").write_bytes((SAMPLE / "images" / "Bengal_100.jpg").read_bytes()[:600])
    (folder / "gone.jpg").symlink_to(folder / "no-such-file.jpg")
    bad = ["empty.jpg", "cut.jpg", "gone.jpg"]
    if os.geteuid() != 0:  # root reads a mode-000 file anyway
        (folder / "locked.png").write_bytes((folder / "gray.png").read_bytes())
        (folder / "locked.png").chmod(0)
        bad.append("locked.png")
    (folder / ".hidden.png").write_bytes((folder / "gray.png").read_bytes())  # ignored
    return usable, bad, ["notes.txt", "subfolder/README.md"]


@pytest.mark.slow
def test_a_folder_of_awkward_inputs(tiny_checkpoint: Path, tmp_path: Path):
    usable, bad, skipped = make_inputs(tmp_path / "in")
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
    assert stdout.splitlines() == [
        f"skipped 2 file(s) that are not images: {', '.join(skipped)}",
        f"{len(usable)} image(s) predicted, 2 skipped, {len(bad)} failed; outputs in {out}",
    ]

    for name, size in usable.items():
        stem = Path(name).with_suffix("")  # the relative path is kept: subfolder/photo_mask.png
        with Image.open(out / f"{stem}_mask.png") as mask:
            assert mask.size == size and mask.mode == "L"
            assert set(np.unique(np.asarray(mask)).tolist()) <= {0, 255}
        with Image.open(out / f"{stem}_overlay.png") as tinted:
            assert tinted.size == size and tinted.mode == "RGB"
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert len(written) == 2 * len(usable) + 1  # nothing for the bad, skipped or hidden files
    with Image.open(out / "grid.png") as grid:
        assert grid.size == (4 * inference.GRID_TILE, 2 * inference.GRID_TILE)  # 7 overlays, 4 a row
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
    root = Path("photos")
    files = [root / "Cat.jpg", root / "cat.png", root / "sub" / "cat.jpg", root / "a.jpg", root / "a.png"]
    files.append(root / "a_jpg.gif")  # its stem is what a.jpg became
    names = inference.output_names(files, root)
    # A case-insensitive disk would merge Cat and cat; a sub-folder keeps its path.
    assert names == ["Cat_jpg", "cat_png", "sub/cat", "a_jpg", "a_png", "a_jpg_2"]


def run_inference(checkpoint: Path, folder: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "src" / "inference.py"), f"checkpoint={checkpoint}"]
        + [f"input={folder}", f"output={out}", "device=cpu"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


@pytest.mark.slow
def test_notes_beside_photos_are_skipped_and_a_rerun_predicts_the_same(tiny_checkpoint: Path, tmp_path: Path):
    folder = tmp_path / "my pets"
    (folder / "2024" / "summer").mkdir(parents=True)
    for target in ("cat.jpg", "2024/cat.jpg", "2024/summer/dog.png"):
        Image.open(SAMPLE / "images" / "Bengal_100.jpg").save(folder / target)
    (folder / "README.txt").write_text("photos of my pets\n")
    for i in range(6):
        (folder / "2024" / f"notes_{i}.txt").write_text("not a photo\n")
    out = folder / "predictions"  # inside the input: the second run must not predict the first's outputs
    for _ in range(2):
        result = run_inference(tiny_checkpoint, folder, out)
        assert result.returncode == 0, result.stderr  # skipped files are not failures
        assert "error" not in result.stderr
        assert result.stdout.splitlines() == [
            "skipped 7 file(s) that are not images: 2024/notes_0.txt, 2024/notes_1.txt, 2024/notes_2.txt, "
            "2024/notes_3.txt, 2024/notes_4.txt and 2 more",
            f"3 image(s) predicted, 7 skipped, 0 failed; outputs in {out}",
        ]
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert written == [
        "2024/cat_mask.png",
        "2024/cat_overlay.png",
        "2024/summer/dog_mask.png",
        "2024/summer/dog_overlay.png",
        "cat_mask.png",
        "cat_overlay.png",
        "grid.png",
    ]


@pytest.mark.slow
def test_a_folder_without_images_is_one_line_exit_2(tiny_checkpoint: Path, tmp_path: Path):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "README.txt").write_text("nothing to see\n")
    (notes / "model.pth").write_bytes(b"PK")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / ".DS_Store").write_bytes(b"\0")  # hidden: ignored
    cases = {
        notes: "only 2 file(s) that are not images: README.txt, model.pth",
        empty: "it is empty",
    }
    for folder, reason in cases.items():
        result = run_inference(tiny_checkpoint, folder, tmp_path / "out")
        assert result.returncode == 2, result.stdout + result.stderr
        assert result.stderr.splitlines() == [f"error: input folder {folder} holds no images ({reason})"]
        assert result.stdout == ""
    assert not (tmp_path / "out").exists()


def test_a_single_1x1_image_is_predicted_in_process(tiny_checkpoint: Path, tmp_path: Path):
    Image.new("RGB", (1, 1), (0, 0, 0)).save(tmp_path / "dot.png")
    code = inference.main(
        [f"checkpoint={tiny_checkpoint}", f"input={tmp_path / 'dot.png'}", f"output={tmp_path}"]
    )
    assert code == 0
    with Image.open(tmp_path / "dot_mask.png") as mask:
        assert mask.size == (1, 1)


def test_images_are_told_by_extension_or_content(tmp_path: Path):
    from petseg.inference_inputs import is_image_file

    jpeg = (SAMPLE / "images" / "Bengal_100.jpg").read_bytes()
    files = {
        "README.txt": (b"my pets\n", False),
        "weights.pth": (b"PK\x03\x04" + bytes(100), False),
        "IMG_0001": (jpeg, True),  # no extension: the content says JPEG
        "photo.JPG": (jpeg, True),
        "broken.jpg": (b"not a jpeg", True),  # claims to be an image: predicted, and fails there
    }
    for name, (content, expected) in files.items():
        (tmp_path / name).write_bytes(content)
        assert is_image_file(tmp_path / name) is expected, name
