"""The HTTP API with FastAPI's TestClient: results, parameters, limits, bad uploads, nothing on disk, the
bounded queue, model labels and the OpenAPI description of it all."""

from __future__ import annotations

import asyncio
import io
import re
import struct
import tempfile
import threading
import time
import zlib

import numpy as np
import pytest
from PIL import Image
from skimage import color as skcolor

pytest.importorskip("fastapi", reason="the web server needs fastapi (pip install -e .[test])")
from fastapi import HTTPException  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from starlette.requests import Request  # noqa: E402

from koalarization.data import images  # noqa: E402
from koalarization.inference.web import server  # noqa: E402
from koalarization.inference.web.server import create_app, model_labels, read_body  # noqa: E402

from conftest import synthetic_photo  # noqa: E402
from test_colorize import make_weights  # noqa: E402

MAX_UPLOAD = 2_000_000
MAX_PIXELS = 4_000_000


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    first = make_weights(tmp_path_factory.mktemp("model_a"))
    second = make_weights(tmp_path_factory.mktemp("model_b"), ab_bias=(-0.3, 0.4))
    return first, second


@pytest.fixture(scope="module")
def client(weights):
    return TestClient(create_app([str(w) for w in weights], max_upload_bytes=MAX_UPLOAD, max_pixels=MAX_PIXELS))


