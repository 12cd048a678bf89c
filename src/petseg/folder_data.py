"""Any folder of images and masks (``data=folder``) as a data set; pairing, splits and the mask mapping
are petseg/folder_layout.py's.

Layout under ``data.root``::

    images/<stem>.<png|jpg|jpeg|tif|tiff|bmp|gif|webp>   1- or 3-channel pictures (sub-folders allowed)
    masks/<stem>.<any of those>                          8-bit, one channel, same size as the image

An image's name is its path under ``images/`` without the suffix (``a/b/x`` for ``images/a/b/x.png``);
its mask is the file of the same name under ``masks/``. Items are the pet dataset's: uint8 image
(C, S, S), uint8 mask (1, S, S) in {0, 1}, name, so the same loaders, model input, evaluation loop and
pictures serve both. Mask values become the class by ``data.foreground`` (a list of values, or
``">=t"`` / ``">t"``), so "membrane is the class" is a setting.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset

from petseg.cache import DEFAULT_CACHE_DIR, ArrayCache, open_or_build
from petseg.data_settings import DataSettings
from petseg.errors import PetsegError
from petseg.folder_layout import MaskMapping, image_channels, paired_files, read_mask, split_assignment
from petseg.images import read_image
from petseg.splits import canonical_split
from petseg.transforms import AugSettings, build_transform, resize_transform, seed_transform

logger = logging.getLogger("petseg.data")

# ---------------------------------------------------------------------------------------- dataset


class FolderDataset(Dataset):
    """One split of a folder of images and masks, as uint8 items (see the module docstring).

    Every pair is resized to ``image_size`` (bilinear/area image, nearest mask) as the pet images are;
    ``crop`` (train only) then takes a random crop of that size, so large images train on patches and
    are evaluated whole.
    """

    def __init__(
        self,
        root: Path | str,
        split: str,
        names: Sequence[str],
        files: dict[str, tuple[Path, Path]],
        mapping: MaskMapping,
        channels: int,
        image_size: int,
        crop: int | None = None,
        repeat: int = 1,
        aug: AugSettings | None = None,
        cache: bool = False,
        cache_dir: Path | str | None = None,
        cache_workers: int = 0,
    ) -> None:
        self.root, self.split = Path(root), split
        self.names = list(names)
        self.missing: list[str] = []
        if not self.names:
            raise PetsegError(f"the {split} split of {self.root} is empty (data.split gives it no pairs)")
        self.files = {n: files[n] for n in self.names}
        self.mapping, self.channels = mapping, int(channels)
        self.image_size = int(image_size)
        train = split == "train"
        # Train only: each image this many times an epoch (a few large images give many crops).
        self.repeat = int(repeat) if train else 1
        self.transform = self._transform(aug, train, crop)
        self._resize = resize_transform(self.image_size)
        self.cache: ArrayCache | None = None
        if cache:
            self.cache = open_or_build(
                Path(cache_dir) if cache_dir else DEFAULT_CACHE_DIR,
                self.root,
                split,
                self.image_size,
                self.names,
                [self.files[n] for n in self.names],
                self._load_resized,
                cache_workers,
                channels=self.channels,
                extra={"mapping": mapping.describe(), "layout": "folder"},
            )

    def _transform(self, aug: AugSettings | None, train: bool, crop: int | None) -> Any:
        if not (train and crop):
            return build_transform(aug if train else None, self.image_size, train)
        # Crop first, then augment the patch: elastic deformation on the patch, not the whole image.
        first = [resize_transform(self.image_size), A.RandomCrop(int(crop), int(crop), p=1.0)]
        rest = build_transform(aug, int(crop), train=True)
        return A.Compose([*first, *rest.transforms])

    def _load_resized(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image, mask = self.load_pair(self.names[index])
        out = self._resize(image=image, mask=mask)
        return _with_channel_axis(out["image"]), out["mask"]

    def __len__(self) -> int:
        return len(self.names) * self.repeat

    def reseed(self, seed: int) -> None:
        seed_transform(self.transform, seed)

    def load_image(self, name: str) -> np.ndarray:
        """The decoded image of ``name`` (H, W, channels) at its original size."""
        return read_image(self.files[name][0], self.channels)

    def load_mask(self, name: str) -> np.ndarray:
        """The binary mask (H, W) of ``name`` at its original size."""
        path = self.files[name][1]
        return self.mapping(read_mask(path), path)

    def load_pair(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        image, mask = self.load_image(name), self.load_mask(name)
        if image.shape[:2] != mask.shape:
            (ih, iw), (mh, mw) = image.shape[:2], mask.shape
            img_file, mask_file = self.files[name]
            raise PetsegError(
                f"image {img_file} is {iw}x{ih} but its mask {mask_file} is {mw}x{mh}; they must match"
            )
        return image, mask

    def __getitem__(self, index: int | tuple[int, int]) -> dict[str, Any]:
        if isinstance(index, tuple):
            index, aug_seed = index
            self.reseed(int(aug_seed))
        index %= len(self.names)
        name = self.names[index]
        image, mask = self.cache.get(index) if self.cache is not None else self.load_pair(name)
        out = self.transform(image=image, mask=mask)
        image, mask = _with_channel_axis(out["image"]), out["mask"]
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "mask": torch.from_numpy(np.ascontiguousarray(mask[None])),
            "name": name,
        }


def _with_channel_axis(image: np.ndarray) -> np.ndarray:
    """(H, W) -> (H, W, 1): cv2 drops a single channel's axis in some transforms."""
    return image[:, :, None] if image.ndim == 2 else image


