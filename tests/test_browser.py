"""The page in a real browser (system Chromium driven by Playwright): pick and drop photos, see them
colorized by two models, move the saturation slider, download the full-resolution result; previews of any
aspect stay in a bounded box; the API docs render with the network blocked.

Needs /usr/bin/chromium and the `playwright` package (.ci/browser-deps installs both). Never run
`playwright install`: it downloads browsers from a CDN; this test drives the system Chromium instead.
"""

from __future__ import annotations

import base64
import io
import socket
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import color as skcolor

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} missing: run .ci/browser-deps (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright missing: run .ci/browser-deps")
expect = sync_api.expect
# Waiting goes through Playwright's locators and `expect`: the page's Content-Security-Policy forbids the
# eval that `wait_for_function` needs, and the test must see the page under its real policy.
expect.set_options(timeout=60_000)
pytest.importorskip("fastapi", reason="the web server needs fastapi")

from koalarization.data import images  # noqa: E402
from koalarization.inference.web.server import create_app  # noqa: E402

from conftest import REPO, synthetic_photo  # noqa: E402
from test_colorize import make_weights  # noqa: E402

ARTIFACTS = REPO / "tests" / "artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two tiny runs; the page labels them by their folders."""
    return (make_weights(tmp_path_factory.mktemp("model_a")),
            make_weights(tmp_path_factory.mktemp("model_b"), ab_bias=(-0.3, 0.4)))


@pytest.fixture(scope="module")
def server(models):
    """The app on 127.0.0.1 (a free port, bound before uvicorn starts) in a background thread."""
    import uvicorn

    first, second = models
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    app = create_app([str(first), str(second)])
    uv = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not uv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    yield url
    uv.should_exit = True
    thread.join(timeout=10)
    sock.close()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def canvas_pixels(page, index: int) -> np.ndarray:
    """The shown result of the index-th result pane, as uint8 RGB (H, W, 3)."""
    url = page.evaluate("(i) => document.querySelectorAll('canvas.result-canvas')[i].toDataURL('image/png')", index)
    with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as image:
        return np.asarray(image.convert("RGB"))


def set_saturation(page, value: str) -> None:
    page.fill("#saturation", value)  # sets the range input and fires `input`, as dragging does
    for canvas in page.locator("canvas[data-ready]").all():
        expect(canvas).to_have_attribute("data-saturation", value)


def ready_results(page):
    return page.locator("canvas[data-ready=true]")


def chroma(rgb: np.ndarray) -> np.ndarray:
    lab = skcolor.rgb2lab(rgb)
    return np.hypot(lab[..., 1], lab[..., 2])


def api_result(url: str, data: bytes, saturation: float) -> np.ndarray:
    """The server's own result for the same file (sent as a raw body, which the API also accepts)."""
    request = urllib.request.Request(f"{url}/api/colorize?saturation={saturation}", data=data,
                                     headers={"Content-Type": "image/jpeg"})
    with urllib.request.urlopen(request, timeout=60) as response, Image.open(io.BytesIO(response.read())) as image:
        return np.asarray(image)


def test_page_colorizes_adjusts_saturation_and_downloads(server, browser, models, tmp_path):
    photo = tmp_path / "portrait.jpg"  # stored 517 x 333, shown upright as 333 x 517 (EXIF orientation 6)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(synthetic_photo(3, size=(333, 517))).save(photo, quality=95, exif=exif)
    upright = images.load_rgb(photo)
    assert upright.shape == (517, 333, 3)

    page = browser.new_page(accept_downloads=True, viewport={"width": 1280, "height": 900})
    requested, problems = [], []
    page.on("request", lambda r: requested.append(r.url))
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.goto(server)
    page.wait_for_selector("body[data-ready=true]")
    expect(page.locator("#limits")).to_have_text(
        "JPEG, PNG, WebP, TIFF or BMP; up to 32 MB and 89.5 million pixels per photo")

    page.set_input_files("#file-input", str(photo))  # the file picker
    expect(ready_results(page)).to_have_count(2)
    labels = [run.parent.name for run in models]  # both files are colorize.weights.h5: the folders tell apart
    assert page.locator(".model-name").all_inner_texts() == [f"Model 1: {labels[0]}", f"Model 2: {labels[1]}"]
    shown = canvas_pixels(page, 0)
    assert shown.shape == upright.shape
    assert np.array_equal(shown, api_result(server, photo.read_bytes(), 1.0))  # exactly the server's result
    assert np.abs(shown.astype(int) - canvas_pixels(page, 1)).mean() > 5  # two models, two results

    set_saturation(page, "0")
    gray = canvas_pixels(page, 0)
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    assert np.abs(skcolor.rgb2lab(gray)[..., 0] - skcolor.rgb2lab(upright)[..., 0]).max() < 1.0

    set_saturation(page, "0.5")
    half = canvas_pixels(page, 0)
    assert np.abs(half.astype(int) - gray).mean() > 3 and np.abs(half.astype(int) - shown).mean() > 3
    with page.expect_download() as download:
        page.click(".pane.result[data-model='0'] button.download")
    saved = tmp_path / download.value.suggested_filename
    download.value.save_as(saved)
    assert saved.name == f"portrait-colorized-{labels[0]}-saturation50.png"
    with page.expect_download() as other:
        page.click(".pane.result[data-model='1'] button.download")
    assert other.value.suggested_filename == f"portrait-colorized-{labels[1]}-saturation50.png"
    with Image.open(saved) as image:
        assert image.size == (333, 517)  # full resolution, upright
        downloaded = np.asarray(image.convert("RGB"))
    # The page scales the chroma of the saturation-1 result at constant L. Where that result was not limited
    # by the sRGB gamut, this is the server's own saturation 0.5 up to rounding; where it was, the page
    # starts from the fitted colour, so it can only be less colourful than the server there.
    server_half = api_result(server, photo.read_bytes(), 0.5)
    full_chroma, half_chroma, page_chroma = (chroma(x) for x in (shown, server_half, downloaded))
    free = np.abs(half_chroma - 0.5 * full_chroma) < 1.0
    assert free.mean() > 0.5
    difference = np.abs(downloaded.astype(int) - server_half)[free]
    assert difference.mean() < 0.5 and difference.max() <= 3
    assert (page_chroma <= half_chroma + 1.5).all()
    assert np.abs(skcolor.rgb2lab(downloaded)[..., 0] - skcolor.rgb2lab(upright)[..., 0]).max() < 1.0

    # Drag and drop: a second photo, and a file that is not an image.
    dropped = io.BytesIO()
    Image.fromarray(synthetic_photo(4, size=(120, 200))).save(dropped, format="PNG")
    transfer = page.evaluate_handle(
        """([png, text]) => {
            const bytes = (b64) => Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes(png)], "dropped.png", { type: "image/png" }));
            transfer.items.add(new File([bytes(text)], "notes.txt", { type: "text/plain" }));
            return transfer;
        }""", [base64.b64encode(dropped.getvalue()).decode(), base64.b64encode(b"not a photo").decode()])
    page.dispatch_event("#dropzone", "drop", {"dataTransfer": transfer})
    expect(ready_results(page)).to_have_count(4)
    expect(page.locator(".pane[data-error]")).to_have_count(2)
    titles = page.locator(".card-title").all_inner_texts()
    assert titles == ["notes.txt", "dropped.png", "portrait.jpg"]  # newest first
    assert "not an image" in page.locator(".pane[data-error]").first.get_attribute("data-error")
    # Not "Done.": the status says what the server refused, in its own words (once for the two models).
    expect(page.locator("#status")).to_have_text("notes.txt: not an image (send JPEG, PNG, WebP, TIFF or BMP)")
    expect(page.locator("#status")).to_have_class("error")

    # The slider goes as far as the API (400 %); a range input clamps a value over its max.
    set_saturation(page, "4")
    expect(page.locator("#saturation-value")).to_have_text("400 %")

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "colorize-page.png"), full_page=True)
    assert all(url.startswith(server) or url.startswith(("blob:", "data:")) for url in requested), requested
    assert [p for p in problems if "415" not in p] == []  # the 415 of notes.txt is the only console error
    page.close()


