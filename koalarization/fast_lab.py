"""uint8 RGB -> the network's L and ab, fast: what the batch source runs for every photo (data.py).

color.rgb_uint8_to_network computes the same numbers with float powers over whole (B, S, S, 3) arrays:
16-28 ms a 256 px photo, more than decoding and warping it together. Here sRGB -> linear is a 256-entry
table (the input is uint8, so the table is exact), XYZ is three multiply-adds per plane, and the cube root
is exp(log(t) / 3) (vectorised in NumPy); one photo at a time, so every plane stays in cache: 2-4 ms, equal
to float32 precision (tests/test_benchmark.py checks it against color.py and scikit-image). The constants
are color.py's; this could replace the body of color.rgb_uint8_to_network.
"""

from __future__ import annotations

import numpy as np

from koalarization import color

_LINEAR = color.srgb_to_linear(np.arange(256) / 255.0).astype(np.float32)
_XYZ = (color.XYZ_FROM_RGB / color.WHITE_D65[:, None]).astype(np.float32)  # rows: X/Xn, Y/Yn, Z/Zn
_EPS, _KAPPA, _OFFSET = (np.float32(v) for v in (color._LAB_EPSILON, color._LAB_KAPPA, color._LAB_OFFSET))
# CIE Lab (as color.rgb_to_lab): L = 116 fy - 16, a = 500 (fx - fy), b = 200 (fy - fz); then the network scaling.
_L_GAIN, _L_BIAS = np.float32(116.0 / color.L_HALF), np.float32(16.0 / color.L_HALF + 1.0)
_A_GAIN, _B_GAIN = np.float32(500.0 / color.AB_SCALE), np.float32(200.0 / color.AB_SCALE)


def _lab_f(t: np.ndarray) -> np.ndarray:
    """The CIE Lab non-linearity, in place where possible: cube root above epsilon, a line below."""
    root = np.maximum(t, _EPS)
    np.log(root, out=root)
    root *= np.float32(1.0 / 3.0)
    np.exp(root, out=root)
    low = t <= _EPS
    if low.any():
        root[low] = t[low] * _KAPPA + _OFFSET
    return root


def rgb_to_network(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 RGB (B, H, W, 3) -> (L (B, H, W, 1) float32 in [-1, 1], ab (B, H, W, 2) float32 in about [-1, 1]):
    color.rgb_uint8_to_network, fast (see above)."""
    lightness = np.empty((*rgb.shape[:-1], 1), np.float32)
    ab = np.empty((*rgb.shape[:-1], 2), np.float32)
    for i in range(rgb.shape[0]):
        red, green, blue = np.take(_LINEAR, np.moveaxis(rgb[i], -1, 0))  # linear planes (H, W)
        fx, fy, fz = (_lab_f(red * m[0] + green * m[1] + blue * m[2]) for m in _XYZ)
        np.multiply(fy, _L_GAIN, out=lightness[i, ..., 0])
        lightness[i, ..., 0] -= _L_BIAS
        np.subtract(fx, fy, out=ab[i, ..., 0])
        ab[i, ..., 0] *= _A_GAIN
        np.subtract(fy, fz, out=ab[i, ..., 1])
        ab[i, ..., 1] *= _B_GAIN
    return lightness, ab
