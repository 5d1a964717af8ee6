"""The one join of predicted colour with a photo's own lightness, for photos of any size.

    join_lightness(rgb uint8 (H, W, 3), ab (s, s, 2) in [-1, 1], saturation) -> uint8 RGB (H, W, 3)

As in Zhang et al.'s `colorization` and DeOldify (docs/reference.md, "Output at full resolution"): the
predicted ab is upsampled bilinearly to (H, W) and joined with the photo's *original* full-resolution L, so
the result is as sharp as the input; only the colour is smooth. Lab -> sRGB can leave the gamut (a
saturated blue at L = 95 does not exist in sRGB); plain clipping would then change the lightness. Such
pixels instead get their chroma reduced (hue and L kept) until they fit, so the output's L equals the
input's L to within rounding. `join_colours` and `fit_colours` are keras.ops: `colorize` runs them compiled
on chunks of pixels, the exported model (photo_model.py) in its graph.
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor

import keras
import numpy as np
from PIL import Image

from koalarization import color
from koalarization.inference.stages import stage

# Pixels per colour-kernel call. The kernel works on flat pixel lists, so every photo is cut into chunks of
# this one shape and XLA compiles it once per process instead of once per photo size. 2**18 pixels keep a
# chunk's data in the caches (~3 MB in, ~1 MB out) and are ~10 ms of work: 12 MP is 46 calls, over all cores.
PIXEL_CHUNK = 1 << 18
# Gamut fitting finds the largest chroma factor that fits to within 1/2**FIT_STEPS (1 %: invisible).
FIT_STEPS = 7


def backend_jit(fn):
    """`fn` compiled by the Keras backend's compiler (XLA on TensorFlow and JAX): the per-pixel formulas fuse
    into one loop over the pixels (12 MP: ~0.3 s on one core instead of ~8 s in NumPy)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=True, reduce_retracing=True)
    if backend == "jax":
        import jax

        return jax.jit(fn)
    return fn


def _linear_rgb(fy, a, b, k=1.0):
    """-> (linear (r, g, b), inside): inside is False where the colour (L, k a, k b) is outside sRGB."""
    from keras import ops

    linear = color.linear_from_lab_f(fy, a * k, b * k, xp=ops)
    return linear, functools.reduce(ops.logical_and, [(c > 0.0) & (c < 1.0) for c in linear])


def _to_uint8(linear, neutral):
    from keras import ops

    out = [color.srgb255_from_linear(c, xp=ops) for c in linear]
    # A neutral colour must come out exactly gray: copy G rather than trust three rounded sums.
    return tuple(ops.cast(ops.where(neutral, out[1], c), "uint8") for c in out)


def _lightness_f(rgb_uint8):
    from keras import ops

    return color.lab_f_of_luminance(ops.cast(rgb_uint8, "int32"), xp=ops)  # the photo's L is 116 f - 16


def join_colours(rgb_uint8, a, b):
    """keras.ops: the photo's pixels rgb uint8 (..., 3), a and b (...) float32 in Lab units -> (r, g, b) uint8
    (...) each with the photo's L and (a, b) as given, and whether every pixel fitted in the sRGB gamut."""
    from keras import ops

    linear, inside = _linear_rgb(_lightness_f(rgb_uint8), a, b)
    neutral = (a == 0.0) & (b == 0.0)
    return (*_to_uint8(linear, neutral), ops.all(inside | neutral))


def fit_colours(rgb_uint8, a, b):
    """keras.ops: join_colours' (r, g, b) with (a, b) reduced where the gamut needs it. Chroma factor k: 1
    where (L, a, b) fits, else the largest k in [0, 1) that fits, to within 1/2**FIT_STEPS (k = 0 always
    fits, except at pure black and white, where k = 0 is right too). Where join_colours fits, the same."""
    from keras import ops

    fy = _lightness_f(rgb_uint8)
    low, high = ops.zeros_like(fy), ops.ones_like(fy)
    for _ in range(FIT_STEPS):  # unrolled: the test is a few multiplications, and XLA fuses the steps
        mid = (low + high) / 2.0
        inside = _linear_rgb(fy, a, b, mid)[1]
        low, high = ops.where(inside, mid, low), ops.where(inside, high, mid)
    k = ops.where(_linear_rgb(fy, a, b)[1], 1.0, low)
    return _to_uint8(_linear_rgb(fy, a, b, k)[0], (a == 0.0) & (b == 0.0))