def png_bytes(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def decode(content: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(content)) as image:
        return np.asarray(image.convert("RGB"))


def post_image(client, data: bytes, name="photo.png", params=None, fields=None):
    return client.post("/api/colorize", params=params or {}, data=fields or {},
                       files={"image": (name, data, "application/octet-stream")})


def bomb_png(side: int = 30_000) -> bytes:
    """A valid 1-bit PNG of side x side pixels that compresses to ~100 KB: a decompression bomb."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    row = b"\x00" * (1 + side // 8)  # filter byte + packed bits
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row * 1000) for _ in range(side // 1000)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_health_lists_models_and_limits(client, weights):
    health = client.get("/api/health").json()
    assert health["status"] == "ok" and [m["index"] for m in health["models"]] == [0, 1]
    assert [m["label"] for m in health["models"]] == [w.parent.name for w in weights]  # the run folders
    assert health["models"][0]["image_size"] == 32 and health["max_upload_bytes"] == MAX_UPLOAD
    assert health["max_pixels"] == MAX_PIXELS


def test_colorize_returns_the_full_resolution_photo_with_its_own_lightness(client, weights):
    photo = synthetic_photo(1, size=(333, 517))
    response = post_image(client, png_bytes(photo), name="my photo.png")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    # Two models: the file name says which one, so the two results of one photo are saved side by side.
    assert f'filename="my_photo-colorized-{weights[0].parent.name}.png"' in response.headers["content-disposition"]
    second = post_image(client, png_bytes(photo), name="my photo.png", params={"model": 1})
    assert f'filename="my_photo-colorized-{weights[1].parent.name}.png"' in second.headers["content-disposition"]
    out = decode(response.content)
    assert out.shape == photo.shape
    assert np.abs(skcolor.rgb2lab(out)[..., 0] - skcolor.rgb2lab(photo)[..., 0]).max() < 1.0


def test_parameters_as_query_or_form_fields(client):
    data = png_bytes(synthetic_photo(2, size=(60, 80)))
    for response in (post_image(client, data, params={"saturation": 0}),
                     post_image(client, data, fields={"saturation": "0"})):
        assert response.status_code == 200
        gray = decode(response.content)
        assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    first, second = (decode(post_image(client, data, params={"model": m}).content).astype(int) for m in (0, 1))
    assert np.abs(first - second).mean() > 5  # the two models differ
    jpeg = post_image(client, data, fields={"format": "jpeg"})
    assert jpeg.headers["content-type"] == "image/jpeg" and jpeg.content[:2] == b"\xff\xd8"
    raw = client.post("/api/colorize", content=data, headers={"content-type": "image/png"})
    assert raw.status_code == 200 and decode(raw.content).shape == (60, 80, 3)


@pytest.mark.parametrize("params, fields, message", [
    ({"model": 2}, {}, "model: Input should be less than or equal to 1 (got '2')"),
    ({}, {"model": "2"}, "model: Input should be less than or equal to 1 (got '2')"),
    ({"saturation": 9}, {}, "saturation: Input should be less than or equal to 4 (got '9')"),
    ({}, {"saturation": "nan"}, "saturation: Input should be less than or equal to 4 (got 'nan')"),
    ({}, {"saturation": "lots"}, "saturation: Input should be a valid number, unable to parse string as a number "
                                 "(got 'lots')"),
    ({"format": "gif"}, {}, "format: Input should be 'png' or 'jpeg' (got 'gif')"),
    ({}, {"format": "gif"}, "format: Input should be 'png' or 'jpeg' (got 'gif')"),
], ids=["model-query", "model-form", "saturation-query", "saturation-nan-form", "saturation-text-form",
        "format-query", "format-form"])
def test_bad_parameters_are_422_with_one_line(client, params, fields, message):
    """Query parameters (checked by FastAPI) and form fields (checked here) answer in the same one shape."""
    response = post_image(client, png_bytes(synthetic_photo(3)), params=params, fields=fields)
    assert response.status_code == 422 and response.json() == {"detail": message}


def test_non_image_broken_image_and_missing_field(client):
    response = post_image(client, b"just some text, not a photo", name="notes.txt")
    assert response.status_code == 415 and "notes.txt: not an image" in response.json()["detail"]
    broken = png_bytes(synthetic_photo(4))[:400]
    response = post_image(client, broken, name="cut.png")
    assert response.status_code == 422 and response.json()["detail"].startswith("cut.png: ")
    response = client.post("/api/colorize", files={"photo": ("a.png", broken, "image/png")})
    assert response.status_code == 422 and "field 'image'" in response.json()["detail"]


def test_oversize_uploads_are_413(client):
    response = post_image(client, b"\x89PNG" + bytes(MAX_UPLOAD + 10))
    assert response.status_code == 413 and response.json()["detail"] == (
        "photo.png: 2,000,014 bytes is over this server's limit of 2,000,000 bytes")  # both 1.9 MB
    # A declared Content-Length over the limit is refused from the header alone (the body here is tiny).
    response = client.post("/api/colorize", content=b"tiny", headers={"content-length": str(48_000_000)})
    assert response.status_code == 413 and response.json()["detail"] == (
        "upload of 45.8 MB is over this server's limit of 1.9 MB")


@pytest.mark.parametrize("count, text", [(33554432, "32 MB"), (48_000_000, "45.8 MB"), (2_000_000, "1.9 MB"),
                                         (5000, "4.9 kB"), (1024, "1 kB")])
def test_byte_counts_for_people(count, text):
    assert server.megabytes(count) == text


@pytest.mark.parametrize("count, text", [(40_000_000, "40 million"), (39_690_000, "39.7 million"),
                                         (200_000, "0.2 million"), (65536, "65,536")])
def test_pixel_counts_for_people(count, text):
    assert images.pixel_count(count) == text


def test_body_reading_stops_at_the_limit():
    sent = []

    async def receive():
        sent.append(1)
        return {"type": "http.request", "body": bytes(1000), "more_body": len(sent) < 1000}

    request = Request({"type": "http", "method": "POST", "headers": []}, receive)  # chunked: no length
    with pytest.raises(HTTPException) as error:
        asyncio.run(read_body(request, limit=5000))
    assert error.value.status_code == 413 and len(sent) == 6  # 6 KB read of the 1 MB body, then refused


def test_decompression_bomb_and_pixel_limit_are_413(client):
    bomb = bomb_png()
    assert len(bomb) < 200_000
    response = post_image(client, bomb, name="bomb.png")
    assert response.status_code == 413 and "pixels" in response.json()["detail"]
    big = png_bytes(np.zeros((2500, 2000, 3), np.uint8))  # 5 MP: under Pillow's limit, over this server's
    response = post_image(client, big, name="big.png")
    assert response.status_code == 413 and response.json()["detail"] == (
        "big.png: 2000x2500 is 5 million pixels; at most 4 million pixels are accepted")


def test_an_upload_is_opened_and_decoded_once(client, monkeypatch):
    """The pixel limit is read from the header of the same opened image that is then decoded."""
    opened = []
    real_open = Image.open

    def counting_open(*args, **kwargs):
        opened.append(1)
        return real_open(*args, **kwargs)

    monkeypatch.setattr(Image, "open", counting_open)
    response = post_image(client, png_bytes(np.full((48, 64, 3), (200, 40, 40), np.uint8)))
    assert response.status_code == 200 and len(opened) == 1


def test_uploads_never_touch_the_disk(client, tmp_path, monkeypatch):
    """Over 1 MB (where Starlette would spool to a temporary file), a bomb and a non-image: no file appears
    in the temp folder or the working folder, and creating a temporary file would have failed loudly."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")

    def no_disk(*args, **kwargs):
        raise AssertionError("an upload was written to a temporary file")

    for name in ("TemporaryFile", "NamedTemporaryFile", "mkstemp", "mkdtemp"):
        monkeypatch.setattr(tempfile, name, no_disk)
    noisy = np.random.default_rng(0).integers(0, 256, (700, 650, 3), dtype=np.uint8)
    large = png_bytes(noisy)
    assert 1_100_000 < len(large) < MAX_UPLOAD
    before = sorted(p.name for p in (tmp_path / "tmp").iterdir()), sorted(p.name for p in (tmp_path / "cwd").iterdir())
    assert post_image(client, large).status_code == 200
    assert post_image(client, bomb_png(20_000)).status_code == 413
    assert post_image(client, b"text").status_code == 415
    after = sorted(p.name for p in (tmp_path / "tmp").iterdir()), sorted(p.name for p in (tmp_path / "cwd").iterdir())
    assert before == after == ([], [])


