"""The Dice protocols of evaluate(): values computed by hand on hand-made logits and masks, a perfect
predictor, flip TTA, and masks resized exactly as the reference (PIL NEAREST, centre-aligned)."""

from __future__ import annotations

from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from torch import nn

import oxford_pet
from oxford_pet import build_dataset
from petseg import transforms
from petseg.errors import PetsegError
from petseg.evaluation import ReferenceTargets, check_tta, evaluate, predict_logits, reference_mask
from petseg.loaders import build_dataloader
from petseg.model_input import ModelInput
from petseg.runtime import setup_runtime

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def cpu() -> ModelInput:
    """The data group's normalisation on a plain fp32 CPU runtime."""
    trainer = OmegaConf.load(CONFIGS / "trainer" / "default.yaml")
    runtime = setup_runtime(OmegaConf.merge(trainer, {"device": "cpu", "amp": "off", "channels_last": False}))
    return ModelInput.of(OmegaConf.load(CONFIGS / "data" / "oxford_pet.yaml"), runtime)


class FixedLogits(nn.Module):
    """A 'model' that returns the logits it was given, batch after batch, whatever its input."""

    def __init__(self, logits: list[torch.Tensor]) -> None:
        super().__init__()
        self.queue = list(logits)
        self.anchor = nn.Parameter(torch.zeros(()))  # so .eval()/.train() and devices behave as usual

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.queue.pop(0) + self.anchor


def _batch(names: list[str], input_masks: np.ndarray) -> dict:
    n, h, w = input_masks.shape
    return {
        "image": torch.zeros(n, 3, h, w, dtype=torch.uint8),
        "mask": torch.from_numpy(input_masks[:, None]),
        "name": names,
    }


def test_each_protocol_matches_a_hand_computation(cpu) -> None:
    # One image: the model sees 2x2 and says "pet" on the left column, "background" on the right.
    logits = torch.tensor([[[[1.0, -1.0], [1.0, -1.0]]]])
    # Its mask at input size has one pet pixel (top left).
    input_mask = np.array([[[1, 0], [0, 0]]], dtype=np.uint8)
    # At its original size (4 rows x 6 columns) the pet is the two left columns.
    native = np.zeros((4, 6), dtype=np.uint8)
    native[:, :2] = 1
    targets = ReferenceTargets(lambda name: native)
    metrics = evaluate(
        FixedLogits([logits]),
        [_batch(["cat_1"], input_mask)],
        cpu,
        targets=targets,
        native=True,
        progress=False,
    )
    p = metrics["protocols"]
    # Input size: prediction = left column (2 px), truth = 1 px, overlap 1: 2*1 / (2+1).
    assert p["dice_input"]["mean"] == pytest.approx(2 / 3)
    # 256: bilinear logits are > 0 on columns 0..127 exactly (symmetric ramp), so P = 128 x 256 px.
    # PIL NEAREST maps output column x to source column floor((x + 0.5) * 6 / 256): < 2 for x <= 84,
    # so G = 85 x 256 px, all inside P: 2 * 85 / (128 + 85).
    assert p["dice_256"]["mean"] == pytest.approx(2 * 85 / (128 + 85))
    # Native 4x6: source column of output x is (x + 0.5) / 3 - 0.5 -> logits 1, 1, 1/3, -1/3, -1, -1:
    # P = 3 columns, G = 2 columns, all inside P: 2 * 2 / (3 + 2).
    assert p["dice_native"]["mean"] == pytest.approx(2 * 2 / (3 + 2))
    assert metrics["dice"] == p["dice_256"]["mean"] and metrics["count"] == 1
    row = metrics["per_image"][0]
    assert row["name"] == "cat_1" and row["fg_fraction"] == pytest.approx(85 / 256)


def test_mean_and_pooled_over_two_images(cpu) -> None:
    full = np.ones((8, 8), dtype=np.uint8)
    empty_half = np.zeros((8, 8), dtype=np.uint8)
    empty_half[:, :4] = 1
    masks = {"a_1": full, "b_1": empty_half}
    logits = torch.full((2, 1, 4, 4), 5.0)  # "all pet" for both
    metrics = evaluate(
        FixedLogits([logits]),
        [_batch(["a_1", "b_1"], np.ones((2, 4, 4), dtype=np.uint8))],
        cpu,
        targets=ReferenceTargets(masks.__getitem__),
        native=True,
        progress=False,
    )
    for protocol in ("dice_256", "dice_native"):
        # a: perfect (1.0); b: P = all, G = half: 2 * 0.5 / 1.5 = 2/3. Pooled: 2 * 1.5 / (2 + 1.5).
        assert metrics["protocols"][protocol]["mean"] == pytest.approx((1 + 2 / 3) / 2)
        assert metrics["protocols"][protocol]["pooled"] == pytest.approx(3 / 3.5)
    assert [r["dice_256"] for r in metrics["per_image"]] == pytest.approx([1.0, 2 / 3])


