"""build_dataloader's batches, with workers or without, are exactly the dataset's uint8 items collated:
one item format from disk to the model, with the same order and augmentation whoever loads it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, Subset, default_collate

from oxford_pet import build_dataset
from petseg.loaders import build_dataloader

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
    """The items dataset[i], in the loader's order, collated by torch's default_collate."""
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
            assert got[key].dtype == torch.uint8 and got[key].shape == want[key].shape
            assert torch.equal(got[key], want[key]), key  # bit-identical, not merely close


@pytest.mark.parametrize("cache", [False, True])
def test_worker_batches_equal_collated_items(sample_root: Path, tmp_path: Path, cache: bool) -> None:
    cfg = _data_cfg(sample_root, batch_size=4, num_workers=2, cache=cache, cache_dir=str(tmp_path))
    aug = OmegaConf.load(AUG / "default.yaml")
    for split, train in (("train", True), ("valid", False)):
        dataset = build_dataset(cfg, aug, split)
        loader = build_dataloader(dataset, cfg, train=train, seed=5)
        assert type(loader) is DataLoader and loader.dataset is dataset
        if train:
            loader.sampler.set_epoch(2)
        batches = list(loader)
        _assert_same(batches, _expected_batches(dataset, loader))
        item = dataset[0]
        assert item["image"].shape == (3, SIZE, SIZE) and item["mask"].shape == (1, SIZE, SIZE)
        assert set(item["mask"].unique().tolist()) <= {0, 1}


def test_subset_and_in_process_loading(sample_root: Path) -> None:
    cfg = _data_cfg(sample_root, batch_size=3, num_workers=2)
    dataset = build_dataset(cfg, None, "valid")
    subset = Subset(dataset, [1, 0])
    loader = build_dataloader(subset, cfg, train=False)
    _assert_same(list(loader), [default_collate([dataset[1], dataset[0]])])
    # No workers, no process boundary: the same items.
    plain = build_dataloader(dataset, _data_cfg(sample_root, batch_size=3, num_workers=0), train=False)
    assert type(plain) is DataLoader
    _assert_same(list(plain), _expected_batches(dataset, plain))
