"""The demo page's work, without the web framework: load the two checkpoints once, read a photo (an upload
or a test image of the dataset), and predict it with each model: overlay, time taken, and, when the photo
has a ground truth, Dice by the reference protocol. petseg/demo_page.py puts this on a Gradio page.

Everything a user can get wrong (a file that is no image, a huge photo, a missing or foreign checkpoint)
is a PetsegError whose message the page shows as it is.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from petseg.checkpoint import load_checkpoint
from petseg.errors import PetsegError
from petseg.evaluation import REFERENCE_SIZE, reference_mask, resize_logits
from petseg.images import read_image
from petseg.paths import PROJECT_ROOT, project_relative, shown_path
from petseg.pet_layout import image_path, present_names, read_trimap, split_names, trimap_path, trimap_to_mask
from petseg.pictures import overlay
from petseg.predictor import Predictor
from utils import binarize, dice_per_image

# The two columns of the page: command-line key -> (title, model name train.py gives it).
SLOTS: dict[str, tuple[str, str]] = {"unet": ("UNet", "unet"), "resnet": ("ResNet34-UNet", "resnet34_unet")}
MODEL_TITLES = {model: title for title, model in SLOTS.values()}
EXIF_ORIENTATION = 0x0112
# EXIF orientation -> the PIL transpose that turns the stored pixels upright (2-8; 1 is upright).
UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# How read_image turns each PIL mode into RGB, said in words on the page.
MODE_NOTES = {
    "1": "black-and-white image: the models see it as RGB (three equal channels)",
    "L": "grayscale image: the models see it as RGB (three equal channels)",
    "LA": "grayscale image with transparency: transparent parts are shown and predicted over black",
    "RGBA": "image with transparency (RGBA): transparent parts are shown and predicted over black",
    "PA": "palette image with transparency: transparent parts are shown and predicted over black",
    "P": "palette image: converted to RGB",
    "CMYK": "CMYK image: converted to RGB",
    "YCbCr": "YCbCr image: converted to RGB",
    "I": "32-bit grayscale image: scaled to 8 bits and shown as RGB",
    "I;16": "16-bit grayscale image: scaled to 8 bits and shown as RGB",
    "F": "floating-point image: scaled to 8 bits and shown as RGB",
}
# Predictor.tta is one attribute shared by every visitor: one prediction at a time sets and uses it.
_PREDICT_LOCK = threading.Lock()


def serving_port(host: str, port: int) -> int:
    """``port`` if it can be listened on at ``host`` now, any free one for 0; checked before the models
    load, so a busy port costs a second, not a model load."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family) as s:
            s.bind((host, port))
            return int(s.getsockname()[1])
    except OSError as err:
        raise PetsegError(
            f"cannot serve on {host}:{port} ({err.strerror or err}): give another port=<n>, or port=0 for "
            "any free one" + ("" if port else "; host must be an address of this machine")
        ) from None


# ---------------------------------------------------------------------------------------------- models
def checkpoint_hint(key: str) -> str:
    """How to get a checkpoint for a column: the shipped file, or train one."""
    model = SLOTS[key][1]
    return (
        f"start the demo with {key}=<a .pth written by train.py>; the repository ships "
        f"saved_models/{model}.pth (`git checkout -- saved_models/{model}.pth` restores it), or train "
        f"one with `python src/train.py model={model}`"
    )