@pytest.fixture(scope="module")
def sample_cfg(sample_root: Path):
    data = OmegaConf.load(CONFIGS / "data" / "oxford_pet.yaml")
    data.root = str(sample_root)
    data.num_workers = 0
    data.batch_size = 4
    return data, OmegaConf.load(CONFIGS / "aug" / "default.yaml")


def test_a_perfect_predictor_at_256_px_scores_one(cpu, sample_cfg) -> None:
    data, aug = sample_cfg
    data = OmegaConf.merge(data, {"image_size": 256})
    dataset = build_dataset(data, aug, "valid")
    loader = build_dataloader(dataset, data, train=False)
    truth = [reference_mask(dataset.load_mask(n)) for n in dataset.names]
    logits = torch.from_numpy(np.stack(truth)[:, None].astype(np.float32) * 20 - 10)
    oracle = FixedLogits(list(logits.split(int(data.batch_size))))
    metrics = evaluate(oracle, loader, cpu, native=False, progress=False)
    assert metrics["count"] == len(dataset) >= 2
    assert metrics["protocols"]["dice_256"] == {"mean": 1.0, "pooled": 1.0, "pixel_error": 0.0}
    # At 256 px the dataset's own masks are the reference masks, so the input protocol agrees too.
    assert metrics["protocols"]["dice_input"] == {"mean": 1.0, "pooled": 1.0, "pixel_error": 0.0}


def test_a_model_trained_at_another_size_is_scored_on_256_px_masks(cpu, sample_cfg) -> None:
    """At 64 px a perfect input-size predictor is no longer perfect at 256: the protocols differ."""
    data, aug = sample_cfg
    data = OmegaConf.merge(data, {"image_size": 64})
    dataset = build_dataset(data, aug, "valid")
    loader = build_dataloader(dataset, data, train=False)
    masks = torch.stack([dataset[i]["mask"] for i in range(len(dataset))])
    oracle = FixedLogits(list((masks.float() * 20 - 10).split(int(data.batch_size))))
    metrics = evaluate(oracle, loader, cpu, native=True, progress=False)
    p = metrics["protocols"]
    assert p["dice_input"]["mean"] == 1.0
    assert 0.9 < p["dice_256"]["mean"] < 1.0 and 0.9 < p["dice_native"]["mean"] < 1.0


def test_flip_tta_averages_the_logits_of_the_image_and_its_mirror(cpu) -> None:
    torch.manual_seed(0)
    model = nn.Conv2d(3, 1, 3, padding=1).eval()  # not mirror-symmetric
    images = torch.randn(2, 3, 8, 8)
    plain = predict_logits(model, images, cpu.runtime, tta=False)
    both = predict_logits(model, images, cpu.runtime, tta=True)
    assert torch.allclose(both, (model(images) + model(images.flip(-1)).flip(-1)) / 2)
    assert not torch.allclose(both, plain)
    assert check_tta("flip") is True and check_tta("none") is False
    with pytest.raises(PetsegError, match="tta must be one of"):
        check_tta("rotate")


# ------------------------------------------------------------------------------- mask resizing


def _real_trimaps(sample_root: Path, shared: Path | None) -> list[np.ndarray]:
    names = ["Abyssinian_100", "american_bulldog_100", "Bengal_100", "havanese_100", "Birman_101"]
    masks = [
        oxford_pet.trimap_to_mask(oxford_pet.read_trimap(oxford_pet.trimap_path(sample_root, n)))
        for n in names
    ]
    if shared is not None:  # full-size release trimaps (~500x375), where the old rule shifted most
        for name in oxford_pet.split_names(shared, "test")[:40]:
            path = oxford_pet.trimap_path(shared, name)
            if path.is_file():
                masks.append(oxford_pet.trimap_to_mask(oxford_pet.read_trimap(path)))
    return masks


@pytest.fixture(scope="module")
def real_masks(sample_root: Path) -> list[np.ndarray]:
    from conftest import SHARED_ROOT

    return _real_trimaps(sample_root, SHARED_ROOT if SHARED_ROOT.is_dir() else None)