@functools.cache
def _kernels():
    """join_colours and fit_colours compiled for flat chunks: rgb uint8 (PIXEL_CHUNK, 3), a and b
    (PIXEL_CHUNK,) float32 -> (r, g, b) uint8 (PIXEL_CHUNK,) each (+ join's all-fitted flag); fit runs only
    for the chunks where join says not. Planar outputs, not one (PIXEL_CHUNK, 3) array: XLA would compute
    a stacked output one channel at a time, repeating the shared work (measured 2-4x slower)."""
    return backend_jit(join_colours), backend_jit(fit_colours)


class UpsampledAB:
    """ab (s, s, 2) in [-1, 1] -> a and b in Lab units (times `saturation`) at the photo's size (H, W),
    bilinear, made a band of rows at a time (`band(start, stop)`), so that a 12 MP photo never holds its
    full-size a and b (96 MB) and each band is made by the thread that colours it.

    Same values as Pillow's bilinear resize of ab to (W, H), to within float rounding (tests/test_colorize.py):
    like Pillow, the rows are resized first (here by Pillow itself: antialiased when shrinking), then each
    photo row is a mix of the two nearest resized rows, at Pillow's sample position (y + 0.5) s / H - 0.5,
    clamped at the edges. A photo of fewer than s rows is resized by Pillow in both directions.
    """

    def __init__(self, ab_scaled: np.ndarray, size: tuple[int, int], saturation: float = 1.0):
        self.height, self.width = size
        small = np.asarray(ab_scaled, np.float32) * np.float32(color.AB_SCALE * saturation)  # linear: scale first
        rows = min(self.height, small.shape[0])
        self.rows = [np.asarray(Image.fromarray(np.ascontiguousarray(small[..., c]), "F")
                                .resize((self.width, rows), Image.Resampling.BILINEAR)) for c in range(2)]
        position = (np.arange(self.height) + 0.5) * (rows / self.height) - 0.5
        low = np.floor(position)
        self.weight = (position - low).astype(np.float32)[:, None]
        low = low.astype(np.int64)
        self.low, self.high = np.clip(low, 0, rows - 1), np.clip(low + 1, 0, rows - 1)

    def band(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Pixels start..stop-1 of the photo in row-major order -> (a, b), each (stop - start,) float32."""
        first, last = start // self.width, (stop - 1) // self.width + 1
        low, high, weight = self.low[first:last], self.high[first:last], self.weight[first:last]
        skip = start - first * self.width
        return tuple((r[low] * (1.0 - weight) + r[high] * weight).reshape(-1)[skip : skip + stop - start]
                     for r in self.rows)


@functools.cache
def _pool() -> ThreadPoolExecutor:
    """Threads for the pixel work. A kernel call runs on one core (XLA does not split a loop this size across
    threads: its CPU time equals its wall time) and releases the GIL, so chunks run side by side, one per core."""
    return ThreadPoolExecutor(max(1, os.cpu_count() or 1), thread_name_prefix="koalarization-pixels")


def join_lightness(rgb: np.ndarray, ab_scaled: np.ndarray, saturation: float = 1.0) -> np.ndarray:
    """The photo's own L + upsampled ab: rgb uint8 (H, W, 3), ab (s, s, 2) in [-1, 1] -> uint8 RGB (H, W, 3)."""
    height, width = rgb.shape[:2]
    with stage("upsample"):
        ab = UpsampledAB(ab_scaled, (height, width), float(saturation))  # the rows; each band is made in `chunk`
    flat_rgb = rgb.reshape(-1, 3)
    out, (join, fit) = np.empty_like(flat_rgb), _kernels()

    def chunk(start):
        stop = min(start + PIXEL_CHUNK, len(flat_rgb))
        pieces = [flat_rgb[start:stop], *ab.band(start, stop)]
        if stop - start < PIXEL_CHUNK:  # the last piece: zero-padded to the one compiled shape
            pieces = [np.pad(p, [(0, PIXEL_CHUNK - (stop - start))] + [(0, 0)] * (p.ndim - 1)) for p in pieces]
        *channels, fitted = join(*pieces)
        if not bool(fitted):  # usually no chunk of a photo: the network's colours are mostly in gamut
            channels = fit(*pieces)
        for c, channel in enumerate(channels):
            out[start:stop, c] = np.asarray(channel)[: stop - start]

    with stage("pixels"):
        list(_pool().map(chunk, range(0, len(flat_rgb), PIXEL_CHUNK)))
    return out.reshape(height, width, 3)


def gray_from_lightness(rgb: np.ndarray) -> np.ndarray:
    """The gray baseline of a photo: its own L with a = b = 0, uint8 RGB (H, W, 3) -> uint8 RGB (H, W, 3)."""
    return join_lightness(rgb, np.zeros((1, 1, 2), np.float32))