@dataclass
class ModelSlot:
    """One column of the page: a loaded model, or why there is none."""

    key: str  # command-line key: unet or resnet
    path: Path  # resolved (petseg.paths.project_path)
    predictor: Any = None  # inference.Predictor, or None when the checkpoint cannot be used
    error: str | None = None
    title: str = ""
    about: dict[str, Any] = field(default_factory=dict)  # image_size, val_dice, epoch, train_images

    def describe(self, markdown: bool = True) -> str:
        """Which checkpoint, training size and val Dice this column comes from (or why it has no model):
        Markdown for the page, or one plain line for the console."""
        if self.predictor is None:
            text = f"**{self.title}**: no model. {self.error}"
        else:
            a = self.about
            dice = f"val Dice {a['val_dice']:.4f}" if a.get("val_dice") is not None else "val Dice unknown"
            epoch = f" (epoch {a['epoch']})" if a.get("epoch") is not None else ""
            images = f" on {a['train_images']:,} images" if a.get("train_images") else ""
            text = (
                f"**{self.title}** from `{shown_path(self.path, PROJECT_ROOT)}`  \n"
                f"trained at {a['image_size']} px{images}, {dice}{epoch}"
            )
        return text if markdown else text.replace("**", "").replace("`", "").replace("  \n", ", ")


def load_slot(key: str, path: str | Path, device: str = "auto") -> ModelSlot:
    """Load one column's checkpoint; any problem with the file becomes the slot's error, never an
    exception, so the page still starts and says what is wrong."""
    slot = ModelSlot(key=key, path=Path(path), title=SLOTS[key][0])
    try:
        ckpt = load_checkpoint(path)
        slot.predictor = Predictor(ckpt, device=device)
    except PetsegError as err:
        slot.error = f"{err}. To get one, {checkpoint_hint(key)}."
        return slot
    except Exception as err:  # a .pth that torch reads but that is no usable petseg checkpoint
        slot.error = (
            f"{path} cannot be used ({type(err).__name__}: {err}). To get one, {checkpoint_hint(key)}."
        )
        return slot
    name = str(slot.predictor.config.model.name)
    slot.title = MODEL_TITLES.get(name, name)
    if name != SLOTS[key][1]:  # e.g. unet=saved_models/resnet34_unet.pth: shown, under its real name
        slot.title += f" (given as {key}=)"
    best = ckpt.get("best") or {}
    slot.about = {
        "image_size": slot.predictor.image_size,
        "val_dice": best.get("metric", (ckpt.get("metrics") or {}).get("val/dice")),
        "epoch": best.get("epoch", ckpt.get("epoch")),
        "train_images": ckpt.get("train_images"),
    }
    # The first forward pass sets up oneDNN's kernels (~0.3 s): do it now, so the page's times are honest.
    slot.predictor.logits(np.zeros((64, 64, 3), np.uint8))
    return slot


# ---------------------------------------------------------------------------------------------- photos
@dataclass
class Photo:
    image: np.ndarray  # RGB uint8 (H, W, 3), what the models see and the overlays are drawn on
    name: str
    notes: list[str] = field(default_factory=list)  # what was done to make it RGB and upright
    truth: np.ndarray | None = None  # binary mask (H, W) of a dataset image, else None

    def caption(self) -> str:
        h, w = self.image.shape[:2]
        return f"{self.name}, {w}x{h} px"


