"""Saving and loading trained weights with the config they need.

A run's folder holds `colorize.weights.h5` (the trainable colorizer only; the frozen embedder is rebuilt
from its own pretrained source) and `config.json` (the RunConfig used). Loading checks that they agree.
"""

from __future__ import annotations

import os
from pathlib import Path

import keras

from koalarization.config import RunConfig
from koalarization.errors import KoalarizationError

WEIGHTS_FILE = "colorize.weights.h5"
CONFIG_FILE = "config.json"


def config_path_for(weights: Path) -> Path:
    return Path(weights).parent / CONFIG_FILE


def save_weights_atomic(model: keras.Model, path: str | Path) -> None:
    """model.save_weights through a temporary file and a rename: a kill mid-write leaves the old file."""
    path = Path(path)
    tmp = path.with_name(path.name.removesuffix(".weights.h5") + ".tmp.weights.h5")
    model.save_weights(tmp, overwrite=True)
    os.replace(tmp, path)


class AtomicWeightsSaver:
    """Stands in for a model towards callbacks that only call `save_weights` (ModelCheckpoint)."""

    def __init__(self, model: keras.Model):
        self._model = model

    def save_weights(self, filepath, overwrite=True):
        save_weights_atomic(self._model, filepath)

    def __getattr__(self, name):
        return getattr(self._model, name)


class ColorizerCheckpoint(keras.callbacks.ModelCheckpoint):
    """Keras' ModelCheckpoint (best only, weights only) that saves the colorizer, atomically."""

    def __init__(self, colorizer: keras.Model, filepath, **kwargs):
        super().__init__(filepath, save_weights_only=True, **kwargs)
        self._saver = AtomicWeightsSaver(colorizer)

    def set_model(self, model):
        super().set_model(self._saver)


def load_trained(weights: str | Path, embedder_weights: str | None = None) -> tuple[keras.Model, RunConfig]:
    """The full model (L -> ab) with trained weights, and the RunConfig it was trained with."""
    from koalarization.embedding import build_embedder
    from koalarization.model import build_model, colorizer_of

    weights = Path(weights)
    if not weights.is_file():
        raise KoalarizationError(f"--weights {weights}: file not found")
    config_file = config_path_for(weights)
    if not config_file.is_file():
        raise KoalarizationError(f"{config_file}: missing; the weights need the config.json written beside them")
    cfg = RunConfig.load(config_file)
    embedder = build_embedder(cfg.model.embedder, embedder_weights)
    model = build_model(cfg.model, embedder)
    try:
        colorizer_of(model).load_weights(weights)
    except Exception as err:  # noqa: BLE001 - h5py, Keras and OS errors all mean "wrong or broken file"
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise KoalarizationError(
            f"--weights {weights}: cannot load into the network of {config_file} ({first})"
        ) from None
    return model, cfg
