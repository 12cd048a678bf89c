"""Decoded, pre-resized uint8 cache of one dataset split (``data.cache: true``).

Decoding a JPEG + PNG pair and resampling it from ~500x375 costs far more than everything else a
training sample needs, and it is the same work every epoch. The cache does it once per split:

* ``<cache_dir>/<split>-<S>px-<key>.images.npy``  uint8 (N, S, S, 3), RGB
* ``<cache_dir>/<split>-<S>px-<key>.masks.npy``   uint8 (N, S, S), binary 0/1
* ``<cache_dir>/<split>-<S>px-<key>.json``        what was cached (written last: marks a complete entry)

``key`` hashes everything that changes the content: the image size, the dataset root, the names in
order, every image's and trimap's size and mtime, and the versions of this format and of the resize
code. A changed file, list or size therefore gives a new key, i.e. a rebuild; the stale entry of the
same root, split and size is deleted after it. Arrays are opened with ``np.load(mmap_mode="r")``:
DataLoader workers then share the page cache instead of each holding a copy.

This module knows nothing about the dataset layout: ``oxford_pet`` passes the files that define the
key and a ``load(i)`` that returns sample i already resized.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import albumentations
import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from petseg.errors import PetsegError
from petseg.paths import PROJECT_ROOT

logger = logging.getLogger("petseg.cache")

# Bump when the cached content would change for the same files (decoding, resize, layout).
CACHE_FORMAT = 2  # 2: masks resized centre-aligned (INTER_NEAREST_EXACT), not top-left
DEFAULT_CACHE_DIR = PROJECT_ROOT / ".cache" / "petseg"

LoadFn = Callable[[int], tuple[np.ndarray, np.ndarray]]


def _resize_code_version() -> str:
    """Versions of the libraries whose resize produced the arrays: an upgrade may change pixels."""
    return f"albumentations {albumentations.__version__}, cv2 {cv2.__version__}"


def cache_key(
    root: Path,
    split: str,
    image_size: int,
    names: Sequence[str],
    files: Sequence[Sequence[Path]],
    extra: dict[str, Any] | None = None,
) -> str:
    """Hex digest over what determines the cached content (see the module docstring).

    ``files[i]`` are the source files of ``names[i]``; their size and mtime stand in for their content
    (hashing ~800 MB of JPEGs would cost as much as decoding them).
    """
    h = hashlib.sha256()
    head = {
        "format": CACHE_FORMAT,
        "root": str(Path(root).resolve()),
        "split": split,
        "image_size": int(image_size),
        "code": _resize_code_version(),
    }
    if extra:  # what else changes the content (the folder layout's mask mapping and channels)
        head["extra"] = extra
    h.update(json.dumps(head, sort_keys=True).encode())
    for name, paths in zip(names, files, strict=True):
        h.update(name.encode() + b"\0")
        for path in paths:
            try:
                st = os.stat(path)
            except FileNotFoundError as e:  # vanished since the split was listed: same error as decoding
                raise PetsegError(f"file {path} not found") from e
            h.update(f"{st.st_size}:{st.st_mtime_ns}\0".encode())
    return h.hexdigest()[:20]


class ArrayCache:
    """One split's cached arrays; ``get(i)`` returns writable copies of sample i (image, mask).

    The memory maps are opened here, in the main process, so forked DataLoader workers inherit them
    (one copy of the pages for all) and keep reading even if a newer build deletes this entry's files.
    They are dropped when pickled, so a spawned worker maps the files itself instead of receiving (and
    copying) their contents.
    """

    def __init__(self, images_path: Path, masks_path: Path, names: Sequence[str], built: bool) -> None:
        self.images_path = Path(images_path)
        self.masks_path = Path(masks_path)
        self.names = list(names)
        self.built = built  # True when this call decoded everything, False when it was reused
        self._images: np.ndarray | None = None
        self._masks: np.ndarray | None = None
        self._open()

    def _open(self) -> tuple[np.ndarray, np.ndarray]:
        if self._images is None or self._masks is None:
            self._images = np.load(self.images_path, mmap_mode="r")
            self._masks = np.load(self.masks_path, mmap_mode="r")
        return self._images, self._masks

    def __len__(self) -> int:
        return len(self.names)

    def get(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        images, masks = self._open()
        # Copies: the maps are read-only, and some transforms write into their input.
        return np.array(images[index]), np.array(masks[index])

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_images"] = state["_masks"] = None
        return state


def _as_is(sample: Any) -> Any:
    """collate_fn keeping numpy arrays as they are (the default one turns them into tensors)."""
    return sample


class _DecodeSet(Dataset):
    """Sample i through ``load``; a PetsegError comes back as a value, so the main process can raise it
    with its own message (a DataLoader worker would wrap it in a traceback)."""

    def __init__(self, load: LoadFn, n: int) -> None:
        self.load, self.n = load, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[int, Any, Any]:
        try:
            image, mask = self.load(i)
        except PetsegError as e:
            return i, None, str(e)
        return i, image, mask


def _paths(cache_dir: Path, stem: str) -> tuple[Path, Path, Path]:
    return cache_dir / f"{stem}.images.npy", cache_dir / f"{stem}.masks.npy", cache_dir / f"{stem}.json"


def _complete(
    images: Path, masks: Path, meta: Path, names: Sequence[str], size: int, channels: int = 3
) -> bool:
    """Whether an entry on disk is whole and matches (a crash mid-build leaves no meta file)."""
    if not (images.is_file() and masks.is_file() and meta.is_file()):
        return False
    try:
        info = json.loads(meta.read_text(encoding="utf-8"))
        im = np.load(images, mmap_mode="r")
        ma = np.load(masks, mmap_mode="r")
    except (OSError, ValueError) as e:
        logger.warning("cache entry %s is unreadable (%s); rebuilding it", meta, e)
        return False
    n = len(names)
    return (
        info.get("names") == list(names)
        and im.shape == (n, size, size, channels)
        and ma.shape == (n, size, size)
        and im.dtype == np.uint8
        and ma.dtype == np.uint8
    )


def _remove_stale(cache_dir: Path, split: str, size: int, root: str, keep: str) -> None:
    """Delete older entries of the same root, split and size: their files changed, they are dead weight."""
    for meta in cache_dir.glob(f"{split}-{size}px-*.json"):
        if meta.stem == keep:
            continue
        try:
            if json.loads(meta.read_text(encoding="utf-8")).get("root") != root:
                continue  # another dataset copy sharing the cache folder
        except (OSError, ValueError):
            continue
        for path in _paths(cache_dir, meta.stem):
            path.unlink(missing_ok=True)
        logger.info("removed stale cache entry %s", meta.stem)


def open_or_build(
    cache_dir: Path,
    root: Path,
    split: str,
    image_size: int,
    names: Sequence[str],
    files: Sequence[Sequence[Path]],
    load: LoadFn,
    num_workers: int = 0,
    progress: bool = True,
    channels: int = 3,
    extra: dict[str, Any] | None = None,
) -> ArrayCache:
    """The cache of ``names`` at ``image_size``, built first if no valid entry exists.

    ``load(i)`` must return (uint8 image (S,S,3), uint8 mask (S,S)) for ``names[i]``; it runs in
    ``num_workers`` DataLoader processes (0: here). Its PetsegErrors (unreadable file, image/trimap
    size mismatch) stop the build with the same message the uncached path gives. Concurrent builders
    of the same entry are safe: each writes private temporary files and renames them into place.
    """
    cache_dir = Path(cache_dir)
    key = cache_key(root, split, image_size, names, files, extra and {**extra, "channels": channels})
    stem = f"{split}-{image_size}px-{key}"
    images_path, masks_path, meta_path = _paths(cache_dir, stem)
    if _complete(images_path, masks_path, meta_path, names, image_size, channels):
        logger.info(
            "using cached %s split (%d images at %dpx) from %s", split, len(names), image_size, cache_dir
        )
        return ArrayCache(images_path, masks_path, names, built=False)

    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PetsegError(
            f"cannot create data.cache_dir {cache_dir}: {e}; set data.cache_dir or data.cache=false"
        ) from e
    n, s = len(names), int(image_size)
    tmp = f".tmp{os.getpid()}"
    tmp_images = images_path.with_name(images_path.name + tmp)
    tmp_masks = masks_path.with_name(masks_path.name + tmp)

    try:
        images = np.lib.format.open_memmap(tmp_images, mode="w+", dtype=np.uint8, shape=(n, s, s, channels))
        masks = np.lib.format.open_memmap(tmp_masks, mode="w+", dtype=np.uint8, shape=(n, s, s))
        # A private generator: iterating a DataLoader draws its workers' base seed from torch's global
        # RNG otherwise, and a run that builds the cache would then continue from another RNG state
        # than one that reuses it (a resumed run, or the same command run twice).
        loader = DataLoader(
            _DecodeSet(load, n),
            batch_size=None,
            num_workers=num_workers,
            collate_fn=_as_is,
            generator=torch.Generator(),
        )
        desc = f"caching {split} {s}px"
        for i, image, mask in tqdm(
            loader, total=n, desc=desc, unit="img", disable=not progress, file=sys.stderr
        ):
            if image is None:
                raise PetsegError(mask)
            images[i], masks[i] = image, mask
        images.flush()
        masks.flush()
        del images, masks  # close the maps before renaming (needed on Windows)
        os.replace(tmp_images, images_path)
        os.replace(tmp_masks, masks_path)
        meta = {"root": str(Path(root).resolve()), "split": split, "image_size": s, "names": list(names)}
        tmp_meta = meta_path.with_name(meta_path.name + tmp)
        tmp_meta.write_text(json.dumps(meta), encoding="utf-8")
        os.replace(tmp_meta, meta_path)  # last: only now is the entry complete
    except OSError as e:
        raise PetsegError(f"cannot write the data cache in {cache_dir}: {e}; set data.cache=false") from e
    finally:
        for path in (tmp_images, tmp_masks):
            path.unlink(missing_ok=True)
    _remove_stale(cache_dir, split, s, meta["root"], keep=stem)
    logger.info("cached %s split: %d images at %dpx in %s", split, n, s, cache_dir)
    return ArrayCache(images_path, masks_path, names, built=True)
