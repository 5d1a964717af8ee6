"""Colour: sRGB <-> CIE Lab and the scaling to the network's ranges. The only owner of colour constants.

Every function with more than arithmetic in it takes an array namespace `xp` (NumPy by default, or
`keras.ops` inside a model graph; the scalings are plain arithmetic, the same in both), so
the same arithmetic serves the data pipeline, the metrics and the model; the names used below exist with
the same meaning in both namespaces.

Ranges at the boundaries:
    rgb            (..., 3) float in [0, 1], sRGB
    lab            (..., 3) float: L in [0, 100], a and b roughly in [-128, 127]
    L scaled       (..., 1) float in [-1, 1]        (reference Keras scaling: L / 50 - 1)
    ab scaled      (..., 2) float in about [-1, 1]  (reference Keras scaling: ab / 128)

The constants are scikit-image's (D65 white, 2 degree observer, the sRGB matrix it uses), so our conversion
agrees with `skimage.color.rgb2lab` / `lab2rgb` to float precision (tests/test_color.py checks this).
"""

from __future__ import annotations

import functools

import numpy as np

# sRGB primaries -> CIE XYZ (scikit-image's `xyz_from_rgb`, from the sRGB specification).
XYZ_FROM_RGB = np.array(
    [
        [0.412453, 0.357580, 0.180423],
        [0.212671, 0.715160, 0.072169],
        [0.019334, 0.119193, 0.950227],
    ]
)
RGB_FROM_XYZ = np.linalg.inv(XYZ_FROM_RGB)
# D65 reference white, 2 degree observer.
WHITE_D65 = np.array([0.95047, 1.0, 1.08883])

# CIE Lab non-linearity: cube root above EPSILON, a line below (the values skimage uses).
_LAB_EPSILON = 0.008856
_LAB_KAPPA = 7.787
_LAB_OFFSET = 16.0 / 116.0
_LAB_F_EPSILON = 0.2068966  # f(EPSILON): where the inverse switches branch

# sRGB transfer function.
_SRGB_LINEAR_LIMIT = 0.04045
_SRGB_INVERSE_LIMIT = 0.0031308

# Network scaling (docs/reference.md, "Training recipes", Keras reproduction column).
L_HALF = 50.0  # L / 50 - 1 maps [0, 100] onto [-1, 1]
AB_SCALE = 128.0  # ab / 128 maps [-128, 128] onto [-1, 1]


def _matmul_last(x, matrix, xp):
    """(..., 3) @ matrix.T, with the matrix as a constant of x's dtype."""
    return xp.matmul(x, _const(matrix.T, x, xp))


def _cbrt(x, xp):
    # x >= 0 here; power avoids needing a cbrt op in every namespace.
    return xp.power(xp.maximum(x, 0.0), 1.0 / 3.0)


def srgb_to_linear(rgb, xp=np):
    """sRGB in [0, 1] -> linear RGB in [0, 1]."""
    high = xp.power(xp.maximum(rgb + 0.055, 0.0) / 1.055, 2.4)
    return xp.where(rgb > _SRGB_LINEAR_LIMIT, high, rgb / 12.92)


def linear_to_srgb(linear, xp=np):
    """Linear RGB -> sRGB, clipped to [0, 1] (as skimage does)."""
    high = 1.055 * xp.power(xp.maximum(linear, _SRGB_INVERSE_LIMIT), 1.0 / 2.4) - 0.055
    return xp.clip(xp.where(linear > _SRGB_INVERSE_LIMIT, high, linear * 12.92), 0.0, 1.0)


def rgb_to_lab(rgb, xp=np):
    """sRGB (..., 3) in [0, 1] -> Lab (..., 3): L in [0, 100], a/b in about [-128, 127]."""
    xyz = _matmul_last(srgb_to_linear(rgb, xp), XYZ_FROM_RGB, xp) / _const(WHITE_D65, rgb, xp)
    f = xp.where(xyz > _LAB_EPSILON, _cbrt(xyz, xp), _LAB_KAPPA * xyz + _LAB_OFFSET)
    fx, fy, fz = f[..., 0], f[..., 1], f[..., 2]
    return xp.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], axis=-1)


