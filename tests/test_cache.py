"""The decoded, pre-resized dataset cache (src/petseg/cache.py, data.cache): built once, invalidated when its
inputs change, and giving the same items as decoding the files (exactly so for valid/test)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

import oxford_pet
from helpers import ROOT
from oxford_pet import OxfordPetDataset, build_dataset
from petseg.errors import PetsegError
from petseg.loaders import build_dataloader

AUG = ROOT / "configs" / "aug" / "default.yaml"
DATA_YAML = ROOT / "configs" / "data" / "oxford_pet.yaml"
SIZE = 64


class DecodeCounter:
    """Counts oxford_pet.read_image calls: a cache hit must decode nothing."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        original = oxford_pet.read_image

        def counting(path: Path) -> np.ndarray:
            self.calls += 1
            return original(path)

        monkeypatch.setattr(oxford_pet, "read_image", counting)


def _cached(root: Path, split: str, cache_dir: Path, size: int = SIZE, **kw) -> OxfordPetDataset:
    return OxfordPetDataset(root, split, image_size=size, cache=True, cache_dir=cache_dir, **kw)


def _entries(cache_dir: Path) -> list[str]:
    return sorted(p.stem for p in cache_dir.glob("*.json"))


def test_cache_is_built_once_then_reused_without_decoding(
    sample_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    counter = DecodeCounter(monkeypatch)
    first = _cached(sample_root, "train", tmp_path)
    assert first.cache is not None and first.cache.built
    assert counter.calls == len(first) == 18
    images = np.load(first.cache.images_path, mmap_mode="r")
    assert images.shape == (18, SIZE, SIZE, 3) and images.dtype == np.uint8
    assert np.load(first.cache.masks_path, mmap_mode="r").shape == (18, SIZE, SIZE)

    counter.calls = 0
    second = _cached(sample_root, "train", tmp_path)
    assert second.cache is not None and not second.cache.built
    _ = [second[i] for i in range(len(second))]
    assert counter.calls == 0
    assert len(_entries(tmp_path)) == 1


def test_cache_is_rebuilt_for_another_image_size(sample_root: Path, tmp_path: Path) -> None:
    _cached(sample_root, "valid", tmp_path, size=SIZE)
    other = _cached(sample_root, "valid", tmp_path, size=32)
    assert other.cache is not None and other.cache.built
    assert other[0]["image"].shape == (3, 32, 32)
    # Both sizes stay: runs at different sizes may share one cache folder.
    assert len(_entries(tmp_path)) == 2
    assert not _cached(sample_root, "valid", tmp_path, size=SIZE).cache.built


def test_changed_file_invalidates_and_replaces_the_entry(tmp_sample_root: Path, tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    before = _cached(tmp_sample_root, "valid", cache_dir)
    name = before.names[0]
    old_key = _entries(cache_dir)
    # A different picture in the same file: new content, size and mtime.
    path = oxford_pet.image_path(tmp_sample_root, name)
    with Image.open(path) as im:
        flipped = im.convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    flipped.save(path, quality=80)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))

    after = _cached(tmp_sample_root, "valid", cache_dir)
    assert after.cache is not None and after.cache.built
    assert _entries(cache_dir) != old_key and len(_entries(cache_dir)) == 1  # the stale entry is gone
    uncached = OxfordPetDataset(tmp_sample_root, "valid", image_size=SIZE)
    assert torch.equal(after[0]["image"], uncached[0]["image"])
    assert not torch.equal(after[0]["image"], before[0]["image"])


def test_changed_split_list_invalidates(tmp_sample_root: Path, tmp_path: Path) -> None:
    _cached(tmp_sample_root, "test", tmp_path)
    lines = (tmp_sample_root / "annotations" / "test.txt").read_text().splitlines()
    (tmp_sample_root / "annotations" / "test.txt").write_text("\n".join(lines[:-1]) + "\n")
    again = _cached(tmp_sample_root, "test", tmp_path)
    assert again.cache is not None and again.cache.built and len(again) == len(lines) - 1


@pytest.mark.parametrize("size", [SIZE, 160])  # sample images are ~128 px: shrinking and enlarging
@pytest.mark.parametrize("split", ["valid", "test"])
def test_eval_items_are_identical_with_and_without_cache(
    sample_root: Path, tmp_path: Path, split: str, size: int
) -> None:
    plain = OxfordPetDataset(sample_root, split, image_size=size)
    cached = _cached(sample_root, split, tmp_path, size=size)
    assert cached.names == plain.names
    for i in range(len(plain)):
        a, b = plain[i], cached[i]
        assert a["name"] == b["name"]
        assert torch.equal(a["image"], b["image"])
        assert torch.equal(a["mask"], b["mask"])


