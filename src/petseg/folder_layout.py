"""A folder of images and masks on disk (``data=folder``): which files pair up, which split each pair is in,
and what a mask's values mean (``data.foreground``). petseg/folder_data.py makes the data set of it."""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from petseg.errors import PetsegError
from petseg.splits import SPLITS

logger = logging.getLogger("petseg.data")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp")
_EXAMPLES = 3


# ------------------------------------------------------------------------------------- foreground


@dataclass(frozen=True)
class MaskMapping:
    """Mask values -> {0, 1}: foreground values (or a threshold) and, optionally, the background ones
    (``data.foreground`` and ``data.background`` as data_settings.py read them).

    With a list of background values, any other value in a mask is an error: a mask drawn with another
    convention would otherwise be learned silently wrong.
    """

    foreground: tuple[int, ...]  # the class's values; () with a threshold
    background: tuple[int, ...] | None  # the other allowed values; None: every other value
    threshold: tuple[str, int] | None  # ('>=', t) or ('>', t) on 8-bit values, instead of a list

    def describe(self) -> str:
        if self.threshold is not None:
            return f"foreground: mask value {self.threshold[0]} {self.threshold[1]}"
        back = "every other value" if self.background is None else f"values {list(self.background)}"
        return f"foreground: mask values {list(self.foreground)}, background: {back}"

    def __call__(self, mask: np.ndarray, path: Path) -> np.ndarray:
        if self.threshold is not None:
            op, t = self.threshold
            return (mask >= t if op == ">=" else mask > t).astype(np.uint8)
        if self.background is not None:
            bad = np.setdiff1d(np.unique(mask), self.foreground + self.background)
            if bad.size:
                raise PetsegError(
                    f"mask {path} has values {bad.tolist()[:5]} that neither data.foreground "
                    f"{list(self.foreground)} nor data.background {list(self.background)} covers"
                )
        return np.isin(mask, self.foreground).astype(np.uint8)


@dataclass(frozen=True)
class SplitRule:
    """``data.split`` of a folder as data_settings.py read it: the one rule in effect (the first given
    of list files, ranges, a seeded ratio); the other two are None."""

    files: dict[str, str] | None  # {split: list file}, relative to data.root; a split not named is empty
    ranges: dict[str, tuple[int, int]] | None  # {split: (start, end)}: positions in the sorted names
    ratio: tuple[float, ...] | None  # train, valid, test fractions of a shuffle seeded by `seed`
    seed: int


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


def split_assignment(root: Path, names: Sequence[str], rule: SplitRule) -> dict[str, list[str]]:
    """{split: names} by ``data.split``: list files, else ordered ranges, else a seeded ratio.

    No name may be in two splits (a test image in training would inflate every test score); a listed
    name without its pair, or a range outside the pairs, is an error.
    """
    names = sorted(names)
    if rule.files is not None:
        files = rule.files
        out = {s: _read_names(root, files[s], s) if files.get(s) else [] for s in SPLITS}
        known = set(names)
        for split, listed in out.items():
            absent = [n for n in listed if n not in known]
            if absent:
                raise PetsegError(
                    f"data.split.files.{split} lists {len(absent)} name(s) with no image+mask pair under "
                    f"{root} (e.g. {', '.join(absent[:_EXAMPLES])})"
                )
    elif rule.ranges is not None:
        out = {}
        for split in SPLITS:
            if split not in rule.ranges:
                out[split] = []
                continue
            start, end = rule.ranges[split]
            if not 0 <= start < end <= len(names):
                raise PetsegError(
                    f"data.split.ranges.{split}={[start, end]} is outside the {len(names)} pairs "
                    f"(0..{len(names)})"
                )
            out[split] = list(names[start:end])
    else:
        assert rule.ratio is not None
        ratio = rule.ratio
        shuffled = list(names)
        random.Random(rule.seed).shuffle(shuffled)
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
