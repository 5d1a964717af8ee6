"""Callbacks beyond Keras' own: learning-curve plots and colorized validation photos in TensorBoard."""

from __future__ import annotations

import logging
from pathlib import Path

import keras
import numpy as np

from koalarization import color
from koalarization.plots import plot_curves

log = logging.getLogger(__name__)


class CurvesPlot(keras.callbacks.Callback):
    """Redraws `curves.png` from the CSV log after every epoch (put it after CSVLogger), so the picture is
    there even when a run is interrupted."""

    def __init__(self, log_csv: str | Path, out_png: str | Path):
        super().__init__()
        self.log_csv, self.out_png = Path(log_csv), Path(out_png)

    def on_epoch_end(self, epoch, logs=None):
        try:
            plot_curves(self.log_csv, self.out_png)
        except (OSError, ValueError, KeyError) as err:  # a plot must never stop training
            log.warning("could not draw %s: %s", self.out_png, err)


class ValidationImages(keras.callbacks.Callback):
    """Logs `count` validation photos each epoch to TensorBoard as bw | predicted | actual strips, predicted
    by `colorizer` (model.build_colorizer's) from fixed photos, so epochs are comparable:
    L (B, S, S, 1), embedding (B, D), ab (B, S, S, 2)."""

    def __init__(self, log_dir: str | Path, colorizer: keras.Model, lightness: np.ndarray, embedding: np.ndarray,
                 ab: np.ndarray, count: int = 4):
        super().__init__()
        import tensorflow as tf  # TensorBoard summaries need TensorFlow

        self._tf, self.colorizer = tf, colorizer
        self.lightness, self.embedding, self.ab = lightness[:count], embedding[:count], ab[:count]
        self.writer = tf.summary.create_file_writer(str(Path(log_dir) / "images"))

    def on_epoch_end(self, epoch, logs=None):
        predicted_ab = np.asarray(self.colorizer.predict_on_batch([self.lightness, self.embedding]))
        strips = np.concatenate(
            [
                color.gray_rgb_from_l(self.lightness),
                color.network_to_rgb(self.lightness, predicted_ab),
                color.network_to_rgb(self.lightness, self.ab),
            ],
            axis=2,  # side by side: bw | predicted | actual
        ).astype(np.float32)
        with self.writer.as_default():
            self._tf.summary.image("validation/bw|predicted|actual", strips, step=epoch, max_outputs=len(strips))
        self.writer.flush()

    def on_train_end(self, logs=None):
        self.writer.close()