def lab_to_rgb(lab, xp=np):
    """Lab (..., 3) -> sRGB (..., 3) in [0, 1]; out-of-gamut colours are clipped, as in skimage."""
    fy = (lab[..., 0] + 16.0) / 116.0
    fx = lab[..., 1] / 500.0 + fy
    # skimage clips negative Z (before the non-linearity) to 0; f(0) = 0 gives the same result.
    fz = xp.maximum(fy - lab[..., 2] / 200.0, 0.0)
    f = xp.stack([fx, fy, fz], axis=-1)
    xyz = xp.where(f > _LAB_F_EPSILON, f * f * f, (f - _LAB_OFFSET) / _LAB_KAPPA)
    xyz = xyz * _const(WHITE_D65, lab, xp)
    return linear_to_srgb(_matmul_last(xyz, RGB_FROM_XYZ, xp), xp)


def _const(values, like, xp):
    if xp is np:
        return values.astype(like.dtype if like.dtype.kind == "f" else np.float64)
    return xp.cast(xp.convert_to_tensor(values.astype("float32")), like.dtype)


# ----------------------------------------------------------------------------------------- network ranges
def scale_l(lightness):
    """L in [0, 100] -> [-1, 1]."""
    return lightness / L_HALF - 1.0


def unscale_l(scaled):
    """[-1, 1] -> L in [0, 100]."""
    return (scaled + 1.0) * L_HALF


def scale_ab(ab):
    """ab in about [-128, 127] -> about [-1, 1]."""
    return ab / AB_SCALE


def unscale_ab(scaled):
    """[-1, 1] -> ab in [-128, 128]."""
    return scaled * AB_SCALE


# uint8 input: sRGB -> linear is exact as a 256-entry table, and the matrix folds in the white point.
_LINEAR_OF_UINT8 = srgb_to_linear(np.arange(256) / 255.0).astype(np.float32)
_XYZ_OVER_WHITE = (XYZ_FROM_RGB / WHITE_D65[:, None]).T.astype(np.float32)


def _fast_power(x, exponent: float, xp):
    """x ** exponent for x > 0 (the callers keep x away from 0)."""
    if xp is np:
        return np.power(x, np.float32(exponent))
    return xp.exp(xp.log(x) * exponent)


def _table(values: np.ndarray, xp):
    return values if xp is np else xp.convert_to_tensor(values)


def network_ab(rgb_uint8, xp=np):
    """uint8 RGB (..., H, W, 3) -> ab scaled (..., H, W, 2) float32: the photo's own colour, as the network
    predicts it (training's targets, the metrics', the bins' prior, the gamut's bins), made here only.

    rgb_to_lab's arithmetic for uint8 input, in float32 with a table for the sRGB curve: several times
    faster than float64 powers and equal to scikit-image within float32 precision (tests/test_color.py).
    In keras.ops the pixels must be int32, as for network_lightness.
    """
    linear = xp.take(_table(_LINEAR_OF_UINT8, xp), rgb_uint8)
    t = xp.matmul(linear, _table(_XYZ_OVER_WHITE, xp))
    f = xp.where(t > _LAB_EPSILON, _fast_power(xp.maximum(t, _LAB_EPSILON), 1.0 / 3.0, xp),
                 _LAB_KAPPA * t + _LAB_OFFSET)
    fx, fy, fz = f[..., 0:1], f[..., 1:2], f[..., 2:3]
    return scale_ab(xp.concatenate([500.0 * (fx - fy), 200.0 * (fy - fz)], axis=-1))


def network_lightness(rgb_uint8, xp=np):
    """uint8 RGB (..., 3) -> L scaled (..., 1) float32 in [-1, 1]: the network's L input, made here only
    (the cache, training's graph, `colorize`, `test`, the exported model), from lab_f_of_luminance, the one
    formula of a photo's L. In keras.ops the pixels must be int32 (an index type every backend gathers with)."""
    return scale_l(116.0 * lab_f_of_luminance(rgb_uint8, xp) - 16.0)[..., None]


