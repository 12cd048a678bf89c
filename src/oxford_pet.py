"""Oxford-IIIT Pet for binary segmentation (pet vs background): splits, decoding, augmentation, loaders.

Layout expected under ``root`` (the official release's)::

    images/<name>.jpg                 RGB photos (a few are really GIF/PNG, grayscale or CMYK)
    annotations/trimaps/<name>.png    1 = pet, 2 = background, 3 = border
    annotations/trainval.txt          'Name classid species breedid', official order
    annotations/test.txt

Splits follow the reference ``SimpleOxfordPetDataset`` of segmentation_models_pytorch exactly, so numbers
are comparable with its examples: "test" is test.txt; line i of trainval.txt goes to "valid" when
i % 10 == 0, else to "train" (3312 / 368 / 3669 with the full lists).

Run ``python src/oxford_pet.py --root <root> [--download] [--verify]`` for a summary of a copy on disk.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

from petseg.cache import DEFAULT_CACHE_DIR, ArrayCache, open_or_build
from petseg.errors import PetsegError

if TYPE_CHECKING:  # albumentations is imported lazily: it costs ~1 s and the CLI summary never needs it
    import albumentations as A

logger = logging.getLogger("petseg.data")

SPLITS: tuple[str, ...] = ("train", "valid", "test")
# "val" is what most people type; it means the same split.
_SPLIT_ALIASES = {"val": "valid"}
# Every 10th trainval line (starting at line 0) is validation, as in the reference implementation.
VALID_EVERY = 10
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
TRIMAP_PET, TRIMAP_BACKGROUND, TRIMAP_BORDER = 1, 2, 3
_EXAMPLES = 5  # how many example names an error message lists


# --------------------------------------------------------------------------------------------- layout


def image_path(root: Path, name: str) -> Path:
    return Path(root) / "images" / f"{name}.jpg"


def trimap_path(root: Path, name: str) -> Path:
    return Path(root) / "annotations" / "trimaps" / f"{name}.png"


def _download_hint(root: Path) -> str:
    return f"get the dataset with: python src/oxford_pet.py --root {root} --download"


def check_root(root: Path) -> Path:
    """Return ``root`` as a Path after checking it and its annotations folder exist (PetsegError if not)."""
    root = Path(root)
    if not root.is_dir():
        raise PetsegError(f"dataset root {root} does not exist; {_download_hint(root)}")
    if not (root / "annotations").is_dir():
        raise PetsegError(f"dataset root {root} has no annotations/ folder; {_download_hint(root)}")
    return root


def canonical_split(split: str) -> str:
    split = _SPLIT_ALIASES.get(split, split)
    if split not in SPLITS:
        raise PetsegError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)} (or 'val')")
    return split


def _read_list(root: Path, list_name: str) -> list[str]:
    """Names (first column) of annotations/<list_name>, in file order; blank and '#' lines skipped."""
    path = check_root(root) / "annotations" / list_name
    if not path.is_file():
        raise PetsegError(f"split list {path} not found; {_download_hint(root)}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise PetsegError(f"cannot read split list {path}: {e}") from e
    # The official lists have no header, but list.txt of the same release has '#' comments: allow them.
    return [line.split()[0] for line in text.splitlines() if line.strip() and not line.startswith("#")]


def split_names(root: Path, split: str) -> list[str]:
    """Names listed for ``split`` ("train", "valid"/"val", "test"), whether or not their files exist."""
    split = canonical_split(split)
    if split == "test":
        return _read_list(root, "test.txt")
    names = _read_list(root, "trainval.txt")
    # Index i counts list lines in file order, exactly as the reference does: the official order matters.
    if split == "valid":
        return [n for i, n in enumerate(names) if i % VALID_EVERY == 0]
    return [n for i, n in enumerate(names) if i % VALID_EVERY != 0]


def check_no_test_leak(root: Path) -> None:
    """PetsegError if a name of test.txt is also in trainval.txt (a tampered or mixed-up list).

    A leak would silently inflate every test score, so it stops the run instead of warning.
    """
    trainval = _read_list(root, "trainval.txt")
    test = set(_read_list(root, "test.txt"))
    leaked = [n for n in trainval if n in test]
    if leaked:
        raise PetsegError(
            f"{Path(root) / 'annotations' / 'trainval.txt'} lists {len(leaked)} name(s) that are also in "
            f"test.txt ({_examples(leaked)}): the test set would leak into training/validation"
        )


def _examples(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_EXAMPLES])
    return shown + (", ..." if len(names) > _EXAMPLES else "")


def _files_in(folder: Path, suffix: str) -> set[str]:
    """Stems of the files with ``suffix`` in ``folder`` (one listdir instead of thousands of stat calls).

    Names starting with '._' are macOS resource forks that the official tarballs carry; they are no data.
    """
    if not folder.is_dir():
        return set()
    return {p.stem for p in folder.iterdir() if p.suffix == suffix and not p.name.startswith("._")}


def present_names(root: Path) -> set[str]:
    """Names that have both an image and a trimap file."""
    root = Path(root)
    return _files_in(root / "images", ".jpg") & _files_in(root / "annotations" / "trimaps", ".png")


# ------------------------------------------------------------------------------------------- decoding


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL image -> RGB, the way that keeps the pixels the trimap was drawn on.

    Transparent modes are composited over black rather than having alpha dropped, so a pixel marked
    fully transparent shows no leftover colour; black is also what the geometric augmentations pad with.
    The release's one RGBA file is fully opaque, where both ways agree. CMYK/L/P/I go through PIL's own
    conversion (PIL already undoes the Adobe inversion of CMYK JPEGs).
    """
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # 16-bit/float grayscale: PIL's convert would clip at 255; rescale to the 8-bit range instead.
        a = np.asarray(im, dtype=np.float64)
        hi = a.max() if a.size and a.max() > 255 else 255.0
        return Image.fromarray(np.clip(a * (255.0 / hi), 0, 255).astype(np.uint8)).convert("RGB")
    return im.convert("RGB")


