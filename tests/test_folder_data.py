"""data=folder: any folder of images/ and masks/ (petseg/folder_data.py), on folders these tests make
(PNG, JPEG, TIFF; 1 and 3 channels; nested) and on real EM slices (tests/data/isbi2012-em-sample)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from helpers import CONFIG_DIR, DATA_DIR
from petseg.data_settings import data_settings
from petseg.datasets import build_dataset, resolve_data
from petseg.errors import PetsegError
from petseg.folder_layout import paired_files
from petseg.upgrade import group_yaml
from utils import DiceMeter

EM_SAMPLE = DATA_DIR / "isbi2012-em-sample"


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def make_folder(root: Path, n: int = 10, rgb: bool = True, size: tuple[int, int] = (40, 30)) -> Path:
    """n pairs named by their index, cycling PNG / JPEG / TIFF images, every third one in a sub-folder;
    masks 0/255 with a bright square (foreground) on a dark background."""
    rng = np.random.default_rng(0)
    h, w = size
    for i in range(n):
        sub = "nested/deeper/" if i % 3 == 0 else ""
        image = rng.integers(0, 80, (h, w, 3) if rgb else (h, w), dtype=np.uint8)
        mask = np.zeros((h, w), np.uint8)
        mask[5:20, 8 + i % 5 : 24] = 255
        image[mask > 0] += 150
        suffix = (".png", ".jpg", ".tif")[i % 3]
        _save(root / "images" / f"{sub}item_{i:02d}{suffix}", image)
        _save(root / "masks" / f"{sub}item_{i:02d}.png", mask)
    return root


def folder_cfg(root: Path, **overrides: object):
    cfg = group_yaml("data", "folder")
    cfg.root = str(root)
    cfg.image_size = 32
    cfg.cache = False
    cfg.num_workers = 0
    return OmegaConf.merge(cfg, OmegaConf.create(dict(overrides)))


def resolved(cfg):
    return resolve_data(data_settings(cfg))


# ------------------------------------------------------------------------------------------ items


@pytest.mark.parametrize("rgb", [True, False])
def test_items_have_the_data_channels_and_binary_masks(tmp_path: Path, rgb: bool):
    cfg = resolved(folder_cfg(make_folder(tmp_path / "d", rgb=rgb)))
    assert cfg.channels == (3 if rgb else 1)  # channels: auto, from the files
    assert len(cfg.mean) == len(cfg.std) == cfg.channels and min(cfg.std) > 0
    train = build_dataset(cfg, group_yaml("aug", "default"), "train")
    item = train[0]
    assert item["image"].shape == (cfg.channels, 32, 32) and item["image"].dtype == torch.uint8
    assert item["mask"].shape == (1, 32, 32) and set(item["mask"].unique().tolist()) <= {0, 1}
    assert item["mask"].sum() > 0  # the bright square is the class ('>0')
    names = {n for s in ("train", "valid", "test") for n in build_dataset(cfg, None, s).names}
    assert len(names) == 10 and "nested/deeper/item_00" in names  # sub-folders keep their path


def test_mean_and_std_are_the_train_pixels_statistics(tmp_path: Path):
    cfg = resolved(folder_cfg(make_folder(tmp_path / "d", rgb=False)))
    train = build_dataset(cfg, None, "train")
    pixels = np.concatenate([train.load_image(n).ravel() for n in train.names]) / 255.0
    assert cfg.mean[0] == pytest.approx(pixels.mean(), abs=1e-4)
    assert cfg.std[0] == pytest.approx(pixels.std(), abs=1e-4)


def test_crop_trains_on_patches_and_evaluates_whole_images(tmp_path: Path):
    cfg = resolved(folder_cfg(make_folder(tmp_path / "d"), image_size=64, crop=32, repeat=3))
    train, valid = build_dataset(cfg, None, "train"), build_dataset(cfg, None, "valid")
    assert len(train) == 3 * len(train.names)  # repeat: each image three times an epoch
    assert train[(0, 1)]["image"].shape[-2:] == (32, 32)
    assert valid[0]["image"].shape[-2:] == (64, 64)


def test_cache_gives_the_items_of_the_files(tmp_path: Path):
    cfg = resolved(folder_cfg(make_folder(tmp_path / "d", rgb=False)))
    plain = build_dataset(cfg, None, "valid")
    cached = build_dataset(replace(cfg, cache=True, cache_dir=tmp_path / "c"), None, "valid")
    assert cached.cache is not None
    for i in range(len(plain)):
        assert torch.equal(plain[i]["image"], cached[i]["image"])
        assert torch.equal(plain[i]["mask"], cached[i]["mask"])


def test_foreground_lists_and_thresholds(tmp_path: Path):
    root = make_folder(tmp_path / "d")
    membrane = resolved(folder_cfg(root, foreground=[0], background=[255]))
    square = resolved(folder_cfg(root, foreground=">=128"))
    name = build_dataset(square, None, "train").names[0]
    a = build_dataset(membrane, None, "train").load_mask(name)
    b = build_dataset(square, None, "train").load_mask(name)
    assert np.array_equal(a, 1 - b)  # the class is a setting: the dark pixels, or the bright ones


# ------------------------------------------------------------------------------------------ splits


def test_ranges_split_ordered_data(tmp_path: Path):
    ranges = {"train": [0, 4], "valid": [4, 5], "test": [5, 6]}
    root = make_folder(tmp_path / "d", n=6)
    cfg = resolved(folder_cfg(root, split={"ranges": ranges}))
    everything = sorted(paired_files(root))  # positions in the sorted names
    assert build_dataset(cfg, None, "train").names == everything[:4]
    assert build_dataset(cfg, None, "valid").names == everything[4:5]
    assert build_dataset(cfg, None, "test").names == everything[5:]


def test_ratio_split_is_seeded_and_disjoint(tmp_path: Path):
    root = make_folder(tmp_path / "d", n=20)
    splits = {}
    for seed in (0, 0, 1):
        cfg = resolved(folder_cfg(root, split={"seed": seed}))
        splits.setdefault(seed, []).append(
            {s: build_dataset(cfg, None, s).names for s in ("train", "valid", "test")}
        )
    assert splits[0][0] == splits[0][1] and splits[0][0] != splits[1][0]
    parts = splits[0][0]
    assert [len(parts[s]) for s in ("train", "valid", "test")] == [16, 2, 2]
    assert len(set().union(*map(set, parts.values()))) == 20


def test_split_files(tmp_path: Path):
    root = make_folder(tmp_path / "d", n=6)
    (root / "train.txt").write_text("item_01\nitem_02.png\n# a comment\nnested/deeper/item_03\n")
    (root / "valid.txt").write_text("item_04\n")
    (root / "test.txt").write_text("item_05\n")
    files = {"train": "train.txt", "valid": "valid.txt", "test": "test.txt"}
    cfg = resolved(folder_cfg(root, split={"files": files}))
    assert build_dataset(cfg, None, "train").names == ["item_01", "item_02", "nested/deeper/item_03"]
    assert build_dataset(cfg, None, "test").names == ["item_05"]


# ------------------------------------------------------------------------------------- bad input


def _mutate(root: Path, case: str) -> dict:
    """Spoil a made folder as ``case`` says; returns the data overrides the case needs."""
    if case == "image without mask":
        next((root / "masks").glob("item_01.*")).unlink()
    elif case == "mask without image":
        _save(root / "masks" / "extra.png", np.zeros((30, 40), np.uint8))
    elif case == "mask of another size":
        _save(root / "masks" / "item_01.png", np.zeros((31, 40), np.uint8))
    elif case == "uncovered mask value":
        mask = np.zeros((30, 40), np.uint8)
        mask[0, 0] = 128
        _save(root / "masks" / "item_01.png", mask)
        return {"foreground": [255], "background": [0]}
    elif case == "16-bit mask":
        Image.fromarray(np.zeros((30, 40), np.uint16)).save(root / "masks" / "item_01.png")
    elif case == "RGB mask":
        _save(root / "masks" / "item_01.png", np.zeros((30, 40, 3), np.uint8))
    elif case == "empty split":
        return {"split": {"ratio": [1.0, 0.0, 0.0]}}
    elif case == "test name in the train list":
        (root / "train.txt").write_text("item_01\nitem_02\n")
        (root / "valid.txt").write_text("item_04\n")
        (root / "test.txt").write_text("item_02\n")
        return {"split": {"files": {"train": "train.txt", "valid": "valid.txt", "test": "test.txt"}}}
    return {}


BAD_CASES = {
    "image without mask": "have no mask of the same name",
    "mask without image": "have no image of the same name",
    "mask of another size": "but its mask",
    "uncovered mask value": "has values [128] that neither data.foreground",
    "16-bit mask": "is 16-bit; masks must be 8-bit with one channel",
    "RGB mask": "is RGB (3 channels); masks must be 8-bit with one channel",
    "empty split": "the valid split of",
    "test name in the train list": "is in both the train and the test split",
}


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_is_one_clear_error(tmp_path: Path, case: str):
    root = make_folder(tmp_path / "d", n=6)
    cfg = folder_cfg(root, **_mutate(root, case))
    with pytest.raises(PetsegError) as err:
        data = resolved(cfg)
        for split in ("train", "valid", "test"):
            dataset = build_dataset(data, None, split)
            for i in range(len(dataset)):
                dataset[i]
    assert BAD_CASES[case] in str(err.value) and "\n" not in str(err.value)


def test_an_unpaired_file_is_skipped_when_allowed(tmp_path: Path):
    root = make_folder(tmp_path / "d", n=6)
    _mutate(root, "image without mask")
    cfg = resolved(folder_cfg(root, allow_missing=True))
    names = {n for s in ("train", "valid", "test") for n in build_dataset(cfg, None, s).names}
    assert len(names) == 5 and "item_01" not in names


# ------------------------------------------------------------------------------------------ metrics


def test_pixel_error_is_the_fraction_of_wrong_pixels():
    pred = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    truth = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    pred[0, 0, 0, :2] = True  # 2 wrong pixels in image 0
    truth[1, 0, 1, :] = True  # 4 wrong pixels in image 1 (predicted nothing)
    meter = DiceMeter()
    meter.update(pred, truth)
    assert meter.pixel_error == pytest.approx(6 / 32)


def test_the_em_preset_reads_the_sample_slices():
    cfg = OmegaConf.merge(
        group_yaml("data", "isbi2012_em"),
        {"root": str(EM_SAMPLE), "image_size": 128, "crop": 64, "cache": False},
    )
    cfg.split.ranges = {"train": [0, 4], "valid": [4, 5], "test": [5, 6]}
    valid = build_dataset(resolved(cfg), None, "valid")
    mask = valid.load_mask("slice_04")
    assert cfg.channels == 1 and 0.1 < mask.mean() < 0.4  # membrane is the class, ~22 % of pixels
    assert OmegaConf.load(CONFIG_DIR / "data" / "isbi2012_em.yaml").foreground == [0]
