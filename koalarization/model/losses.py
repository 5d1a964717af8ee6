"""The training losses: what the training task's compute_loss returns (model/task.py).

    loss(predicted, target ab (B, S, S, 2) scaled to [-1, 1], weight (B, 1, 1)) -> scalar float32

Each photo's cells count times its weight: 1, or 0 for the padding that fills a last partial batch, so a
padded batch has the loss of its real photos (divided by the full batch size, as Keras' sample weights do).
"""

from __future__ import annotations

from keras import ops


class SampleWeightedLoss:
    """sum(per_cell * weight) / (B * h * w) for `per_cell(predicted, target)` (B, h, w), in float32 (under a
    mixed-precision policy the prediction is float16; the sums stay float32)."""

    def per_cell(self, predicted, target):
        """float32 prediction, target -> the loss of each cell of the prediction's grid (B, h, w)."""
        raise NotImplementedError

    def __call__(self, predicted, target, weight):
        per_cell = self.per_cell(ops.cast(predicted, "float32"), ops.cast(target, "float32"))
        count = ops.cast(ops.size(per_cell), "float32")
        return ops.sum(per_cell * ops.cast(weight, "float32")) / count


class WeightedABLoss(SampleWeightedLoss):
    """Keras' "mse" with sample weights: the squared ab error averaged over the ab axis, per pixel.
    predicted ab (B, S, S, 2) in [-1, 1]."""

    def per_cell(self, predicted, target):
        return ops.mean(ops.square(predicted - target), axis=-1)
