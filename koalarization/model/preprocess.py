"""The training model's data side, in the graph: augmentation, Lab conversion and scaling (keras.ops, so it
runs on any Keras backend and on the accelerator).

The input threads only read uint8 photos and their cached embeddings (batches.BatchSource); everything else
happens here, once per batch. The augmentation matrices are drawn on the host (batches.random_affine) so a
batch stays a pure function of (seed, epoch, index); the warp is bilinear sampling written in keras.ops
(`warp`: keras.ops.image.affine_transform does the same, but TensorFlow's kernel for it cannot be compiled
with XLA, so a jit-compiled train step could not hold it); the Lab arithmetic is color.py's, xp=keras.ops.

    build_training_model(cfg, D, S, fill, class_weights)
        batch_spec(S, D)'s batch {"rgb": uint8 (B, S, S, 3) unwarped, "affine": float32 (B, 2, 2)
         batches.random_affine's matrices, "embedding": float32 (B, D), "weight": float32 (B, 1, 1)}
         ->  ab (B, S, S, 2), or for the
        classification head the bins' logits (B, S/2, S/2, Q)
        The loss (losses.WeightedABLoss, or distribution.BinLoss) is added inside the model, so compile with loss=None. The colorizer is
        network.build_colorizer's, a nested layer named "colorizer": checkpoints are the same as inference's.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from koalarization import color
from koalarization.config import ModelConfig
from koalarization.model import distribution
from koalarization.model.losses import WeightedABLoss
from koalarization.model.network import build_colorizer


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
class Preprocess(keras.layers.Layer):
    """(rgb uint8 (B, S, S, 3), affine (B, 2, 2)) -> (L (B, S, S, 1) in [-1, 1], ab (B, S, S, 2) in about
    [-1, 1]) of the warped photo, rounded to uint8. `fill`: config.FILLS, what pixels from outside the photo get. Always float32: under a
    mixed-precision policy float16 would round L by up to 0.05 (of 100)."""

    def __init__(self, fill: str = "nearest", **kwargs):
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        self.fill = fill

    def call(self, rgb, affine):
        # The warped photo rounded to 8 bits, as every photo the network meets outside training is; L and ab
        # come from color's one maker of each.
        pixels = ops.cast(ops.round(ops.clip(warp(rgb, affine, self.fill), 0.0, 255.0)), "int32")
        return color.network_lightness(pixels, xp=ops), color.network_ab(pixels, xp=ops)

    def compute_output_shape(self, rgb_shape, affine_shape):
        return (*rgb_shape[:-1], 1), (*rgb_shape[:-1], 2)

    def get_config(self):
        return {**super().get_config(), "fill": self.fill}


def batch_spec(size: int, embedding_dim: int) -> dict[str, tuple[tuple[int, ...], str]]:
    """The training batch, the one statement of its layout: name -> (shape after the batch axis, dtype).
    batches.BatchSource makes it, build_training_model takes it, distribute's input pipeline carries it."""
    return {"rgb": ((size, size, 3), "uint8"),  # the photo squashed to S x S, unwarped
            "affine": ((2, 2), "float32"),  # batches.random_affine's matrix; the identity: no augmentation
            "embedding": ((embedding_dim,), "float32"),  # the frozen embedder's features of the photo's gray
            "weight": ((1, 1), "float32")}  # 1, or 0 for padding: broadcasts over the per-pixel loss


def build_training_model(cfg: ModelConfig, embedding_dim: int, size: int, fill: str = "nearest",
                         class_weights=None) -> keras.Model:
    """The colorizer between the in-graph preprocessing and the loss (see the module docstring).
    class_weights: (Q,) the classification loss's rebalancing (distribution.rebalancing_weights), or None."""
    inputs = {name: keras.Input(shape, dtype=dtype, name=name)
              for name, (shape, dtype) in batch_spec(size, embedding_dim).items()}
    lightness, target = Preprocess(fill, name="preprocess")(inputs["rgb"], inputs["affine"])
    ab = build_colorizer(cfg, embedding_dim)([lightness, inputs["embedding"]])
    loss = (distribution.BinLoss(class_weights, name="bin_loss") if cfg.loss == "classification"
            else WeightedABLoss(name="ab_loss"))
    return keras.Model(inputs, loss(ab, target, inputs["weight"]), name="koalarization_training")
