"""The JAX backend, in an environment without TensorFlow (.ci/run makes one: KOALARIZATION_BACKEND=jax
pip install -e .): the network learns, the in-graph preprocessing is the photo's Lab, and `serve` answers.
Skipped unless Keras runs on JAX (KERAS_BACKEND=jax)."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")
if keras.backend.backend() != "jax":
    pytest.skip("the JAX backend's checks: run with KERAS_BACKEND=jax", allow_module_level=True)

from skimage import color as skcolor  # noqa: E402

from koalarization import color  # noqa: E402
from koalarization.data import images, squash  # noqa: E402
from koalarization.model.preprocessor import Preprocessor  # noqa: E402

from conftest import REPO  # noqa: E402
from test_learning import overfit_two_photos  # noqa: E402


def test_overfits_two_photos_on_jax():
    first, last = overfit_two_photos()
    assert first > 1e-3
    assert last < first / 10, (first, last)


def test_in_graph_preprocessing_is_the_photos_lab():
    """The Preprocessor with the identity warp (a jax.Array out) equals scikit-image's Lab of the photo, scaled
    as the network sees it: L/50 - 1, ab/128."""
    rgb = np.stack([squash.resize_rgb(images.load_rgb(REPO / "data" / f"{n}.jpg"), 64) for n in ("coffee", "rocket")])
    seen = Preprocessor(64, targets=True)(rgb, np.tile(np.eye(2, dtype=np.float32), (2, 1, 1)))
    lightness, ab = seen["L"], seen["ab"]
    assert type(lightness).__module__.startswith("jax")  # computed by JAX, not by NumPy
    lab = skcolor.rgb2lab(rgb)
    np.testing.assert_allclose(np.asarray(lightness), color.scale_l(lab[..., :1]), atol=1e-4)
    np.testing.assert_allclose(np.asarray(ab), color.scale_ab(lab[..., 1:]), atol=1e-4)


def test_serve_answers_health(tmp_path):
    pytest.importorskip("fastapi", reason="serve needs fastapi")
    from fastapi.testclient import TestClient

    from koalarization.inference.web.server import create_app

    from test_colorize import make_weights

    client = TestClient(create_app([str(make_weights(tmp_path))]))
    answer = client.get("/api/health")
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "ok" and answer.json()["models"][0]["embedder"] == "tiny_random"


def test_classification_head_overfits_and_its_temperature_works_on_jax(tiny_model_config):
    from test_distribution import (
        test_classification_head_overfits_one_photo_to_vivid_colour,
        test_temperature_changes_a_compiled_models_output_without_rebuilding,
    )

    test_classification_head_overfits_one_photo_to_vivid_colour()
    test_temperature_changes_a_compiled_models_output_without_rebuilding(tiny_model_config)
