"""Oxford-IIIT Pet for binary segmentation (pet vs background): the data set and its loader items.

Where the files are, the split rule (exactly the reference ``SimpleOxfordPetDataset``'s) and the trimap
decoding live in petseg/pet_layout.py, shared with this module's command; image decoding in
petseg/images.py, shared with the folder data set. Their names are re-exported here, the data set module
the project layout names.

Run ``python src/oxford_pet.py root=<root> [download=true] [verify=true]`` for a summary of a copy on
disk (its keys: configs/oxford_pet.yaml, ``--help``).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset

from petseg.cache import DEFAULT_CACHE_DIR, ArrayCache, open_or_build
from petseg.data_report import main as report_main
from petseg.data_settings import DataSettings, as_data_settings
from petseg.errors import PetsegError
from petseg.images import read_image, to_rgb
from petseg.pet_layout import (
    TRIMAP_BACKGROUND,
    TRIMAP_BORDER,
    TRIMAP_PET,
    VALID_EVERY,
    check_no_test_leak,
    check_root,
    download_hint,
    files_in,
    image_path,
    present_names,
    read_trimap,
    split_names,
    trimap_path,
    trimap_to_mask,
)
from petseg.splits import SPLITS, canonical_split, example_names
from petseg.transforms import AugSettings, as_aug_settings, build_transform, resize_transform, seed_transform

__all__ = [
    "SPLITS",
    "TRIMAP_BACKGROUND",
    "TRIMAP_BORDER",
    "TRIMAP_PET",
    "VALID_EVERY",
    "OxfordPetDataset",
    "build_dataset",
    "canonical_split",
    "check_no_test_leak",
    "check_root",
    "download_hint",
    "example_names",
    "files_in",
    "image_path",
    "present_names",
    "read_image",
    "read_trimap",
    "split_names",
    "to_rgb",
    "trimap_path",
    "trimap_to_mask",
]

logger = logging.getLogger("petseg.data")


class OxfordPetDataset(Dataset):
    """Items ``{"image": uint8 RGB (3,S,S), "mask": uint8 (1,S,S) in {0,1}, "name": str}``: the one item
    format from disk to the model; petseg.model_input.ModelInput turns batches of them into the model's
    float inputs, on its device.

    ``transform``: an albumentations Compose called with ``image=, mask=`` (build_transform makes one,
    with the final resize); None means resize only. ``allow_missing``: keep the pairs present when some
    listed files are absent (a partial copy) instead of failing.

    ``cache``: decode and resize every pair once, up front, into uint8 arrays under ``cache_dir``
    (src/petseg/cache.py; built with ``cache_workers`` processes, reused while the files and image_size stay
    the same). Items then start from the cached S x S pair instead of the file: for valid/test they are
    identical to the uncached ones (the same Resize, and resizing S x S to S x S changes nothing); for
    train the augmentation acts on the S x S image instead of the full-resolution one. A broken file
    fails the build with the same PetsegError the uncached path raises when it reaches that item.
    """

    def __init__(
        self,
        root: Path | str,
        split: str,
        image_size: int = 256,
        transform: A.Compose | None = None,
        allow_missing: bool = False,
        cache: bool = False,
        cache_dir: Path | str | None = None,
        cache_workers: int = 0,
    ) -> None:
        self.root = check_root(Path(root))
        self.split = canonical_split(split)
        self.image_size = int(image_size)
        # Check before anything is loaded: a test name in trainval would make every score meaningless.
        check_no_test_leak(self.root)
        self.transform = transform if transform is not None else build_transform(None, self.image_size, False)
        self._resize: A.Resize | None = None  # built on first need (a given transform without resize)

        listed = split_names(self.root, self.split)
        present = present_names(self.root)
        self.names: list[str] = [n for n in listed if n in present]
        self.missing: list[str] = [n for n in listed if n not in present]
        if self.missing:
            what = (
                f"{self.split} split: {len(self.missing)} of {len(listed)} listed image+trimap pairs are "
                f"missing under {self.root} (e.g. {example_names(self.missing)})"
            )
            if not allow_missing:
                raise PetsegError(
                    f"{what}; this looks like a partial copy. Set data.allow_missing=true to use the "
                    f"{len(self.names)} pairs present, or {download_hint(self.root)}"
                )
            logger.warning("%s; skipped them (allow_missing), using %d pairs", what, len(self.names))
        if not self.names:
            raise PetsegError(
                f"{self.split} split is empty: none of its {len(listed)} listed pairs is present under "
                f"{self.root}; {download_hint(self.root)}"
            )
        self.cache: ArrayCache | None = None
        self._eval_resize: A.Compose | None = None
        if cache:
            self.cache = self._open_cache(Path(cache_dir) if cache_dir else DEFAULT_CACHE_DIR, cache_workers)

    def _open_cache(self, cache_dir: Path, workers: int) -> ArrayCache:
        # Here, in the main process and before any DataLoader forks: workers then share the memory maps.
        files = [(image_path(self.root, n), trimap_path(self.root, n)) for n in self.names]
        return open_or_build(
            cache_dir, self.root, self.split, self.image_size, self.names, files, self._load_resized, workers
        )

    def _load_resized(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Pair ``index`` decoded and resized by the eval transform's own Resize: what the cache stores."""
        if self._eval_resize is None:
            self._eval_resize = build_transform(None, self.image_size, train=False)
        image, mask = self.load_pair(self.names[index])
        out = self._eval_resize(image=image, mask=mask)
        return out["image"], out["mask"]

    def __len__(self) -> int:
        return len(self.names)

    def reseed(self, seed: int) -> None:
        """Seed the augmentation stream (called per DataLoader worker, and for in-process loading)."""
        seed_transform(self.transform, seed)

    def load_pair(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Decoded (RGB uint8 image (H,W,3), binary uint8 mask (H,W)) of ``name``, before any transform."""
        img_file, tri_file = image_path(self.root, name), trimap_path(self.root, name)
        image = read_image(img_file)
        trimap = read_trimap(tri_file)
        if image.shape[:2] != trimap.shape:
            (ih, iw), (th, tw) = image.shape[:2], trimap.shape
            raise PetsegError(
                f"image {img_file} is {iw}x{ih} but its trimap {tri_file} is {tw}x{th}; they must match"
            )
        return image, trimap_to_mask(trimap)

    def load_image(self, name: str) -> np.ndarray:
        """The decoded RGB image (H, W, 3) of ``name`` at its original size."""
        return read_image(image_path(self.root, name))

    def load_mask(self, name: str) -> np.ndarray:
        """Binary uint8 mask (H, W) of ``name`` at its original size, decoded from the trimap alone."""
        return trimap_to_mask(read_trimap(trimap_path(self.root, name)))

    def __getitem__(self, index: int | tuple[int, int]) -> dict[str, Any]:
        """``index``, or ``(index, augmentation_seed)`` as sampler.EpochSampler yields for training: the
        augmentation then depends on that seed only, not on which worker loads the sample or when."""
        if isinstance(index, tuple):
            index, aug_seed = index
            self.reseed(int(aug_seed))
        name = self.names[index]
        image, mask = self.cache.get(index) if self.cache is not None else self.load_pair(name)
        out = self.transform(image=image, mask=mask)
        image, mask = out["image"], out["mask"]
        s = self.image_size
        if image.shape[:2] != (s, s) or mask.shape[:2] != (s, s):
            # A hand-made transform without the final resize: do it here so batches always stack.
            if self._resize is None:
                self._resize = resize_transform(s)
            out = self._resize(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        if image.dtype != np.uint8 or mask.dtype != np.uint8:
            # Normalisation is data.mean/std's job, on the device (petseg.model_input); a transform that
            # makes floats (A.Normalize, ToFloat) would be normalised twice.
            raise PetsegError(
                f"the augmentation made a {image.dtype} image / {mask.dtype} mask; transforms must keep "
                "uint8 (normalisation is set by data.mean and data.std, not by an aug transform)"
            )
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "mask": torch.from_numpy(np.ascontiguousarray(mask[None])),
            "name": name,
        }


# ------------------------------------------------------------------------ building from the settings


def build_dataset(data: DataSettings | Any, aug: AugSettings | Any | None, split: str) -> OxfordPetDataset:
    """Dataset of ``split`` from the data and aug settings (a data or aug config is read by its reader
    first); only "train" is augmented."""
    data, aug = as_data_settings(data), as_aug_settings(aug)
    split = canonical_split(split)
    return OxfordPetDataset(
        root=data.root,
        split=split,
        image_size=data.image_size,
        transform=build_transform(aug, data.image_size, train=split == "train"),
        allow_missing=data.allow_missing,
        cache=data.cache,
        cache_dir=data.cache_dir,
        cache_workers=data.num_workers,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python src/oxford_pet.py root=<root> [download=true] [verify=true]``: petseg/data_report.py."""
    return report_main(argv)


if __name__ == "__main__":
    sys.exit(main())