def test_train_items_from_cache_have_the_right_shapes(sample_root: Path, tmp_path: Path) -> None:
    data = OmegaConf.merge(
        OmegaConf.load(DATA_YAML),
        {"root": str(sample_root), "image_size": SIZE, "batch_size": 4, "num_workers": 0, "cache": True},
        {"cache_dir": str(tmp_path)},
    )
    train = build_dataset(data, OmegaConf.load(AUG), "train")
    assert train.cache is not None
    for batch in build_dataloader(train, data, train=True, seed=1):
        assert batch["image"].shape == (4, 3, SIZE, SIZE) and batch["image"].dtype == torch.uint8
        assert batch["mask"].shape == (4, 1, SIZE, SIZE)
        assert set(batch["mask"].unique().tolist()) <= {0, 1}
    # Augmented from the cache, yet reproducible for a fixed seed, like the uncached path.
    seeded = [train[(i, 7)]["image"] for i in range(3)]
    assert all(torch.equal(a, train[(i, 7)]["image"]) for i, a in enumerate(seeded))


def test_cache_off_by_key_and_old_configs_without_the_keys(sample_root: Path, tmp_path: Path) -> None:
    from petseg.upgrade import upgrade_config

    data = OmegaConf.merge(
        OmegaConf.load(DATA_YAML), {"root": str(sample_root), "image_size": SIZE, "cache": False}
    )
    assert build_dataset(data, None, "valid").cache is None
    # A config saved in a checkpoint before the cache existed takes today's default (on).
    old = {"root": str(sample_root), "image_size": SIZE, "cache_dir": str(tmp_path)}
    upgraded = upgrade_config({"model": {"name": "unet"}, "data": old}).data
    assert build_dataset(upgraded, None, "valid").cache is not None


def test_cached_dataset_pickles_without_the_arrays(sample_root: Path, tmp_path: Path) -> None:
    ds = _cached(sample_root, "valid", tmp_path)
    first = ds[0]["image"]
    clone = pickle.loads(pickle.dumps(ds))  # what a spawned DataLoader worker receives
    assert clone.cache is not None and clone.cache._images is None  # maps the file itself, on first use
    assert torch.equal(clone[0]["image"], first)


def test_broken_file_fails_the_build_with_the_uncached_error(tmp_sample_root: Path, tmp_path: Path) -> None:
    name = OxfordPetDataset(tmp_sample_root, "valid").names[1]
    oxford_pet.image_path(tmp_sample_root, name).write_bytes(b"not an image")
    with pytest.raises(PetsegError) as uncached:
        OxfordPetDataset(tmp_sample_root, "valid", image_size=SIZE)[1]
    with pytest.raises(PetsegError) as cached:
        _cached(tmp_sample_root, "valid", tmp_path)
    assert str(cached.value) == str(uncached.value)
    assert "cannot read image" in str(cached.value)
    assert _entries(tmp_path) == [] and not list(tmp_path.glob("*.tmp*"))  # nothing half-written


def test_size_mismatch_fails_the_same_way_in_worker_processes(tmp_sample_root: Path, tmp_path: Path) -> None:
    name = OxfordPetDataset(tmp_sample_root, "test").names[0]
    tri = oxford_pet.trimap_path(tmp_sample_root, name)
    with Image.open(tri) as im:
        im.resize((im.width + 3, im.height)).save(tri)
    with pytest.raises(PetsegError) as uncached:
        OxfordPetDataset(tmp_sample_root, "test", image_size=SIZE)[0]
    with pytest.raises(PetsegError) as cached:
        _cached(tmp_sample_root, "test", tmp_path, cache_workers=2)
    assert str(cached.value) == str(uncached.value) and "must match" in str(cached.value)


def test_missing_files_follow_allow_missing_with_the_cache(tmp_sample_root: Path, tmp_path: Path) -> None:
    name = OxfordPetDataset(tmp_sample_root, "train").names[2]
    oxford_pet.image_path(tmp_sample_root, name).unlink()
    with pytest.raises(PetsegError, match="allow_missing"):
        _cached(tmp_sample_root, "train", tmp_path)
    ds = _cached(tmp_sample_root, "train", tmp_path, allow_missing=True)
    assert name not in ds.names and len(ds) == 17 and ds.cache is not None and len(ds.cache) == 17


def test_incomplete_entry_is_rebuilt(sample_root: Path, tmp_path: Path) -> None:
    ds = _cached(sample_root, "valid", tmp_path)
    meta = ds.cache.images_path.with_name(ds.cache.images_path.name.replace(".images.npy", ".json"))
    meta.unlink()  # what a crash before the last rename leaves
    assert _cached(sample_root, "valid", tmp_path).cache.built


def test_unwritable_cache_dir_is_a_user_error(sample_root: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(PetsegError, match="data.cache"):
        _cached(sample_root, "valid", blocker / "cache")


@pytest.mark.parametrize("workers", [0, 2])
def test_building_the_cache_leaves_torchs_random_state_alone(
    sample_root: Path, tmp_path: Path, workers: int
) -> None:
    """A run that builds the cache and one that reuses it (a resume, a second run) must continue from
    the same torch RNG state, or their seeded runs would diverge."""
    torch.manual_seed(0)
    before = torch.get_rng_state()
    dataset = OxfordPetDataset(
        sample_root, "valid", 32, cache=True, cache_dir=tmp_path, cache_workers=workers
    )
    assert dataset.cache is not None and dataset.cache.built
    assert torch.equal(torch.get_rng_state(), before)
