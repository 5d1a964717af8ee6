"""The training task: the Preprocessor, the network and its loss in one Keras model, fed the cache's batches.

    batch_spec(S, D): the batch {"rgb": uint8 (B, S, S, 3) unwarped, "affine": float32 (B, 2, 2)
        batches.random_affine's matrices, "embedding": float32 (B, D), "weight": float32 (B, 1, 1)}
    TrainingTask(cfg, D, S, fill, class_weights): that batch -> {"prediction": ab (B, S, S, 2), or for
        the classification head the bins' logits (B, S/2, S/2, Q); "target": the photos' ab (B, S, S, 2)}

The input threads only read uint8 photos and their cached embeddings (batches.BatchSource); everything else
happens in the graph, once per batch. The loss (Keras' MeanSquaredError on ab, or distribution.BinLoss) is the
task's compute_loss, so it is compiled without one (keras-hub's Task: the model owns its preprocessing and
its loss). The colorizer is network.build_colorizer's, a nested layer named "colorizer": checkpoints are
the same as inference's.
"""

from __future__ import annotations

import keras

from koalarization.config import ModelConfig
from koalarization.model import distribution
from koalarization.model.network import build_colorizer
from koalarization.model.preprocessor import Preprocessor


def batch_spec(size: int, embedding_dim: int) -> dict[str, tuple[tuple[int, ...], str]]:
    """The training batch, the one statement of its layout: name -> (shape after the batch axis, dtype).
    batches.BatchSource makes it, build_training_model takes it, distribute's input pipeline carries it."""
    return {"rgb": ((size, size, 3), "uint8"),  # the photo squashed to S x S, unwarped
            "affine": ((2, 2), "float32"),  # batches.random_affine's matrix; the identity: no augmentation
            "embedding": ((embedding_dim,), "float32"),  # the frozen embedder's features of the photo's gray
            "weight": ((1, 1), "float32")}  # 1, or 0 for padding: broadcasts over the per-pixel loss


class TrainingTask(keras.Model):
    """The training model: batch_spec's batch -> {"prediction": ab (B, S, S, 2), or for the classification
    head the bins' logits (B, S/2, S/2, Q); "target": the photos' own ab (B, S, S, 2), as the preprocessor
    made it}. Its loss is `compute_loss`'s (Keras' MeanSquaredError or distribution.BinLoss, per
    ModelConfig.loss), so compile it without one. class_weights: (Q,) the classification loss's rebalancing
    (distribution.rebalancing_weights), or None."""

    def __init__(self, cfg: ModelConfig, embedding_dim: int, size: int, fill: str = "nearest", class_weights=None):
        inputs = {name: keras.Input(shape, dtype=dtype, name=name)
                  for name, (shape, dtype) in batch_spec(size, embedding_dim).items()}
        seen = Preprocessor(size, fill=fill, targets=True, name="preprocess")(inputs["rgb"], inputs["affine"])
        prediction = build_colorizer(cfg, embedding_dim)([seen["L"], inputs["embedding"]])
        super().__init__(inputs, {"prediction": prediction, "target": seen["ab"]}, name="koalarization_training")
        # Keras' losses: the sample-weighted mean over the cells, scaled for tf.distribute's replicas
        self.loss_function = (distribution.BinLoss(class_weights) if cfg.loss == "classification"
                              else keras.losses.MeanSquaredError(name="ab_loss"))

    def compile(self, optimizer="rmsprop", **kwargs):
        if kwargs.pop("loss", None) is not None:
            raise ValueError("the training task's loss is its own (compute_loss): compile it without one")
        super().compile(optimizer=optimizer, loss=None, **kwargs)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """The configured loss of the prediction against the preprocessor's target, each photo weighted by
        the batch's "weight" (0 for padding)."""
        return self.loss_function(y_pred["target"], y_pred["prediction"], sample_weight=x["weight"])


def build_training_model(cfg: ModelConfig, embedding_dim: int, size: int, fill: str = "nearest",
                         class_weights=None) -> TrainingTask:
    """The training task (TrainingTask), not yet compiled."""
    return TrainingTask(cfg, embedding_dim, size, fill, class_weights)
