"""Predict pet masks for image files, a folder or a dataset split.

    python src/inference.py checkpoint=saved_models/resnet34_unet.pth input=photo.jpg output=outputs/pred
    python src/inference.py checkpoint=... input=my_pets/ output=outputs/pred
    python src/inference.py checkpoint=... split=test output=outputs/pred_test [data.allow_missing=true]

For each image it writes ``<name>_mask.png`` (0/255, at the image's original size) and
``<name>_overlay.png`` (the mask tinted over the image), plus one ``grid.png`` of overlays. With
``split=`` it also reports the split's Dice by the reference protocol (256x256 masks) and at the images'
original size, through the same ``evaluate()`` loop as evaluate.py. ``tta=flip`` averages the logits of
each image and its mirror image.

Inputs are decoded like the training images (``oxford_pet.read_image``): any format PIL reads, grayscale
and palette images as RGB, transparency composited over black, the first frame of animations; any size
from 1x1 up to PIL's decompression-bomb limit (~179 MP; a 48 MP photo takes ~1 GB at peak). A file that
cannot be used (unreadable, not an image, too large) gets a one-line error on stderr and the others go
on.

A folder is searched with its sub-folders, and outputs keep the relative path (``a/cat.jpg`` ->
``<output>/a/cat_mask.png``), so names never collide. Its images are the files with an image extension
(.jpg .jpeg .png .gif .bmp .tif .tiff .webp .ppm ..., any case) or an image's content (a photo without
an extension); a file with an image extension that is not an image claims to be one and fails like
any unreadable image. Other files (a README, a video) are listed as skipped in one line and are
not failures; hidden entries are ignored (details: ``petseg/inference_inputs.py``). A file named in ``input=``
is always taken as an image. The last line counts the images predicted, the files skipped and the
images that failed. Exit code: 0 when none failed, 1 if any image failed, 2 for a bad command line or
checkpoint, or an input folder without any image.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image
from tqdm import tqdm

from petseg.checkpoint import load_checkpoint
from petseg.checks import check_model_fits_data
from petseg.cli import run_command
from petseg.command_config import load_cli_config
from petseg.data_settings import data_settings
from petseg.datasets import build_dataset
from petseg.errors import PetsegError
from petseg.evaluation import check_tta, evaluate, format_protocols, resize_logits
from petseg.inference_inputs import describe, list_inputs, output_names
from petseg.loaders import build_dataloader
from petseg.model_input import ModelInput
from petseg.pictures import grid, overlay
from petseg.predictor import Predictor
from petseg.scoring_data import scoring_data
from petseg.transforms import aug_settings
from utils import binarize

GRID_MAX_IMAGES = 16
GRID_TILE = 256


def thumbnail(picture: np.ndarray) -> np.ndarray:
    """A copy that fits a grid tile: the grid never needs the full-size overlays kept in memory."""
    tile = Image.fromarray(picture)
    tile.thumbnail((GRID_TILE, GRID_TILE))
    return np.asarray(tile)


def write_prediction(out_dir: Path, name: str, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Save <name>_mask.png and <name>_overlay.png; return a thumbnail of the overlay for the grid."""
    (out_dir / name).parent.mkdir(parents=True, exist_ok=True)  # a folder data set's names keep sub-folders
    # bool viewed as uint8 is 0/1 without a copy; times 255 makes the one uint8 copy written.
    Image.fromarray(mask.astype(bool).view(np.uint8) * np.uint8(255)).save(out_dir / f"{name}_mask.png")
    tinted = overlay(image, mask)
    Image.fromarray(tinted).save(out_dir / f"{name}_overlay.png")
    return thumbnail(tinted)


def write_grid(out_dir: Path, overlays: list[tuple[str, np.ndarray]]) -> Path | None:
    """One picture of up to 16 overlays, 4 per row, each fit into a 256 px square."""
    if not overlays:
        return None
    pictures = [picture for _name, picture in overlays[:GRID_MAX_IMAGES]]
    path = out_dir / "grid.png"
    Image.fromarray(grid(pictures, min(4, len(pictures)), GRID_TILE)).save(path)
    return path


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def predict_file(predictor: Predictor, file: Path, name: str, out_dir: Path) -> np.ndarray:
    """Read, predict and write one file; returns the overlay thumbnail. Anything wrong with this file
    (or with writing its outputs) is a one-line PetsegError, so the caller can go on with the next."""
    try:
        image = predictor.read(file)  # its PetsegError names the file already
        (out_dir / name).parent.mkdir(parents=True, exist_ok=True)  # name keeps the sub-folder
        return write_prediction(out_dir, name, image, predictor.predict(image))
    except MemoryError:
        raise PetsegError(f"{file}: too large to process in the memory available") from None
    except OSError as err:  # writing the outputs: disk full, permissions
        raise PetsegError(f"{file}: cannot write its outputs to {out_dir}: {_one_line(err)}") from None


