"""The `data` group's datasets by their layout (``data.layout``): the one ``build_dataset`` that
training, evaluation and inference call, whichever data set it is."""

from __future__ import annotations

from typing import Any

from oxford_pet import OxfordPetDataset
from oxford_pet import build_dataset as build_pet_dataset
from petseg.data_settings import DataSettings, as_data_settings
from petseg.folder_data import FolderDataset, build_folder_dataset, resolve_folder_settings
from petseg.transforms import AugSettings, as_aug_settings

SegmentationDataset = OxfordPetDataset | FolderDataset


def resolve_data(data: DataSettings) -> DataSettings:
    """``data`` with the settings the data decides (a folder's ``channels: auto``, ``mean``/``std:
    null``) filled in, before anything is built from them; the pets' are given in their YAML."""
    return resolve_folder_settings(data) if data.layout == "folder" else data


def build_dataset(data: DataSettings | Any, aug: AugSettings | Any | None, split: str) -> SegmentationDataset:
    """The dataset of ``split`` that ``data`` describes (resolved settings), augmented by ``aug`` when
    it is "train" (None: not at all). A data or aug config is read by its reader first."""
    data, aug = as_data_settings(data), as_aug_settings(aug)
    if data.layout == "folder":
        return build_folder_dataset(data, aug, split)
    return build_pet_dataset(data, aug, split)
