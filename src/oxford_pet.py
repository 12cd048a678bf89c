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

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from petseg.cache import DEFAULT_CACHE_DIR, ArrayCache, open_or_build
from petseg.errors import PetsegError
from petseg.paths import project_path, python_command
from petseg.transforms import build_transform, check_image_size, resize_transform, seed_transform

if TYPE_CHECKING:  # albumentations is imported lazily: it costs ~1 s and the CLI summary never needs it
    import albumentations as A

logger = logging.getLogger("petseg.data")

SPLITS: tuple[str, ...] = ("train", "valid", "test")
# "val" is what most people type; it means the same split.
_SPLIT_ALIASES = {"val": "valid"}
# Every 10th trainval line (starting at line 0) is validation, as in the reference implementation.
VALID_EVERY = 10
TRIMAP_PET, TRIMAP_BACKGROUND, TRIMAP_BORDER = 1, 2, 3
_EXAMPLES = 5  # how many example names an error message lists


# --------------------------------------------------------------------------------------------- layout


def image_path(root: Path, name: str) -> Path:
    return Path(root) / "images" / f"{name}.jpg"


def trimap_path(root: Path, name: str) -> Path:
    return Path(root) / "annotations" / "trimaps" / f"{name}.png"


def download_hint(root: Path) -> str:
    return f"get the dataset with: {python_command(Path(__file__))} --root {root} --download"


def check_root(root: Path) -> Path:
    """Return ``root`` as a Path after checking it and its annotations folder exist (PetsegError if not)."""
    root = Path(root)
    if not root.is_dir():
        raise PetsegError(f"dataset root {root} does not exist; {download_hint(root)}")
    if not (root / "annotations").is_dir():
        raise PetsegError(f"dataset root {root} has no annotations/ folder; {download_hint(root)}")
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
        raise PetsegError(f"split list {path} not found; {download_hint(root)}")
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
            f"test.txt ({example_names(leaked)}): the test set would leak into training/validation"
        )


def example_names(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_EXAMPLES])
    return shown + (", ..." if len(names) > _EXAMPLES else "")


def files_in(folder: Path, suffix: str) -> set[str]:
    """Stems of the files with ``suffix`` in ``folder`` (one listdir instead of thousands of stat calls).

    Names starting with '._' are macOS resource forks that the official tarballs carry; they are no data.
    """
    if not folder.is_dir():
        return set()
    return {p.stem for p in folder.iterdir() if p.suffix == suffix and not p.name.startswith("._")}


def present_names(root: Path) -> set[str]:
    """Names that have both an image and a trimap file."""
    root = Path(root)
    return files_in(root / "images", ".jpg") & files_in(root / "annotations" / "trimaps", ".png")


# ------------------------------------------------------------------------------------------- decoding


def to_rgb(im: Image.Image) -> Image.Image:
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


def read_image(path: Path, channels: int = 3) -> np.ndarray:
    """Decode an image file to an RGB uint8 array (H, W, 3), whatever its real format; with
    ``channels=1`` to its luminance (H, W, 1) (grayscale data sets, petseg/folder_data.py).

    The EXIF orientation is deliberately NOT applied: the trimaps were drawn on the stored pixel grid.
    Animated files (the release has a GIF behind a .jpg) give their first frame.
    """
    try:
        with Image.open(path) as im:
            im.seek(0)
            im.load()
            rgb = to_rgb(im)
            if channels == 1:
                return np.asarray(rgb.convert("L"), dtype=np.uint8)[:, :, None].copy()
            return np.asarray(rgb, dtype=np.uint8).copy()
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


# -------------------------------------------------------------------------------------------- dataset


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
        self.image_size = check_image_size(image_size)
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


# --------------------------------------------------------------------------------- building from cfg


def _cfg(data_cfg: Any, key: str) -> Any:
    """data.<key>, which the YAML (or a checkpoint upgraded by petseg.upgrade) always has."""
    value = data_cfg[key]
    if value is None:
        raise PetsegError(f"data.{key} is not set")
    return value


def build_dataset(data_cfg: Any, aug_cfg: Any, split: str) -> OxfordPetDataset:
    """Dataset of ``split`` from the ``data`` and ``aug`` config groups; only "train" is augmented."""
    split = canonical_split(split)
    image_size = check_image_size(_cfg(data_cfg, "image_size"))
    return OxfordPetDataset(
        root=project_path(_cfg(data_cfg, "root")),  # petseg/paths.py: the project's, from any directory
        split=split,
        image_size=image_size,
        transform=build_transform(aug_cfg, image_size, train=split == "train"),
        allow_missing=bool(data_cfg.allow_missing),
        cache=bool(data_cfg.cache),
        cache_dir=project_path(data_cfg.cache_dir or DEFAULT_CACHE_DIR),
        cache_workers=int(data_cfg.num_workers or 0),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python src/oxford_pet.py --root <root> [--download] [--verify]``: petseg/data_report.py."""
    from petseg.data_report import main as report_main

    return report_main(argv)


if __name__ == "__main__":
    sys.exit(main())
