"""petseg.model_input.ModelInput: the one conversion of the dataset's uint8 batches into model inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import default_collate

from oxford_pet import build_dataset
from petseg.model_input import ModelInput
from petseg.runtime import Runtime

DATA_YAML = Path(__file__).resolve().parents[1] / "configs" / "data" / "oxford_pet.yaml"
CPU = Runtime(torch.device("cpu"))


@pytest.mark.parametrize(
    ("mean", "std"), [((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), ((0.5, 0.2, 0.0), (0.5, 0.1, 1.0))]
)
def test_normalisation_is_bit_identical_to_the_numpy_formula(mean: tuple, std: tuple) -> None:
    # The shipped checkpoints were trained on (image / 255 - mean) / std computed in float32 numpy;
    # the same operations in torch must give exactly those inputs, so their scores do not move.
    rng = np.random.default_rng(0)
    model_input = ModelInput(mean, std, CPU)
    for shape in [(2, 256, 256, 3), (1, 37, 53, 3), (3, 1, 1, 3)]:
        images = rng.integers(0, 256, shape, dtype=np.uint8)
        expected = (images.astype(np.float32) / 255.0 - np.float32(mean)) / np.float32(std)
        got = model_input.images(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous())
        assert got.dtype == torch.float32
        assert torch.equal(got, torch.from_numpy(expected.transpose(0, 3, 1, 2)))


def test_batches_of_dataset_items_become_float_inputs(sample_root: Path) -> None:
    data = OmegaConf.merge(OmegaConf.load(DATA_YAML), {"root": str(sample_root), "image_size": 32})
    dataset = build_dataset(data, None, "valid")
    batch = default_collate([dataset[0], dataset[1]])
    images, masks = ModelInput.of(data, Runtime(torch.device("cpu"), channels_last=True))(batch)
    assert images.shape == (2, 3, 32, 32) and images.dtype == torch.float32
    assert images.is_contiguous(memory_format=torch.channels_last)  # the model's memory format
    assert masks.dtype == torch.float32 and torch.equal(masks, batch["mask"].float())
    # The pixel values come back by inverting the normalisation: nothing else happened to them.
    mean, std = torch.tensor(list(data.mean)).view(1, 3, 1, 1), torch.tensor(list(data.std)).view(1, 3, 1, 1)
    assert torch.equal((images * std + mean).mul(255).round().to(torch.uint8), batch["image"])
    plain = ModelInput.of(data, CPU).images(batch["image"])
    assert plain.is_contiguous() and torch.equal(plain, images)


def test_float_images_are_refused() -> None:
    # A float batch would be an already-normalised one: normalising it again would be silently wrong.
    with pytest.raises(TypeError, match="uint8"):
        ModelInput((0.5,) * 3, (0.5,) * 3, CPU).images(torch.zeros(1, 3, 4, 4))