def read_photo(path: str | Path, name: str, max_megapixels: float, upright: bool = True) -> Photo:
    """Decode an uploaded file like the training images (petseg/images.py read_image), after checking its size
    from the header alone. ``upright``: apply the EXIF orientation (phone photos; not dataset images,
    whose trimaps were drawn on the stored pixels). Messages name the file by ``name``, not its temp path.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:  # reads the header only
            width, height, mode = im.width, im.height, im.mode
            animated = bool(getattr(im, "is_animated", False))
            transparent = mode == "P" and "transparency" in im.info
            try:
                orientation = int(im.getexif().get(EXIF_ORIENTATION, 1)) if upright else 1
            except Exception:  # a damaged EXIF block only loses the orientation
                orientation = 1
    except Image.DecompressionBombError as err:
        raise PetsegError(f"{name} is too large to open safely ({err})") from None
    except UnidentifiedImageError:
        raise PetsegError(
            f"{name} is not an image this page can read: upload a JPEG, PNG, WebP, GIF, BMP or TIFF photo"
        ) from None
    except (OSError, ValueError, SyntaxError) as err:
        raise PetsegError(f"{name} cannot be read as an image ({err})") from None
    megapixels = width * height / 1e6
    if megapixels > max_megapixels:
        raise PetsegError(
            f"{name} is {width}x{height} px ({megapixels:.0f} MP), larger than the {max_megapixels:g} MP "
            f"this page takes: upload a smaller copy, or start the demo with max_megapixels=<MP>"
        )
    try:
        image = read_image(path)
    except PetsegError as err:
        raise PetsegError(str(err).replace(str(path), name)) from None
    except MemoryError:
        raise PetsegError(f"{name} ({width}x{height} px) is too large for the memory available") from None
    notes = []
    if transparent:
        notes.append(MODE_NOTES["PA"])
    elif mode in MODE_NOTES:
        notes.append(MODE_NOTES[mode])
    if animated:
        notes.append("animated image: its first frame is used")
    if orientation in UPRIGHT:
        image = np.asarray(Image.fromarray(image).transpose(UPRIGHT[orientation]))
        notes.append("turned upright as its EXIF orientation says")
    return Photo(image=image, name=name, notes=notes)


@dataclass
class TestImages:
    """The test images of a dataset root that have an image and a trimap, in test.txt order."""

    root: Path
    names: list[str]
    note: str  # one line for the page: how many, or why none

    def read(self, name: str, max_megapixels: float) -> Photo:
        """A test image with its ground truth; only names of the list (never a path) are accepted."""
        if name not in self.names:
            raise PetsegError(f"{name!r} is not a test image of {self.root}; pick one from the list")
        photo = read_photo(image_path(self.root, name), name, max_megapixels, upright=False)
        truth = trimap_to_mask(read_trimap(trimap_path(self.root, name)))
        if truth.shape != photo.image.shape[:2]:
            raise PetsegError(
                f"{trimap_path(self.root, name)} is {truth.shape[1]}x{truth.shape[0]}, its image "
                f"{photo.image.shape[1]}x{photo.image.shape[0]}: they do not belong together"
            )
        photo.truth = truth
        photo.name = f"{name} (test image)"
        return photo


def find_test_images(root: str | Path) -> TestImages:
    """Test images present under ``root``; none (with the reason) when the root or its lists are missing."""
    root = Path(root)
    where = project_relative(root)
    try:
        listed = split_names(root, "test")
    except PetsegError as err:
        return TestImages(root, [], f"No test images to pick: {err}")
    present = present_names(root)
    names = [n for n in listed if n in present]
    if not names:
        return TestImages(root, [], f"No test images to pick: none of the {len(listed)} listed is in {where}")
    return TestImages(root, names, f"{len(names)} test images of {where} (with ground truth and Dice)")


# ----------------------------------------------------------------------------------------- predictions
@dataclass
class Prediction:
    overlay: np.ndarray  # the mask tinted over the photo, at its size
    seconds: float  # the model's prediction: logits, upsampling to the photo's size, threshold
    dice: float | None  # reference protocol, when the photo has a ground truth
    foreground: float  # fraction of the photo predicted as pet


def predict(predictor: Any, photo: Photo, threshold: float, tta: bool) -> Prediction:
    """One model on one photo: the same logits give the full-size mask (overlay) and the reference
    protocol's 256x256 mask (Dice against the trimap resized by nearest neighbour), as evaluate.py does."""
    height, width = photo.image.shape[:2]
    with _PREDICT_LOCK, torch.no_grad():
        predictor.tta = tta
        start = time.perf_counter()
        logits = predictor.logits(photo.image)
        mask = binarize(resize_logits(logits, height, width), threshold)[0, 0].cpu().numpy()
        seconds = time.perf_counter() - start
    dice = None
    if photo.truth is not None:
        size = REFERENCE_SIZE
        pred = binarize(resize_logits(logits, size, size), threshold)
        truth = torch.from_numpy(reference_mask(photo.truth, size))[None, None].bool().to(pred.device)
        dice = float(dice_per_image(pred, truth)[0])
    return Prediction(overlay(photo.image, mask), seconds, dice, float(mask.mean()))