def network_to_rgb(l_scaled, ab_scaled, xp=np):
    """(L scaled (..., 1), ab scaled (..., 2)) -> sRGB (..., 3) in [0, 1]."""
    lab = xp.concatenate([unscale_l(l_scaled), unscale_ab(ab_scaled)], axis=-1)
    return lab_to_rgb(lab, xp)


def gray_rgb_from_l(l_scaled, xp=np):
    """L scaled (..., 1) -> the gray sRGB image (..., 3) in [0, 1] with that lightness (a = b = 0).

    This is the "gray photo repeated to 3 channels" that the embedder sees (paper, section 3.2): computed
    from L itself, so the network never needs the colour photo.
    """
    zeros = xp.zeros_like(l_scaled)
    return network_to_rgb(l_scaled, xp.concatenate([zeros, zeros], axis=-1), xp)


# ---------------------------------------------------------------- per-pixel kernels for uint8 photos
# `inference.colorize` compiles these with keras.ops and runs them on every pixel of a photo (12 M for a
# 12 MP photo), so they are written for a compiler, and agree with rgb_to_lab / lab_to_rgb to within
# float rounding (tests/test_color.py):
# - x ** p is exp(p log x): XLA's CPU `power` is a scalar libm call per element (~20 ns), while exp and log
#   are vectorised polynomials (~1 ns); this alone took the 12 MP pixel work from ~2.4 s to ~0.7 s;
# - uint8 sRGB -> linear is the 256-entry table, and L needs only Y (one power instead of six);
# - channels are separate (...,) arrays, so there is no 3x3 matmul for the compiler to call out to;
# - the gamut test is on linear RGB: the sRGB curve is increasing and maps 0 to 0 and 1 to 1, so linear
#   RGB is inside (0, 1) exactly when sRGB is, and gamut fitting needs no power at all.
_Y_FROM_LINEAR = _XYZ_OVER_WHITE[:, 1]
_LINEAR_FROM_XYZ_F = (RGB_FROM_XYZ * WHITE_D65[None, :]).astype(np.float32)  # the white point folded in


def lab_f_of_luminance(rgb_uint8, xp=np):
    """uint8 sRGB (..., 3) -> f(Y) (...,) float32: Lab's non-linearity of the luminance, so L = 116 f(Y) - 16.

    The index must be an integer type the namespace can gather with (uint8 in NumPy, int32 in keras.ops)."""
    linear = xp.take(_table(_LINEAR_OF_UINT8, xp), rgb_uint8)
    y = sum(linear[..., c] * float(_Y_FROM_LINEAR[c]) for c in range(3))
    cube_root = _fast_power(xp.maximum(y, _LAB_EPSILON), 1.0 / 3.0, xp)
    return xp.where(y > _LAB_EPSILON, cube_root, _LAB_KAPPA * y + _LAB_OFFSET)


def linear_from_lab_f(fy, a, b, xp=np):
    """(f(Y) (...,), a (...,), b (...,)) -> linear sRGB (r, g, b), three (...,) arrays, unclipped: a channel
    outside (0, 1) means the colour is outside the sRGB gamut. lab_to_rgb's arithmetic before its curve."""
    fs = (fy + a / 500.0, fy, xp.maximum(fy - b / 200.0, 0.0))
    xyz = [xp.where(f > _LAB_F_EPSILON, f * f * f, (f - _LAB_OFFSET) / _LAB_KAPPA) for f in fs]
    m = _LINEAR_FROM_XYZ_F
    return tuple(xyz[0] * float(m[c, 0]) + xyz[1] * float(m[c, 1]) + xyz[2] * float(m[c, 2]) for c in range(3))


