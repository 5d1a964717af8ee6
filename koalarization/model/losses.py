"""The training losses, as layers that add their loss inside the training model (compile with loss=None).

    loss_layer(predicted, target ab (B, S, S, 2) scaled to [-1, 1], weight (B, 1, 1)) -> predicted, unchanged

Each photo's cells count times its weight: 1, or 0 for the padding that fills a last partial batch, so a
padded batch has the loss of its real photos (divided by the full batch size, as Keras' sample weights do).
"""

from __future__ import annotations

import keras
from keras import ops


class SampleWeightedLoss(keras.layers.Layer):
    """Adds sum(per_cell * weight) / (B * h * w) for `per_cell(predicted, target)` (B, h, w); passes the
    prediction through. Always float32: under a mixed-precision policy the sums stay exact enough."""

    def __init__(self, **kwargs):
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)

    def per_cell(self, predicted, target):
        """float32 prediction, target -> the loss of each cell of the prediction's grid (B, h, w)."""
        raise NotImplementedError

    def call(self, predicted, target, weight):
        per_cell = self.per_cell(ops.cast(predicted, "float32"), target)
        count = ops.cast(ops.size(per_cell), "float32")
        self.add_loss(ops.sum(per_cell * ops.cast(weight, "float32")) / count)
        return predicted

    def compute_output_shape(self, predicted_shape, target_shape, weight_shape):
        return predicted_shape


@keras.saving.register_keras_serializable(package="koalarization")
class WeightedABLoss(SampleWeightedLoss):
    """Keras' "mse" with sample weights: the squared ab error averaged over the ab axis, per pixel.
    predicted ab (B, S, S, 2) in [-1, 1]."""

    def per_cell(self, predicted, target):
        return ops.mean(ops.square(predicted - target), axis=-1)
