"""Which files of an ``input=`` folder inference.py predicts, and the names of their outputs.

A folder is searched with its sub-folders, sorted by path. Its image files are those with an image
extension (``IMAGE_FORMATS``, any case) and those whose content is one of these formats whatever their
name (a photo saved without an extension; only the header is read). A file with an image extension
that is not an image claims to be one: it stays an input and fails when read, like any unreadable
image. Every other entry (a README, a video, a link to a folder, a pipe, an unreadable sub-folder) is
*skipped*: named to the user, never decoded, never a failure; links to folders are not followed (no
loops) and pipes or sockets never opened (reading one could block forever). Hidden entries are
ignored, and so are inference.py's own outputs when ``output=`` lies inside the input folder, so a
second run does not predict the first one's masks. A file named in ``input=`` itself is always taken
as an image.
"""

from __future__ import annotations

import os
import re
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from petseg.errors import PetsegError

# The image formats of a folder's files, by PIL's name, with their extensions (see the module docstring).
IMAGE_FORMATS = {
    "JPEG": (".jpg", ".jpeg", ".jpe", ".jfif"),
    "PNG": (".png",),
    "GIF": (".gif",),
    "BMP": (".bmp", ".dib"),
    "TIFF": (".tif", ".tiff"),
    "WEBP": (".webp",),
    "PPM": (".ppm", ".pgm", ".pbm", ".pnm"),
}
IMAGE_EXTENSIONS = {ext for extensions in IMAGE_FORMATS.values() for ext in extensions}
OUTPUT_NAME = re.compile(r".*_(mask|overlay)\.png|grid\.png")  # inference.py's outputs


@dataclass
class Inputs:
    """What an ``input=`` holds: the images to predict and the other files, which are skipped."""

    root: Path  # output names are paths relative to it
    images: list[Path]
    skipped: list[Path]


def is_image_file(path: Path) -> bool:
    """Whether a file found in a folder is taken as an image: by its extension (see the module
    docstring) or, without one of those, by its content (only the header is read)."""
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return True
    try:
        with warnings.catch_warnings():  # DecompressionBombWarning: a large photo is still a photo
            warnings.simplefilter("ignore")
            with Image.open(path, formats=list(IMAGE_FORMATS)):
                return True
    except Image.DecompressionBombError:
        return True  # an image; reading it fails later with its own message
    except Exception:  # UnidentifiedImageError, OSError, a plugin's ValueError: not one we can use
        return False


def _walk(folder: Path, out_dir: Path | None, inputs: Inputs) -> None:
    try:
        entries = sorted(folder.iterdir())
    except OSError as err:
        if folder == inputs.root:
            raise PetsegError(f"cannot read input folder {folder}: {err.strerror or err}") from None
        inputs.skipped.append(folder)  # an unreadable sub-folder is named, not a crash
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue  # .DS_Store, .git, editors' files: never inputs, not worth a mention
        is_link = entry.is_symlink()
        if entry.is_dir() and not is_link:
            _walk(entry, out_dir, inputs)
        elif out_dir in Path(os.path.abspath(entry)).parents and OUTPUT_NAME.fullmatch(entry.name):
            continue  # this command's own outputs, written inside the input folder by an earlier run
        elif entry.is_file() and is_image_file(entry):
            inputs.images.append(entry)
        elif is_link and not entry.exists() and entry.suffix.lower() in IMAGE_EXTENSIONS:
            inputs.images.append(entry)  # a broken link to an image: reported as a failure, not hidden
        else:  # other files, links to folders (never followed: no loops), pipes and sockets (never read)
            inputs.skipped.append(entry)


def describe(files: list[Path], root: Path, shown: int = 5) -> str:
    """'N file(s) that are not images: a.txt, sub/b.pdf', the first ``shown`` then 'and M more'."""
    names = [f.relative_to(root).as_posix() for f in files]
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return f"{len(names)} file(s) that are not images: {', '.join(names[:shown])}{more}"


def list_inputs(path: Path, out_dir: Path | None = None) -> Inputs:
    """A file (taken as an image whatever its name: the user named it), or the image files of a
    folder and its sub-folders, sorted by path; hidden entries are ignored. Files under ``out_dir``
    named like this command's outputs are ignored too. A folder without any image is a PetsegError.
    """
    if path.is_file():
        return Inputs(path.parent, [path], [])
    if not path.is_dir():
        raise PetsegError(f"input {path} does not exist")
    inputs = Inputs(path, [], [])
    _walk(path, Path(os.path.abspath(out_dir)) if out_dir is not None else None, inputs)
    if not inputs.images:
        others = f"only {describe(inputs.skipped, path)}" if inputs.skipped else "it is empty"
        raise PetsegError(f"input folder {path} holds no images ({others})")
    return inputs


def output_names(files: list[Path], root: Path | None = None) -> list[str]:
    """Each file's path relative to ``root`` (default: its name alone) without the extension, or
    with it ('.' -> '_') where two stems of one folder collide (cat.jpg and cat.png), ignoring case
    (case-insensitive disks); any name still taken gets _2, _3: no output ever overwrites another."""
    relative = [f.relative_to(root) if root is not None else Path(f.name) for f in files]
    stems = [(r.parent / r.stem).as_posix() for r in relative]
    counts = Counter(stem.casefold() for stem in stems)
    names, taken = [], set()
    for r, stem in zip(relative, stems, strict=True):
        name = stem if counts[stem.casefold()] == 1 else (r.parent / r.name.replace(".", "_")).as_posix()
        unique, n = name, 2
        while unique.casefold() in taken:
            unique, n = f"{name}_{n}", n + 1
        taken.add(unique.casefold())
        names.append(unique)
    return names