# ------------------------------------------------------------------------ building from the settings


def _pairs_and_split(data: DataSettings) -> tuple[dict[str, tuple[Path, Path]], dict[str, list[str]]]:
    assert data.folder is not None, "a folder layout's settings"
    files = paired_files(data.root, data.allow_missing)
    return files, split_assignment(data.root, list(files), data.folder.split)


def resolve_folder_settings(data: DataSettings) -> DataSettings:
    """``data`` with ``channels: auto`` and ``mean``/``std: null`` decided by the data (the train
    split's statistics); build.py writes them into the run's saved config, the numbers evaluation and
    inference must use."""
    files, splits = _pairs_and_split(data)
    channels, mean, std = data.channels, data.mean, data.std
    if channels is None:
        kinds = {image_channels(files[n][0]) for n in splits["train"][:50] or list(files)[:50]}
        channels = 3 if 3 in kinds else 1
    if mean is None or std is None:
        train_mean, train_std = channel_statistics([files[n][0] for n in splits["train"]], channels)
        mean = tuple(train_mean) if mean is None else mean
        std = tuple(train_std) if std is None else std
        n_train = len(splits["train"])
        logger.info("data.mean %s, data.std %s (from the %d train images)", list(mean), list(std), n_train)
    return replace(data, channels=channels, mean=mean, std=std)


def channel_statistics(paths: Sequence[Path], channels: int) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the pixels (in [0, 1]) of ``paths``, rounded to 4 digits."""
    total = np.zeros(channels)
    squares = np.zeros(channels)
    count = 0
    for path in paths:
        pixels = read_image(path, channels).reshape(-1, channels).astype(np.float64) / 255.0
        total += pixels.sum(0)
        squares += (pixels**2).sum(0)
        count += len(pixels)
    mean = total / max(count, 1)
    std = np.sqrt(np.maximum(squares / max(count, 1) - mean**2, 1e-12))
    return [round(float(m), 4) for m in mean], [round(max(float(s), 1e-3), 4) for s in std]


def build_folder_dataset(data: DataSettings, aug: AugSettings | None, split: str) -> FolderDataset:
    """Dataset of ``split`` ("train", "valid"/"val", "test") of a folder's settings, resolved
    (resolve_folder_settings)."""
    assert data.folder is not None and data.channels is not None, "resolved folder settings"
    split = canonical_split(split)
    files, splits = _pairs_and_split(data)
    return FolderDataset(
        data.root,
        split,
        splits[split],
        files,
        data.folder.mapping,
        data.channels,
        data.image_size,
        crop=data.folder.crop,
        repeat=data.folder.repeat,
        aug=aug,
        cache=data.cache,
        cache_dir=data.cache_dir,
        cache_workers=data.num_workers,
    )
