"""The tests' embedder: a small randomly initialised classifier, so a test builds and trains the full model in
seconds. Its features mean nothing. Registered as `tiny_random` through $KOALARIZATION_EMBEDDERS (conftest
sets it, so the CLI in a subprocess has it too)."""

from __future__ import annotations

import keras

from koalarization.errors import KoalarizationError
from koalarization.model.embedders import RANDOM, EmbedderSpec, register


def _tiny_random(weights: str | None) -> keras.Model:
    """32 px RGB -> 1000 "probabilities" of a random 8-filter conv net."""
    if weights not in (None, RANDOM):
        raise KoalarizationError(f"embedder_weights {weights}: tiny_random takes no weights file")
    init = keras.initializers.GlorotUniform(seed=7)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu", kernel_initializer=init)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(1000, activation="softmax", kernel_initializer=init)(x)
    return keras.Model(inputs, outputs, name="tiny_random")


register("tiny_random", EmbedderSpec(32, 1.0, 0.0, _tiny_random, "random 8-filter net: tests only"))
