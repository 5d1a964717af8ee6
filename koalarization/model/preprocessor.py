"""A photo to the network's inputs, in the graph (keras.ops, so it runs on any Keras backend and on the
accelerator): the data side of every Keras model here, the training model's and the exported one's.

    Preprocessor(size S, resolution R or None, fill, targets)
    call(image uint8 (B, H, W, 3), affine None or (B, 2, 2))
        -> {"L": (B, S, S, 1) in [-1, 1]: the photo squashed to S x S, its L
            "L_embedder": (B, R, R, 1) in [-1, 1]: the photo squashed to the embedder's R x R, its L (R given)
            "ab": (B, S, S, 2) in about [-1, 1]: the S x S photo's own colour, training's target (targets)}

The squash is Pillow's (model/resize.py: the same arithmetic as data/squash.py, to the level), skipped for a
photo that is S x S already (training's cached photos); `affine` is training's augmentation
(batches.random_affine's matrices, `warp`), after which the photo is rounded to 8 bits, as every photo the
network meets outside training is. L and ab are color.network_lightness and color.network_ab, the one
maker of each. `colorize` and `test` compute the same inputs in NumPy with Pillow itself (data/cache.py's
photo_inputs: the same functions, band-free, 1.0 GB for a 12 MP photo where the graph needs 2.5 GB);
tests/test_preprocessor.py checks the two agree.

The augmentation matrices are drawn on the host (batches.random_affine) so a batch stays a pure function of
(seed, epoch, index); the warp is bilinear sampling written in keras.ops (keras.ops.image.affine_transform
does the same, but TensorFlow's kernel for it cannot be compiled with XLA, so a jit-compiled train step
could not hold it).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from koalarization import color
from koalarization.model import resize


def affine_params(matrix, size: int, xp=np):
    """batches.random_affine's matrices (B, 2, 2), about the image centre in continuous pixel coordinates
    (x, y from 0 to S) -> (B, 8) for keras.ops.image.affine_transform, which works in pixel indices:
    output (x, y) reads input (a0 x + a1 y + a2, b0 x + b1 y + b2)."""
    a, b, d, e = matrix[:, 0, 0], matrix[:, 0, 1], matrix[:, 1, 0], matrix[:, 1, 1]
    # continuous: u = a x + b y + S/2 (1 - a - b); an index is its continuous coordinate minus 0.5
    c = size / 2.0 * (1.0 - a - b) + 0.5 * (a + b) - 0.5
    f = size / 2.0 * (1.0 - d - e) + 0.5 * (d + e) - 0.5
    zeros = xp.zeros_like(a)
    return xp.stack([a, b, c, d, e, f, zeros, zeros], axis=-1)


def _fold(x, size: int, fill: str):
    """Pixel-index coordinates -> coordinates inside [0, size - 1]: "nearest" repeats the edge pixel,
    "reflect" mirrors the photo about its edge (d c b a | a b c d | d c b a, Keras' "reflect")."""
    if fill == "reflect":
        period = 2.0 * size
        y = ops.mod(x + 0.5, period)  # mod of a float: the result has the divisor's sign, so y in [0, 2S)
        x = ops.where(y > size, period - y, y) - 0.5
    return ops.clip(x, 0.0, size - 1.0)


def warp(rgb, affine, fill: str = "nearest"):
    """uint8 or float RGB (B, S, S, 3) and batches.random_affine's matrices (B, 2, 2) -> float32 (B, S, S, 3):
    output pixel (x, y) is the bilinear sample of the input at affine_params' (a0 x + a1 y + a2, ...)."""
    x = ops.cast(rgb, "float32")
    size = x.shape[1]
    params = affine_params(ops.cast(affine, "float32"), size, xp=ops)  # (B, 8)
    index = ops.cast(ops.arange(size), "float32")
    grid_x, grid_y = index[None, None, :], index[None, :, None]  # (1, 1, S), (1, S, 1)
    p = [params[:, k][:, None, None] for k in range(6)]
    src_x = _fold(p[0] * grid_x + p[1] * grid_y + p[2], size, fill)  # (B, S, S)
    src_y = _fold(p[3] * grid_x + p[4] * grid_y + p[5], size, fill)
    x0, y0 = ops.floor(src_x), ops.floor(src_y)
    wx, wy = (src_x - x0)[..., None], (src_y - y0)[..., None]
    x0, y0 = ops.cast(x0, "int32"), ops.cast(y0, "int32")
    x1, y1 = ops.minimum(x0 + 1, size - 1), ops.minimum(y0 + 1, size - 1)
    flat = ops.reshape(x, (-1, size * size, 3))

    def at(ys, xs):  # (B, S, S) indices -> (B, S, S, 3) pixels
        positions = ops.reshape(ys * size + xs, (-1, size * size, 1))
        return ops.reshape(ops.take_along_axis(flat, ops.repeat(positions, 3, axis=-1), axis=1),
                           (-1, size, size, 3))

    top = at(y0, x0) * (1.0 - wx) + at(y0, x1) * wx
    bottom = at(y1, x0) * (1.0 - wx) + at(y1, x1) * wx
    return top * (1.0 - wy) + bottom * wy


@keras.saving.register_keras_serializable(package="koalarization")
class Preprocessor(keras.layers.Layer):
    """uint8 photos -> the network's inputs (the module docstring). `fill`: config.FILLS, what pixels from
    outside the photo get when warped. Always float32: under a mixed-precision policy float16 would round L
    by up to 0.05 (of 100)."""

    def __init__(self, size: int, resolution: int | None = None, fill: str = "nearest", targets: bool = False,
                 **kwargs):
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        self.size, self.resolution, self.fill, self.targets = int(size), resolution and int(resolution), fill, targets

    def call(self, image, affine=None):
        sides = [self.size] + ([self.resolution] if self.resolution else [])
        # float64, made once for both sides: the fixed-point sums of Pillow's resize are exact integers there
        # (model/resize.py). Not needed for a photo already at its side (training's S x S batches).
        exact = ops.cast(image, "float64") if any(tuple(image.shape[1:3]) != (s, s) for s in sides) else None

        def squashed(side):  # -> uint8-valued int32 (B, side, side, 3), as Pillow squashes the photo
            if tuple(image.shape[1:3]) == (side, side):
                return ops.cast(image, "int32")
            return ops.cast(resize.squash_uint8(exact, side), "int32")

        rgb = squashed(self.size)
        if affine is not None:
            rgb = ops.cast(ops.round(ops.clip(warp(rgb, affine, self.fill), 0.0, 255.0)), "int32")
        inputs = {"L": color.network_lightness(rgb, xp=ops)}
        if self.resolution:
            inputs["L_embedder"] = color.network_lightness(squashed(self.resolution), xp=ops)
        if self.targets:
            inputs["ab"] = color.network_ab(rgb, xp=ops)
        return inputs

    def compute_output_spec(self, image, affine=None):
        batch, s = image.shape[0], self.size
        spec = {"L": keras.KerasTensor((batch, s, s, 1), "float32")}
        if self.resolution:
            spec["L_embedder"] = keras.KerasTensor((batch, self.resolution, self.resolution, 1), "float32")
        if self.targets:
            spec["ab"] = keras.KerasTensor((batch, s, s, 2), "float32")
        return spec

    def get_config(self):
        return {**super().get_config(), "size": self.size, "resolution": self.resolution, "fill": self.fill,
                "targets": self.targets}
