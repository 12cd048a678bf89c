"""Image files to arrays, one way for every data set (pets, folders) and for the predictor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from petseg.errors import PetsegError


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL image -> RGB, the way that keeps the pixels the trimap was drawn on.

    Transparent modes are composited over black rather than having alpha dropped, so a pixel marked
    fully transparent shows no leftover colour; black is also what the geometric augmentations pad with.
    The release's one RGBA file is fully opaque, where both ways agree. CMYK/L/P/I go through PIL's own
    conversion (PIL already undoes the Adobe inversion of CMYK JPEGs).
    """
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # 16-bit/float grayscale: PIL's convert would clip at 255; rescale to the 8-bit range instead.
        a = np.asarray(im, dtype=np.float64)
        hi = a.max() if a.size and a.max() > 255 else 255.0
        return Image.fromarray(np.clip(a * (255.0 / hi), 0, 255).astype(np.uint8)).convert("RGB")
    return im.convert("RGB")


def read_image(path: Path, channels: int = 3) -> np.ndarray:
    """Decode an image file to an RGB uint8 array (H, W, 3), whatever its real format; with
    ``channels=1`` to its luminance (H, W, 1) (grayscale data sets, petseg/folder_data.py).

    The EXIF orientation is deliberately NOT applied: the trimaps were drawn on the stored pixel grid.
    Animated files (the release has a GIF behind a .jpg) give their first frame.
    """
    try:
        with Image.open(path) as im:
            im.seek(0)
            im.load()
            rgb = to_rgb(im)
            if channels == 1:
                return np.asarray(rgb.convert("L"), dtype=np.uint8)[:, :, None].copy()
            return np.asarray(rgb, dtype=np.uint8).copy()
    except FileNotFoundError as e:
        raise PetsegError(f"image file {path} not found") from e
    except (OSError, ValueError, SyntaxError, UnidentifiedImageError, Image.DecompressionBombError) as e:
        raise PetsegError(f"cannot read image {path}: {e}") from e