@pytest.mark.parametrize("size", [96, 128, 256])
def test_project_masks_equal_pil_nearest_pixel_for_pixel(size: int, real_masks: list[np.ndarray]) -> None:
    resize = transforms.resize_transform(size)
    for mask in real_masks:
        image = np.zeros((*mask.shape, 3), dtype=np.uint8)
        ours = resize(image=image, mask=mask)["mask"]
        pil = np.asarray(Image.fromarray(mask).resize((size, size), Image.NEAREST))
        assert np.array_equal(ours, pil)
        assert np.array_equal(reference_mask(mask, size), pil)


@pytest.mark.parametrize("size", [96, 128, 256])
def test_dataset_and_cache_masks_equal_pil_nearest(size: int, sample_cfg, tmp_path: Path) -> None:
    data, aug = sample_cfg
    for cache in (False, True):
        cfg = OmegaConf.merge(data, {"image_size": size, "cache": cache, "cache_dir": str(tmp_path)})
        dataset = build_dataset(cfg, aug, "valid")
        for i, name in enumerate(dataset.names):
            pil = np.asarray(Image.fromarray(dataset.load_mask(name)).resize((size, size), Image.NEAREST))
            assert np.array_equal(dataset[i]["mask"][0].numpy().astype(np.uint8), pil), (name, cache)


def _centroid(a: np.ndarray) -> np.ndarray:
    w = a.astype(np.float64)
    ys, xs = np.mgrid[: a.shape[0], : a.shape[1]]
    return np.array([(w * ys).sum(), (w * xs).sum()]) / w.sum()


def _misalignment(transform, mask: np.ndarray) -> float:
    """Largest offset (output px) between the centroid of an image that IS the mask and of the mask."""
    image = np.repeat(mask[..., None] * 255, 3, axis=2).astype(np.uint8)
    out = transform(image=image, mask=mask)
    return float(np.abs(_centroid(out["image"][..., 0]) - _centroid(out["mask"])).max())


@pytest.mark.parametrize("size", [32, 96, 256])
def test_resized_mask_sits_on_its_image(size: int, real_masks: list[np.ndarray]) -> None:
    """The old top-left rule (cv2.INTER_NEAREST) put masks 0.4-0.6 px off here; centre-aligned is < 0.2."""
    ours = [_misalignment(transforms.resize_transform(size), m) for m in real_masks[:4]]
    assert max(ours) < 0.3, ours
    old = A.Resize(size, size, mask_interpolation=cv2.INTER_NEAREST, area_for_downscale="image", p=1.0)
    assert min(_misalignment(old, m) for m in real_masks[:4]) > 0.3  # the check can fail


def test_user_resize_in_the_augmentation_is_made_centre_aligned() -> None:
    aug = OmegaConf.create(
        {
            "name": "mine",
            "train": [
                {"_target_": "albumentations.RandomScale", "scale_limit": 0.2, "mask_interpolation": 0}
            ],
        }
    )
    (scale,) = transforms.build_train_transforms(aug)
    assert scale.mask_interpolation == cv2.INTER_NEAREST_EXACT


@pytest.mark.parametrize("model", ["unet", "resnet34_unet"])
def test_bf16_evaluation_keeps_every_dice_within_0_001_of_fp32(model: str, sample_root: Path) -> None:
    """Evaluation and inference use the training rule (bf16 + channels_last on CPUs with bf16 units):
    allowed because the shipped checkpoints score the same within 0.001 either way."""
    from petseg.checkpoint import load_checkpoint, model_from_checkpoint
    from petseg.upgrade import upgrade_config

    ckpt = load_checkpoint(Path(__file__).resolve().parents[1] / "saved_models" / f"{model}.pth")
    cfg = upgrade_config(ckpt["config"])  # as evaluate.py reads a checkpoint
    data = OmegaConf.merge(cfg.data, {"root": str(sample_root), "num_workers": 0})
    dataset = build_dataset(data, cfg.aug, "test")
    scores = {}
    for amp, layout in (("off", False), ("bf16", True)):
        rt = setup_runtime(
            OmegaConf.merge(cfg.trainer, {"device": "cpu", "amp": amp, "channels_last": layout})
        )
        net = rt.prepare(model_from_checkpoint(ckpt))
        loader = build_dataloader(dataset, data, train=False)
        scores[amp] = evaluate(net, loader, ModelInput.of(data, rt), progress=False, native=True)["protocols"]
    for protocol, fp32 in scores["off"].items():
        for kind in ("mean", "pooled"):
            assert scores["bf16"][protocol][kind] == pytest.approx(fp32[kind], abs=1e-3), (protocol, kind)
