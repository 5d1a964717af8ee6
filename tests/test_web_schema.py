"""The API against its own OpenAPI description, fuzzed with Schemathesis: requests generated from the schema
(valid, and for the upload also invalid: parameters, form fields, bodies) never get a 5xx, and every answer
matches the schema (a documented status code, a body of the documented shape: the one-line Error for every
error). The schema cannot say "a decodable image", so the photos Schemathesis sends are small random PNGs and
JPEGs: every valid request must be colorized (200).

In process (ASGI, no socket), a fixed number of examples per case, derandomized: the same requests on every
run, ~20 s on 2 busy cores."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the web server needs fastapi (pip install -e .[test])")
schemathesis = pytest.importorskip("schemathesis", reason="pip install -e .[test]")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra.numpy import arrays  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.specs.openapi.checks import positive_data_acceptance  # noqa: E402

from koalarization.inference.web.server import create_app  # noqa: E402

from test_colorize import make_weights  # noqa: E402

OPERATIONS = {("GET", "/api/health"), ("POST", "/api/colorize")}
EXAMPLES = 40


def encoded(rgb: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format=fmt)
    return buffer.getvalue()


shapes = st.tuples(st.integers(1, 24), st.integers(1, 24), st.just(3))
photos = st.builds(encoded, arrays(np.uint8, shapes), st.sampled_from(["PNG", "JPEG"]))


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    # The photo's schema is {"type": "string", "format": "binary"}: teach Schemathesis that its values are
    # photos (a registry shared by the whole process; this module is its only user).
    schemathesis.openapi.format("binary", photos)
    weights = [make_weights(tmp_path_factory.mktemp(name)) for name in ("model_a", "model_b")]
    return schemathesis.openapi.from_asgi("/openapi.json", create_app([str(w) for w in weights]))


def test_every_operation_is_fuzzed(api):
    found = {(op.ok().method.upper(), op.ok().path) for op in api.get_all_operations()}
    assert found == OPERATIONS  # a new endpoint must be added to the cases below


@pytest.mark.parametrize("method, path, mode", [
    ("GET", "/api/health", GenerationMode.POSITIVE),
    ("POST", "/api/colorize", GenerationMode.POSITIVE),
    ("POST", "/api/colorize", GenerationMode.NEGATIVE),
], ids=["health", "colorize", "colorize-invalid"])
def test_fuzzed_requests_get_documented_answers(api, method, path, mode):
    @given(case=api[path][method].as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def fuzz(case):
        if mode is GenerationMode.POSITIVE and path == "/api/colorize":
            # Schemathesis may send bytes of its own as the image despite the registered format (file
            # samples, mutations): schema-valid but not a photo. Its own "valid data is accepted" check
            # cannot tell; this one can: a decodable photo gets 200, anything else a documented 415/422.
            response = case.call_and_validate(excluded_checks=[positive_data_acceptance])
            # The served weights are MSE ones, which refuse a temperature (documented 422).
            fields = {**(case.query or {}), **(case.body if isinstance(case.body, dict) else {})}
            expected = (200,) if is_photo(case.body) and fields.get("temperature") is None else (415, 422)
            assert response.status_code in expected, (response.status_code, response.text, repr(case.body)[:600])
        else:
            case.call_and_validate()

    fuzz()


def is_photo(body) -> bool:
    """Whether the upload in a generated body (multipart dict or raw bytes) is an image Pillow decodes."""
    data = body.get("image") if isinstance(body, dict) else body
    data = getattr(data, "data", data)  # schemathesis wraps raw bytes in a Binary
    if not isinstance(data, bytes):
        return False
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
        return True
    except Exception:  # noqa: BLE001 -- any decoding failure means "not a photo" here
        return False
