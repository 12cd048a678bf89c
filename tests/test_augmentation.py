"""Augmentation configs: image and mask stay aligned under every geometric transform, photometric
transforms never touch the mask, valid/test are never augmented, bad configs are user errors."""

from __future__ import annotations

import copy
from pathlib import Path

import albumentations as A
import numpy as np
import pytest
from omegaconf import OmegaConf

import oxford_pet
from oxford_pet import read_trimap, trimap_to_mask
from petseg import transforms
from petseg.errors import PetsegError
from petseg.transforms import build_train_transforms, build_transform, seed_transform

AUG = Path(__file__).resolve().parents[1] / "configs" / "aug"
SIZE = 128
SEEDS = range(4)
# Real trimaps of the sample: a cat, a dog, and the 299x299-mirror kind.
MASK_NAMES = ["Abyssinian_100", "american_bulldog_100", "Birman_101"]


def _leaves(config: str) -> list[A.BasicTransform]:
    """Every transform of a config's train list, OneOf & co. unpacked, each forced to apply (p=1)."""
    leaves = []
    for t in build_train_transforms(OmegaConf.load(AUG / f"{config}.yaml")):
        for part in transforms._walk(t):
            if isinstance(part, A.BasicTransform):
                part = copy.deepcopy(part)
                part.p = 1.0
                leaves.append(part)
    return leaves


def _params(kind: type) -> list:
    return [
        pytest.param(config, i, id=f"{config}-{type(t).__name__}")
        for config in ("default", "strong")
        for i, t in enumerate(_leaves(config))
        if isinstance(t, kind)
    ]


@pytest.fixture(scope="module")
def masks(sample_root: Path) -> list[np.ndarray]:
    return [trimap_to_mask(read_trimap(oxford_pet.trimap_path(sample_root, n))) for n in MASK_NAMES]


@pytest.fixture(scope="module")
def photos(sample_root: Path) -> list[np.ndarray]:
    return [oxford_pet.read_image(oxford_pet.image_path(sample_root, n)) for n in MASK_NAMES]


def test_configs_have_the_expected_kinds_of_transforms() -> None:
    for config in ("default", "strong"):
        kinds = {type(t) for t in _leaves(config)}
        assert A.HorizontalFlip in kinds and A.Affine in kinds
        assert any(issubclass(k, A.ImageOnlyTransform) for k in kinds)
    assert build_train_transforms(OmegaConf.load(AUG / "none.yaml")) == []


def _centroid(a: np.ndarray) -> np.ndarray:
    w = a.astype(np.float64)
    ys, xs = np.mgrid[: a.shape[0], : a.shape[1]]
    return np.array([(w * ys).sum(), (w * xs).sum()]) / w.sum()


@pytest.mark.parametrize(("config", "index"), _params(A.DualTransform))
def test_geometric_transform_keeps_image_and_mask_aligned(
    config: str, index: int, masks: list[np.ndarray]
) -> None:
    transform = A.Compose([_leaves(config)[index], transforms.resize_transform(SIZE)])
    moved = 0
    for seed in SEEDS:
        seed_transform(transform, seed)
        for mask in masks:
            # An image whose content IS the mask: white pet, black background.
            image = np.repeat(mask[..., None] * 255, 3, axis=2).astype(np.uint8)
            out = transform(image=image, mask=mask)
            assert out["mask"].shape == (SIZE, SIZE) and set(np.unique(out["mask"])) <= {0, 1}
            image_says_pet = out["image"].mean(axis=2) > 127.5
            agreement = (image_says_pet == out["mask"].astype(bool)).mean()
            assert agreement >= 0.98, f"seed {seed}: image and mask agree on only {agreement:.1%} of pixels"
            # Tighter: the centroids of the two agree within a third of a pixel (a top-left nearest
            # resize of the mask puts it ~0.5 px right and down of its image: test_protocols.py).
            offset = np.abs(_centroid(out["image"][..., 0]) - _centroid(out["mask"])).max()
            assert offset < 0.35, f"seed {seed}: mask centroid {offset:.2f} px away from the image's"
            still = transforms.resize_transform(SIZE)(image=image, mask=mask)["mask"]
            moved += not np.array_equal(out["mask"], still)
    assert moved, "the transform never changed the mask: the check above proves nothing"


