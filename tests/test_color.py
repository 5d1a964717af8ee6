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
    lightness, ab = color.network_lightness(photo), color.network_ab(photo)
    assert lightness.dtype == np.float32 and ab.dtype == np.float32
    assert lightness.min() >= -1.0 and lightness.max() <= 1.0
    assert np.abs(ab).max() <= 1.0
    back = color.to_uint8(color.network_to_rgb(lightness, ab))
    assert np.abs(back.astype(int) - photo.astype(int)).max() <= 1


def test_gray_from_l_has_that_lightness_and_no_colour():
    lightness = color.network_lightness(real_photos()[1])
    gray = color.gray_rgb_from_l(lightness)
    lab = skcolor.rgb2lab(gray)
    assert np.abs(lab[..., 0] - color.unscale_l(lightness[..., 0])).max() < 0.05
    assert np.abs(lab[..., 1:]).max() < 0.05


@pytest.mark.parametrize("xp", ["numpy", "keras"])
def test_pixel_kernel_formulas_agree_with_the_plain_conversion(xp):
    """lab_f_of_luminance / linear_from_lab_f / srgb255_from_linear (the colorize kernels' fast path) against
    rgb_to_lab / lab_to_rgb, on every uint8 grey level and on real photos with perturbed ab."""
    def run(fn, *args):
        if xp == "numpy":
            return fn(*args, xp=np)
        return ops.convert_to_numpy(fn(*[ops.convert_to_tensor(a) for a in args], xp=ops))

    levels = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, -1)
    for photo in [levels, *real_photos()[:3]]:
        lab = color.rgb_to_lab(photo.astype(np.float64) / 255.0)
        index = photo if xp == "numpy" else photo.astype(np.int32)
        fy = run(color.lab_f_of_luminance, index)
        assert np.abs((116.0 * fy - 16.0) - lab[..., 0]).max() < 2e-3
        lab[..., 1:] += np.random.default_rng(0).normal(0, 30, lab[..., 1:].shape)
        a, b = lab[..., 1].astype(np.float32), lab[..., 2].astype(np.float32)
        linear = [run(lambda *c, xp: color.linear_from_lab_f(*c, xp=xp)[i], fy, a, b) for i in range(3)]
        inside = np.all([(c > 0) & (c < 1) for c in linear], axis=0)
        expected = color.lab_to_rgb(np.stack([116.0 * fy - 16.0, a, b], -1))
        # the gamut test, on linear RGB instead of sRGB: the same answer, but for float rounding at the edge
        assert np.mean(inside != np.all((expected > 0) & (expected < 1), axis=-1)) < 1e-4
        got = np.stack([run(color.srgb255_from_linear, c) for c in linear], -1)
        assert np.abs(got - np.rint(expected * 255)).max() <= 1
