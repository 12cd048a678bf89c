"""The project's pictures: one tint of a mask over its image, and one grid of pictures.

Used by TensorBoard's validation overlays (trainer), the evaluation galleries (report) and inference's
grid.png, so every picture of a prediction looks the same.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

# Colour used to tint predicted foreground in overlays (RGB), and how strongly.
OVERLAY_COLOUR = (255, 64, 32)
OVERLAY_ALPHA = 0.45
# Rows tinted at a time: a band's float copies stay small even for a 48-megapixel photo.
OVERLAY_ROWS = 256
CAPTION_HEIGHT = 18


def _tint_table(alpha: float) -> np.ndarray:
    """table[v, c]: uint8 value v of channel c after tinting (a tinted pixel depends only on itself)."""
    values = np.arange(256, dtype=np.float32)[:, None]
    colour = np.asarray(OVERLAY_COLOUR, dtype=np.float32)[None, :]
    return ((1 - alpha) * values + alpha * colour).round().clip(0, 255).astype(np.uint8)


def as_rgb(image: np.ndarray) -> np.ndarray:
    """A uint8 picture as RGB (H, W, 3): grayscale ((H, W) or (H, W, 1)) shown as gray."""
    if image.ndim == 2:
        image = image[:, :, None]
    return np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """A copy of the uint8 image (H, W, 3), or grayscale shown as gray, with the foreground of the
    binary mask (H, W) tinted.

    Through a 256-entry table, a band of rows at a time: no full-size float copies (~1.7 GB for 48 MP).
    """
    table = _tint_table(alpha)
    tinted = as_rgb(image).copy()
    fg = mask.astype(bool, copy=False)
    for top in range(0, image.shape[0], OVERLAY_ROWS):
        band, inside = tinted[top : top + OVERLAY_ROWS], fg[top : top + OVERLAY_ROWS]
        for c in range(3):
            channel = band[..., c]  # a view: assigning into it writes tinted
            channel[inside] = table[channel[inside], c]
    return tinted


def grid(
    pictures: Sequence[np.ndarray], columns: int, tile: int, captions: Sequence[str] | None = None
) -> np.ndarray:
    """Pictures (RGB uint8) fit into ``tile`` px squares, ``columns`` a row, on white, as one RGB
    uint8 array; ``captions``, one per row, are written above their rows."""
    rows = (len(pictures) + columns - 1) // columns
    caption_h = CAPTION_HEIGHT if captions else 0
    canvas = Image.new("RGB", (columns * tile, rows * (tile + caption_h)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, picture in enumerate(pictures):
        row, col = divmod(i, columns)
        y = row * (tile + caption_h)
        if captions and col == 0:
            draw.text((4, y + 3), captions[row], fill=(0, 0, 0))
        thumb = Image.fromarray(picture)
        thumb.thumbnail((tile, tile))
        canvas.paste(
            thumb, (col * tile + (tile - thumb.width) // 2, y + caption_h + (tile - thumb.height) // 2)
        )
    return np.asarray(canvas)


def comparison_rows(
    samples: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    tile: int,
    captions: Sequence[str] | None = None,
) -> np.ndarray:
    """One row [image | ground truth tinted | prediction tinted] per (image, truth, prediction)."""
    pictures = [
        p
        for image, truth, pred in samples
        for p in (as_rgb(image), overlay(image, truth), overlay(image, pred))
    ]
    return grid(pictures, 3, tile, captions)
