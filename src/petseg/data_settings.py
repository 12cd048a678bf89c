"""The `data` group as one typed object: ``data_settings(cfg.data) -> DataSettings``, read and checked
once when a command starts (train.py through checks.check_train_config; evaluate.py and inference.py on
a checkpoint's data config with their ``data.*`` keys). The data sets, loaders, ModelInput and the cache
take the DataSettings and check no key again.

What each key means and its default: configs/data/*.yaml (a checkpoint's older config gets the keys it
lacks from there, petseg/upgrade.py). What needs the files (the root on disk, pairs, a split's size)
is the layouts' to check (pet_layout.py, folder_layout.py); what concerns the model too (an image size
it takes, its in_channels) is checks.py's.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from petseg.cache import DEFAULT_CACHE_DIR
from petseg.errors import PetsegError
from petseg.folder_layout import MaskMapping, SplitRule
from petseg.paths import project_path
from petseg.splits import SPLITS
from petseg.value_checks import channel_numbers, non_negative_int, positive

# The Dice protocols, in the order they are printed (petseg/evaluation.py computes them); data.headline
# names the one validation selects by.
PROTOCOLS: tuple[str, ...] = ("dice_256", "dice_native", "dice_input")
LAYOUTS = ("oxford_pet", "folder")
_THRESHOLD = re.compile(r"^\s*(>=|>)\s*(\d+)\s*$")


@dataclass(frozen=True)
class FolderSettings:
    """The keys only ``data.layout: folder`` has (configs/data/folder.yaml)."""

    crop: int | None  # data.crop: train on random crops of this size; None: whole images
    repeat: int  # data.repeat: each train image this many times an epoch
    mapping: MaskMapping  # data.foreground, data.background
    split: SplitRule  # data.split


@dataclass(frozen=True)
class DataSettings:
    """The data group, checked. Each field says its key; paths are resolved (petseg/paths.py)."""

    name: str  # data.name: the option, kept in checkpoints
    layout: str  # data.layout: oxford_pet or folder
    root: Path  # data.root
    image_size: int  # data.image_size
    batch_size: int  # data.batch_size (per process)
    num_workers: int  # data.num_workers (also the cache's build processes)
    channels: int | None  # data.channels; None while 'auto' (a folder's, until datasets.resolve_data)
    mean: tuple[float, ...] | None  # data.mean; None while null (a folder's, until resolve_data)
    std: tuple[float, ...] | None  # data.std
    headline: str  # data.headline: one of PROTOCOLS
    allow_missing: bool  # data.allow_missing
    cache: bool  # data.cache
    cache_dir: Path  # data.cache_dir
    folder: FolderSettings | None  # the folder layout's keys; None for oxford_pet

    @property
    def resolved(self) -> bool:
        """Whether the settings the data decides (channels: auto, mean/std: null) are numbers yet."""
        return None not in (self.channels, self.mean, self.std)


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def _key(data: Mapping[str, Any], key: str) -> Any:
    if key not in data:
        raise PetsegError(f"the data config has no data.{key} (configs/data/*.yaml define it)")
    return data[key]


def _check_image_size(image_size: Any) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8:
        raise PetsegError(f"data.image_size must be an integer >= 8, got {image_size!r}")
    return image_size


def _normalisation(data: Mapping[str, Any], channels: int | None, folder: bool) -> list[Any]:
    """(mean, std): one number per channel each, std positive; null stays None for a folder (its train
    images decide them)."""
    out: list[Any] = []
    for key in ("mean", "std"):
        values = _key(data, key)
        if values is None and folder:
            out.append(None)
            continue
        numbers = channel_numbers(values, f"data.{key}", channels or len(values or ()))
        if key == "std" and min(numbers) <= 0:
            raise PetsegError(f"data.std must be positive, got {list(values)}")
        out.append(tuple(numbers))
    return out


def _mask_values(value: Any, key: str) -> tuple[int, ...]:
    items = list(value) if hasattr(value, "__iter__") and not isinstance(value, str) else [value]
    if isinstance(value, str) or not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
        raise PetsegError(f"{key} must be a list of integer mask values, got {value!r}")
    if any(not 0 <= v <= 255 for v in items):
        raise PetsegError(f"{key} values must be 0-255 (8-bit masks), got {items}")
    return tuple(int(v) for v in items)


def mask_mapping(foreground: Any, background: Any) -> MaskMapping:
    """data.foreground (a list of mask values, or '>=t' / '>t') and data.background (a list, or null)."""
    if isinstance(foreground, str):
        match = _THRESHOLD.match(foreground)
        if match is None:
            raise PetsegError(f"data.foreground={foreground!r}: give a list of mask values, or '>=t' / '>t'")
        return MaskMapping((), None, (match.group(1), int(match.group(2))))
    values = _mask_values(foreground, "data.foreground")
    if not values:
        raise PetsegError("data.foreground is empty: give the mask values of the class")
    others = None if background is None else _mask_values(background, "data.background")
    both = sorted(set(values) & set(others or ()))
    if both:
        raise PetsegError(f"data.foreground and data.background share the values {both}")
    return MaskMapping(values, others, None)


def split_rule(split: Mapping[str, Any]) -> SplitRule:
    """data.split: the first rule given of files, ranges and ratio; only that one is checked (the others
    keep their defaults unread)."""
    seed = int(_key(split, "seed"))
    if split.get("files"):
        return SplitRule(dict(split["files"]), None, None, seed)
    if split.get("ranges"):
        ranges = {}
        for name in SPLITS:
            bounds = split["ranges"].get(name)
            if bounds is None:
                continue
            pair = isinstance(bounds, list | tuple) and len(bounds) == 2
            if not pair or not all(isinstance(b, int) and not isinstance(b, bool) for b in bounds):
                raise PetsegError(f"data.split.ranges.{name} must be [start, end], got {bounds!r}")
            ranges[name] = (bounds[0], bounds[1])
        return SplitRule(None, ranges, None, seed)
    ratio = [float(r) for r in _key(split, "ratio")]
    if len(ratio) != 3 or min(ratio) < 0 or not 0.99 <= sum(ratio) <= 1.01:
        raise PetsegError(
            f"data.split.ratio must be 3 fractions (train, valid, test) summing to 1, got {ratio}"
        )
    return SplitRule(None, None, tuple(ratio), seed)


def _folder_settings(data: Mapping[str, Any], image_size: int) -> FolderSettings:
    repeat = _key(data, "repeat")
    positive(repeat, "data.repeat", int)
    crop = _key(data, "crop")
    if crop is not None:
        positive(crop, "data.crop", int)
        if crop > image_size:
            raise PetsegError(f"data.crop={crop} is larger than data.image_size={image_size}")
    mapping = mask_mapping(_key(data, "foreground"), _key(data, "background"))
    return FolderSettings(crop, int(repeat), mapping, split_rule(_key(data, "split")))


def data_settings(data_cfg: Any) -> DataSettings:
    """The data group (a DictConfig or a plain mapping) as DataSettings; the first wrong key is one
    PetsegError line."""
    data = _plain(data_cfg)
    if not isinstance(data, Mapping):
        raise PetsegError(f"the data config must be a mapping of data.* keys, got {type(data).__name__}")
    layout = _key(data, "layout")
    if layout not in LAYOUTS:
        raise PetsegError(f"data.layout={layout!r} is not one of {', '.join(LAYOUTS)}")
    folder = layout == "folder"
    batch_size, num_workers = _key(data, "batch_size"), _key(data, "num_workers")
    positive(batch_size, "data.batch_size", int)
    non_negative_int(num_workers, "data.num_workers")
    channels = _key(data, "channels")
    if channels not in (1, 3) and not (channels == "auto" and folder):
        raise PetsegError(f"data.channels must be 1 or 3{' or auto' if folder else ''}, got {channels!r}")
    count = channels if channels in (1, 3) else None
    mean, std = _normalisation(data, count, folder)
    headline = _key(data, "headline")
    if headline not in PROTOCOLS:
        raise PetsegError(f"data.headline must be one of {', '.join(PROTOCOLS)}, got {headline!r}")
    image_size = _check_image_size(_key(data, "image_size"))
    root = _key(data, "root")
    if root is None:
        needs = ": data=folder needs data.root=<a folder with images/ and masks/>" if folder else ""
        raise PetsegError(f"data.root is not set{needs}")
    folder_settings = _folder_settings(data, image_size) if folder else None
    cache_dir = _key(data, "cache_dir")
    return DataSettings(
        name=str(_key(data, "name")),
        layout=layout,
        root=project_path(root),  # the project's, from any directory (petseg/paths.py)
        image_size=image_size,
        batch_size=int(batch_size),
        num_workers=num_workers,
        channels=count,
        mean=mean,
        std=std,
        headline=headline,
        allow_missing=bool(_key(data, "allow_missing")),
        cache=bool(_key(data, "cache")),
        cache_dir=project_path(cache_dir) if cache_dir else DEFAULT_CACHE_DIR,
        folder=folder_settings,
    )


def as_data_settings(data: DataSettings | Any) -> DataSettings:
    """``data`` itself, or a data config (what benchmarks/ and older callers pass) read by data_settings."""
    return data if isinstance(data, DataSettings) else data_settings(data)
