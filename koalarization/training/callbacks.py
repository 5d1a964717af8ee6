"""Callbacks beyond Keras' own: learning-curve plots, a validation curve within epochs, and colorized
validation photos in TensorBoard."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import keras
import numpy as np

from koalarization import color
from koalarization.files import atomic_path
from koalarization.plots import plot_curves, plot_validation_curve

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


class LearningRateLog(keras.callbacks.Callback):
    """Adds the optimizer's current learning rate to each epoch's logs (what ReduceLROnPlateau does for a
    fixed one), so CSVLogger and curves.png show a schedule's decay. Put it before CSVLogger."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


class ValidationCurve(keras.callbacks.Callback):
    """Measures the loss on the validation photos every `every_steps` optimizer steps and appends
    (step, photos seen, val_loss) to a CSV: on a large data set an epoch is hours, and this curve says
    within one whether more data or more steps still help. `start_step`: steps done before this `fit`
    (a resumed run); rows past it, from a run killed before its backup, are dropped first."""

    FIELDS = ("step", "photos", "val_loss")

    def __init__(self, source, every_steps: int, csv_path: str | Path, batch_size: int, steps_per_epoch: int,
                 start_step: int = 0, write: bool = True):
        super().__init__()
        self.source, self.every, self.path, self.write = source, every_steps, Path(csv_path), write
        self.batch_size, self.steps_per_epoch, self.step = batch_size, steps_per_epoch, start_step
        if write:
            rows = self.rows(self.path)
            kept = [r for r in rows if int(r["step"]) <= start_step]
            if len(kept) < len(rows) or not self.path.is_file():
                self._write(kept)

    @classmethod
    def rows(cls, path: Path) -> list[dict]:
        try:
            with open(path, newline="") as f:
                return list(csv.DictReader(f))
        except OSError:
            return []

    def _write(self, rows) -> None:
        with atomic_path(self.path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.FIELDS)
            writer.writeheader()
            writer.writerows(rows)
        if rows:  # the picture beside the numbers (curve.png); a plot must never stop training
            try:
                plot_validation_curve(self.path, self.path.with_suffix(".png"))
            except (OSError, ValueError, KeyError) as err:
                log.warning("could not draw %s: %s", self.path.with_suffix(".png"), err)

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self.step % self.every or self.step % self.steps_per_epoch == 0:  # epoch ends are validated anyway
            return
        loss = float(np.ravel(self.model.evaluate(self.source, verbose=0))[0])
        if self.write:
            self._write(self.rows(self.path) + [{"step": self.step, "photos": self.step * self.batch_size,
                                                  "val_loss": loss}])

    def on_epoch_end(self, epoch, logs=None):
        if self.write and logs and "val_loss" in logs:
            self._write(self.rows(self.path) + [{"step": self.step, "photos": self.step * self.batch_size,
                                                  "val_loss": float(logs["val_loss"])}])


class ValidationImages(keras.callbacks.Callback):
    """Logs `count` validation photos each epoch to TensorBoard as bw | predicted | actual strips, predicted
    by `colorizer` (network.build_colorizer's) from fixed photos, so epochs are comparable: rgb uint8
    (B, S, S, 3), embedding (B, D). The gray and predicted panels are `test`'s (join.gray_from_lightness
    and join_lightness, at S x S): what a user would get for the photo at that size."""

    def __init__(self, log_dir: str | Path, colorizer: keras.Model, rgb: np.ndarray, embedding: np.ndarray,
                 count: int = 4):
        super().__init__()
        import tensorflow as tf  # TensorBoard summaries need TensorFlow

        self._tf, self.colorizer = tf, colorizer
        self.rgb, self.embedding = rgb[:count], embedding[:count]
        self.lightness = color.network_lightness(self.rgb)
        self.writer = tf.summary.create_file_writer(str(Path(log_dir) / "images"))

    def on_epoch_end(self, epoch, logs=None):
        from koalarization.inference.join import gray_from_lightness, join_lightness

        # predict, not predict_on_batch: under a tf.distribute strategy the latter gives one replica's share
        predicted_ab = np.asarray(self.colorizer.predict([self.lightness, self.embedding], verbose=0))
        if predicted_ab.shape[-1] != 2:  # the classification head's logits at half size: its default decoding
            from koalarization.model.distribution import AnnealedMean

            predicted_ab = np.asarray(AnnealedMean()(predicted_ab))
        strips = np.stack([np.concatenate([gray_from_lightness(rgb), join_lightness(rgb, ab), rgb], axis=1)
                           for rgb, ab in zip(self.rgb, predicted_ab)])  # side by side: bw | predicted | actual
        with self.writer.as_default():
            self._tf.summary.image("validation/bw|predicted|actual", strips, step=epoch, max_outputs=len(strips))
        self.writer.flush()

    def on_train_end(self, logs=None):
        self.writer.close()
