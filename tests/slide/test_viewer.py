"""The deep-zoom viewer: the DZI pyramid holds the slide, and in a real headless Chromium the page
loads from disk with no console errors, the overlay toggles, and a zoomed-in view shows tissue."""
from __future__ import annotations

import base64
import io
import json
import math
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from openmusk.slide.reader import open_slide
from openmusk.slide.viewer import overlay_image, write_dzi, write_viewer

WINDOW = (900, 700)


@pytest.fixture(scope="module")
def viewer_dir(tmp_path_factory, real_dir: Path) -> Path:
    """A viewer of the real 1000 px tumour image (as a 0.5 µm/px slide) with two overlays:
    'left' has tiles (score 1) on the left half only, 'zero' scores 0 everywhere."""
    out = tmp_path_factory.mktemp("viewer")
    with open_slide(real_dir / "he_tumor_1000px.png", default_mpp=0.5) as slide:
        dzi = write_dzi(slide, out, "slide", tile_size=254, overlap=1)
        w, h = slide.dimensions
    coords = np.array([(x, y) for y in range(0, h, 100) for x in range(0, w, 100)])
    left = coords[coords[:, 0] < w / 2]
    overlay_image(left, np.ones(len(left)), 100, (w, h), out / "overlays" / "left.png", max_size=256)
    overlay_image(coords, np.zeros(len(coords)), 100, (w, h), out / "overlays" / "zero.png", max_size=256)
    write_viewer(out, dzi, [("left", "overlays/left.png"), ("zero", "overlays/zero.png")], title="tumour")
    return out


def test_dzi_pyramid_holds_the_slide(viewer_dir: Path, real_dir: Path) -> None:
    image = np.asarray(Image.open(real_dir / "he_tumor_1000px.png").convert("RGB")).astype(float)
    h, w = image.shape[:2]
    levels = math.ceil(math.log2(max(w, h))) + 1
    files = viewer_dir / "slide_files"
    assert sorted(int(p.name) for p in files.iterdir()) == list(range(levels))
    top = files / str(levels - 1)
    cols, rows = math.ceil(w / 254), math.ceil(h / 254)
    assert len(list(top.glob("*.jpeg"))) == cols * rows
    # tile (1, 1) starts one overlap pixel early and is the image's pixels there (JPEG error aside)
    tile = np.asarray(Image.open(top / "1_1.jpeg")).astype(float)
    assert tile.shape[:2] == (256, 256)
    assert np.abs(tile - image[253:509, 253:509]).mean() < 6
    assert Image.open(files / "0" / "0_0.jpeg").size == (1, 1)       # the 1-pixel top of the pyramid
    assert 'Width="1000"' in (viewer_dir / "slide.dzi").read_text()
    assert (viewer_dir / "openseadragon" / "openseadragon.min.js").is_file()
    assert (viewer_dir / "openseadragon" / "LICENSE.txt").is_file()   # the licence travels with it


def test_overlay_is_transparent_where_no_tile_lies(tmp_path: Path) -> None:
    out = overlay_image(np.array([[0, 0]]), np.array([1.0]), 50, (200, 100), tmp_path / "o.png", max_size=200)
    rgba = np.asarray(Image.open(out))
    assert rgba.shape == (100, 200, 4)
    assert (rgba[:50, :50, 3] == 255).all() and (rgba[:, 60:, 3] == 0).all()
    assert tuple(rgba[0, 0, :3]) == (253, 231, 37)          # viridis(1.0): the top of the 0-1 scale


