"""Backups of an unfinished run, every N steps and every epoch, that resume exactly where the run stopped.

Keras' BackupAndRestore (3.15) restores the weights but restarts the interrupted epoch at batch 0, writes
the weights and the position as two files (a kill between the two pairs new weights with an old position),
copies the previous backup non-atomically, and after a resume stamps mid-epoch backups with epoch 0. This
callback keeps its idea (double checkpoint, save_freq in steps) with one file per backup:

    backup/latest.weights.h5     model + optimizer variables (learning rate, step count, RMSprop
                                 averages), with the position and callback state as an HDF5 attribute
    backup/previous.weights.h5   the backup before it: what a resume reads if `latest` is unreadable

A backup is written to a temporary name, flushed to disk and renamed, so a run killed while writing one
resumes from the one before. `Start(epoch, batch)` means "batches 0..batch-1 of `epoch` are done"; `train`
runs the rest of that epoch (batches.BatchSource.view(start=batch)), then the remaining epochs. The state of
EarlyStopping, ReduceLROnPlateau and the best-weights checkpoint is backed up too, so a resumed run makes
the same decisions as one that was never interrupted.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import keras

from koalarization.errors import KoalarizationError
from koalarization.files import atomic_path, first_line
from koalarization.run import all_finite, save_weights_atomic

log = logging.getLogger(__name__)

LATEST, PREVIOUS, INCOMING = "latest.weights.h5", "previous.weights.h5", "incoming.weights.h5"
ATTRIBUTE = "koalarization_backup"
STATE_ATTRS = ("wait", "best", "best_epoch", "cooldown_counter")  # what Keras' callbacks decide from


@dataclass(frozen=True)
class Start:
    """Where a run starts: `batch` batches of `epoch` are done. `state`: the callbacks' STATE_ATTRS."""

    epoch: int = 0
    batch: int = 0
    state: list = field(default_factory=list)


def save(model: keras.Model, directory: Path, start: Start) -> None:
    """Back up `model` (weights and optimizer) at `start`, atomically; the last backup becomes `previous`."""
    directory.mkdir(parents=True, exist_ok=True)
    save_weights_atomic(model, directory / INCOMING, attrs={ATTRIBUTE: json.dumps(asdict(start))})
    if (directory / LATEST).exists():
        os.replace(directory / LATEST, directory / PREVIOUS)
    os.replace(directory / INCOMING, directory / LATEST)


def restore(model: keras.Model, directory: Path) -> Start:
    """Load the newest readable backup into `model` (its optimizer built) and say where to start."""
    import h5py

    errors = []
    for name in (LATEST, PREVIOUS):
        path = directory / name
        if not path.is_file():
            continue
        try:
            with h5py.File(path, "r") as f:
                start = Start(**json.loads(f.attrs[ATTRIBUTE]))
            model.load_weights(path)
        except Exception as err:  # noqa: BLE001 - truncated HDF5, missing attribute, wrong network
            errors.append(f"{name}: {first_line(err, 120)}")
            log.warning("backup %s is unreadable (%s); trying the one before", path, errors[-1])
            continue
        log.info("resuming from %s: epoch %d, batch %d", path, start.epoch, start.batch)
        return start
    if errors:
        raise KoalarizationError(f"{directory}: no readable backup ({'; '.join(errors)}); delete it to start over")
    return Start()


def segments(start: Start, epochs: int) -> list[tuple[int, int]]:
    """(first epoch, batches to skip) of each `fit` call: the rest of an interrupted epoch alone, then the
    other epochs (Keras' `fit` runs the same number of steps in every epoch)."""
    if start.batch and start.epoch < epochs:
        return [(start.epoch, start.batch)] + ([(start.epoch + 1, 0)] if start.epoch + 1 < epochs else [])
    return [(start.epoch, 0)]


def trim_log(log_csv: Path, epoch: int) -> None:
    """Drop rows of epochs >= `epoch` from a CSV log: a run killed after logging an epoch but before backing
    it up runs that epoch again, and must not log it twice."""
    try:
        with open(log_csv, newline="") as f:
            rows = list(csv.reader(f))
    except OSError:
        return
    kept = rows[:1] + [r for r in rows[1:] if r and int(float(r[0])) < epoch]
    if len(kept) < len(rows):
        with atomic_path(log_csv) as tmp, open(tmp, "w", newline="") as f:
            csv.writer(f).writerows(kept)


class StepBackup(keras.callbacks.Callback):
    """Backs up every `every_steps` optimizer steps (None: only at epoch ends) and after every epoch.

    Place it after the callbacks in `stateful` (so the epoch's backup holds their updated state and the
    reduced learning rate) and before any callback that may stop the run. `start` is where this `fit`
    begins; `last`, where a next one would continue. `write`: False on the workers that are not the chief
    (their state is the chief's; `train` deletes the backups once the run is complete).

    Weights that became NaN or infinite are never backed up: the run stops instead (`diverged`), and the
    backups keep the last good weights. A NaN loss stops it too (TerminateOnNaN), but weights can turn NaN
    a step before the loss shows it, or while the loss stays finite (a ReLU maps NaN to 0). Every worker
    checks, so all of them stop at the same step (distribute.py).
    """

    def __init__(self, directory, steps_per_epoch, every_steps=None, start=Start(), stateful=(), write=True):
        super().__init__()
        self.directory, self.steps_per_epoch, self.every_steps = Path(directory), steps_per_epoch, every_steps
        self.start, self.stateful, self.write = start, list(stateful), write
        self.epoch, self.last, self.diverged = start.epoch, start, False

    def capture(self) -> list:
        values = [getattr(cb, a) for cb in self.stateful for a in STATE_ATTRS if hasattr(cb, a)]
        return [v if v is None or isinstance(v, int) else float(v) for v in values]  # JSON: None, int, float

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        if epoch == self.start.epoch and self.start.state:  # after on_train_begin, which resets them
            values = iter(self.start.state)
            for cb in self.stateful:
                for a in STATE_ATTRS:
                    if hasattr(cb, a):
                        setattr(cb, a, next(values))

    def on_train_batch_end(self, batch, logs=None):
        done = batch + 1 + (self.start.batch if self.epoch == self.start.epoch else 0)
        step = self.epoch * self.steps_per_epoch + done
        # The epoch's last batch is backed up by on_epoch_end, after validation and the callbacks.
        if self.every_steps and step % self.every_steps == 0 and done < self.steps_per_epoch:
            self.backup(Start(self.epoch, done, self.capture()))

    def on_epoch_end(self, epoch, logs=None):
        self.last = Start(epoch + 1, 0, self.capture())
        self.backup(self.last)

    def backup(self, start: Start) -> None:
        if not all_finite(self.model):
            log.warning("the weights became NaN or infinite at epoch %d, batch %d: stopping; %s keeps the "
                        "last good backup", start.epoch, start.batch, self.directory)
            self.diverged = self.model.stop_training = True
        elif self.write:
            save(self.model, self.directory, start)
