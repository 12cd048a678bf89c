"""Paths the tests share (one definition each): the repository, the committed sample, the shared
partial copy of the data."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = ROOT / "tests" / "data"
SAMPLE = DATA_DIR / "oxford-iiit-pet"  # the committed sample (official layout, 26 image+trimap pairs)
FULL_LISTS = DATA_DIR / "full_lists"  # the complete official split lists
# The shared partial copy of the data, beside the checkout (or where this workplace keeps it).
SHARED = (
    next(
        (
            p
            for p in (ROOT.parent / "shared", Path("/work/shared"))
            if (p / "data" / "oxford-iiit-pet").is_dir()
        ),
        ROOT.parent / "shared",
    )
    / "data"
    / "oxford-iiit-pet"
)
CONFIG_DIR = ROOT / "configs"
