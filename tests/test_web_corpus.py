"""Every case of the bad-input corpus (tests/corpus.py) through the upload API: the good ones come back
colorized at their upright size, the bad ones are a 4xx with a one-line JSON message, never a 500."""

from __future__ import annotations

import io

import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the web server needs fastapi (pip install -e .[test])")
from fastapi.testclient import TestClient  # noqa: E402

from koalarization.inference.web.server import create_app  # noqa: E402

from corpus import make_corpus  # noqa: E402
from test_colorize import make_weights  # noqa: E402


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    return TestClient(create_app([str(make_weights(tmp_path_factory.mktemp("model")))]))


def upload(client, data: bytes, name: str, raw: bool):
    if raw:  # the photo as the whole request body
        return client.post("/api/colorize", content=data, headers={"content-type": "application/octet-stream"})
    return client.post("/api/colorize", files={"image": (name, data, "application/octet-stream")})


@pytest.mark.parametrize("raw", [False, True], ids=["multipart", "raw_body"])
def test_every_corpus_case_through_the_api(client, corpus, raw):
    checked = {"ok": 0, "error": 0}
    for name, case in corpus.items():
        if case.web == "n/a":  # a link or a permission: an upload has neither
            continue
        response = upload(client, case.path.read_bytes(), case.path.name, raw)
        if case.web == "ok":
            assert response.status_code == 200, (name, response.text)
            assert response.headers["content-type"] == "image/png"
            with Image.open(io.BytesIO(response.content)) as out:
                assert out.format == "PNG" and out.size == case.size, name
        else:
            assert 400 <= response.status_code < 500, (name, response.status_code, response.text)
            detail = response.json()["detail"]
            assert isinstance(detail, str) and detail and "\n" not in detail, (name, detail)
        checked[case.web] += 1
    assert checked["ok"] >= 10 and checked["error"] >= 6, checked