def test_concurrent_requests_share_the_models_safely(client):
    photos = [png_bytes(synthetic_photo(20 + i, size=(50 + 9 * i, 70))) for i in range(3)]
    expected = [post_image(client, p).content for p in photos]
    results = [None] * 6

    def work(i):
        results[i] = post_image(client, photos[i % 3]).content

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, content in enumerate(results):
        assert np.array_equal(decode(content), decode(expected[i % 3]))


def test_page_and_openapi_are_served_locally(client):
    page = client.get("/")
    assert page.status_code == 200 and "default-src 'self'" in page.headers["content-security-policy"]
    assets = re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text)
    assert {"/static/app.js", "/static/color.js", "/static/style.css"} <= set(assets)
    for asset in assets:
        body = client.get(asset)
        # No CDN, no network: the only URL allowed is SVG's XML namespace, which is a name, not a fetch.
        assert body.status_code == 200 and not re.search(r"https?://(?!www\.w3\.org/2000/svg\b)", body.text)
    # The API docs too: swagger-ui's script and style come from this server, and nothing else is fetched.
    docs = client.get("/docs")
    assert docs.status_code == 200 and not re.search(r"https?://", docs.text)
    docs_assets = re.findall(r"""(?:src|href|url)\s*[=:]\s*['"](/[^'"]+)['"]""", docs.text)
    assert {"/swagger-ui/swagger-ui-bundle.js", "/swagger-ui/swagger-ui.css", "/openapi.json"} <= set(docs_assets)
    for asset in docs_assets:
        assert client.get(asset).status_code == 200, asset