def test_previews_keep_a_bounded_box_whatever_the_aspect(server, browser, tmp_path):
    """A 1 x 20000 and a 20000 x 1 photo: every preview box, original and result, stays between 4rem and 70 %
    of the window's height, and each card stays shorter than the window."""
    paths = []
    for name, size in (("tall.png", (20000, 1)), ("wide.png", (1, 20000))):
        Image.fromarray(synthetic_photo(5, size=size)).save(tmp_path / name)
        paths.append(str(tmp_path / name))
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(server)
    page.wait_for_selector("body[data-ready=true]")
    page.set_input_files("#file-input", paths)
    expect(ready_results(page)).to_have_count(4)
    expect(page.locator("#status")).to_have_text("Done.")
    previews = page.locator(".pane img, .pane canvas").all()
    assert len(previews) == 6
    for preview in previews:
        box = preview.bounding_box()
        assert 60 <= box["height"] <= 0.7 * 900 + 1 and box["width"] > 200, box
    for card in page.locator(".card").all():
        assert card.bounding_box()["height"] < 900
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "colorize-page-extreme-aspects.png"), full_page=True)
    page.close()


def test_api_docs_render_with_the_network_blocked(server, browser):
    """/docs (Swagger UI) loads nothing from outside this server: every other request is aborted, and the
    operations still render."""
    page = browser.new_page()
    blocked, problems = [], []

    def only_this_server(route):
        if route.request.url.startswith(server):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    page.route("**/*", only_this_server)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto(server + "/docs")
    operations = page.locator(".opblock-summary-path")
    expect(operations).to_have_count(2)
    assert sorted(operations.all_inner_texts()) == ["/api/colorize", "/api/health"]
    expect(page.locator(".opblock-post")).to_have_count(1)
    assert blocked == [] and problems == []
    page.close()
