"""oxford_pet.py on real data: the official split lists, the committed sample, the shared partial copy."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

import oxford_pet
from oxford_pet import OxfordPetDataset, build_dataset, read_image, read_trimap, split_names, trimap_to_mask
from petseg import loaders, transforms
from petseg.data_settings import data_settings
from petseg.errors import PetsegError
from petseg.loaders import build_dataloader

REPO = Path(__file__).resolve().parents[1]
CLI = REPO / "src" / "oxford_pet.py"
AUG = REPO / "configs" / "aug"
SIZE = 64  # small items keep the suite fast; the pipeline is the same at 256

# The sample (tests/data/make_sample.py): 20 trainval lines -> lines 0 and 10 are valid.
SAMPLE_VALID = ["Abyssinian_100", "chihuahua_106"]
SAMPLE_TRAIN_FIRST = "american_bulldog_100"


def _list_lines(root: Path, list_name: str) -> list[str]:
    return (root / "annotations" / list_name).read_text().splitlines()


def _data_cfg(root: Path, **overrides: object):
    cfg = OmegaConf.load(REPO / "configs" / "data" / "oxford_pet.yaml")
    cfg.root = str(root)
    cfg.image_size = SIZE
    cfg.num_workers = 0
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


def _item(ds: OxfordPetDataset, name: str) -> dict:
    return ds[ds.names.index(name)]


def _assert_good_item(item: dict, size: int = SIZE) -> None:
    # The one item format: uint8 RGB image and {0, 1} mask (petseg.model_input normalises batches).
    assert item["image"].shape == (3, size, size) and item["image"].dtype == torch.uint8
    assert item["mask"].shape == (1, size, size) and item["mask"].dtype == torch.uint8
    assert set(torch.unique(item["mask"]).tolist()) <= {0, 1}
    assert item["image"].float().std() > 0  # a real picture, not a blank


# ------------------------------------------------------------------------------------------------ splits


def test_split_sizes_on_full_official_lists(full_lists_root: Path) -> None:
    train = split_names(full_lists_root, "train")
    valid = split_names(full_lists_root, "valid")
    test = split_names(full_lists_root, "test")
    assert (len(train), len(valid), len(test)) == (3312, 368, 3669)
    assert split_names(full_lists_root, "val") == valid
    assert not set(train) & set(valid) and not (set(train) | set(valid)) & set(test)
    trainval = [line.split()[0] for line in _list_lines(full_lists_root, "trainval.txt") if line]
    assert valid == trainval[0::10]  # every 10th line starting at line 0, in file order
    assert train == [n for i, n in enumerate(trainval) if i % 10]
    assert valid[:2] == [trainval[0], trainval[10]]


def test_unknown_split_is_a_user_error(sample_root: Path) -> None:
    with pytest.raises(PetsegError, match="unknown split 'training'"):
        split_names(sample_root, "training")


def test_sample_splits(sample_root: Path) -> None:
    assert split_names(sample_root, "valid") == SAMPLE_VALID
    assert len(split_names(sample_root, "train")) == 18
    assert len(split_names(sample_root, "test")) == 5
    ds = OxfordPetDataset(sample_root, "val", image_size=SIZE)
    assert ds.split == "valid" and ds.names == SAMPLE_VALID and ds.missing == []


# -------------------------------------------------------------------------------------------- decoding


def test_mask_mapping_pixel_by_pixel_on_a_real_trimap(sample_root: Path) -> None:
    trimap = read_trimap(sample_root / "annotations" / "trimaps" / f"{SAMPLE_TRAIN_FIRST}.png")
    assert set(np.unique(trimap).tolist()) == {1, 2, 3}
    mask = trimap_to_mask(trimap)
    assert mask.dtype == np.uint8
    rule = {1: 1, 2: 0, 3: 1}  # pet, background, border (border counts as pet, as in the reference)
    for value in (1, 2, 3):
        assert (mask[trimap == value] == rule[value]).all()
    # The item's mask is the same mapping after a nearest-neighbour resize.
    ds = OxfordPetDataset(sample_root, "train", image_size=SIZE)
    item = _item(ds, SAMPLE_TRAIN_FIRST)
    expected = transforms.resize_transform(SIZE)(image=np.zeros((*mask.shape, 3), np.uint8), mask=mask)[
        "mask"
    ]
    assert np.array_equal(item["mask"][0].numpy(), expected)
    assert 0 < item["mask"].float().mean() < 1


def test_rgba_png_behind_jpg(sample_root: Path) -> None:
    path = sample_root / "images" / "Abyssinian_5.jpg"
    with Image.open(path) as im:
        assert (im.format, im.mode) == ("PNG", "RGBA")
        rgba = np.asarray(im)
    image = read_image(path)
    assert image.shape == (*rgba.shape[:2], 3) and image.dtype == np.uint8
    assert np.array_equal(image, rgba[..., :3])  # fully opaque: compositing == dropping alpha
    _assert_good_item(_item(OxfordPetDataset(sample_root, "test", image_size=SIZE), "Abyssinian_5"))


def test_gif_behind_jpg(tmp_sample_root: Path) -> None:
    path = tmp_sample_root / "images" / "Abyssinian_34.jpg"
    with Image.open(path) as im:
        assert im.format == "GIF"
        expected = np.asarray(im.convert("RGB"))
    assert np.array_equal(read_image(path), expected)
    # As in the release, Abyssinian_34 is in no list: list it to load it through the dataset.
    with open(tmp_sample_root / "annotations" / "test.txt", "a") as f:
        f.write("Abyssinian_34 1 1 1\n")
    _assert_good_item(_item(OxfordPetDataset(tmp_sample_root, "test", image_size=SIZE), "Abyssinian_34"))


@pytest.mark.parametrize("mode", ["L", "CMYK"])
def test_grayscale_and_cmyk_jpegs(tmp_sample_root: Path, mode: str) -> None:
    # Neither kind is in the shared partial copy: make one from a real sample image (the release has both).
    name = "Bengal_192"
    path = tmp_sample_root / "images" / f"{name}.jpg"
    with Image.open(path) as im:
        original = np.asarray(im.convert("RGB"), dtype=np.float32)
        im.convert(mode).save(path, format="JPEG", quality=95)
    with Image.open(path) as im:
        assert (im.format, im.mode) == ("JPEG", mode)
    image = read_image(path)
    assert image.shape == original.shape and image.dtype == np.uint8
    if mode == "L":
        assert (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all()
    else:  # colours survive the CMYK round trip (a wrong Adobe inversion would give a negative)
        assert np.abs(image.astype(np.float32) - original).mean() < 8
    _assert_good_item(_item(OxfordPetDataset(tmp_sample_root, "test", image_size=SIZE), name))


def test_image_trimap_size_mismatch_names_the_files(tmp_sample_root: Path) -> None:
    trimap_file = tmp_sample_root / "annotations" / "trimaps" / f"{SAMPLE_TRAIN_FIRST}.png"
    with Image.open(trimap_file) as tri:
        tri.resize((tri.width // 2, tri.height // 2), Image.Resampling.NEAREST).save(trimap_file)
    ds = OxfordPetDataset(tmp_sample_root, "train", image_size=SIZE)
    with pytest.raises(PetsegError, match=f"{SAMPLE_TRAIN_FIRST}.png") as e:
        _item(ds, SAMPLE_TRAIN_FIRST)
    assert f"{SAMPLE_TRAIN_FIRST}.jpg" in str(e.value) and "must match" in str(e.value)


@pytest.mark.parametrize("kind", ["image", "trimap"])
def test_unreadable_file_names_it(tmp_sample_root: Path, kind: str) -> None:
    name = SAMPLE_TRAIN_FIRST
    path = (
        oxford_pet.image_path(tmp_sample_root, name)
        if kind == "image"
        else oxford_pet.trimap_path(tmp_sample_root, name)
    )
    path.write_bytes(b"\x00garbage, not an image\xff" * 10)
    ds = OxfordPetDataset(tmp_sample_root, "train", image_size=SIZE)
    with pytest.raises(PetsegError, match=f"cannot read {kind} .*{path.name}"):
        _item(ds, name)


def test_trimap_with_foreign_values_is_refused(tmp_sample_root: Path) -> None:
    path = oxford_pet.trimap_path(tmp_sample_root, SAMPLE_TRAIN_FIRST)
    with Image.open(path) as tri:
        Image.fromarray((np.asarray(tri) == 1).astype(np.uint8) * 255).save(path)  # a 0/255 mask
    with pytest.raises(PetsegError, match="expected only 1, 2, 3"):
        read_trimap(path)


# --------------------------------------------------------------------------------- missing files, leaks


def test_missing_file_is_an_error_naming_count_split_and_files(tmp_sample_root: Path) -> None:
    oxford_pet.image_path(tmp_sample_root, SAMPLE_TRAIN_FIRST).unlink()
    with pytest.raises(PetsegError) as e:
        OxfordPetDataset(tmp_sample_root, "train", image_size=SIZE)
    message = str(e.value)
    assert "train split: 1 of 18" in message and SAMPLE_TRAIN_FIRST in message
    assert "data.allow_missing=true" in message and "\n" not in message
    # Other splits are unaffected.
    assert len(OxfordPetDataset(tmp_sample_root, "valid", image_size=SIZE)) == 2


def test_allow_missing_keeps_the_others_and_logs(
    tmp_sample_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    oxford_pet.trimap_path(tmp_sample_root, SAMPLE_TRAIN_FIRST).unlink()
    oxford_pet.image_path(tmp_sample_root, "beagle_102").unlink()
    with caplog.at_level(logging.WARNING, logger="petseg.data"):
        ds = OxfordPetDataset(tmp_sample_root, "train", image_size=SIZE, allow_missing=True)
    assert len(ds) == 16 and ds.missing == [SAMPLE_TRAIN_FIRST, "beagle_102"]
    assert SAMPLE_TRAIN_FIRST not in ds.names
    records = [r for r in caplog.records if r.name == "petseg.data"]
    assert records and "2 of 18" in records[0].getMessage() and "using 16" in records[0].getMessage()
    _assert_good_item(ds[0])


def test_split_empty_after_skipping(tmp_sample_root: Path) -> None:
    for name in SAMPLE_VALID:
        oxford_pet.image_path(tmp_sample_root, name).unlink()
    with pytest.raises(PetsegError, match="valid split is empty"):
        OxfordPetDataset(tmp_sample_root, "valid", allow_missing=True)


def test_missing_root_or_annotations_hint_download(tmp_path: Path) -> None:
    with pytest.raises(PetsegError, match=r"does not exist.* root=.*nowhere download=true"):
        OxfordPetDataset(tmp_path / "nowhere", "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PetsegError, match=r"no annotations/ folder.* download=true"):
        OxfordPetDataset(tmp_path / "empty", "train")


def test_test_name_injected_into_trainval_is_refused(tmp_sample_root: Path) -> None:
    test_line = _list_lines(tmp_sample_root, "test.txt")[1]
    with open(tmp_sample_root / "annotations" / "trainval.txt", "a") as f:
        f.write(test_line + "\n")
    for split in ("train", "valid", "test"):
        with pytest.raises(PetsegError, match=f"also in test.txt \\({test_line.split()[0]}\\)"):
            build_dataset(_data_cfg(tmp_sample_root), OmegaConf.load(AUG / "default.yaml"), split)


# ------------------------------------------------------------------------------------ datasets, loaders


def test_build_dataset_augments_train_only(sample_root: Path) -> None:
    aug = OmegaConf.load(AUG / "strong.yaml")
    train = build_dataset(_data_cfg(sample_root), aug, "train")
    assert len(train.transform.transforms) > 1
    for split in ("valid", "val", "test"):
        ds = build_dataset(_data_cfg(sample_root), aug, split)
        assert [type(t).__name__ for t in ds.transform.transforms] == ["Resize"]
    _assert_good_item(train[0])


def test_bad_data_config_values_are_user_errors(sample_root: Path) -> None:
    aug = OmegaConf.load(AUG / "none.yaml")
    with pytest.raises(PetsegError, match="image_size"):
        build_dataset(_data_cfg(sample_root, image_size="big"), aug, "train")
    with pytest.raises(PetsegError, match="data.mean"):
        data_settings(_data_cfg(sample_root, mean=[0.5, 0.5]))
    with pytest.raises(PetsegError, match="data.std must be positive"):
        data_settings(_data_cfg(sample_root, std=[0.5, 0.0, 0.5]))


def _epoch(loader) -> tuple[list[str], list[torch.Tensor]]:
    names, images = [], []
    for batch in loader:
        names.extend(batch["name"])
        images.append(batch["image"])
    return names, images


def test_dataloader_shapes_and_seeded_order(sample_root: Path) -> None:
    cfg = _data_cfg(sample_root, batch_size=4)
    aug = OmegaConf.load(AUG / "default.yaml")
    train = build_dataset(cfg, aug, "train")
    batches = list(build_dataloader(train, cfg, train=True, seed=3))
    assert len(batches) == 18 // 4  # incomplete last batch dropped
    for batch in batches:
        assert batch["image"].shape == (4, 3, SIZE, SIZE) and batch["image"].dtype == torch.uint8
        assert batch["mask"].shape == (4, 1, SIZE, SIZE) and batch["mask"].dtype == torch.uint8
        assert set(torch.unique(batch["mask"]).tolist()) <= {0, 1}
        assert len(batch["name"]) == 4
    names_a, images_a = _epoch(build_dataloader(train, cfg, train=True, seed=3))
    names_b, images_b = _epoch(build_dataloader(train, cfg, train=True, seed=3))
    names_c, _ = _epoch(build_dataloader(train, cfg, train=True, seed=4))
    assert names_a == names_b and names_a != names_c
    assert all(torch.equal(a, b) for a, b in zip(images_a, images_b, strict=True))  # augmentation too
    assert names_a != train.names[:16]  # shuffled
    # The trainer's resumable epochs: a new order per epoch, and a resumed epoch continues the same order.
    loader = build_dataloader(train, cfg, train=True, seed=3)
    loader.sampler.set_epoch(1)
    names_e1, images_e1 = _epoch(loader)
    assert names_e1 != names_a
    loader.sampler.set_epoch(1, start=8)
    names_resumed, images_resumed = _epoch(loader)
    assert names_resumed == names_e1[8:]
    assert all(torch.equal(a, b) for a, b in zip(images_resumed, images_e1[2:], strict=True))
    valid = build_dataset(cfg, aug, "valid")
    names_v, _ = _epoch(build_dataloader(valid, cfg, train=False))
    assert names_v == SAMPLE_VALID  # list order, nothing dropped


def test_dataloader_with_workers_is_reproducible(sample_root: Path) -> None:
    cfg = _data_cfg(sample_root, batch_size=4, num_workers=2)
    train = build_dataset(cfg, OmegaConf.load(AUG / "default.yaml"), "train")
    loader = build_dataloader(train, cfg, train=True, seed=7)
    assert loader.persistent_workers and loader.worker_init_fn is loaders.worker_init_fn
    names_a, images_a = _epoch(loader)
    names_b, images_b = _epoch(build_dataloader(train, cfg, train=True, seed=7))
    assert names_a == names_b
    assert all(torch.equal(a, b) for a, b in zip(images_a, images_b, strict=True))
    # Same samples, same augmentation, whatever the number of workers.
    names_0, images_0 = _epoch(
        build_dataloader(train, _data_cfg(sample_root, batch_size=4), train=True, seed=7)
    )
    assert names_0 == names_a
    assert all(torch.equal(a, b) for a, b in zip(images_0, images_a, strict=True))


# ------------------------------------------------------------------------------------------------- CLI


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(CLI), *args], capture_output=True, text=True, cwd=REPO, timeout=120
    )


@pytest.mark.slow  # a subprocess of a real command
def test_cli_summary_on_sample(sample_root: Path) -> None:
    result = _run_cli(f"root={sample_root}")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "train        18       18        0" in out and "valid         2        2        0" in out
    assert "test          5        5        0" in out
    assert "complete" in out and "PARTIAL" not in out
    assert "in no split list: 1 (Abyssinian_34)" in out


def test_cli_verify_lists_odd_files(sample_root: Path, capsys: pytest.CaptureFixture) -> None:
    assert oxford_pet.main([f"root={sample_root}", "verify=true"]) == 0
    out = capsys.readouterr().out
    assert "Abyssinian_34.jpg: GIF content behind .jpg" in out
    assert "Abyssinian_5.jpg: PNG content behind .jpg, RGBA" in out
    assert "odd files (readable, converted to RGB on load): 2" in out
    assert "broken files (unreadable or image/trimap mismatch): 0" in out


def test_cli_verify_finds_broken_files(tmp_sample_root: Path, capsys: pytest.CaptureFixture) -> None:
    oxford_pet.image_path(tmp_sample_root, "beagle_102").write_bytes(b"not a jpeg")
    trimap_file = oxford_pet.trimap_path(tmp_sample_root, SAMPLE_TRAIN_FIRST)
    with Image.open(trimap_file) as tri:
        tri.resize((10, 10), Image.Resampling.NEAREST).save(trimap_file)
    assert oxford_pet.main([f"root={tmp_sample_root}", "verify=true"]) == 1
    out = capsys.readouterr().out
    assert "beagle_102.jpg: unreadable image" in out
    assert f"{SAMPLE_TRAIN_FIRST}: image is" in out and "trimap is 10x10" in out


def test_cli_help(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as e:
        oxford_pet.main(["--help"])
    assert e.value.code == 0 and "verify=false" in capsys.readouterr().out


@pytest.mark.slow  # a subprocess of a real command
def test_cli_on_shared_partial_copy(shared_root: Path) -> None:
    result = _run_cli(f"root={shared_root}")
    assert result.returncode == 0, result.stderr
    assert "PARTIAL copy" in result.stdout and "allow_missing=true" in result.stdout
    assert "train      1428     3312" in result.stdout


@pytest.mark.slow  # a subprocess of a real command
def test_cli_nonexistent_root_is_one_line_exit_2(tmp_path: Path) -> None:
    result = _run_cli(f"root={tmp_path / 'nowhere'}")
    assert result.returncode == 2
    assert result.stdout == "" and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "does not exist" in lines[0] and "download=true" in lines[0]


def test_cli_root_without_pairs_is_exit_2(tmp_path: Path, full_lists_root: Path, capsys) -> None:
    assert oxford_pet.main([f"root={full_lists_root}"]) == 2
    assert "no image+trimap pair" in capsys.readouterr().err