def test_openapi_documents_limits_and_every_error_in_one_shape(client, weights):
    schema = client.get("/openapi.json").json()
    upload = schema["paths"]["/api/colorize"]["post"]
    form = upload["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    assert "image" in form and form["model"]["maximum"] == 1 and form["saturation"]["maximum"] == 4
    parameters = {p["name"]: p["schema"] for p in upload["parameters"]}
    assert parameters["model"]["maximum"] == 1 and parameters["saturation"]["maximum"] == 4
    assert parameters["format"]["enum"] == ["png", "jpeg"]
    for phrase in ("1.9 MB", "4 million pixels", f"1 = {weights[1].parent.name}", "503 with Retry-After"):
        assert phrase in upload["description"]
    for code in ("400", "413", "415", "422", "503"):
        assert upload["responses"][code]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/Error"}
    assert "Retry-After" in upload["responses"]["503"]["headers"]
    assert schema["components"]["schemas"]["Error"]["properties"]["detail"]["type"] == "string"
    assert "HTTPValidationError" not in schema["components"]["schemas"]  # FastAPI's list-shaped 422 is gone
    health = schema["paths"]["/api/health"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert health == {"$ref": "#/components/schemas/Health"}


def test_models_get_labels_that_tell_them_apart(tmp_path):
    from koalarization.run import SHIPPED_WEIGHTS

    run_a, run_b = tmp_path / "runs" / "a" / "colorize.weights.h5", tmp_path / "runs" / "b" / "colorize.weights.h5"
    assert model_labels([SHIPPED_WEIGHTS]) == ["shipped"]
    assert model_labels([run_a, SHIPPED_WEIGHTS]) == ["a", "shipped"]
    assert model_labels([run_a, run_b]) == ["a", "b"]
    # Two runs both in folders named "weights": the parent folders tell them apart.
    assert model_labels([tmp_path / "x" / "weights" / "w.h5", tmp_path / "y" / "weights" / "w.h5"]) == [
        "x/weights", "y/weights"]
    assert model_labels([SHIPPED_WEIGHTS, SHIPPED_WEIGHTS]) == ["shipped #1", "shipped #2"]
    assert model_labels([run_a, run_a]) == ["runs/a #1", "runs/a #2"]


def test_work_in_flight_is_bounded_and_the_rest_is_503_at_once(weights, monkeypatch):
    """1 photo colorizing + 1 waiting: of 5 uploads sent at once while the work is held up, 3 are refused
    with 503 and Retry-After within seconds, and the 2 admitted ones succeed once the work goes on."""
    app = create_app([str(weights[0])], max_running=1, max_waiting=1)
    gate, decoding = threading.Event(), threading.Semaphore(0)
    real_decode = server.decode_upload

    def slow_decode(*args):
        decoding.release()
        gate.wait(60)
        return real_decode(*args)

    monkeypatch.setattr(server, "decode_upload", slow_decode)
    data = png_bytes(synthetic_photo(7, size=(40, 30)))
    results = {}  # i -> (response, seconds after the start)
    started = time.monotonic()

    def send(i):
        with TestClient(app) as own:  # one client per thread: TestClient runs each on its own event loop
            response = post_image(own, data)
        results[i] = response, time.monotonic() - started

    threads = [threading.Thread(target=send, args=(i,)) for i in range(5)]
    try:
        for t in threads:
            t.start()
        assert decoding.acquire(timeout=60)  # the first admitted upload is being worked on
        deadline = time.monotonic() + 60
        while len(results) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        refused = dict(results)  # the admitted two are held up: whatever has answered was refused
        assert len(refused) == 3, refused
    finally:
        gate.set()
        for t in threads:
            t.join(60)
    for response, seconds in refused.values():
        assert response.status_code == 503 and response.headers["retry-after"] == "5"
        assert response.json()["detail"].startswith("busy: ") and seconds < 30
    accepted = [response for i, (response, _) in results.items() if i not in refused]
    assert [r.status_code for r in accepted] == [200, 200]
    assert decode(accepted[0].content).shape == (40, 30, 3)
    with TestClient(app) as again:  # every slot was given back
        assert post_image(again, data).status_code == 200



def test_serve_command_refuses_more_than_two_models(tmp_path, capsys):
    from koalarization.cli import main

    assert main(["serve"] + ["--weights", str(tmp_path / "w.h5")] * 3) == 1
    assert "--weights given 3 times: the page compares at most two models" in capsys.readouterr().err
