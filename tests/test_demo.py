"""The demo's work without a server: the shipped checkpoints loaded once, photos read the way the page
reads them (odd formats turned into RGB, bad files into one clear message), Dice by the reference
protocol equal to evaluate.py's, and the page's handler on good and bad inputs (tests/test_demo_page.py
runs the real command in a browser)."""

from __future__ import annotations

import csv
import importlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from PIL import Image

import demo as demo_command
import evaluate
from helpers import ROOT
from petseg import demo
from petseg.errors import PetsegError
from petseg.pictures import overlay

SHIPPED = {"unet": ROOT / "saved_models" / "unet.pth", "resnet": ROOT / "saved_models" / "resnet34_unet.pth"}


def demo_dependency(module: str) -> ModuleType:
    """Import one of requirements-demo.txt's packages: missing in CI is a failure, elsewhere a skip."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        hint = "install them: .venv/bin/pip install --no-deps -r requirements-demo.txt"
        if os.environ.get("CI", "").lower() in ("1", "true"):
            pytest.fail(f"{module} is missing in CI ({err}); .ci/run must {hint}")
        pytest.skip(f"{module} is not installed; {hint}")


@pytest.fixture(scope="module", autouse=True)
def gradio_temp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The page's pictures go to Gradio's folder (GRADIO_TEMP_DIR): a temporary one, not /tmp/gradio."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GRADIO_TEMP_DIR", str(tmp_path_factory.mktemp("gradio")))
        yield


@pytest.fixture(scope="module")
def slots() -> list[demo.ModelSlot]:
    """Both shipped models, loaded once for this module, as the command loads them."""
    loaded = [demo.load_slot(key, SHIPPED[key], "cpu") for key in demo.SLOTS]
    assert all(slot.predictor is not None for slot in loaded), [slot.error for slot in loaded]
    return loaded


# ------------------------------------------------------------------------------------------ models
def test_columns_say_which_checkpoint_size_and_val_dice(slots: list[demo.ModelSlot]) -> None:
    unet, resnet = (slot.describe() for slot in slots)
    assert "UNet" in unet and "saved_models/unet.pth" in unet and "96 px" in unet and "0.8997" in unet
    assert "ResNet34-UNet" in resnet and "saved_models/resnet34_unet.pth" in resnet
    assert "128 px" in resnet and "val Dice 0.8919" in resnet


@pytest.mark.parametrize("kind", ["missing", "folder", "text", "foreign torch file"])
def test_unusable_checkpoint_names_the_file_and_how_to_get_one(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "model.pth"
    if kind == "folder":
        path.mkdir()
    elif kind == "text":
        path.write_text("not a checkpoint")
    elif kind == "foreign torch file":
        torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    slot = demo.load_slot("unet", path)
    assert slot.predictor is None
    message = slot.describe()
    assert str(path) in message and "no model" in message
    assert "saved_models/unet.pth" in message and "python src/train.py model=unet" in message


def test_checkpoint_in_the_other_column_is_shown_under_its_own_name() -> None:
    slot = demo.load_slot("unet", SHIPPED["resnet"], "cpu")
    assert slot.predictor is not None and slot.title == "ResNet34-UNet (given as unet=)"


# ------------------------------------------------------------------------------------------ photos
def save(path: Path, image: Image.Image, **kwargs: object) -> Path:
    image.save(path, **kwargs)
    return path


def test_odd_photos_become_rgb_with_a_note(tmp_path: Path, sample_root: Path) -> None:
    photo = Image.open(sample_root / "images" / "Bengal_192.jpg").convert("RGB")
    w, h = photo.size
    cases = {
        "gray.png": (save(tmp_path / "gray.png", photo.convert("L")), "grayscale"),
        "rgba.png": (save(tmp_path / "rgba.png", photo.convert("RGBA")), "transparency"),
        "cmyk.jpg": (save(tmp_path / "cmyk.jpg", photo.convert("CMYK")), "CMYK"),
        "palette.gif": (save(tmp_path / "palette.gif", photo.convert("P")), "palette"),
    }
    for name, (path, word) in cases.items():
        read = demo.read_photo(path, name, max_megapixels=40)
        assert read.image.shape == (h, w, 3) and read.image.dtype == np.uint8, name
        assert any(word in note for note in read.notes), (name, read.notes)
    exif = Image.Exif()
    exif[demo.EXIF_ORIENTATION] = 6  # a phone held upright: stored sideways
    rotated = demo.read_photo(save(tmp_path / "phone.jpg", photo, exif=exif), "phone.jpg", 40)
    assert rotated.image.shape == (w, h, 3) and "upright" in " ".join(rotated.notes)


def test_bad_photos_get_one_message_naming_the_upload(tmp_path: Path, sample_root: Path) -> None:
    jpeg = (sample_root / "images" / "Bengal_192.jpg").read_bytes()
    (tmp_path / "notes.txt").write_text("a shopping list")
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "broken.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    Image.new("RGB", (4000, 3000)).save(tmp_path / "big.png")  # 12 MP, over a 10 MP limit
    expected = {
        "notes.txt": "not an image",
        "empty.jpg": "not an image",
        "broken.jpg": "truncated",
        "big.png": "4000x3000 px (12 MP), larger than the 10 MP",
    }
    for name, words in expected.items():
        with pytest.raises(PetsegError) as err:
            demo.read_photo(tmp_path / name, f"my {name}", max_megapixels=10)
        message = str(err.value)
        assert words in message and f"my {name}" in message and str(tmp_path) not in message, message


def test_decompression_bomb_is_refused_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Image.new("L", (300, 300)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 90,000 px is then over twice the limit
    with pytest.raises(PetsegError, match="bomb.png is too large to open safely"):
        demo.read_photo(tmp_path / "bomb.png", "bomb.png", max_megapixels=1000)


def test_test_images_of_a_root_and_only_those(sample_root: Path, tmp_path: Path) -> None:
    tests = demo.find_test_images(sample_root)
    assert tests.names == [
        "Abyssinian_5",
        "american_bulldog_205",
        "Bengal_192",
        "german_shorthaired_193",
        "havanese_192",
    ]
    photo = tests.read("Bengal_192", 40)
    assert photo.truth is not None and photo.truth.shape == photo.image.shape[:2]
    for name in ("Abyssinian_100", "../images/Bengal_192", "/etc/passwd"):  # a train image, paths
        with pytest.raises(PetsegError, match="is not a test image"):
            tests.read(name, 40)
    missing = demo.find_test_images(tmp_path / "nowhere")
    assert missing.names == [] and "does not exist" in missing.note


# ------------------------------------------------------------------------------------- predictions
def test_dice_and_overlay_are_the_reference_protocol(
    slots: list[demo.ModelSlot], sample_root: Path, tmp_path: Path
) -> None:
    """Each test image's Dice equals evaluate.py's dice_256 for it; the overlay is inference's."""
    tests = demo.find_test_images(sample_root)
    for slot in slots:
        out = tmp_path / f"{slot.key}.json"
        args = [f"checkpoint={slot.path}", "split=test", "device=cpu", f"output={out}"]
        data = [f"data.root={sample_root}", "data.batch_size=1", "data.num_workers=0", "data.cache=false"]
        assert evaluate.main(args + data) == 0
        with open(evaluate.per_image_csv_path(out)) as f:
            expected = {row["name"]: float(row["dice_256"]) for row in csv.DictReader(f)}
        assert sorted(expected) == sorted(tests.names)
        for name in tests.names:
            photo = tests.read(name, 40)
            result = demo.predict(slot.predictor, photo, 0.5, tta=False)
            assert result.dice == pytest.approx(expected[name], abs=1e-6), (slot.key, name)
            slot.predictor.tta, slot.predictor.threshold = False, 0.5
            assert np.array_equal(result.overlay, overlay(photo.image, slot.predictor.predict(photo.image)))
            assert result.seconds > 0
    assert expected["Bengal_192"] > 0.9  # the models are the trained ones, not random weights