@pytest.mark.parametrize(("config", "index"), _params(A.ImageOnlyTransform))
def test_photometric_transform_leaves_the_mask_alone(
    config: str, index: int, masks: list[np.ndarray], photos: list[np.ndarray]
) -> None:
    transform = A.Compose([_leaves(config)[index]])
    changed = 0
    for seed in SEEDS:
        seed_transform(transform, seed)
        for mask, photo in zip(masks, photos, strict=True):
            out = transform(image=photo, mask=mask)
            assert np.array_equal(out["mask"], mask)
            changed += not np.array_equal(out["image"], photo)
    assert changed


@pytest.mark.parametrize("config", ["default", "strong"])
def test_full_pipeline_output(config: str, masks: list[np.ndarray], photos: list[np.ndarray]) -> None:
    transform = build_transform(OmegaConf.load(AUG / f"{config}.yaml"), SIZE, train=True)
    assert isinstance(transform.transforms[-1], A.Resize)  # the one resize comes last
    seed_transform(transform, 0)
    for mask, photo in zip(masks, photos, strict=True):
        out = transform(image=photo, mask=mask)
        assert out["image"].shape == (SIZE, SIZE, 3) and out["image"].dtype == np.uint8
        assert out["mask"].shape == (SIZE, SIZE) and set(np.unique(out["mask"])) <= {0, 1}


@pytest.mark.parametrize("config", ["none", "default", "strong"])
def test_eval_transform_is_resize_only(
    config: str, masks: list[np.ndarray], photos: list[np.ndarray]
) -> None:
    transform = build_transform(OmegaConf.load(AUG / f"{config}.yaml"), SIZE, train=False)
    assert [type(t) for t in transform.transforms] == [A.Resize]
    a = transform(image=photos[0], mask=masks[0])
    b = transform(image=photos[0], mask=masks[0])
    assert np.array_equal(a["image"], b["image"]) and np.array_equal(a["mask"], b["mask"])


def test_seeded_transform_is_reproducible(photos: list[np.ndarray], masks: list[np.ndarray]) -> None:
    transform = build_transform(OmegaConf.load(AUG / "strong.yaml"), SIZE, train=True)
    runs = []
    for _ in range(2):
        seed_transform(transform, 5)
        runs.append([transform(image=photos[0], mask=masks[0])["image"] for _ in range(3)])
    assert all(np.array_equal(a, b) for a, b in zip(*runs, strict=True))
    assert not np.array_equal(runs[0][0], runs[0][1])


def _aug(*entries: dict) -> object:
    return OmegaConf.create({"name": "bad", "train": list(entries)})


def test_linear_mask_interpolation_is_refused() -> None:
    bad = _aug({"_target_": "albumentations.Affine", "rotate": [-10, 10], "mask_interpolation": 1})
    with pytest.raises(PetsegError, match="mask_interpolation=1; masks must be resampled by nearest"):
        build_transform(bad, SIZE, train=True)
    # Refused only where used: eval transforms never build the train list.
    build_transform(bad, SIZE, train=False)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"_target_": "albumentations.NoSuchTransform"}, r"cannot build train\[0\]"),
        ({"_target_": "albumentations.Affine", "scale": "huge"}, r"cannot build train\[0\]"),
        ({"_target_": "collections.OrderedDict"}, "not an albumentations transform"),
        ({"p": 0.5}, "must be a mapping with a _target_"),
    ],
)
def test_bad_aug_entries_are_user_errors(entry: dict, message: str) -> None:
    with pytest.raises(PetsegError, match=message):
        build_transform(_aug(entry), SIZE, train=True)
