"""The training model's data side, in the graph: augmentation, Lab conversion and scaling (keras.ops, so it
runs on any Keras backend and on the accelerator).

The input threads only read uint8 photos and their cached embeddings (data.BatchSource); everything else
happens here, once per batch. The augmentation matrices are drawn on the host (data.random_affine) so a
batch stays a pure function of (seed, epoch, index); the warp is `keras.ops.image.affine_transform`
(bilinear), the Lab arithmetic is color.py's with xp=keras.ops.

    build_training_model(cfg, D, fill)
        {"rgb": uint8 (B, S, S, 3) unwarped, "affine": float32 (B, 2, 2) data.random_affine's matrices,
         "embedding": float32 (B, D), "weight": float32 (B, 1, 1)}  ->  ab (B, S, S, 2)
        The loss (WeightedABLoss) is added inside the model, so compile with loss=None. The colorizer is
        model.build_colorizer's, a nested layer named "colorizer": checkpoints are the same as inference's.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from koalarization import color
from koalarization.config import ModelConfig
from koalarization.model import build_colorizer


def affine_params(matrix, size: int, xp=np):
    """data.random_affine's matrices (B, 2, 2), about the image centre in continuous pixel coordinates
    (x, y from 0 to S) -> (B, 8) for keras.ops.image.affine_transform, which works in pixel indices:
    output (x, y) reads input (a0 x + a1 y + a2, b0 x + b1 y + b2)."""
    a, b, d, e = matrix[:, 0, 0], matrix[:, 0, 1], matrix[:, 1, 0], matrix[:, 1, 1]
    # continuous: u = a x + b y + S/2 (1 - a - b); an index is its continuous coordinate minus 0.5
    c = size / 2.0 * (1.0 - a - b) + 0.5 * (a + b) - 0.5
    f = size / 2.0 * (1.0 - d - e) + 0.5 * (d + e) - 0.5
    zeros = xp.zeros_like(a)
    return xp.stack([a, b, c, d, e, f, zeros, zeros], axis=-1)


@keras.saving.register_keras_serializable(package="koalarization")
class Preprocess(keras.layers.Layer):
    """(rgb uint8 (B, S, S, 3), affine (B, 2, 2)) -> (L (B, S, S, 1) in [-1, 1], ab (B, S, S, 2) in about
    [-1, 1]). `fill`: config.FILLS, what pixels from outside the photo get. Always float32: under a
    mixed-precision policy float16 would round L by up to 0.05 (of 100)."""

    def __init__(self, fill: str = "nearest", **kwargs):
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        self.fill = fill

    def call(self, rgb, affine):
        x = ops.cast(rgb, "float32")
        transform = affine_params(ops.cast(affine, "float32"), x.shape[1], xp=ops)
        x = ops.image.affine_transform(x, transform, interpolation="bilinear", fill_mode=self.fill)
        lab = color.rgb_to_lab(ops.clip(x, 0.0, 255.0) / 255.0, xp=ops)
        return color.scale_l(lab[..., :1], xp=ops), color.scale_ab(lab[..., 1:], xp=ops)

    def compute_output_shape(self, rgb_shape, affine_shape):
        return (*rgb_shape[:-1], 1), (*rgb_shape[:-1], 2)

    def get_config(self):
        return {**super().get_config(), "fill": self.fill}


@keras.saving.register_keras_serializable(package="koalarization")
class WeightedABLoss(keras.layers.Layer):
    """Adds Keras' "mse" with sample weights: the squared ab error averaged over the ab axis, times each
    photo's weight (0 for padding), summed and divided by B * S * S. Passes the prediction through."""

    def __init__(self, **kwargs):
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)

    def call(self, predicted, target, weight):
        per_pixel = ops.mean(ops.square(ops.cast(predicted, "float32") - target), axis=-1)  # (B, S, S)
        count = ops.cast(ops.size(per_pixel), "float32")
        self.add_loss(ops.sum(per_pixel * ops.cast(weight, "float32")) / count)
        return predicted

    def compute_output_shape(self, predicted_shape, target_shape, weight_shape):
        return predicted_shape


def build_training_model(cfg: ModelConfig, embedding_dim: int, size: int, fill: str = "nearest") -> keras.Model:
    """The colorizer between the in-graph preprocessing and the loss (see the module docstring)."""
    rgb = keras.Input((size, size, 3), dtype="uint8", name="rgb")
    affine = keras.Input((2, 2), dtype="float32", name="affine")
    embedding = keras.Input((embedding_dim,), dtype="float32", name="embedding")
    weight = keras.Input((1, 1), dtype="float32", name="weight")
    lightness, target = Preprocess(fill, name="preprocess")(rgb, affine)
    ab = build_colorizer(cfg, embedding_dim)([lightness, embedding])
    ab = WeightedABLoss(name="ab_loss")(ab, target, weight)
    inputs = {"rgb": rgb, "affine": affine, "embedding": embedding, "weight": weight}
    return keras.Model(inputs, ab, name="koalarization_training")