def _chromium() -> str:
    """The Chromium binary; CI (OPENMUSK_REQUIRE_BROWSER=1, set by .ci/run) must have it."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    if os.environ.get("OPENMUSK_REQUIRE_BROWSER"):
        pytest.fail("Chromium not found; .ci/run installs it (apt-get install -y chromium)")
    pytest.skip("Chromium is not installed (apt-get install -y chromium)")


class Browser:
    """Headless Chromium driven over the DevTools protocol (a pipe, no network port, no extra
    package): open a page, wait for a condition, collect console messages, take screenshots."""

    def __init__(self, profile: Path):
        cmd_r, self._cmd_w = os.pipe()
        self._out_r, out_w = os.pipe()

        def child_fds() -> None:   # Chromium reads commands on fd 3 and writes replies on fd 4
            os.dup2(cmd_r, 3)
            os.dup2(out_w, 4)

        self.proc = subprocess.Popen(
            [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
             f"--window-size={WINDOW[0]},{WINDOW[1]}", f"--user-data-dir={profile}", "about:blank"],
            preexec_fn=child_fds, close_fds=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(cmd_r)
        os.close(out_w)
        self._buffer, self._id, self.console = b"", 0, []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable", session=True)

    def call(self, method: str, session: bool = False, **params) -> dict:
        """Send one command and return its result; console and log events seen meanwhile are kept."""
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params}
        if session:
            msg["sessionId"] = self.session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        while True:
            while b"\0" not in self._buffer:
                chunk = os.read(self._out_r, 1 << 20)
                if not chunk:
                    raise RuntimeError("Chromium closed the DevTools pipe")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("method") == "Runtime.consoleAPICalled":
                self.console.append(" ".join(str(a.get("value", a.get("description"))) for a in reply["params"]["args"]))
            elif reply.get("method") == "Runtime.exceptionThrown":
                self.console.append(reply["params"]["exceptionDetails"].get("text", "exception"))
            elif reply.get("method") == "Log.entryAdded" and reply["params"]["entry"]["level"] == "error":
                self.console.append(reply["params"]["entry"]["text"])
            elif reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page."""
        return self.call("Runtime.evaluate", session=True, expression=expression, returnByValue=True)["result"].get("value")

    def open(self, url: str, timeout: float = 60) -> dict[str, str]:
        """Load ``url`` and wait until the viewer says it is ready; returns its <body> data-* state."""
        self.call("Page.navigate", session=True, url="about:blank")   # a new document, not a hash change
        self.call("Page.navigate", session=True, url=url)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.evaluate("document.body ? Object.assign({}, document.body.dataset) : null")
            if state and state.get("state") == "ready" and self.evaluate(
                    "document.readyState") == "complete":
                time.sleep(0.3)   # one more paint after the last tile
                return state
            time.sleep(0.1)
        raise TimeoutError(f"{url} never became ready")

    def screenshot(self) -> np.ndarray:
        """The viewport as an (H, W, 3) float array."""
        data = self.call("Page.captureScreenshot", session=True, format="png")["data"]
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")).astype(float)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        os.close(self._cmd_w)
        os.close(self._out_r)


def test_viewer_in_headless_chromium(viewer_dir: Path, tmp_path: Path) -> None:
    page = (viewer_dir / "viewer.html").as_uri()
    browser = Browser(tmp_path / "profile")
    try:
        assert browser.open(page + "#overlay=left") == {"state": "ready", "overlay": "left", "errors": "0"}
        left = browser.screenshot()
        browser.evaluate("document.querySelector('input[value=\"\"]').click()")   # toggle the overlay off
        time.sleep(0.5)
        assert browser.evaluate("document.body.dataset.overlay") == ""
        plain = browser.screenshot()
        browser.evaluate("document.querySelector('input[value=zero]').click()")     # and to the other one
        time.sleep(0.5)
        zero = browser.screenshot()
        assert browser.open(page + "#overlay=&zoom=3&x=0.5&y=0.5")["overlay"] == ""
        assert abs(browser.evaluate("viewer.viewport.getZoom()") - 3) < 0.01
        zoom = browser.screenshot()
        console = browser.console
    finally:
        browser.close()
    assert console == []                                  # no console message at all, errors included
    view = slice(80, WINDOW[1] - 160)                     # below the toolbar, above the navigator
    half = WINDOW[0] // 2                                 # the square image is centred: its left half ends here
    diff = np.abs(left - plain)[view].sum(2)
    assert diff[:, half - 150:half - 10].mean() > 40      # the overlay shows where its tiles are ...
    assert diff[:, half + 10:half + 150].mean() < 3       # ... and nowhere else; toggling removes it
    assert np.abs(zero - plain)[view].sum(2)[:, half + 10:half + 150].mean() > 40   # the other covers all
    Image.fromarray(zoom.astype(np.uint8)).save(tmp_path / "zoom.png")
    z = zoom[view]
    stained = (z.max(2) - z.min(2) > 25) & (z.mean(2) < 220)
    assert stained.mean() > 0.5                           # the zoomed view is tissue, not background
    assert z[:, :, 0].std() > 15                          # with structure (nuclei, stroma), not a flat fill
