"""model/resize.py is Pillow's bilinear resize, so the exported model sees what colorize sees."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFilter

from koalarization.config import REDUCING_GAP
from koalarization.data import squash
from koalarization.model import resize


def pillow_squash(rgb: np.ndarray, side: int) -> np.ndarray:
    return squash.resize_rgb_each(rgb, [side])[0].astype(np.int16)


def graph_squash(rgb: np.ndarray, side: int) -> np.ndarray:
    out = resize.squash_uint8(rgb[None].astype(np.float64), side, REDUCING_GAP)
    return np.asarray(out)[0].astype(np.int16)


def photo(rng, height: int, width: int) -> np.ndarray:
    """Noise blurred a little: photo-like gradients, with every rounding case still present."""
    noise = Image.fromarray(rng.integers(0, 256, (height, width, 3)).astype(np.uint8))
    return np.asarray(noise.filter(ImageFilter.GaussianBlur(1.5)))


# (height, width, side): shrink by < 3 (one bilinear pass), by > 3 on one axis or both (box reduction first,
# partial last blocks), enlarge, enlarge one axis and shrink the other, unchanged.
WIDE = [(300, 396, 224), (713, 800, 64), (250, 700, 64), (191, 193, 64), (20, 27, 32), (40, 130, 64),
        (64, 64, 64), (97, 1000, 32)]


@pytest.mark.parametrize("height,width,side", WIDE)
def test_squash_is_pillow_exactly_for_landscape_and_square_photos(height, width, side):
    rgb = photo(np.random.default_rng(height * width), height, width)
    assert np.array_equal(graph_squash(rgb, side), pillow_squash(rgb, side))


@pytest.mark.parametrize("height,width,side", [(396, 300, 224), (800, 450, 64), (130, 40, 64), (27, 20, 32)])
def test_squash_is_within_a_level_of_pillow_for_portrait_photos(height, width, side):
    """Pillow 13 resizes some portrait photos height first, rounding in between in the other order."""
    rgb = photo(np.random.default_rng(height + width), height, width)
    diff = np.abs(graph_squash(rgb, side) - pillow_squash(rgb, side))
    assert diff.max() <= 1 and diff.mean() < 0.3


@pytest.mark.parametrize("height,width", [(300, 400), (20, 27), (64, 64), (1000, 50), (7, 500)])
def test_float_resize_is_pillows(height, width):
    ab = np.random.default_rng(width).normal(size=(64, 64, 2)).astype(np.float32)
    want = np.stack([np.asarray(Image.fromarray(ab[..., c], "F").resize((width, height), Image.Resampling.BILINEAR))
                     for c in range(2)], axis=-1)
    got = np.asarray(resize.resize_float(ab[None], height, width))[0]
    assert got.shape == (height, width, 2)
    assert np.abs(got - want).max() < 1e-5
