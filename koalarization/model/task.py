"""The training task: the Preprocessor, the network and its loss in one Keras model, fed the cache's batches.

    batch_spec(S, D): the batch {"rgb": uint8 (B, S, S, 3) unwarped, "affine": float32 (B, 2, 2)
        batches.random_affine's matrices, "embedding": float32 (B, D), "weight": float32 (B, 1, 1)}
    build_training_model(cfg, D, S, fill, class_weights): that batch -> ab (B, S, S, 2), or for the
        classification head the bins' logits (B, S/2, S/2, Q)

The input threads only read uint8 photos and their cached embeddings (batches.BatchSource); everything else
happens in the graph, once per batch. The loss (losses.WeightedABLoss, or distribution.BinLoss) is added
inside the model, so compile with loss=None. The colorizer is network.build_colorizer's, a nested layer
named "colorizer": checkpoints are the same as inference's.
"""

from __future__ import annotations

import keras

from koalarization.config import ModelConfig
from koalarization.model import distribution
from koalarization.model.losses import WeightedABLoss
from koalarization.model.network import build_colorizer
from koalarization.model.preprocessor import Preprocessor


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
    seen = Preprocessor(size, fill=fill, targets=True, name="preprocess")(inputs["rgb"], inputs["affine"])
    ab = build_colorizer(cfg, embedding_dim)([seen["L"], inputs["embedding"]])
    loss = (distribution.BinLoss(class_weights, name="bin_loss") if cfg.loss == "classification"
            else WeightedABLoss(name="ab_loss"))
    return keras.Model(inputs, loss(ab, seen["ab"], inputs["weight"]), name="koalarization_training")
