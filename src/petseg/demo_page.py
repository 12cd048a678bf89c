"""The demo's Gradio page: an upload or a test image in, for each model its overlay, time and Dice out.

Gradio (requirements-demo.txt) is imported here only, so training never needs it. Each request runs the
two models one after another in Gradio's queue (one request at a time: two models on a small CPU are
enough work), while the page stays live and shows each column as soon as its model is done.
"""

from __future__ import annotations

import logging
import traceback
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from gradio.utils import get_upload_folder
from PIL import Image

from petseg.demo import ModelSlot, Photo, TestImages, predict, read_photo, serving_port
from petseg.errors import PetsegError
from petseg.pictures import overlay
from petseg.value_checks import check_threshold

log = logging.getLogger("petseg.demo")

TITLE = "petseg demo: UNet and ResNet34-UNet side by side"
INTRO = (
    "Upload a pet photo, or pick a test image of the dataset (then the ground truth and each model's "
    "Dice by the reference protocol are shown too). Both models were trained from scratch on Oxford-IIIT "
    "Pet; the tint marks what each predicts as pet."
)
NO_TRUTH = "no ground truth for an uploaded photo"
# Pictures keep the photo's size. Up to 2 MP they are lossless PNG (fast compression: ~0.05 s); above,
# JPEG (quality 90): a 12 MP photo takes 0.03 s and ~1 MB that way, against 0.6-2 s and 5-6 MB as PNG,
# four times per request.
PNG_MAX_PIXELS = 2_000_000
HEIGHT = 240  # px of each picture's box on the page, so the four line up whatever the photo's shape
CSS = "#status { padding-left: 4px !important; } #status p { font-size: 1.05em; }"


