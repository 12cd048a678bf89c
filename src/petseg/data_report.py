"""What a dataset copy on disk holds: pairs per split, missing files, and (verify=true) odd or broken
files; the summary ``python src/oxford_pet.py root=<root> [download=true] [verify=true]`` prints (its keys:
configs/oxford_pet.yaml)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from petseg.command_config import as_flag, as_path, load_cli_config
from petseg.download import download_oxford_pet
from petseg.errors import PetsegError
from petseg.paths import project_path
from petseg.pet_layout import (
    check_no_test_leak,
    check_root,
    download_hint,
    files_in,
    image_path,
    present_names,
    read_trimap,
    split_names,
    trimap_path,
)
from petseg.splits import SPLITS, example_names

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
    images = files_in(root / "images", ".jpg")
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
        raise PetsegError(f"no image+trimap pair of any split is present under {root}; {download_hint(root)}")
    if verify:
        report.verified = True

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
            f"; in no split list: {len(report.unlisted)} ({example_names(report.unlisted)})"
            if report.unlisted
            else ""
        )
    )
    if report.partial:
        lines.append(
            f"PARTIAL copy: {total_missing} of {total_listed} listed image+trimap pairs are missing "
            f"(e.g. {example_names([n for s in SPLITS for n in report.missing[s]])}). "
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
        lines.append("file contents not checked (existence only); verify=true decodes every file")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """The command of src/oxford_pet.py: download (optionally) and summarise a copy on disk.

    Exit status: 0 usable (also when partial), 1 verify=true found broken files, 2 root unusable or a
    mistake on the command line (one ``error:`` line)."""
    try:
        cfg = load_cli_config("oxford_pet", list(sys.argv[1:] if argv is None else argv))
        root = as_path(cfg.root, "root")
        download, verify = as_flag(cfg.download, "download"), as_flag(cfg.verify, "verify")
        if download:
            download_oxford_pet(project_path(root))
        report = inspect_root(project_path(root), verify=verify)
    except PetsegError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_report(report))
    return 1 if report.errors else 0
