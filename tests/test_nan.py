"""A run whose loss becomes NaN stops with one clear message and keeps the last good weights: neither the
best-weights checkpoint nor any backup is ever written with NaN weights."""

from __future__ import annotations

import re

import h5py
import keras
import numpy as np
import pytest

from koalarization.cli import main
from koalarization.config import RunConfig, TrainConfig
from koalarization.errors import KoalarizationError
from koalarization.model.network import colorizer_of
from koalarization.run import load_trained
from koalarization.training import backup
from koalarization.training.train import train


class PoisonWeights(keras.callbacks.Callback):
    """Stands for a diverging step: after batch 0 of `epoch` (already backed up), the weights of `layer`
    become NaN. Also keeps the colorizer's weights at each earlier epoch's end (what the checkpoint holds)."""

    def __init__(self, epoch: int, layer: str):
        super().__init__()
        self.poison_epoch, self.layer, self.epoch, self.good = epoch, layer, 0, None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == (self.poison_epoch, 0):
            for weight in colorizer_of(self.model).get_layer(self.layer).weights:
                weight.assign(np.full(weight.shape, np.nan, np.float32))

    def on_epoch_end(self, epoch, logs=None):
        if epoch < self.poison_epoch:
            self.good = [np.array(w) for w in colorizer_of(self.model).get_weights()]


@pytest.mark.parametrize("layer, message", [
    # NaN out of the tanh output layer: the loss is NaN at the next step (TerminateOnNaN stops the run).
    ("decoder", r"the loss became nan"),
    # NaN in the first conv: ReLU maps NaN to 0 on this CPU, so the loss stays finite; the backup's check stops it.
    ("encoder", r"the (loss became nan|weights became NaN or infinite)"),
])
def test_nan_stops_the_run_and_keeps_the_last_good_weights(photo_dir, tmp_path, tiny_model_config,
                                                           monkeypatch, layer, message):
    out = tmp_path / "run"
    saved = []
    real_save = backup.save

    def checked_save(model, directory, start):
        real_save(model, directory, start)
        with h5py.File(directory / backup.LATEST, "r") as f:  # every backup written is finite
            arrays = []
            f.visititems(lambda _, o: arrays.append(o[()]) if isinstance(o, h5py.Dataset) else None)
        assert all(np.isfinite(a).all() for a in arrays if a.dtype.kind == "f")
        saved.append((start.epoch, start.batch))

    monkeypatch.setattr(backup, "save", checked_save)
    cfg = RunConfig(model=tiny_model_config, train=TrainConfig(
        data=str(photo_dir), output=str(out), image_size=32, epochs=3, batch_size=2, workers=2,
        backup_every_steps=1))
    poison = PoisonWeights(epoch=1, layer=layer)
    with pytest.raises(KoalarizationError, match=rf"^training stopped: {message}; the best weights so far are "
                                                 r"in .*colorize.weights.h5; try a lower learning_rate$"):
        train(cfg, callbacks=[poison], verbose=0)
    assert saved == [(0, 1), (0, 2), (1, 0), (1, 1)]  # up to the poisoned step, none after it
    model, _ = load_trained(out / "colorize.weights.h5")
    kept = colorizer_of(model).get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(kept, poison.good, strict=True))  # epoch 0's, finite
    assert not (out / "backup").exists()  # stopped for good: rerunning starts afresh


def test_diverging_from_the_start_is_one_error_line(photo_dir, tmp_path, capsys):
    """A learning rate of 1e30 overflows the weights in the first steps while the loss stays finite (tanh
    saturates): before the backup's check, the run 'succeeded' and saved infinite weights as the best."""
    out = tmp_path / "run"
    code = main(["train", "--data", str(photo_dir), "--output", str(out), "--epochs", "2", "--image-size", "32",
                 "--embedder", "tiny_random", "--batch-size", "2", "--workers", "2", "--learning-rate", "1e30"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.count("\n") == 0, err
    assert re.search(r"training stopped: the (weights became NaN or infinite|loss became nan)", err)
    assert "no epoch ended with finite weights, so none were saved" in err
    assert not (out / "colorize.weights.h5").exists() and not (out / "backup").exists()
