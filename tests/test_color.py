"""Colour conversion: parity with scikit-image on real photos, in NumPy and inside a Keras graph."""

import numpy as np
import pytest
from keras import ops
from PIL import Image
from skimage import color as skcolor

from koalarization import color
from conftest import REPO, SHARED_DATA


def real_photos():
    paths = sorted((REPO / "data").glob("*.jpg"))
    paths += sorted((SHARED_DATA / "coco-val128").glob("*.jpg"))[:4]  # when ../shared is there
    assert len(paths) >= 5
    return [np.asarray(Image.open(p).convert("RGB")) for p in paths]


@pytest.mark.parametrize("xp", ["numpy", "keras"])
def test_rgb_to_lab_matches_skimage_on_real_photos(xp):
    for photo in real_photos():
        rgb = photo.astype(np.float32) / 255.0
        expected = skcolor.rgb2lab(rgb)
        if xp == "numpy":
            got = color.rgb_to_lab(rgb)
        else:
            got = ops.convert_to_numpy(color.rgb_to_lab(ops.convert_to_tensor(rgb), xp=ops))
        assert np.abs(got - expected).max() < 0.05


@pytest.mark.parametrize("xp", ["numpy", "keras"])
def test_lab_to_rgb_matches_skimage_on_real_photos(xp):
    for photo in real_photos():
        lab = skcolor.rgb2lab(photo)
        # Perturbed ab: predictions are not always in gamut, and the clipping must match too.
        lab[..., 1:] += np.random.default_rng(0).normal(0, 30, lab[..., 1:].shape)
        expected = skcolor.lab2rgb(lab)
        if xp == "numpy":
            got = color.lab_to_rgb(lab)
        else:
            got = ops.convert_to_numpy(color.lab_to_rgb(ops.convert_to_tensor(lab.astype(np.float32)), xp=ops))
        # 0.05 / 100 of the L range, in RGB units
        assert np.abs(got - expected).max() < 5e-4


def test_network_ranges_round_trip():
    photo = real_photos()[0]
    lightness, ab = color.rgb_uint8_to_network(photo)
    assert lightness.dtype == np.float32 and ab.dtype == np.float32
    assert lightness.min() >= -1.0 and lightness.max() <= 1.0
    assert np.abs(ab).max() <= 1.0
    back = color.to_uint8(color.network_to_rgb(lightness, ab))
    assert np.abs(back.astype(int) - photo.astype(int)).max() <= 1


def test_gray_from_l_has_that_lightness_and_no_colour():
    lightness, _ = color.rgb_uint8_to_network(real_photos()[1])
    gray = color.gray_rgb_from_l(lightness)
    lab = skcolor.rgb2lab(gray)
    assert np.abs(lab[..., 0] - color.unscale_l(lightness[..., 0])).max() < 0.05
    assert np.abs(lab[..., 1:]).max() < 0.05
