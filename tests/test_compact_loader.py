"""build_dataloader's workers send uint8 items that the main process expands (loaders.CompactLoader):
the batches must be exactly those of the plain float items collated, for every consumer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, Subset, default_collate

import oxford_pet
from oxford_pet import build_dataset
from petseg.loaders import CompactLoader, build_dataloader, expand_batch

REPO = Path(__file__).resolve().parents[1]
AUG = REPO / "configs" / "aug"
SIZE = 64


def _data_cfg(root: Path, **overrides: object):
    cfg = OmegaConf.load(REPO / "configs" / "data" / "oxford_pet.yaml")
    cfg.root = str(root)
    cfg.image_size = SIZE
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


def _expected_batches(dataset, loader) -> list[dict]:
    """The plain items dataset[i] (float), in the loader's order, collated by torch's default_collate."""
    indices = list(iter(loader.sampler)) if loader.sampler is not None else list(range(len(dataset)))
    size = loader.batch_size
    stop = len(indices) - len(indices) % size if loader.drop_last else len(indices)
    return [default_collate([dataset[i] for i in indices[s : s + size]]) for s in range(0, stop, size)]


def _assert_same(batches: list[dict], expected: list[dict]) -> None:
    assert len(batches) == len(expected) > 0
    for got, want in zip(batches, expected, strict=True):
        assert set(got) == set(want)
        assert got["name"] == want["name"]
        for key in ("image", "mask"):
            assert got[key].dtype == torch.float32 and got[key].shape == want[key].shape
            assert torch.equal(got[key], want[key]), key  # bit-identical, not merely close


@pytest.mark.parametrize("cache", [False, True])
def test_worker_batches_equal_collated_items(sample_root: Path, tmp_path: Path, cache: bool) -> None:
    cfg = _data_cfg(sample_root, batch_size=4, num_workers=2, cache=cache, cache_dir=str(tmp_path))
    aug = OmegaConf.load(AUG / "default.yaml")
    for split, train in (("train", True), ("valid", False)):
        dataset = build_dataset(cfg, aug, split)
        loader = build_dataloader(dataset, cfg, train=train, seed=5)
        assert isinstance(loader, CompactLoader) and loader.dataset is dataset
        if train:
            loader.sampler.set_epoch(2)
        batches = list(loader)
        _assert_same(batches, _expected_batches(dataset, loader))
        # The main process's dataset still gives today's float items.
        item = dataset[0]
        assert item["image"].dtype == torch.float32 and item["mask"].dtype == torch.float32
        assert item["image"].shape == (3, SIZE, SIZE) and item["mask"].shape == (1, SIZE, SIZE)


def test_subset_and_in_process_loading(sample_root: Path) -> None:
    cfg = _data_cfg(sample_root, batch_size=3, num_workers=2)
    dataset = build_dataset(cfg, None, "valid")
    subset = Subset(dataset, [1, 0])
    loader = build_dataloader(subset, cfg, train=False)
    assert isinstance(loader, CompactLoader)
    _assert_same(list(loader), [default_collate([dataset[1], dataset[0]])])
    # No workers, no process boundary: a plain DataLoader, plain items.
    plain = build_dataloader(dataset, _data_cfg(sample_root, batch_size=3, num_workers=0), train=False)
    assert type(plain) is DataLoader
    _assert_same(list(plain), _expected_batches(dataset, plain))


def test_compact_items_expand_to_float_items(sample_root: Path) -> None:
    cfg = _data_cfg(sample_root)
    dataset = build_dataset(cfg, OmegaConf.load(AUG / "default.yaml"), "train")
    indices = [(0, 11), (3, 12), (5, 13)]
    compact = default_collate([dataset._item(i, compact=True) for i in indices])
    assert compact["image"].dtype == torch.uint8 and compact["mask"].dtype == torch.uint8
    assert compact["image"].shape == (3, 3, SIZE, SIZE) and compact["mask"].shape == (3, 1, SIZE, SIZE)
    expanded = expand_batch(compact, dataset._lut)
    _assert_same([expanded], [default_collate([dataset[i] for i in indices])])
    # Float batches (a transform that returns float images) pass through unchanged.
    assert expand_batch(expanded, dataset._lut)["image"] is expanded["image"]
    assert oxford_pet.OxfordPetDataset._compact_items is False
