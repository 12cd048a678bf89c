"""Regenerate the committed test sample from a (partial or full) Oxford-IIIT Pet copy.

    python tests/data/make_sample.py [--src /work/shared/data/oxford-iiit-pet]

Writes ``tests/data/oxford-iiit-pet/`` (a complete small root in the official layout) and copies the full
official split lists to ``tests/data/full_lists/``.

Name selection rule (deterministic, lines kept verbatim and in official order):
  - trainval.txt: for class ids 1..20, the first name of the official trainval.txt whose image and trimap
    are present in --src (20 lines, so sample lines 0 and 10 are "valid", the other 18 "train");
  - test.txt: Abyssinian_5 (the release's RGBA PNG behind a .jpg) plus, for the first 4 other class ids
    with test pairs present, the first such test name (5 lines);
  - Abyssinian_34 (the release's GIF behind a .jpg) is copied as an image+trimap pair but, as in the
    release, listed in neither file;
  - every grayscale (mode L) or CMYK JPEG found in --src (at most one of each) is added to the sample with
    its official line. The shared partial copy has none: tests make such files from a sample image.

Images are downscaled so the longest side is 128 px and keep their kind: plain JPEGs are re-encoded as
JPEG q90, the GIF stays a GIF (palette), the RGBA PNG stays an RGBA PNG, L/CMYK JPEGs stay L/CMYK JPEGs.
Trimaps are downscaled to the same size with NEAREST (values stay in {1, 2, 3}).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from PIL import Image

HERE = Path(__file__).resolve().parent
LONGEST = 128
N_TRAINVAL_CLASSES = 20
N_TEST_OTHER = 4
RGBA_NAME, GIF_NAME = "Abyssinian_5", "Abyssinian_34"

LICENSE = """\
This folder is a tiny sample of the Oxford-IIIT Pet Dataset, used by the petseg tests.

Dataset: O. M. Parkhi, A. Vedaldi, A. Zisserman, C. V. Jawahar, "Cats and Dogs",
IEEE Conference on Computer Vision and Pattern Recognition (CVPR), 2012.
https://www.robots.ox.ac.uk/~vgg/data/pets/

License: Creative Commons Attribution-ShareAlike 4.0 International (CC BY-SA 4.0),
https://creativecommons.org/licenses/by-sa/4.0/ . This sample is shared under the same license.

Changes: images and trimaps were downscaled (longest side 128 px; images re-encoded, trimaps resized by
nearest neighbour) and only a few image+trimap pairs are included; annotations/trainval.txt and
annotations/test.txt hold a subset of the official lines, verbatim and in the official order.
Some 'train/valid' pairs come from a mirror that kept only 299x299 resized images (see the source copy's
README). Regenerate with tests/data/make_sample.py.
"""


def read_lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def present(src: Path, name: str) -> bool:
    return (src / "images" / f"{name}.jpg").is_file() and (
        src / "annotations" / "trimaps" / f"{name}.png"
    ).is_file()


def first_per_class(lines: list[str], src: Path, classes: list[int] | None, limit: int | None) -> list[str]:
    chosen: dict[int, str] = {}
    for line in lines:
        name, class_id = line.split()[0], int(line.split()[1])
        if class_id in chosen or (classes is not None and class_id not in classes):
            continue
        if present(src, name):
            chosen[class_id] = name
        if limit is not None and len(chosen) == limit:
            break
    return list(chosen.values())


def find_modes(src: Path, lines: list[str]) -> list[str]:
    """Listed present names whose image is a grayscale or a CMYK JPEG (first of each kind)."""
    found: dict[str, str] = {}
    for line in lines:
        name = line.split()[0]
        if not present(src, name):
            continue
        with Image.open(src / "images" / f"{name}.jpg") as im:
            if im.format == "JPEG" and im.mode in ("L", "CMYK") and im.mode not in found:
                found[im.mode] = name
    return list(found.values())


def target_size(size: tuple[int, int]) -> tuple[int, int]:
    w, h = size
    scale = LONGEST / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def write_pair(src: Path, dst: Path, name: str) -> None:
    with Image.open(src / "images" / f"{name}.jpg") as im:
        im.seek(0)
        im.load()
        size = target_size(im.size)
        out = dst / "images" / f"{name}.jpg"
        if im.format == "GIF":  # keep GIF bytes behind .jpg: resize in RGB, back to a palette
            im.convert("RGB").resize(size, Image.Resampling.LANCZOS).quantize(256).save(out, format="GIF")
        elif im.format == "PNG":  # keep PNG bytes (and mode, e.g. RGBA) behind .jpg
            im.resize(size, Image.Resampling.LANCZOS).save(out, format="PNG", optimize=True)
        else:  # JPEG, keeping its mode (RGB, L or CMYK)
            im.resize(size, Image.Resampling.LANCZOS).save(out, format="JPEG", quality=90)
        original = im.size
    with Image.open(src / "annotations" / "trimaps" / f"{name}.png") as tri:
        assert tri.size == original, f"{name}: image and trimap sizes differ in the source"
        tri.resize(size, Image.Resampling.NEAREST).save(dst / "annotations" / "trimaps" / f"{name}.png")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--src", type=Path, default=Path("/work/shared/data/oxford-iiit-pet"))
    parser.add_argument("--dst", type=Path, default=HERE / "oxford-iiit-pet")
    args = parser.parse_args()
    src, dst = args.src, args.dst

    trainval = read_lines(src / "annotations" / "trainval.txt")
    test = read_lines(src / "annotations" / "test.txt")
    tv_names = set(first_per_class(trainval, src, list(range(1, N_TRAINVAL_CLASSES + 1)), None))
    test_names = {RGBA_NAME}
    other_classes = sorted({int(line.split()[1]) for line in test if present(src, line.split()[0])} - {1})
    test_names |= set(first_per_class(test, src, other_classes[:N_TEST_OTHER], N_TEST_OTHER))
    for name in find_modes(src, trainval + test):
        (tv_names if name in {line.split()[0] for line in trainval} else test_names).add(name)

    if dst.exists():
        shutil.rmtree(dst)
    (dst / "images").mkdir(parents=True)
    (dst / "annotations" / "trimaps").mkdir(parents=True)
    tv_lines = [line for line in trainval if line.split()[0] in tv_names]
    test_lines = [line for line in test if line.split()[0] in test_names]
    (dst / "annotations" / "trainval.txt").write_text("\n".join(tv_lines) + "\n")
    (dst / "annotations" / "test.txt").write_text("\n".join(test_lines) + "\n")
    for name in sorted(tv_names | test_names | {GIF_NAME}):
        write_pair(src, dst, name)
    (dst / "LICENSE.txt").write_text(LICENSE)

    full = HERE / "full_lists"
    full.mkdir(exist_ok=True)
    for list_name in ("trainval.txt", "test.txt"):
        shutil.copyfile(src / "annotations" / list_name, full / list_name)
    (full / "README.md").write_text(
        "The complete official split lists of the Oxford-IIIT Pet Dataset (CC BY-SA 4.0, Parkhi et al.,\n"
        '"Cats and Dogs", CVPR 2012), unmodified, for the split-size tests.\n'
        "See ../oxford-iiit-pet/LICENSE.txt.\n"
    )
    n_pairs = len(list(dst.glob("images/*")))
    print(f"wrote {len(tv_lines)} trainval + {len(test_lines)} test lines, {n_pairs} pairs")


if __name__ == "__main__":
    main()
