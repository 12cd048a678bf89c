"""The reference protocol's test Dice of a checkpoint, computed without the project's data or evaluation
code: a second implementation to check ``src/evaluate.py``'s ``dice_256`` against (issue 25).

Only the network comes from the project (``models.build_model`` with the checkpoint's ``model`` config,
weights loaded as float32); everything else is written here from the protocol's words: the test names
are the first column of ``annotations/test.txt``; each image is read with PIL (``convert("RGB")``),
resized to the checkpoint's ``data.image_size`` with PIL bilinear and normalised by its ``data.mean`` /
``data.std``; the fp32 logits are upsampled to 256x256 (bilinear); a pixel is pet where the logit is
above 0 (probability 0.5); the trimap is resized to 256x256 with PIL nearest and trimap 1 and 3 are pet.
Dice = 2|P n G| / (|P| + |G|) per image (1 where both are empty), averaged over the test images present.

    .venv/bin/python benchmarks/independent_dice.py --root ../shared/data/oxford-iiit-pet \\
        --checkpoint saved_models/resnet34_unet.pth

Prints one JSON line: the checkpoint, images scored, images listed but missing, mean Dice.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from models import build_model  # noqa: E402

SCORE_SIZE = 256


def load_network(path: Path) -> tuple[torch.nn.Module, int, np.ndarray, np.ndarray]:
    """The checkpoint's network in eval mode (fp32), its input size, mean and std."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    config = ckpt["config"]
    network = build_model(**config["model"])
    network.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in ckpt["model"].items()})
    data = config["data"]
    mean, std = (np.asarray(data[key], dtype=np.float32) for key in ("mean", "std"))
    return network.eval(), int(data["image_size"]), mean, std


def model_input(image_path: Path, size: int, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    image = Image.open(image_path).convert("RGB").resize((size, size), Image.BILINEAR)
    pixels = (np.asarray(image, dtype=np.float32) / 255.0 - mean) / std
    return torch.from_numpy(pixels.transpose(2, 0, 1).copy())[None]


def pet_truth(trimap_path: Path) -> np.ndarray:
    trimap = np.asarray(Image.open(trimap_path).resize((SCORE_SIZE, SCORE_SIZE), Image.NEAREST))
    return (trimap == 1) | (trimap == 3)


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    total = int(prediction.sum()) + int(truth.sum())
    return 1.0 if total == 0 else 2.0 * int((prediction & truth).sum()) / total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="dataset root (official layout)")
    parser.add_argument("--checkpoint", type=Path, required=True, help="a best.pth or saved_models/*.pth")
    args = parser.parse_args(argv)
    network, size, mean, std = load_network(args.checkpoint)
    names = [line.split()[0] for line in (args.root / "annotations" / "test.txt").read_text().splitlines()]
    scores, missing = [], 0
    with torch.inference_mode():
        for name in names:
            image = args.root / "images" / f"{name}.jpg"
            trimap = args.root / "annotations" / "trimaps" / f"{name}.png"
            if not (image.is_file() and trimap.is_file()):
                missing += 1
                continue
            logits = network(model_input(image, size, mean, std))
            logits = F.interpolate(
                logits, size=(SCORE_SIZE, SCORE_SIZE), mode="bilinear", align_corners=False
            )
            scores.append(dice(logits[0, 0].numpy() > 0, pet_truth(trimap)))
    result = {
        "checkpoint": str(args.checkpoint),
        "images": len(scores),
        "missing": missing,
        "dice_256": round(float(np.mean(scores)), 4) if scores else None,
    }
    print(json.dumps(result))
    return 0 if scores else 1


if __name__ == "__main__":
    sys.exit(main())
