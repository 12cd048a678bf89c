"""The Oxford-IIIT Pet release on disk: where its files are, its split lists and the split rule, its trimaps.

Layout expected under ``root`` (the official release's)::

    images/<name>.jpg                 RGB photos (a few are really GIF/PNG, grayscale or CMYK)
    annotations/trimaps/<name>.png    1 = pet, 2 = background, 3 = border
    annotations/trainval.txt          'Name classid species breedid', official order
    annotations/test.txt

Splits follow the reference ``SimpleOxfordPetDataset`` of segmentation_models_pytorch exactly, so numbers
are comparable with its examples: "test" is test.txt; line i of trainval.txt goes to "valid" when
i % 10 == 0, else to "train" (3312 / 368 / 3669 with the full lists). src/oxford_pet.py (the data set)
and petseg/data_report.py (its command) both read it from here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from petseg.errors import PetsegError
from petseg.paths import PROJECT_ROOT, python_command
from petseg.splits import canonical_split, example_names

DATA_COMMAND = PROJECT_ROOT / "src" / "oxford_pet.py"  # downloads and summarises a copy
# Every 10th trainval line (starting at line 0) is validation, as in the reference implementation.
VALID_EVERY = 10
TRIMAP_PET, TRIMAP_BACKGROUND, TRIMAP_BORDER = 1, 2, 3


def image_path(root: Path, name: str) -> Path:
    return Path(root) / "images" / f"{name}.jpg"


def trimap_path(root: Path, name: str) -> Path:
    return Path(root) / "annotations" / "trimaps" / f"{name}.png"


def download_hint(root: Path) -> str:
    return f"get the dataset with: {python_command(DATA_COMMAND)} root={root} download=true"


def check_root(root: Path) -> Path:
    """Return ``root`` as a Path after checking it and its annotations folder exist (PetsegError if not)."""
    root = Path(root)
    if not root.is_dir():
        raise PetsegError(f"dataset root {root} does not exist; {download_hint(root)}")
    if not (root / "annotations").is_dir():
        raise PetsegError(f"dataset root {root} has no annotations/ folder; {download_hint(root)}")
    return root


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


# -------------------------------------------------------------------------------------------- trimaps


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
