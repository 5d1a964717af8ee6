"""Augmentation, Lab conversion and scaling on the device (`train --device-preprocessing`).

The input threads then only decode (or read prepared photos): uint8 RGB crosses the host-device boundary
(4x fewer bytes than float32 L + ab) with each photo's affine matrix, and the accelerator warps, converts and
scales. The matrices are drawn on the host as before (data.BatchSource), so batches stay a pure function of
(seed, epoch, index); the warp (`keras.ops.image.affine_transform`, bilinear, nearest-edge fill) equals
data.apply_affine up to uint8 rounding, and the Lab arithmetic is color.py's with xp=keras.ops.

    BatchSource(device_preprocessing=True)[i] -> ({"rgb": uint8 (B, S, S, 3) unwarped,
                                                   "affine": float32 (B, 2, 2) data.random_affine's matrices,
                                                   "weight": float32 (B, 1, 1)},)
    build_device_model(cfg, embedder)         that dict -> ab (B, S, S, 2); the loss is added inside the
                                              model (WeightedABLoss), so compile with loss=None
The colorizer is the same nested layer as in model.build_model, so checkpoints do not change.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from koalarization import color
from koalarization.config import ModelConfig
from koalarization.model import build_colorizer

def affine_params(matrix, size: int, xp=np):
    """data.random_affine's matrices (B, 2, 2) (about the image centre, in Pillow's continuous pixel
    coordinates, as data.apply_affine uses them) -> (B, 8) for keras.ops.image.affine_transform, which works
    in pixel indices: output (x, y) reads input (a0 x + a1 y + a2, b0 x + b1 y + b2)."""
    a, b, d, e = matrix[:, 0, 0], matrix[:, 0, 1], matrix[:, 1, 0], matrix[:, 1, 1]
    # continuous: u = a x + b y + S/2 (1 - a - b); an index is its continuous coordinate minus 0.5
    c = size / 2.0 * (1.0 - a - b) + 0.5 * (a + b) - 0.5
    f = size / 2.0 * (1.0 - d - e) + 0.5 * (d + e) - 0.5
    zeros = xp.zeros_like(a)
    return xp.stack([a, b, c, d, e, f, zeros, zeros], axis=-1)


def warp(rgb, affine):
    """data.apply_affine on the device: uint8 RGB (B, S, S, 3) -> float32 in [0, 255], not rounded (Pillow
    truncates to uint8, so the host's photos are on average 0.5 darker out of 255)."""
    x = ops.cast(rgb, "float32")
    transform = affine_params(ops.cast(affine, "float32"), x.shape[1], xp=ops)
    x = ops.image.affine_transform(x, transform, interpolation="bilinear", fill_mode="nearest")
    return ops.clip(x, 0.0, 255.0)


@keras.saving.register_keras_serializable(package="koalarization")
class DevicePreprocess(keras.layers.Layer):
    """(rgb uint8 (B, S, S, 3), affine (B, 2, 2)) -> (L (B, S, S, 1) in [-1, 1], ab (B, S, S, 2) in about [-1, 1]).
    Always float32: under a mixed-precision policy float16 would round L by up to 0.05 (of 100)."""

    def __init__(self, **kwargs):
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)

    def call(self, rgb, affine):
        lab = color.rgb_to_lab(warp(rgb, affine) / 255.0, xp=ops)
        return color.scale_l(lab[..., :1], xp=ops), color.scale_ab(lab[..., 1:], xp=ops)

    def compute_output_shape(self, rgb_shape, affine_shape):
        return (*rgb_shape[:-1], 1), (*rgb_shape[:-1], 2)


@keras.saving.register_keras_serializable(package="koalarization")
class WeightedABLoss(keras.layers.Layer):
    """Adds Keras' "mse" with sample weights, as `train` computes it on BatchSource's float batches: the
    squared ab error averaged over the ab axis, times each photo's weight, summed and divided by B * S * S.
    Passes the prediction through."""

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


def build_device_model(cfg: ModelConfig, embedder: keras.Model) -> keras.Model:
    """model.build_model taking the device-preprocessing batch (see the module docstring)."""
    size = cfg.image_size
    rgb = keras.Input((size, size, 3), dtype="uint8", name="rgb")
    affine = keras.Input((2, 2), dtype="float32", name="affine")
    weight = keras.Input((1, 1), dtype="float32", name="weight")
    lightness, target = DevicePreprocess(name="device_preprocess")(rgb, affine)
    colorizer = build_colorizer(cfg, embedding_dim=embedder.output.shape[-1])
    ab = colorizer([lightness, embedder(lightness)])
    ab = WeightedABLoss(name="ab_loss")(ab, target, weight)
    return keras.Model({"rgb": rgb, "affine": affine, "weight": weight}, ab, name="koalarization_device")


def inference_model(device_model: keras.Model) -> keras.Model:
    """L (B, S, S, 1) -> ab, sharing the layers (so the weights) of a build_device_model model: for the
    callbacks that predict from L."""
    colorizer = device_model.get_layer("colorizer")
    embedder = next(layer for layer in device_model.layers if layer.name.startswith("embedder_"))
    lightness = keras.Input(colorizer.input[0].shape[1:], name="L")
    return keras.Model(lightness, colorizer([lightness, embedder(lightness)]), name="koalarization")


class WithModel(keras.callbacks.Callback):
    """Runs `callback` against `model` (an inference_model view) instead of the model being fitted."""

    def __init__(self, callback: keras.callbacks.Callback, model: keras.Model):
        super().__init__()
        self.callback, self.view = callback, model

    def set_model(self, model):
        super().set_model(model)
        self.callback.set_model(self.view)

    def set_params(self, params):
        super().set_params(params)
        self.callback.set_params(params)


def _forward(hook):
    return lambda self, *args, **kwargs: getattr(self.callback, hook)(*args, **kwargs)


for _hook in [name for name in dir(keras.callbacks.Callback) if name.startswith("on_")]:
    setattr(WithModel, _hook, _forward(_hook))