def read_image(path: Path) -> np.ndarray:
    """Decode an image file to an RGB uint8 array (H, W, 3), whatever its real format.

    The EXIF orientation is deliberately NOT applied: the trimaps were drawn on the stored pixel grid.
    Animated files (the release has a GIF behind a .jpg) give their first frame.
    """
    try:
        with Image.open(path) as im:
            im.seek(0)
            im.load()
            return np.asarray(_to_rgb(im), dtype=np.uint8).copy()
    except FileNotFoundError as e:
        raise PetsegError(f"image file {path} not found") from e
    except (OSError, ValueError, SyntaxError, UnidentifiedImageError, Image.DecompressionBombError) as e:
        raise PetsegError(f"cannot read image {path}: {e}") from e


def read_trimap(path: Path) -> np.ndarray:
    """Decode a trimap PNG to a uint8 array (H, W) of values in {1, 2, 3}; PetsegError otherwise."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode not in ("L", "P"):  # P: the palette index is the class value, keep it as is
                im = im.convert("L")
            trimap = np.asarray(im, dtype=np.uint8).copy()
    except FileNotFoundError as e:
        raise PetsegError(f"trimap file {path} not found") from e
    except (OSError, ValueError, SyntaxError, UnidentifiedImageError, Image.DecompressionBombError) as e:
        raise PetsegError(f"cannot read trimap {path}: {e}") from e
    # A 0/255 mask or an RGB drawing put in place of a trimap would otherwise be mapped silently wrong.
    bad = np.setdiff1d(np.unique(trimap), [TRIMAP_PET, TRIMAP_BACKGROUND, TRIMAP_BORDER])
    if bad.size:
        raise PetsegError(f"trimap {path} has values {bad.tolist()[:5]}; expected only 1, 2, 3")
    return trimap


def trimap_to_mask(trimap: np.ndarray) -> np.ndarray:
    """Trimap -> binary pet mask (uint8 0/1): pet (1) and border (3) are pet, background (2) is not.

    Counting the border as pet is the reference implementation's choice; it keeps results comparable.
    """
    return ((trimap == TRIMAP_PET) | (trimap == TRIMAP_BORDER)).astype(np.uint8)


# The reference protocol scores every prediction against the trimap resized to this size (by PIL NEAREST).
REFERENCE_SIZE = 256


def reference_mask(mask: np.ndarray, size: int = REFERENCE_SIZE) -> np.ndarray:
    """A binary uint8 mask (H, W) resized to size x size by PIL's NEAREST: the ground truth of the
    reference protocol (SimpleOxfordPetDataset resizes its trimaps exactly this way)."""
    return np.asarray(Image.fromarray(mask).resize((size, size), Image.NEAREST), dtype=np.uint8).copy()


# --------------------------------------------------------------------------------------- augmentation


def resize_transform(image_size: int) -> A.Resize:
    """The final resize to image_size x image_size: area for shrinking images, bilinear for enlarging,
    nearest for masks (so a mask stays exactly {0, 1}).

    Masks use INTER_NEAREST_EXACT, which samples the source pixel under each output pixel's centre,
    like the image's resampling and PIL's NEAREST (the reference protocol's). Plain INTER_NEAREST takes
    the top-left pixel of each source cell instead, shifting every mask up to (s-1)/2 source pixels
    right and down of its image."""
    import albumentations as A
    import cv2

    return A.Resize(
        height=image_size,
        width=image_size,
        interpolation=cv2.INTER_LINEAR,
        area_for_downscale="image",
        mask_interpolation=cv2.INTER_NEAREST_EXACT,
        p=1.0,
    )


def _aug_get(aug_cfg: Any, key: str) -> Any:
    if aug_cfg is None:
        return None
    try:
        return aug_cfg.get(key)
    except AttributeError as e:
        raise PetsegError(
            f"aug config must be a mapping with a 'train' list, got {type(aug_cfg).__name__}"
        ) from e


def build_train_transforms(aug_cfg: Any) -> list[Any]:
    """Instantiate the ``train`` list of an aug config (each entry a ``_target_`` dict) and check it.

    Checks, because a wrong entry would silently corrupt labels: every entry is an albumentations
    transform, and every transform that resamples masks does it by nearest neighbour.
    """
    import albumentations as A
    import cv2
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate
    from omegaconf import DictConfig, ListConfig, OmegaConf

    entries = _aug_get(aug_cfg, "train")
    name = _aug_get(aug_cfg, "name") or "?"
    if entries is None:
        return []
    if isinstance(entries, ListConfig):
        entries = OmegaConf.to_container(entries, resolve=True)
    if not isinstance(entries, list):
        raise PetsegError(f"aug '{name}': 'train' must be a list of transforms, got {type(entries).__name__}")
    transforms = []
    for i, entry in enumerate(entries):
        if isinstance(entry, DictConfig):
            entry = OmegaConf.to_container(entry, resolve=True)
        if not isinstance(entry, Mapping) or "_target_" not in entry:
            raise PetsegError(f"aug '{name}': train[{i}] must be a mapping with a _target_, got {entry!r}")
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
    import albumentations as A

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


def build_transform(aug_cfg: Any, image_size: int, train: bool) -> A.Compose:
    """Compose of the aug config's ``train`` list (only when ``train``) followed by the final resize.

    Valid/test never get augmentation, whatever the config says. Geometric transforms are albumentations
    DualTransforms, which move image and mask together when called with ``image=..., mask=...``;
    photometric ones (ImageOnlyTransform) leave the mask alone. The resize comes last so each image is
    resampled once, at the end, after cropping/affine.
    """
    import albumentations as A

    image_size = _check_image_size(image_size)
    transforms = build_train_transforms(aug_cfg) if train else []
    return A.Compose([*transforms, resize_transform(image_size)])


def _check_image_size(image_size: Any) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8:
        raise PetsegError(f"data.image_size must be an integer >= 8, got {image_size!r}")
    return image_size


def seed_transform(transform: Any, seed: int) -> None:
    """Give an albumentations Compose one seeded random stream shared by all its transforms.

    Not ``Compose(seed=...)``/``set_random_seed``: albumentations 2.0 hands that same seed to every child
    transform, so e.g. a flip and a colour jitter with equal p would fire together on every sample.
    """
    if transform is not None and hasattr(transform, "set_random_state"):
        transform.set_random_state(np.random.default_rng(seed), random.Random(seed))


# -------------------------------------------------------------------------------------------- dataset


class OxfordPetDataset(Dataset):
    """Items ``{"image": float32 (3,S,S) normalised, "mask": float32 (1,S,S) in {0,1}, "name": str}``.

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
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        cache: bool = False,
        cache_dir: Path | str | None = None,
        cache_workers: int = 0,
    ) -> None:
        self.root = check_root(Path(root))
        self.split = canonical_split(split)
        self.image_size = _check_image_size(image_size)
        self.mean = _check_stats("mean", mean)
        self.std = _check_stats("std", std)
        if np.any(self.std <= 0):
            raise PetsegError(f"data.std must be positive, got {list(std)}")
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
                f"missing under {self.root} (e.g. {_examples(self.missing)})"
            )
            if not allow_missing:
                raise PetsegError(
                    f"{what}; this looks like a partial copy. Set data.allow_missing=true to use the "
                    f"{len(self.names)} pairs present, or {_download_hint(self.root)}"
                )
            logger.warning("%s; skipped them (allow_missing), using %d pairs", what, len(self.names))
        if not self.names:
            raise PetsegError(
                f"{self.split} split is empty: none of its {len(listed)} listed pairs is present under "
                f"{self.root}; {_download_hint(self.root)}"
            )
        self.cache: ArrayCache | None = None
        self._eval_resize: A.Compose | None = None
        self._lut = _normalise_lut(self.mean, self.std)
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

    def load_mask(self, name: str) -> np.ndarray:
        """Binary uint8 mask (H, W) of ``name`` at its original size, decoded from the trimap alone."""
        return trimap_to_mask(read_trimap(trimap_path(self.root, name)))

    # True only in the copies of the dataset inside build_dataloader's worker processes (set by
    # compact_worker_init_fn): there items leave as uint8 and CompactLoader expands them in the main
    # process. Indexing the dataset (``dataset[i]``) always gives the float items below.
    _compact_items: bool = False

    def __getitem__(self, index: int | tuple[int, int]) -> dict[str, Any]:
        """``index``, or ``(index, augmentation_seed)`` as sampler.EpochSampler yields for training: the
        augmentation then depends on that seed only, not on which worker loads the sample or when."""
        return self._item(index, compact=False)

    def __getitems__(self, indices: Sequence[int | tuple[int, int]]) -> list[dict[str, Any]]:
        """A batch's items, as torch's DataLoader fetches them: compact in build_dataloader's workers."""
        return [self._item(index, compact=self._compact_items) for index in indices]

    def _item(self, index: int | tuple[int, int], compact: bool) -> dict[str, Any]:
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
        if compact and _is_rgb_uint8(image):
            # uint8 (3, S, S): a quarter of the bytes through shared memory; expand_batch normalises.
            image_t = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        else:
            image_t = _lookup_input(image, self._lut, self.mean, self.std)
        if compact and mask.dtype == np.uint8:
            mask_t = torch.from_numpy(np.ascontiguousarray(mask[None]))
        else:
            mask_t = torch.from_numpy(np.ascontiguousarray(mask[None], dtype=np.float32))
        return {"image": image_t, "mask": mask_t, "name": name}


