"""The split names every data set uses (pets and folders alike) and how they are typed."""

from __future__ import annotations

from collections.abc import Sequence

from petseg.errors import PetsegError

SPLITS: tuple[str, ...] = ("train", "valid", "test")
# "val" is what most people type; it means the same split.
_SPLIT_ALIASES = {"val": "valid"}
_EXAMPLES = 5  # how many example names an error message lists


def canonical_split(split: str) -> str:
    split = _SPLIT_ALIASES.get(split, split)
    if split not in SPLITS:
        raise PetsegError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)} (or 'val')")
    return split


def example_names(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_EXAMPLES])
    return shown + (", ..." if len(names) > _EXAMPLES else "")
