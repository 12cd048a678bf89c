"""Any folder of images and masks (``data=folder``): pairing by file stem, the split, the mask mapping.

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
import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from oxford_pet import SPLITS, canonical_split, read_image  # the pets' split names and decoding
from petseg.cache import DEFAULT_CACHE_DIR, ArrayCache, open_or_build
from petseg.errors import PetsegError
from petseg.paths import project_path
from petseg.transforms import build_transform, check_image_size, resize_transform, seed_transform

logger = logging.getLogger("petseg.data")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp")
_EXAMPLES = 3
_THRESHOLD = re.compile(r"^\s*(>=|>)\s*(\d+)\s*$")


# ------------------------------------------------------------------------------------- foreground


class MaskMapping:
    """Mask values -> {0, 1}: foreground values (or a threshold) and, optionally, the background ones.

    With a list of background values, any other value in a mask is an error: a mask drawn with another
    convention would otherwise be learned silently wrong.
    """

    def __init__(self, foreground: Any, background: Any = None) -> None:
        self.threshold: tuple[str, int] | None = None
        self.foreground: list[int] = []
        self.background: list[int] | None = None
        if isinstance(foreground, str):
            match = _THRESHOLD.match(foreground)
            if match is None:
                raise PetsegError(
                    f"data.foreground={foreground!r}: give a list of mask values, or '>=t' / '>t'"
                )
            self.threshold = (match.group(1), int(match.group(2)))
        else:
            self.foreground = _values(foreground, "data.foreground")
            if not self.foreground:
                raise PetsegError("data.foreground is empty: give the mask values of the class")
            if background is not None:
                self.background = _values(background, "data.background")
                both = sorted(set(self.foreground) & set(self.background))
                if both:
                    raise PetsegError(f"data.foreground and data.background share the values {both}")

    def describe(self) -> str:
        if self.threshold is not None:
            return f"foreground: mask value {self.threshold[0]} {self.threshold[1]}"
        back = "every other value" if self.background is None else f"values {self.background}"
        return f"foreground: mask values {self.foreground}, background: {back}"

    def __call__(self, mask: np.ndarray, path: Path) -> np.ndarray:
        if self.threshold is not None:
            op, t = self.threshold
            return (mask >= t if op == ">=" else mask > t).astype(np.uint8)
        if self.background is not None:
            bad = np.setdiff1d(np.unique(mask), self.foreground + self.background)
            if bad.size:
                raise PetsegError(
                    f"mask {path} has values {bad.tolist()[:5]} that neither data.foreground "
                    f"{self.foreground} nor data.background {self.background} covers"
                )
        return np.isin(mask, self.foreground).astype(np.uint8)


def _values(value: Any, key: str) -> list[int]:
    items = list(value) if hasattr(value, "__iter__") and not isinstance(value, str) else [value]
    if isinstance(value, str) or not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
        raise PetsegError(f"{key} must be a list of integer mask values, got {value!r}")
    if any(not 0 <= v <= 255 for v in items):
        raise PetsegError(f"{key} values must be 0-255 (8-bit masks), got {items}")
    return [int(v) for v in items]


# --------------------------------------------------------------------------------------- decoding


def read_mask(path: Path) -> np.ndarray:
    """A mask file as uint8 (H, W); a 16-bit, RGB or alpha mask is an error (one channel, 8 bits)."""
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode in ("L", "P", "1"):
                return np.asarray(im.convert("L") if mode == "1" else im, dtype=np.uint8).copy()
    except FileNotFoundError as e:
        raise PetsegError(f"mask file {path} not found") from e
    except (OSError, ValueError, SyntaxError, UnidentifiedImageError, Image.DecompressionBombError) as e:
        raise PetsegError(f"cannot read mask {path}: {e}") from e
    what = "16-bit" if mode.startswith("I") else f"{mode} ({len(mode)} channels)"
    raise PetsegError(f"mask {path} is {what}; masks must be 8-bit with one channel (mode L or P)")


def image_channels(path: Path) -> int:
    """1 for a grayscale file, 3 for anything with colour (what ``data.channels: auto`` picks)."""
    try:
        with Image.open(path) as im:
            return 1 if im.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F") else 3
    except (OSError, ValueError, SyntaxError, UnidentifiedImageError) as e:
        raise PetsegError(f"cannot read image {path}: {e}") from e


# --------------------------------------------------------------------------------------- the split


def _files_by_name(folder: Path) -> dict[str, Path]:
    """{name: file} of the image files under ``folder`` (recursive); two files of one name are an error."""
    found: dict[str, Path] = {}
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() not in IMAGE_SUFFIXES or path.name.startswith(".") or not path.is_file():
            continue
        name = path.relative_to(folder).with_suffix("").as_posix()
        if name in found:
            raise PetsegError(f"{found[name]} and {path} have the same name {name!r}: keep one")
        found[name] = path
    return found


def check_folder_root(root: Path) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise PetsegError(f"data.root {root} does not exist (data=folder: a folder with images/ and masks/)")
    for sub in ("images", "masks"):
        if not (root / sub).is_dir():
            raise PetsegError(f"data.root {root} has no {sub}/ folder (data=folder: images/ and masks/)")
    return root


def paired_files(root: Path, allow_missing: bool = False) -> dict[str, tuple[Path, Path]]:
    """{name: (image, mask)} of every pair under ``root``; an unpaired file is an error unless allowed."""
    root = check_folder_root(root)
    images, masks = _files_by_name(root / "images"), _files_by_name(root / "masks")
    for what, have, lack, other in (("image", images, masks, "mask"), ("mask", masks, images, "image")):
        alone = sorted(set(have) - set(lack))
        if alone:
            message = (
                f"{len(alone)} {what}(s) under {root / (what + 's')} have no {other} of the same name "
                f"(e.g. {have[alone[0]]})"
            )
            if not allow_missing:
                raise PetsegError(f"{message}; set data.allow_missing=true to skip them")
            logger.warning("%s; skipped them (allow_missing)", message)
    names = sorted(set(images) & set(masks))
    if not names:
        raise PetsegError(f"no image+mask pairs under {root}: images/ and masks/ share no file name")
    return {n: (images[n], masks[n]) for n in names}


def _read_names(root: Path, list_file: str, split: str) -> list[str]:
    path = Path(list_file) if Path(list_file).is_absolute() else Path(root) / list_file
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise PetsegError(f"cannot read the {split} list data.split.files.{split}={path}: {e}") from e
    # One name a line; a suffix is allowed ('x.png' means x), blank and '#' lines skipped.
    names = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    return [n.rsplit(".", 1)[0] if n.lower().endswith(IMAGE_SUFFIXES) else n for n in names]


def split_assignment(root: Path, names: Sequence[str], split_cfg: Any) -> dict[str, list[str]]:
    """{split: names} by ``data.split``: list files, else ordered ranges, else a seeded ratio.

    No name may be in two splits (a test image in training would inflate every test score); a listed
    name without its pair is an error.
    """
    names = sorted(names)
    if split_cfg.get("files"):
        files = split_cfg.files
        out = {s: _read_names(root, files[s], s) if files.get(s) else [] for s in SPLITS}
        known = set(names)
        for split, listed in out.items():
            absent = [n for n in listed if n not in known]
            if absent:
                raise PetsegError(
                    f"data.split.files.{split} lists {len(absent)} name(s) with no image+mask pair under "
                    f"{root} (e.g. {', '.join(absent[:_EXAMPLES])})"
                )
    elif split_cfg.get("ranges"):
        out = {}
        for split in SPLITS:
            bounds = split_cfg.ranges.get(split)
            if bounds is None:
                out[split] = []
                continue
            if len(bounds) != 2 or not all(isinstance(b, int) and not isinstance(b, bool) for b in bounds):
                raise PetsegError(f"data.split.ranges.{split} must be [start, end], got {list(bounds)}")
            start, end = bounds
            if not 0 <= start < end <= len(names):
                raise PetsegError(
                    f"data.split.ranges.{split}={[start, end]} is outside the {len(names)} pairs "
                    f"(0..{len(names)})"
                )
            out[split] = list(names[start:end])
    else:
        ratio = [float(r) for r in split_cfg.ratio]
        if len(ratio) != 3 or min(ratio) < 0 or not 0.99 <= sum(ratio) <= 1.01:
            raise PetsegError(
                f"data.split.ratio must be 3 fractions (train, valid, test) summing to 1, got {ratio}"
            )
        shuffled = list(names)
        random.Random(int(split_cfg.seed)).shuffle(shuffled)
        # A split asked for gets at least one pair, so that a small folder still validates and tests.
        n_valid = max(1, round(ratio[1] * len(names))) if ratio[1] > 0 else 0
        n_test = max(1, round(ratio[2] * len(names))) if ratio[2] > 0 else 0
        n_train = len(names) - n_valid - n_test
        out = {
            "train": sorted(shuffled[:n_train]),
            "valid": sorted(shuffled[n_train : n_train + n_valid]),
            "test": sorted(shuffled[n_train + n_valid :]),
        }
    seen: dict[str, str] = {}
    for split in SPLITS:
        for name in out[split]:
            if name in seen:
                raise PetsegError(
                    f"{name!r} is in both the {seen[name]} and the {split} split: a split must not leak "
                    "into another"
                )
            seen[name] = split
    return out


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
        aug_cfg: Any = None,
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
        self.image_size = check_image_size(image_size)
        train = split == "train"
        # Train only: each image this many times an epoch (a few large images give many crops).
        self.repeat = int(repeat) if train else 1
        self.transform = self._transform(aug_cfg, train, crop)
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

    def _transform(self, aug_cfg: Any, train: bool, crop: int | None) -> Any:
        import albumentations as A

        if not (train and crop):
            return build_transform(aug_cfg if train else None, self.image_size, train)
        # Crop first, then augment the patch: elastic deformation on the patch, not the whole image.
        first = [resize_transform(self.image_size), A.RandomCrop(int(crop), int(crop), p=1.0)]
        rest = build_transform(aug_cfg, int(crop), train=True)
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


# ------------------------------------------------------------------------------ building from cfg


def _pairs_and_split(data_cfg: Any) -> tuple[Path, dict[str, tuple[Path, Path]], dict[str, list[str]]]:
    if data_cfg.root is None:
        raise PetsegError(
            "data.root is not set: data=folder needs data.root=<a folder with images/ and masks/>"
        )
    root = project_path(data_cfg.root)
    files = paired_files(root, bool(data_cfg.allow_missing))
    return root, files, split_assignment(root, list(files), data_cfg.split)


def resolve_folder_settings(data_cfg: Any) -> None:
    """Fill ``channels: auto`` and ``mean``/``std: null`` from the data (the train split's statistics),
    in place, so the run's saved config holds the numbers evaluation and inference must use."""
    root, files, splits = _pairs_and_split(data_cfg)
    if data_cfg.channels == "auto":
        kinds = {image_channels(files[n][0]) for n in splits["train"][:50] or list(files)[:50]}
        data_cfg.channels = 3 if 3 in kinds else 1
    if data_cfg.mean is None or data_cfg.std is None:
        mean, std = channel_statistics([files[n][0] for n in splits["train"]], int(data_cfg.channels))
        if data_cfg.mean is None:
            data_cfg.mean = mean
        if data_cfg.std is None:
            data_cfg.std = std
        logger.info(
            "data.mean %s, data.std %s (from the %d train images)",
            data_cfg.mean,
            data_cfg.std,
            len(splits["train"]),
        )


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


def build_folder_dataset(data_cfg: Any, aug_cfg: Any, split: str) -> FolderDataset:
    """Dataset of ``split`` ("train", "valid"/"val", "test") from a ``data=folder`` config whose
    settings checks.check_data_settings passed and resolve_folder_settings filled in."""
    split = canonical_split(split)
    root, files, splits = _pairs_and_split(data_cfg)
    return FolderDataset(
        root,
        split,
        splits[split],
        files,
        MaskMapping(data_cfg.foreground, data_cfg.background),
        int(data_cfg.channels),
        int(data_cfg.image_size),
        crop=data_cfg.crop,
        repeat=int(data_cfg.repeat),
        aug_cfg=aug_cfg,
        cache=bool(data_cfg.cache),
        cache_dir=project_path(data_cfg.cache_dir or DEFAULT_CACHE_DIR),
        cache_workers=int(data_cfg.num_workers or 0),
    )
