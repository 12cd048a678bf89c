"""The `data` group's datasets by their layout (``data.layout``): the one ``build_dataset`` that
training, evaluation and inference call, whichever data set it is."""

from __future__ import annotations

from typing import Any

from oxford_pet import OxfordPetDataset
from oxford_pet import build_dataset as build_pet_dataset
from petseg.errors import PetsegError
from petseg.folder_data import FolderDataset, build_folder_dataset, resolve_folder_settings

LAYOUTS = ("oxford_pet", "folder")
SegmentationDataset = OxfordPetDataset | FolderDataset


def layout_of(data_cfg: Any) -> str:
    layout = data_cfg.get("layout", "oxford_pet")
    if layout not in LAYOUTS:
        raise PetsegError(f"data.layout={layout!r} is not one of {', '.join(LAYOUTS)}")
    return str(layout)


def resolve_data_settings(data_cfg: Any) -> None:
    """Settings the data decides (``channels: auto``, ``mean``/``std: null`` of a folder), filled in
    place before anything is built from them."""
    if layout_of(data_cfg) == "folder":
        resolve_folder_settings(data_cfg)


def build_dataset(data_cfg: Any, aug_cfg: Any, split: str) -> SegmentationDataset:
    """The dataset of ``split`` that ``data_cfg`` describes; only "train" is augmented."""
    if layout_of(data_cfg) == "folder":
        return build_folder_dataset(data_cfg, aug_cfg, split)
    return build_pet_dataset(data_cfg, aug_cfg, split)