def test_threshold_and_tta_change_the_prediction(slots: list[demo.ModelSlot], sample_root: Path) -> None:
    photo = demo.find_test_images(sample_root).read("Bengal_192", 40)
    unet = slots[0].predictor
    base = demo.predict(unet, photo, 0.5, tta=False)
    low = demo.predict(unet, photo, 0.05, tta=False)
    flip = demo.predict(unet, photo, 0.5, tta=True)
    assert low.foreground > base.foreground
    assert not np.array_equal(flip.overlay, base.overlay) or flip.dice != base.dice


# -------------------------------------------------------------------------------------------- page
@pytest.fixture(scope="module")
def page(slots: list[demo.ModelSlot], sample_root: Path) -> object:
    demo_dependency("gradio")
    from petseg.demo_page import DemoPage

    return DemoPage(slots, demo.find_test_images(sample_root), 0.5, False, max_megapixels=40)


def run(page: object, upload: Path | None, name: str | None, threshold: float = 0.5) -> list[list[object]]:
    payload = {"path": str(upload), "orig_name": upload.name} if upload else None
    return list(page.segment(payload, name, threshold, False))  # type: ignore[attr-defined]


def pixels(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_page_shows_each_column_as_its_model_finishes(
    page: object, slots: list[demo.ModelSlot], sample_root: Path
) -> None:
    steps = run(page, None, "Bengal_192")
    assert len(steps) == 3  # photo and truth, then the UNet column, then the ResNet34-UNet column
    photo = demo.find_test_images(sample_root).read("Bengal_192", 40)
    assert np.array_equal(pixels(steps[0][1]), photo.image)  # lossless: a small photo is a PNG
    assert np.array_equal(pixels(steps[0][2]), overlay(photo.image, photo.truth))
    assert steps[0][3] is None and steps[1][3] is not None and steps[1][6] is None
    final = steps[-1]
    for slot, (shown, seconds, dice) in zip(slots, (final[3:6], final[6:9]), strict=True):
        slot.predictor.tta, slot.predictor.threshold = False, 0.5
        assert np.array_equal(pixels(shown), overlay(photo.image, slot.predictor.predict(photo.image)))
        assert seconds.endswith("flip TTA off)") and 0.9 < float(dice) <= 1
    assert "Bengal_192 (test image)" in final[0] and "Dice" in final[0]


def test_page_keeps_working_after_bad_input(
    page: object, sample_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "cat.jpg").write_text("<html>not a cat</html>")
    bad = run(page, tmp_path / "cat.jpg", None)
    assert len(bad) == 1 and "Cannot use this input" in bad[0][0] and "cat.jpg is not an image" in bad[0][0]
    assert all(value in (None, "") for value in bad[0][1:])
    assert "threshold must be" in run(page, None, "Bengal_192", threshold=1.5)[0][0]

    def no_reload(*_args: object) -> None:
        raise AssertionError("the models are loaded once, at start")

    monkeypatch.setattr("petseg.demo.load_checkpoint", no_reload)
    shutil.copy(sample_root / "images" / "Abyssinian_5.jpg", tmp_path / "upload.jpg")
    good = run(page, tmp_path / "upload.jpg", None)[-1]
    assert (
        pixels(good[3]).shape == pixels(good[1]).shape and good[5] == "no ground truth for an uploaded photo"
    )


def test_big_photos_are_sent_as_jpeg(page: object, tmp_path: Path) -> None:
    Image.new("RGB", (2000, 1500), (90, 120, 150)).save(tmp_path / "big.png")  # 3 MP
    final = run(page, tmp_path / "big.png", None)[-1]
    assert final[1].endswith(".jpg") and Image.open(final[3]).size == (2000, 1500)


def test_page_without_models_still_shows_the_photo(sample_root: Path) -> None:
    demo_dependency("gradio")
    from petseg.demo_page import DemoPage

    missing = [demo.load_slot(key, sample_root / f"{key}.pth") for key in demo.SLOTS]
    page = DemoPage(missing, demo.find_test_images(sample_root), 0.5, False, 40)
    final = run(page, None, "Bengal_192")[-1]
    assert final[1] is not None and final[3:9] == [None, "no model", "no model"] * 2
    assert "no model" in final[0]


# --------------------------------------------------------------------------------------- command
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["port=abc"], "port must be"),
        (["port=70000"], "port must be"),
        (["threshold=1"], "threshold must be"),
        (["tta=maybe"], "tta must be"),
        (["max_megapixels=0"], "max_megapixels must be"),
        (["colour=red"], "colour"),
    ],
)
def test_command_line_mistakes_are_one_line(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert demo_command.main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_help_lists_every_key(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        demo_command.main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for key in ("unet=", "resnet=", "host=127.0.0.1", "port=7860", "threshold=", "tta=", "data="):
        assert key in out
