"""A local web page with both trained models side by side on any pet photo.

    python src/demo.py                      # saved_models/unet.pth and saved_models/resnet34_unet.pth
    python src/demo.py unet=outputs/<run>/best.pth port=0 data.root=../shared/data/oxford-iiit-pet

Prints the page's URL (http://127.0.0.1:7860/ by default) and serves until Ctrl-C. The page takes an
uploaded photo or a test image of ``data.root`` and shows, for each model, the overlay at the photo's
size, the prediction time and, for a test image, the ground truth and each model's Dice by the reference
protocol; a threshold slider and a flip-TTA switch apply to both. Needs the packages of
requirements-demo.txt (Gradio); ``--help`` lists the keys (configs/demo.yaml).
"""

from __future__ import annotations

import os
import sys
import threading

from petseg.cli import run_command
from petseg.command_config import load_cli_config
from petseg.demo import SLOTS, find_test_images, load_slot, serving_port
from petseg.errors import PetsegError
from petseg.evaluation import check_tta
from petseg.paths import project_path
from petseg.value_checks import check_device, check_threshold

# A demo runs on someone's machine for hours: no update checks or telemetry leave it (albumentations asks
# PyPI for its latest version at import, Gradio and huggingface_hub report usage), unless the user's
# environment says otherwise.
for _name, _value in (
    ("NO_ALBUMENTATIONS_UPDATE", "1"),
    ("GRADIO_ANALYTICS_ENABLED", "False"),
    ("HF_HUB_DISABLE_TELEMETRY", "1"),
    ("HF_HUB_OFFLINE", "1"),  # nothing here comes from the Hub; stops its agent-registry lookup too
):
    os.environ.setdefault(_name, _value)


def main(argv: list[str] | None = None) -> int:
    def run() -> int:
        cfg = load_cli_config("demo", sys.argv[1:] if argv is None else argv)

        threshold = check_threshold(cfg.threshold, "threshold")
        tta = check_tta(cfg.tta)
        device = check_device(cfg.device, "device")
        for key in ("max_megapixels", "max_upload_mb"):
            value = cfg[key]
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise PetsegError(f"{key} must be a positive number, got {value!r}")
        if isinstance(cfg.port, bool) or not isinstance(cfg.port, int) or not 0 <= cfg.port <= 65535:
            raise PetsegError(f"port must be 0 (any free port) or 1-65535, got {cfg.port!r}")
        try:
            from petseg.demo_page import DemoPage
        except ImportError as err:
            raise PetsegError(
                f"the demo needs Gradio ({err}): .venv/bin/pip install --no-deps -r requirements-demo.txt"
            ) from None

        serving_port(str(cfg.host), int(cfg.port))  # a busy port fails now, not after loading the models

        # Loaded once, for every visitor. Paths are resolved like every command's (petseg/paths.py).
        slots = [load_slot(key, project_path(cfg[key]), device) for key in SLOTS]
        for slot in slots:
            print(f"{slot.key}: {slot.describe(markdown=False)}")
        tests = find_test_images(project_path(cfg.data.root))
        print(tests.note)
        page = DemoPage(slots, tests, threshold, tta, float(cfg.max_megapixels))
        url = page.serve(str(cfg.host), int(cfg.port), float(cfg.max_upload_mb))
        print(f"demo page: {url}  (Ctrl-C stops it)", flush=True)
        try:
            threading.Event().wait()  # Gradio serves from its own threads
        except KeyboardInterrupt:  # Ctrl-C is how a demo ends: not an error
            print("demo stopped")
        finally:
            page.blocks.close()
        return 0

    return run_command(run)


if __name__ == "__main__":
    sys.exit(main())
