"""Transforms from the `aug` config group: ``aug_settings(cfg.aug)`` reads the group once;
``build_transform`` composes its augmentation list (train only) with the final resize. Images stay
uint8 (normalising is petseg.model_input's job, on the device); masks are always resampled by nearest
neighbour, centre-aligned.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import albumentations as A
import cv2
import numpy as np
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from petseg.errors import PetsegError

# ------------------------------------------------------------------------------------- augmentation


def resize_transform(image_size: int) -> A.Resize:
    """The final resize to image_size x image_size: area for shrinking images, bilinear for enlarging,
    nearest for masks (so a mask stays exactly {0, 1}).

    Masks use INTER_NEAREST_EXACT, which samples the source pixel under each output pixel's centre,
    like the image's resampling and PIL's NEAREST (the reference protocol's). Plain INTER_NEAREST takes
    the top-left pixel of each source cell instead, shifting every mask up to (s-1)/2 source pixels
    right and down of its image."""
    return A.Resize(
        height=image_size,
        width=image_size,
        interpolation=cv2.INTER_LINEAR,
        area_for_downscale="image",
        mask_interpolation=cv2.INTER_NEAREST_EXACT,
        p=1.0,
    )


@dataclass(frozen=True)
class AugSettings:
    """The aug group (configs/aug/*.yaml) as aug_settings read it."""

    name: str  # aug.name ('?' in messages for a hand-made config without one)
    train: tuple[dict[str, Any], ...]  # aug.train: mappings naming a _target_, as plain dicts


def aug_settings(aug_cfg: Any) -> AugSettings:
    """The aug group (a DictConfig or a plain mapping) as AugSettings, read once: a mapping whose
    ``train`` is a list (null: empty) of mappings with a ``_target_``. What they build is checked by
    build_train_transforms, where they are built."""
    if not isinstance(aug_cfg, Mapping | DictConfig):
        raise PetsegError(f"aug config must be a mapping with a 'train' list, got {type(aug_cfg).__name__}")
    name = aug_cfg.get("name") or "?"
    entries = aug_cfg.get("train")
    if entries is None:
        entries = []
    if not isinstance(entries, list | tuple | ListConfig):
        raise PetsegError(f"aug '{name}': 'train' must be a list of transforms, got {type(entries).__name__}")
    plain = [OmegaConf.to_container(e, resolve=True) if OmegaConf.is_config(e) else e for e in entries]
    for i, entry in enumerate(plain):
        if not isinstance(entry, Mapping) or "_target_" not in entry:
            raise PetsegError(f"aug '{name}': train[{i}] must be a mapping with a _target_, got {entry!r}")
    return AugSettings(str(name), tuple(dict(entry) for entry in plain))


def as_aug_settings(aug: AugSettings | Any) -> AugSettings | None:
    """``aug`` itself, None (no augmentation), or an aug config (benchmarks/, tests) read by
    aug_settings."""
    return aug if aug is None or isinstance(aug, AugSettings) else aug_settings(aug)


def build_train_transforms(aug: AugSettings | Any) -> list[Any]:
    """Instantiate the aug settings' ``train`` list (an aug config is read by aug_settings first) and
    check what it built.

    Checks, because a wrong entry would silently corrupt labels: every entry is an albumentations
    transform, and every transform that resamples masks does it by nearest neighbour.
    """
    settings = as_aug_settings(aug)
    if settings is None:
        return []
    name = settings.name
    transforms = []
    for i, entry in enumerate(settings.train):
        try:
            # _convert_="all": albumentations' pydantic checks want plain lists/dicts, not OmegaConf nodes.
            t = instantiate(dict(entry), _convert_="all")
        except (InstantiationException, ImportError, TypeError, ValueError) as e:
            raise PetsegError(f"aug '{name}': cannot build train[{i}] ({entry['_target_']}): {e}") from e
        if not isinstance(t, A.BasicTransform | A.BaseCompose):
            raise PetsegError(
                f"aug '{name}': train[{i}] ({entry['_target_']}) is not an albumentations transform"
            )
        for part in _walk(t):
            # None on a OneOf/Sequential means "do not override the children's own setting".
            mask_interp = getattr(part, "mask_interpolation", None)
            if mask_interp not in (None, cv2.INTER_NEAREST, cv2.INTER_NEAREST_EXACT):
                raise PetsegError(
                    f"aug '{name}': train[{i}] ({type(part).__name__}) has mask_interpolation={mask_interp}; "
                    "masks must be resampled by nearest neighbour (mask_interpolation: 0)"
                )
            if mask_interp == cv2.INTER_NEAREST and isinstance(part, _cv2_resize_transforms()):
                # cv2.resize's INTER_NEAREST is not centre-aligned (see resize_transform); the warps
                # (Affine, Perspective, ...) are, and accept nothing else, so only resizes are upgraded.
                part.mask_interpolation = cv2.INTER_NEAREST_EXACT
        transforms.append(t)
    return transforms


def _cv2_resize_transforms() -> tuple[type, ...]:
    """albumentations transforms that resample masks with cv2.resize (they accept INTER_NEAREST_EXACT)."""
    return (
        A.Resize,
        A.RandomResizedCrop,
        A.RandomSizedCrop,
        A.RandomSizedBBoxSafeCrop,
        A.RandomScale,
        A.LongestMaxSize,
        A.SmallestMaxSize,
    )


def _walk(transform: Any) -> list[Any]:
    """The transform and, for OneOf/SomeOf/Sequential, every transform nested in it."""
    parts = [transform]
    for child in getattr(transform, "transforms", None) or []:
        parts.extend(_walk(child))
    return parts


def build_transform(aug: AugSettings | Any, image_size: int, train: bool) -> A.Compose:
    """Compose of the aug settings' ``train`` list (only when ``train``; None: no augmentation; an aug
    config is read by aug_settings first) followed by the final resize to ``image_size``
    (data.image_size or data.crop, checked by data_settings).

    Valid/test never get augmentation, whatever the config says. Geometric transforms are albumentations
    DualTransforms, which move image and mask together when called with ``image=..., mask=...``;
    photometric ones (ImageOnlyTransform) leave the mask alone. The resize comes last so each image is
    resampled once, at the end, after cropping/affine.
    """
    transforms = build_train_transforms(aug) if train else []
    return A.Compose([*transforms, resize_transform(image_size)])


def seed_transform(transform: Any, seed: int) -> None:
    """Give an albumentations Compose one seeded random stream shared by all its transforms.

    Not ``Compose(seed=...)``/``set_random_seed``: albumentations 2.0 hands that same seed to every child
    transform, so e.g. a flip and a colour jitter with equal p would fire together on every sample.
    """
    if transform is not None and hasattr(transform, "set_random_state"):
        transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
