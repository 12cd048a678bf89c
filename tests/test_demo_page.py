"""The demo as a user meets it: ``python src/demo.py port=0`` started on a free loopback port with the
shipped checkpoints, called through its API (gradio_client) and driven in headless Chromium (Debian's
package, through Playwright's Python API): uploads good and bad files, picks a test image, reads the
overlays, times and Dice fields. No request may leave this machine.

The browser test also writes the README's screenshot when asked:

    PETSEG_DEMO_SCREENSHOT=docs/demo.png .venv/bin/python -m pytest tests/test_demo_page.py -k browser

(it uses ../shared/data/oxford-iiit-pet beside the repository when present, else the committed sample).
"""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pytest
from PIL import Image

from helpers import ROOT, SAMPLE, SHARED
from test_demo import demo_dependency

# A real server on a real port, its models loaded, a browser where there is one: the full suite's.
pytestmark = pytest.mark.slow

DATA_ROOT = SHARED if (SHARED / "annotations" / "test.txt").is_file() else SAMPLE
UPLOAD = SAMPLE / "images" / "Bengal_100.jpg"  # a real photo, not a test image: no ground truth
TEST_IMAGE = "Bengal_192"  # a test image of both the sample and the shared copy
STARTUP_SECONDS = 180  # imports, two model loads and their warm-up, on a busy 2-core machine
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
# Nothing here needs the Hugging Face Hub; gradio_client would otherwise ask it for an agent registry.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class DemoServer:
    """``python src/demo.py`` in a child process, its output drained by a thread (a full pipe would
    stall the server)."""

    def __init__(self, *args: str) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}
        self.process = subprocess.Popen(
            [sys.executable, "src/demo.py", *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            # Ctrl-C as in a terminal: a test run started in the background (`cmd &`, nohup) inherits
            # SIGINT ignored, and Python then installs no KeyboardInterrupt handler in the demo.
            preexec_fn=_default_sigint,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def url(self, timeout: float = STARTUP_SECONDS) -> str:
        """The URL the command prints once it serves; fails with its output if it never does."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(r"demo page: (http://\S+/)", self.output)
            if found:
                return found.group(1)
            if self.process.poll() is not None:
                break
            time.sleep(0.2)
        pytest.fail(f"the demo did not start (exit code {self.process.poll()}):\n{self.output}")

    def stop(self) -> int:
        """Ctrl-C, as a user stops it; killed if it does not end."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(timeout=5)
        return self.process.returncode


@pytest.fixture(scope="module", autouse=True)
def gradio_temp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Gradio's files (the server's pictures, the client's downloads) in a temporary folder; the
    server started below inherits it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GRADIO_TEMP_DIR", str(tmp_path_factory.mktemp("gradio")))
        yield


@pytest.fixture(scope="module")
def server() -> Iterator[DemoServer]:
    demo_dependency("gradio")
    started = DemoServer("port=0", f"data.root={DATA_ROOT}", "device=cpu")
    try:
        started.url()
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="module")
def client(server: DemoServer) -> Any:
    demo_dependency("gradio_client")
    import huggingface_hub.constants
    from gradio_client import Client

    huggingface_hub.constants.HF_HUB_OFFLINE = True  # read at import; the environment may come too late
    return Client(server.url(), verbose=False)


def segment(client: Any, upload: Path | None = None, name: str | None = None, tta: bool = False) -> list[Any]:
    from gradio_client import handle_file

    file = handle_file(str(upload)) if upload else None
    return list(client.predict(file, name, 0.5, tta, api_name="/segment"))


def tinted_fraction(picture: Path, photo: np.ndarray) -> float:
    """Share of pixels the overlay made redder than the photo (the tint is orange-red)."""
    shown = np.asarray(Image.open(picture).convert("RGB"), dtype=np.int16)
    assert shown.shape == photo.shape, "the overlay is at the photo's size"
    return float(((shown[..., 0] - photo[..., 0]) - (shown[..., 2] - photo[..., 2]) > 40).mean())


# -------------------------------------------------------------------------------------------- server
def test_serves_on_a_free_loopback_port(server: DemoServer) -> None:
    url = urlparse(server.url())
    assert url.scheme == "http" and url.hostname == "127.0.0.1" and url.port and url.port != 7860
    assert "saved_models/unet.pth" in server.output and "saved_models/resnet34_unet.pth" in server.output


def test_busy_port_is_one_line_before_loading_models() -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        started = DemoServer(f"port={port}")
        assert started.process.wait(timeout=120) == 2
    started.stop()
    assert f"error: cannot serve on 127.0.0.1:{port}" in started.output and "port=0" in started.output


# ----------------------------------------------------------------------------------------------- API
def test_api_upload_gets_both_overlays(client: Any) -> None:
    photo = np.asarray(Image.open(UPLOAD).convert("RGB"), dtype=np.int16)
    status, shown, truth, *columns = segment(client, upload=UPLOAD)
    assert "Bengal_100.jpg" in status and truth is None
    assert np.array_equal(np.asarray(Image.open(shown).convert("RGB")), photo)  # lossless (PNG)
    for picture, seconds, dice in (columns[0:3], columns[3:6]):
        assert 0.1 < tinted_fraction(Path(picture), photo) < 0.9
        assert re.fullmatch(r"\d+\.\d\d s \(\d+ px input, flip TTA off\)", seconds)
        assert dice == "no ground truth for an uploaded photo"


def test_api_test_image_has_truth_and_dice(client: Any) -> None:
    status, _shown, truth, *columns = segment(client, name=TEST_IMAGE, tta=True)
    assert f"{TEST_IMAGE} (test image)" in status and truth is not None
    for _picture, seconds, dice in (columns[0:3], columns[3:6]):
        assert "flip TTA on" in seconds and 0.9 < float(dice) <= 1.0


def test_api_bad_inputs_get_messages_and_the_server_goes_on(client: Any, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a photo")
    (tmp_path / "broken.jpg").write_bytes(UPLOAD.read_bytes()[:2000])
    Image.new("RGB", (9000, 6000), (120, 90, 60)).save(tmp_path / "huge.png")  # 54 MP > 40 MP
    expected = {"notes.txt": "is not an image", "broken.jpg": "truncated", "huge.png": "9000x6000 px (54 MP)"}
    for name, words in expected.items():
        status, *outputs = segment(client, upload=tmp_path / name)
        assert "Cannot use this input" in status and name in status and words in status, status
        assert all(value in (None, "") for value in outputs)
    for name in ("../images/Bengal_100", "Bengal_100"):  # a path; a train image
        assert "is not a test image" in segment(client, name=name)[0]
    assert segment(client, upload=UPLOAD)[3] is not None  # still serving


# ------------------------------------------------------------------------------------------- browser
def chromium() -> str:
    """The system's Chromium (Debian's package); Playwright never downloads a browser here."""
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    hint = "apt-get install chromium"
    if os.environ.get("CI", "").lower() in ("1", "true"):
        pytest.fail(f"no Chromium ({', '.join(CHROMIUM_NAMES)}) in CI; .ci/run must {hint}")
    pytest.skip(f"no Chromium on this machine for the browser test: {hint}")


def field(page: Any, elem_id: str) -> str:
    return page.locator(f"#{elem_id} textarea, #{elem_id} input").first.input_value()


def wait_for_columns(page: Any) -> None:
    """Until both models' Dice fields are filled (the second model is done)."""
    page.wait_for_function(
        "() => ['unet', 'resnet'].every(k => "
        "(document.querySelector(`#${k}-dice textarea, #${k}-dice input`) || {}).value)",
        timeout=60_000,
    )


def upload(page: Any, path: Path) -> None:
    for key in ("unet", "resnet"):  # so that waiting sees this request's results, not the last ones
        page.evaluate(f"document.querySelector('#{key}-dice textarea, #{key}-dice input').value = ''")
    page.locator("#upload input[type=file]").set_input_files(str(path))


def screenshot(page: Any, path: Path) -> None:
    """The README's picture: a 256-colour PNG keeps it near 200 KB."""
    picture = Image.open(io.BytesIO(page.screenshot(full_page=True))).convert("RGB")
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.quantize(256).save(path, optimize=True)


def test_browser_upload_pick_and_bad_file(server: DemoServer, tmp_path: Path) -> None:
    sync_api = demo_dependency("playwright.sync_api")
    executable = chromium()
    left: list[str] = []

    def only_loopback(route: Any) -> None:
        url = urlparse(route.request.url)
        if url.scheme in ("data", "blob") or url.hostname in ("127.0.0.1", "localhost", "::1"):
            route.continue_()
        else:  # a font, analytics or update check from the internet would be a bug: record and refuse
            left.append(route.request.url)
            route.abort()

    args = ["--no-sandbox"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []  # root (CI) needs it
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=args)
        try:
            page = browser.new_page(viewport={"width": 1360, "height": 860})
            page.route("**/*", only_loopback)
            page.goto(server.url())
            page.wait_for_selector("#upload input[type=file]", state="attached")
            assert "trained at 96 px" in page.locator("#unet-about").inner_text()
            assert "trained at 128 px" in page.locator("#resnet-about").inner_text()

            (tmp_path / "holiday.jpg").write_text("this is no photo")
            page.locator("#upload input[type=file]").set_input_files(str(tmp_path / "holiday.jpg"))
            page.wait_for_function("() => document.querySelector('#status').innerText.includes('Cannot use')")
            assert "holiday.jpg is not an image" in page.locator("#status").inner_text()

            upload(page, UPLOAD)
            wait_for_columns(page)
            width, height = Image.open(UPLOAD).size
            for key in ("unet", "resnet"):
                size = page.eval_on_selector(f"#{key}-overlay img", "i => [i.naturalWidth, i.naturalHeight]")
                assert size == [width, height], "the overlay keeps the photo's size"
                assert field(page, f"{key}-dice") == "no ground truth for an uploaded photo"
                assert re.match(r"\d+\.\d\d s", field(page, f"{key}-time"))

            page.locator("#pick input").click()
            page.locator("#pick input").fill(TEST_IMAGE)
            page.get_by_role("option", name=TEST_IMAGE, exact=True).click()
            page.wait_for_function(
                "() => /^[01]\\.\\d{4}$/.test((document.querySelector("
                "'#resnet-dice textarea, #resnet-dice input') || {}).value)",
                timeout=60_000,
            )
            dice = {key: float(field(page, f"{key}-dice")) for key in ("unet", "resnet")}
            assert all(0.9 < value <= 1.0 for value in dice.values()), dice
            assert page.locator("#truth img").count() == 1
            assert f"{TEST_IMAGE} (test image)" in page.locator("#status").inner_text()
            if os.environ.get("PETSEG_DEMO_SCREENSHOT"):  # before the controls below change the page
                screenshot(page, ROOT / os.environ["PETSEG_DEMO_SCREENSHOT"])

            threshold = page.locator("#threshold input[type=number]")
            threshold.fill("0.3")
            threshold.press("Enter")
            status = "() => document.querySelector('#status').innerText"
            page.wait_for_function(f"{status}.includes('threshold 0.3')")
            page.locator("#tta input[type=checkbox]").check()
            page.wait_for_function(
                "() => ['unet', 'resnet'].every(k => (document.querySelector("
                "`#${k}-time textarea, #${k}-time input`) || {}).value.includes('flip TTA on'))",
                timeout=60_000,
            )
            assert "threshold 0.3" in page.locator("#status").inner_text()
        finally:
            browser.close()
    assert left == [], f"the page asked for things outside this machine: {left}"


def test_ctrl_c_stops_the_server(server: DemoServer) -> None:
    """Last: stops the module's server the way a user does."""
    assert server.stop() == 0 and "demo stopped" in server.output