class DemoPage:
    """The page's components and the handler its events call."""

    def __init__(
        self, slots: list[ModelSlot], tests: TestImages, threshold: float, tta: bool, max_megapixels: float
    ) -> None:
        self.slots = slots
        self.tests = tests
        self.max_megapixels = max_megapixels
        # Every result is a file in Gradio's cache: drop those older than an hour, every hour, so a demo
        # left running for days does not fill the disk.
        blocks = gr.Blocks(title="petseg demo", analytics_enabled=False, delete_cache=(3600, 3600))
        with blocks as self.blocks:
            gr.Markdown(f"## {TITLE}\n{INTRO}")
            with gr.Row():
                with gr.Column(scale=1, min_width=260):
                    self.upload = gr.Image(
                        label="Upload a photo",
                        type="filepath",
                        sources=["upload", "clipboard"],
                        height=220,
                        elem_id="upload",
                    )
                    self.pick = gr.Dropdown(
                        choices=tests.names,
                        value=None,
                        label="...or pick a test image",
                        info=tests.note,
                        interactive=bool(tests.names),
                        elem_id="pick",
                    )
                    self.threshold = gr.Slider(
                        0.05,
                        0.95,
                        value=threshold,
                        step=0.05,
                        label="Threshold on sigmoid(logits)",
                        elem_id="threshold",
                    )
                    self.tta = gr.Checkbox(
                        value=tta, label="Flip TTA (mean with the mirror image)", elem_id="tta"
                    )
                with gr.Column(scale=4):
                    self.status = gr.Markdown("Upload a photo or pick a test image.", elem_id="status")
                    with gr.Row(equal_height=False):
                        self.photo = gr.Image(label="Photo", height=HEIGHT, elem_id="photo")
                        self.truth = gr.Image(label="Ground truth", height=HEIGHT, elem_id="truth")
                        self.columns = [self._column(slot) for slot in slots]
            self._wire()

    def _column(self, slot: ModelSlot) -> tuple[Any, Any, Any]:
        with gr.Column(min_width=200):
            shown = gr.Image(label=f"{slot.title}: overlay", height=HEIGHT, elem_id=f"{slot.key}-overlay")
            seconds = gr.Textbox(label="Prediction time", interactive=False, elem_id=f"{slot.key}-time")
            dice = gr.Textbox(
                label="Dice (reference protocol)", interactive=False, elem_id=f"{slot.key}-dice"
            )
            gr.Markdown(slot.describe(), elem_id=f"{slot.key}-about")
        return shown, seconds, dice

    @property
    def outputs(self) -> list[Any]:
        return [self.status, self.photo, self.truth, *(c for column in self.columns for c in column)]

    def _wire(self) -> None:
        inputs = [self.upload, self.pick, self.threshold, self.tta]
        # One request at a time through the models (concurrency_id shared); the inputs are passed raw
        # (preprocess=False) so that a file that is no image reaches segment() and gets its message
        # instead of failing in Gradio's own decoding. Gradio still checks the file is an upload.
        run = {"fn": self.segment, "inputs": inputs, "outputs": self.outputs, "preprocess": False}
        once = {"concurrency_limit": 1, "concurrency_id": "models"}
        hidden = {"api_visibility": "private"}
        # Choosing a test image clears the upload and the other way round, so that what the page shows
        # is what segment() reads; the slider and the switch re-run on whichever is shown.
        # The API's one endpoint, /segment (upload, test image name, threshold, tta), is this one.
        self.pick.input(lambda: None, None, self.upload, queue=False, **hidden).then(
            **run, **once, api_name="segment"
        )
        self.upload.upload(lambda: None, None, self.pick, queue=False, **hidden).then(
            **run, **once, api_name="segment_upload", **hidden
        )
        # change, not release: typing a value or the arrow keys count too. While a slider is dragged,
        # always_last keeps one run going and only the latest value waiting.
        self.threshold.change(**run, **once, trigger_mode="always_last", api_name="rethreshold", **hidden)
        self.tta.input(**run, **once, trigger_mode="always_last", api_name="retta", **hidden)
        self.upload.clear(self.cleared, None, self.outputs, queue=False, **hidden)

    def cleared(self) -> list[Any]:
        return self._blank("Upload a photo or pick a test image.")

    def _blank(self, status: str) -> list[Any]:
        return [status, None, None, *([None, "", ""] * len(self.slots))]

    def segment(
        self, upload: dict[str, Any] | None, name: str | None, threshold: Any, tta: Any
    ) -> Iterator[list[Any]]:
        """Read the photo (the picked test image if one is picked, else the upload), then yield the
        page's outputs after each model, so the first column shows while the second model runs."""
        try:
            yield from self._segment(upload, name, threshold, tta)
        except PetsegError as err:
            yield self._blank(f"**Cannot use this input.** {err}")
        except Exception as err:  # a bug must not take the page down: say so, keep serving
            log.error("demo request failed:\n%s", traceback.format_exc())
            yield self._blank(
                f"**Internal error** ({type(err).__name__}: {err}); details on the server's console."
            )

    def _segment(self, upload: Any, name: Any, threshold: Any, tta: Any) -> Iterator[list[Any]]:

        threshold = check_threshold(threshold, "threshold")
        photo = self._photo(upload, name)
        if photo is None:
            yield self._blank("Upload a photo or pick a test image.")
            return
        head = f"Photo: **{photo.caption()}**" + "".join(f"  \n{note}" for note in photo.notes)
        truth = None if photo.truth is None else picture(overlay(photo.image, photo.truth))
        values = [
            f"{head}  \nPredicting...",
            picture(photo.image),
            truth,
            *([None, "", ""] * len(self.slots)),
        ]
        yield list(values)  # copies: values changes after each yield
        lines = []
        for i, slot in enumerate(self.slots):
            base = 3 + 3 * i
            if slot.predictor is None:
                values[base : base + 3] = [None, "no model", "no model"]
                lines.append(f"{slot.title}: no model (see its column)")
                continue
            result = predict(slot.predictor, photo, threshold, bool(tta))
            size = slot.predictor.image_size
            dice = NO_TRUTH if result.dice is None else f"{result.dice:.4f}"
            values[base : base + 3] = [
                picture(result.overlay),
                f"{result.seconds:.2f} s ({size} px input, flip TTA {'on' if tta else 'off'})",
                dice,
            ]
            scored = f"Dice {result.dice:.4f}, " if result.dice is not None else ""
            lines.append(f"{slot.title}: {scored}{result.foreground:.0%} of the photo is pet")
            if i + 1 < len(self.slots):
                yield list(values)
        values[0] = f"{head}  \n" + "; ".join(lines) + f" (threshold {threshold:g})"
        yield list(values)

    def _photo(self, upload: Any, name: Any) -> Photo | None:
        if name:
            return self.tests.read(str(name), self.max_megapixels)
        if not upload:
            return None
        path = upload.get("path") if isinstance(upload, dict) else None
        if not path:
            raise PetsegError("the upload holds no file; upload the photo again")
        return read_photo(path, str(upload.get("orig_name") or "the upload"), self.max_megapixels)

    def serve(self, host: str, port: int, max_upload_mb: float) -> str:
        """Start serving in the background; the page's URL. port=0: any free port."""
        port = serving_port(host, port)
        # launch() probes its own URL with httpx, whose INFO lines would read like visitors' requests.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        try:
            self.blocks.queue(default_concurrency_limit=1)
            self.blocks.launch(
                server_name=host,
                server_port=port,
                prevent_thread_lock=True,
                quiet=True,
                show_error=True,
                max_file_size=f"{max_upload_mb:g}mb",
                ssr_mode=False,
                share=False,
                css=CSS,
            )
        except OSError as err:  # Gradio's "Cannot find empty port", or no such address
            raise PetsegError(
                f"cannot serve on {host}:{port} ({err}): give another port=<n>, or port=0 for any free one"
            ) from None
        return f"http://{host if ':' not in host else f'[{host}]'}:{port}/"


def picture(image: np.ndarray) -> str:
    """An RGB array saved as a file in Gradio's cache folder, which serves it as it is (no copy, no
    re-encoding) and deletes it after an hour (delete_cache)."""
    folder = Path(get_upload_folder()) / "petseg-demo"
    folder.mkdir(parents=True, exist_ok=True)
    small = image.shape[0] * image.shape[1] <= PNG_MAX_PIXELS
    path = folder / f"{uuid.uuid4().hex}.{'png' if small else 'jpg'}"
    Image.fromarray(image).save(path, **({"compress_level": 1} if small else {"quality": 90}))
    return str(path)