def srgb255_from_linear(linear, xp=np):
    """Linear RGB (any shape) -> sRGB in [0, 255], rounded to integers (still float), clipped."""
    high = 1.055 * _fast_power(xp.maximum(linear, _SRGB_INVERSE_LIMIT), 1.0 / 2.4, xp) - 0.055
    srgb = xp.where(linear > _SRGB_INVERSE_LIMIT, high, linear * 12.92)
    return xp.round(xp.clip(srgb * 255.0, 0.0, 255.0))


# A photo is gray, whatever its file mode says (a black-and-white scan saved as RGB, say), when its colour
# channels differ by at most GRAY_TOLERANCE (of 255) in all but (100 - GRAY_PERCENTILE) % of its pixels, or
# when its mean chroma is below GRAY_CHROMA (of about 128): either way it has no colour for the network to
# learn or recover, and gray photos teach the network to predict gray. JPEG chroma noise in a gray photo
# stays within a few levels, so 6 at the 99.5th percentile separates them from faintly coloured photos (the
# public training sets' drop lists were made with the same rule); a toned print with a few coloured specks
# fails that test but not the chroma one. The caller chooses the resolution: the cache and `test` both judge
# the photo squashed to the embedder's resolution (JPEG noise averages out, and a 12 MP photo is cheap).
GRAY_TOLERANCE = 6
GRAY_PERCENTILE = 99.5
GRAY_CHROMA = 1.0


def is_gray(rgb_uint8: np.ndarray) -> bool:
    """True when a uint8 RGB photo (H, W, 3) has no colour (see GRAY_TOLERANCE): the one rule for it."""
    r, g, b = rgb_uint8[..., 0], rgb_uint8[..., 1], rgb_uint8[..., 2]
    spread = np.maximum(np.maximum(r, g), b) - np.minimum(np.minimum(r, g), b)  # uint8: no wrap-around
    # "the GRAY_PERCENTILE-th percentile of the spread is at most GRAY_TOLERANCE", without sorting
    if np.count_nonzero(spread > GRAY_TOLERANCE) <= (100.0 - GRAY_PERCENTILE) / 100.0 * spread.size:
        return True
    chroma = np.hypot(*np.moveaxis(unscale_ab(network_ab(rgb_uint8)), -1, 0))
    return bool(chroma.mean() < GRAY_CHROMA)


# Zhang, Isola & Efros (ECCV 2016, section 2.1) quantize ab on a grid of 10 and keep the bins that hold
# colours of the sRGB gamut: they report Q = 313 with their gamut computation; this one gives Q = 261.
AB_BIN_STEP = 10.0


@functools.cache
def gamut_ab_bins(step: float = AB_BIN_STEP) -> np.ndarray:
    """The ab bins of the sRGB gamut: centres (Q, 2) float32 in Lab units (multiples of `step`), sorted by
    (a, b), of every `step` x `step` cell that holds the ab of at least one 8-bit sRGB colour.

    Only the surface of the RGB cube is converted (6 faces of 256 x 256 colours, 0.4 M instead of 16.7 M):
    along a line of constant ab through the cube L varies continuously, so every ab that an inside colour
    has, a colour on the surface has too (tests/test_color.py compares it with all 16.7 M colours' bins)."""
    levels = np.arange(256, dtype=np.uint8)
    u, v = (x.reshape(-1) for x in np.meshgrid(levels, levels, indexing="ij"))
    faces = []
    for channel in range(3):
        others = [c for c in range(3) if c != channel]
        for value in (0, 255):
            face = np.empty((u.size, 3), np.uint8)
            face[:, channel], face[:, others[0]], face[:, others[1]] = value, u, v
            faces.append(face)
    ab = unscale_ab(network_ab(np.concatenate(faces)))
    cells = np.unique(np.round(ab / step).astype(np.int64), axis=0)
    return (cells * step).astype(np.float32)


def to_uint8(rgb01: np.ndarray) -> np.ndarray:
    """sRGB float in [0, 1] -> uint8, rounding to nearest."""
    return np.clip(np.rint(np.asarray(rgb01) * 255.0), 0, 255).astype(np.uint8)