def predict_files(
    predictor: Predictor, files: list[Path], out_dir: Path, root: Path | None = None
) -> tuple[int, int]:
    """Predict each file, its outputs named by ``output_names(files, root)``; a file that fails is
    reported in one line and the others go on. Returns (predicted, failed)."""
    done, failed = 0, 0
    overlays: list[tuple[str, np.ndarray]] = []
    bar = tqdm(files, desc="predict", disable=len(files) < 2, dynamic_ncols=True)
    for file, name in zip(bar, output_names(files, root), strict=True):
        try:
            picture = predict_file(predictor, file, name, out_dir)
        except PetsegError as err:
            tqdm.write(f"error: {_one_line(err)}", file=sys.stderr)
            failed += 1
            continue
        if len(overlays) < GRID_MAX_IMAGES:
            overlays.append((name, picture))
        done += 1
    write_grid(out_dir, overlays)
    return done, failed


def predict_split(predictor: Predictor, cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Predict every image of a split, writing outputs at original size, and score it with evaluate()."""
    data_cfg, where = scoring_data(predictor.config.data, cfg.data)
    print(f"data: {where}", flush=True)  # which copy is predicted and scored, before any work on it
    data = data_settings(data_cfg)  # the checkpoint's data settings with this command's data.* keys
    check_model_fits_data(predictor.config.model.name, data)
    dataset = build_dataset(data, aug_settings(predictor.config.aug), cfg.split)
    loader = build_dataloader(dataset, data, train=False)
    overlays: list[tuple[str, np.ndarray]] = []

    def save(batch: dict[str, Any], logits: torch.Tensor, _dice: torch.Tensor) -> None:
        for name, one in zip(batch["name"], logits, strict=True):
            image = dataset.load_image(name)
            full = resize_logits(one[None], image.shape[0], image.shape[1])
            mask = binarize(full, predictor.threshold)[0, 0].cpu().numpy()
            picture = write_prediction(out_dir, name, image, mask)
            if len(overlays) < GRID_MAX_IMAGES:  # a whole split of full-size overlays would not fit
                overlays.append((name, picture))

    metrics = evaluate(
        predictor.model,
        loader,
        ModelInput.of(data, predictor.runtime),
        threshold=predictor.threshold,
        desc=f"predict {cfg.split}",
        on_batch=save,
        native=True,
        tta=predictor.tta,
        headline=data.headline,
    )
    write_grid(out_dir, overlays)
    return metrics


def main(argv: list[str] | None = None) -> int:
    def run() -> int:
        cfg = load_cli_config("inference", sys.argv[1:] if argv is None else argv)
        if (cfg.input is None) == (cfg.split is None):
            raise PetsegError("give exactly one of input=<image or folder> or split=<train|valid|test>")
        if cfg.input is not None and cfg.data:
            given = ", ".join(f"data.{k}" for k in cfg.data)
            raise PetsegError(
                f"{given}: data settings apply to split=...; input=... uses the checkpoint's own "
                "preprocessing"
            )
        out_dir = Path(str(cfg.output))
        inputs = list_inputs(Path(str(cfg.input)), out_dir) if cfg.input is not None else None

        tta = check_tta(cfg.tta)
        predictor = Predictor(load_checkpoint(cfg.checkpoint), str(cfg.device), float(cfg.threshold), tta)
        out_dir.mkdir(parents=True, exist_ok=True)
        if inputs is None:
            metrics = predict_split(predictor, cfg, out_dir)
            print(f"{cfg.split}: {metrics['count']} images, flip TTA {'on' if tta else 'off'}")
            print("\n".join(format_protocols(metrics["protocols"], predictor.image_size)))
            print(f"predictions in {out_dir}")
            return 0
        if inputs.skipped:  # not failures: a folder of photos often holds notes, sidecars, videos
            print(f"skipped {describe(inputs.skipped, inputs.root)}")
        done, failed = predict_files(predictor, inputs.images, out_dir, inputs.root)
        skipped = len(inputs.skipped)
        print(f"{done} image(s) predicted, {skipped} skipped, {failed} failed; outputs in {out_dir}")
        return 1 if failed else 0

    return run_command(run)


if __name__ == "__main__":
    sys.exit(main())