def _is_rgb_uint8(image: np.ndarray) -> bool:
    return image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3


def to_model_input(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """RGB uint8 (H, W, 3) -> normalised float32 tensor (3, H, W): the model's input format.

    Shared by the dataset and inference, so a photo is preprocessed exactly like a training image.
    """
    mean_a = np.asarray(mean, dtype=np.float32)
    std_a = np.asarray(std, dtype=np.float32)
    normalised = (image.astype(np.float32) / 255.0 - mean_a) / std_a
    return torch.from_numpy(np.ascontiguousarray(normalised.transpose(2, 0, 1), dtype=np.float32))


def _normalise_lut(mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(3, 256) float32: to_model_input's output for every uint8 level of each channel.

    Made by to_model_input itself, so looking pixels up gives bit-identical values; it is ~8x faster than
    the arithmetic, which made up a third of a cached training item's CPU time.
    """
    levels = np.repeat(np.arange(256, dtype=np.uint8)[:, None, None], 3, axis=2)  # (256, 1, 3)
    return to_model_input(levels, mean, std)[:, :, 0].numpy().copy()


def _lookup_input(
    image: np.ndarray, lut: np.ndarray, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """to_model_input(image, mean, std) through the table of _normalise_lut; the arithmetic for anything
    but RGB uint8 (a hand-made transform may return float images)."""
    if not _is_rgb_uint8(image):
        return to_model_input(image, mean, std)
    import cv2

    out = np.empty((3, *image.shape[:2]), dtype=np.float32)
    # One contiguous plane per channel, looked up straight into its output plane: no HWC->CHW copy.
    for c, plane in enumerate(cv2.split(image)):
        cv2.LUT(plane, lut[c], dst=out[c])
    return torch.from_numpy(out)


def _check_stats(key: str, values: Sequence[float]) -> np.ndarray:
    try:
        a = np.asarray(list(values), dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise PetsegError(f"data.{key} must be 3 numbers, got {values!r}") from e
    if a.shape != (3,):
        raise PetsegError(f"data.{key} must be 3 numbers (R, G, B), got {list(values)!r}")
    return a


# --------------------------------------------------------------------------------- building from cfg


def _cfg(data_cfg: Any, key: str) -> Any:
    """data.<key>, which the YAML (or a checkpoint upgraded by petseg.upgrade) always has."""
    value = data_cfg[key]
    if value is None:
        raise PetsegError(f"data.{key} is not set")
    return value


def _from_start_dir(path: str) -> str:
    """Like data.root, a relative data.cache_dir is relative to where the command was started."""
    try:
        from hydra.utils import to_absolute_path
    except ImportError:
        return path
    return to_absolute_path(path)


def build_dataset(data_cfg: Any, aug_cfg: Any, split: str) -> OxfordPetDataset:
    """Dataset of ``split`` from the ``data`` and ``aug`` config groups; only "train" is augmented."""
    split = canonical_split(split)
    root = str(_cfg(data_cfg, "root"))
    try:  # relative roots are relative to where the command was started, even inside a Hydra run dir
        from hydra.utils import to_absolute_path

        root = to_absolute_path(root)
    except ImportError:
        pass
    image_size = _check_image_size(_cfg(data_cfg, "image_size"))
    cache_dir = _from_start_dir(str(data_cfg.cache_dir or DEFAULT_CACHE_DIR))
    return OxfordPetDataset(
        root=root,
        split=split,
        image_size=image_size,
        transform=build_transform(aug_cfg, image_size, train=split == "train"),
        allow_missing=bool(data_cfg.allow_missing),
        mean=list(_cfg(data_cfg, "mean")),
        std=list(_cfg(data_cfg, "std")),
        cache=bool(data_cfg.cache),
        cache_dir=cache_dir,
        cache_workers=int(data_cfg.num_workers or 0),
    )


def worker_init_fn(worker_id: int) -> None:
    """Seed numpy, random and the dataset's augmentation stream differently in each worker.

    torch gives each worker ``base_seed + worker_id`` where base_seed comes from the loader's generator,
    so this is reproducible for a fixed seed and differs between epochs. Without it, forked workers
    would all start from copies of the same albumentations state and augment identically.
    """
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    info = torch.utils.data.get_worker_info()
    dataset = _pet_dataset(info.dataset) if info is not None else None
    if dataset is not None:
        dataset.reseed(seed)
    # Not cv2.setNumThreads(1) here, although it saved ~10% of a worker's CPU in benchmarks/loader.py:
    # in a forked worker whose parent already used OpenCV's thread pool it can deadlock (seen in the
    # test suite under gdb).


def compact_worker_init_fn(worker_id: int) -> None:
    """worker_init_fn, then switch this worker's copy of the dataset to compact (uint8) items."""
    worker_init_fn(worker_id)
    info = torch.utils.data.get_worker_info()
    dataset = _pet_dataset(info.dataset) if info is not None else None
    if isinstance(dataset, OxfordPetDataset):
        dataset._compact_items = True


def _pet_dataset(dataset: Any) -> Any:
    """The dataset with a ``reseed`` method inside Subset and friends, or None."""
    while dataset is not None and not hasattr(dataset, "reseed") and hasattr(dataset, "dataset"):
        dataset = dataset.dataset
    return dataset if hasattr(dataset, "reseed") else None


def expand_batch(batch: dict[str, Any], lut: np.ndarray, pin_memory: bool = False) -> dict[str, Any]:
    """A collated batch of compact items -> the batch of the float items: normalised float32 image
    (N,3,S,S) through the dataset's lookup table and float32 mask (N,1,S,S), bit-identical to collating
    ``dataset[i]``; float (non-compact) tensors pass through. ``pin_memory``: the outputs are allocated
    in pinned memory (CUDA), so the trainer's non-blocking copy to the device stays asynchronous."""
    out = dict(batch)
    image = batch.get("image")
    if isinstance(image, torch.Tensor) and image.dtype == torch.uint8:
        expanded = torch.empty(image.shape, dtype=torch.float32, pin_memory=pin_memory)
        import cv2

        src, dst = image.numpy(), expanded.numpy()
        # cv2.LUT is ~2.5x faster than np.take here. At most 2**17 pixels per call: OpenCV runs a LUT of
        # 2**18 or more on its thread pool, which this (forking) main process had better not start.
        rows = max(1, (1 << 17) // max(1, src.shape[-1]))
        for n in range(src.shape[0]):
            for c in range(src.shape[1]):
                for r in range(0, src.shape[2], rows):
                    cv2.LUT(src[n, c, r : r + rows], lut[c], dst=dst[n, c, r : r + rows])
        out["image"] = expanded
    mask = batch.get("mask")
    if isinstance(mask, torch.Tensor) and mask.dtype == torch.uint8:
        expanded = torch.empty(mask.shape, dtype=torch.float32, pin_memory=pin_memory)
        # numpy, not Tensor.copy_: torch's parallel cast waits for its OpenMP threads, which the
        # training step keeps busy (16 ms instead of 0.3 ms per batch on a loaded 2-core machine).
        np.copyto(expanded.numpy(), mask.numpy(), casting="unsafe")
        out["mask"] = expanded
    if pin_memory:
        for key, value in out.items():
            if isinstance(value, torch.Tensor) and not value.is_pinned():
                out[key] = value.pin_memory()
    return out


class CompactLoader(DataLoader):
    """A DataLoader whose workers send compact items (uint8 image (3,S,S) and mask (1,S,S)): a float32
    batch of 8 at 256 px is 8.4 MB through shared memory, the uint8 one 2.1 MB. Each batch is expanded
    here, in the main process, by expand_batch, so iterating yields exactly the batches of a plain
    DataLoader over the same dataset (float32, normalised). Pinning (CUDA) is done by expand_batch on
    the expanded tensors instead of by the DataLoader's pin thread on the uint8 ones."""

    def __init__(self, dataset: Dataset, *, lut: np.ndarray, pin_expanded: bool, **kwargs: Any) -> None:
        super().__init__(dataset, **kwargs)
        self._lut = lut
        self._pin_expanded = pin_expanded

    def __iter__(self) -> Any:
        for batch in super().__iter__():
            yield expand_batch(batch, self._lut, self._pin_expanded)


def build_dataloader(
    dataset: Dataset,
    data_cfg: Any,
    train: bool,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    compact: bool = True,
) -> DataLoader:
    """DataLoader with a reproducible order and augmentation for a given seed.

    Train: a sampler.EpochSampler (shuffled per epoch from (seed, epoch), resumable mid-epoch through
    ``loader.sampler.set_epoch(epoch, start=...)``, and one augmentation seed per sample), last incomplete
    batch dropped (a batch of 1 breaks BatchNorm; a split smaller than one batch gives no batch, which
    the trainer reports). Valid/test: list order, every sample, no augmentation.

    Under DDP (``world_size`` > 1) each rank loads its shard: train, every world_size-th position of
    the same per-epoch permutation (equal lengths, so ranks step in lockstep); valid/test, every
    world_size-th image without padding, so summed metrics count each image exactly once.

    With workers and ``compact`` (the default), an OxfordPetDataset's items cross the process boundary
    as uint8 and a CompactLoader expands them to the same float batches in this process;
    ``compact=False`` ships the float items themselves (benchmarks/loader.py compares the two).
    """
    from petseg.sampler import (
        EpochSampler,
        ShardSampler,
    )  # src/petseg/sampler.py: the trainer relies on set_epoch()

    batch_size = int(_cfg(data_cfg, "batch_size"))
    num_workers = int(_cfg(data_cfg, "num_workers"))
    if batch_size < 1 or num_workers < 0:
        raise PetsegError(
            f"data.batch_size must be >= 1 and data.num_workers >= 0 (got {batch_size}, {num_workers})"
        )
    # Seeds the workers' base seed (numpy/random in worker_init_fn) reproducibly.
    generator = torch.Generator()
    generator.manual_seed(seed)
    if num_workers == 0 and hasattr(dataset, "reseed"):
        dataset.reseed(seed)  # in-process loading of plain indices: no worker_init_fn runs
    if train:
        sampler: Any = EpochSampler(len(dataset), seed=seed, shuffle=True, rank=rank, world_size=world_size)
    else:
        sampler = ShardSampler(len(dataset), rank, world_size) if world_size > 1 else None
    common: dict[str, Any] = dict(
        batch_size=batch_size,
        sampler=sampler,
        drop_last=train,
        num_workers=num_workers,
        generator=generator,
        persistent_workers=num_workers > 0,
    )
    pin = torch.cuda.is_available()
    pet = _pet_dataset(dataset)
    if compact and num_workers > 0 and isinstance(pet, OxfordPetDataset):
        # Workers send uint8 items, expanded to the same float batches here (benchmarks/README.md).
        return CompactLoader(
            dataset,
            lut=pet._lut,
            pin_expanded=pin,
            worker_init_fn=compact_worker_init_fn,
            pin_memory=False,
            **common,
        )
    return DataLoader(
        dataset, worker_init_fn=worker_init_fn if num_workers > 0 else None, pin_memory=pin, **common
    )


def download(root: Path) -> None:
    """Download and extract the official release into ``root`` (see src/petseg/download.py)."""
    from petseg.download import download_oxford_pet

    download_oxford_pet(Path(root))


# ------------------------------------------------------------------------------------------ inspection


@dataclass
class RootReport:
    """What is on disk under a root, per split, and (with verify) which files are odd or broken."""

    root: Path
    listed: dict[str, int] = field(default_factory=dict)
    present: dict[str, int] = field(default_factory=dict)
    missing: dict[str, list[str]] = field(default_factory=dict)
    images_on_disk: int = 0
    unlisted: list[str] = field(default_factory=list)
    verified: bool = False
    odd: list[str] = field(default_factory=list)  # readable, but not a plain RGB JPEG
    errors: list[str] = field(default_factory=list)  # unreadable, size mismatch, bad trimap values

    @property
    def partial(self) -> bool:
        return any(self.missing.values())


def _describe_image(path: Path) -> tuple[str | None, tuple[int, int] | None, str | None]:
    """(oddity or None, (w, h) or None, error or None) for one image file, decoding it fully."""
    try:
        with Image.open(path) as im:
            fmt, mode, size = im.format, im.mode, im.size
            n_frames = getattr(im, "n_frames", 1)
            im.seek(0)
            im.load()
    except (OSError, ValueError, SyntaxError, UnidentifiedImageError, Image.DecompressionBombError) as e:
        return None, None, f"{path.name}: unreadable image ({e})"
    notes = []
    if fmt != "JPEG":
        notes.append(f"{fmt} content behind .jpg")
    if mode != "RGB":
        notes.append(
            {"L": "grayscale", "CMYK": "CMYK", "RGBA": "RGBA (alpha channel)"}.get(mode, f"mode {mode}")
        )
    if n_frames > 1:
        notes.append(f"{n_frames} frames (first used)")
    return (f"{path.name}: {', '.join(notes)}" if notes else None), size, None


def inspect_root(root: Path, verify: bool = False, progress: bool = True) -> RootReport:
    """Count listed/present pairs per split; with ``verify`` also decode every image and trimap.

    PetsegError when the root is unusable: missing, no split lists, or no pair present at all.
    """
    root = check_root(Path(root))
    check_no_test_leak(root)
    report = RootReport(root=root)
    present = present_names(root)
    images = _files_in(root / "images", ".jpg")
    report.images_on_disk = len(images)
    listed_all: set[str] = set()
    for split in SPLITS:
        names = split_names(root, split)
        listed_all.update(names)
        report.listed[split] = len(names)
        report.present[split] = sum(n in present for n in names)
        report.missing[split] = [n for n in names if n not in present]
    # The release itself has a few images in no list (e.g. Abyssinian_34): worth knowing, not an error.
    report.unlisted = sorted(images - listed_all)
    if not any(report.present.values()):
        raise PetsegError(
            f"no image+trimap pair of any split is present under {root}; {_download_hint(root)}"
        )
    if verify:
        report.verified = True
        from tqdm import tqdm

        for name in tqdm(sorted(images), desc="verify", unit="img", disable=not progress, file=sys.stderr):
            oddity, size, error = _describe_image(image_path(root, name))
            if oddity:
                report.odd.append(oddity)
            if error:
                report.errors.append(error)
                continue
            tri = trimap_path(root, name)
            if not tri.is_file():
                continue  # counted as missing above when listed
            try:
                trimap = read_trimap(tri)
            except PetsegError as e:
                report.errors.append(str(e))
                continue
            if size != (trimap.shape[1], trimap.shape[0]):
                report.errors.append(
                    f"{name}: image is {size[0]}x{size[1]} but trimap is {trimap.shape[1]}x{trimap.shape[0]}"
                )
    return report


def format_report(report: RootReport) -> str:
    lines = [
        f"Oxford-IIIT Pet at {report.root}",
        f"  {'split':<6} {'present':>8} {'listed':>8} {'missing':>8}",
    ]
    for split in SPLITS:
        present, listed, missing = report.present[split], report.listed[split], len(report.missing[split])
        lines.append(f"  {split:<6} {present:>8} {listed:>8} {missing:>8}")
    total_missing = sum(len(m) for m in report.missing.values())
    total_listed = sum(report.listed.values())
    lines.append(
        f"  images on disk: {report.images_on_disk}"
        + (
            f"; in no split list: {len(report.unlisted)} ({_examples(report.unlisted)})"
            if report.unlisted
            else ""
        )
    )
    if report.partial:
        lines.append(
            f"PARTIAL copy: {total_missing} of {total_listed} listed image+trimap pairs are missing "
            f"(e.g. {_examples([n for s in SPLITS for n in report.missing[s]])}). "
            "Usable only with data.allow_missing=true (the pairs present are used, the others skipped); "
            "scores are then not comparable with results on the full dataset."
        )
    else:
        lines.append(f"complete: all {total_listed} listed pairs are present")
    if report.verified:
        lines.append(f"odd files (readable, converted to RGB on load): {len(report.odd)}")
        lines.extend(f"  {o}" for o in report.odd)
        lines.append(f"broken files (unreadable or image/trimap mismatch): {len(report.errors)}")
        lines.extend(f"  {e}" for e in report.errors)
    else:
        lines.append("file contents not checked (existence only); --verify decodes every file")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python src/oxford_pet.py",
        description="Summarise an Oxford-IIIT Pet copy: pairs per split, missing files, odd or broken files.",
        epilog="Exit status: 0 usable (also when partial), 1 --verify found broken files, 2 root unusable.",
    )
    parser.add_argument("--root", type=Path, default=Path("dataset/oxford-iiit-pet"), help="dataset root")
    parser.add_argument(
        "--download", action="store_true", help="download the official release into --root first"
    )
    parser.add_argument("--verify", action="store_true", help="decode every image and trimap (slower)")
    args = parser.parse_args(argv)
    try:
        if args.download:
            download(args.root)
        report = inspect_root(args.root, verify=args.verify)
    except PetsegError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_report(report))
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
