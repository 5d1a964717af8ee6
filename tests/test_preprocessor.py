"""The Preprocessor (training's and the exported model's data side, in the graph) makes the inputs that
`colorize` and `test` make in NumPy with Pillow (data/cache.photo_inputs)."""

from __future__ import annotations

import numpy as np
import pytest

from koalarization import color
from koalarization.data import images
from koalarization.data.cache import photo_inputs
from koalarization.model.preprocessor import Preprocessor

from conftest import REPO


@pytest.mark.parametrize("name", ["coffee", "rocket"])
def test_a_full_photo_becomes_what_colorize_feeds_the_network(name):
    rgb = images.load_rgb(REPO / "data" / f"{name}.jpg")
    small, for_embedder, _ = photo_inputs(rgb, 64, 224)
    seen = Preprocessor(64, 224)(rgb[None])
    assert set(seen) == {"L", "L_embedder"}
    # Pillow's squash to the level, then the same L: equal within float32
    np.testing.assert_allclose(np.asarray(seen["L"])[0], color.network_lightness(small), atol=1e-5)
    np.testing.assert_allclose(np.asarray(seen["L_embedder"])[0], for_embedder, atol=1e-5)


def test_a_photo_at_the_working_size_is_not_resampled_and_targets_are_its_own_colour():
    rgb = np.random.default_rng(3).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    seen = Preprocessor(16, targets=True)(rgb)
    assert set(seen) == {"L", "ab"}
    np.testing.assert_allclose(np.asarray(seen["L"]), color.network_lightness(rgb), atol=1e-5)
    np.testing.assert_allclose(np.asarray(seen["ab"]), color.network_ab(rgb), atol=1e-5)


def test_the_layer_round_trips_through_its_config():
    layer = Preprocessor(32, 224, fill="reflect", targets=True)
    again = Preprocessor.from_config(layer.get_config())
    assert (again.size, again.resolution, again.fill, again.targets) == (32, 224, "reflect", True)
