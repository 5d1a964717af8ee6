"""Training: `Model.fit` on streamed batches with the reference recipe's callbacks (REFERENCE.md).

Files in the output folder:
    config.json            the RunConfig used (what `test` and `colorize` rebuild)
    split.json             train/val/test files (what `test` evaluates on)
    colorize.weights.h5    best colorizer weights by val_loss (ModelCheckpoint, written atomically)
    log.csv                loss, val_loss and learning rate per epoch (appended across resumed runs)
    curves.png             the same as a picture, redrawn every epoch
    logs/                  TensorBoard events: scalars, and colorized validation photos every epoch
    backup/                BackupAndRestore state while a run is unfinished: rerunning resumes from it
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import keras

from koalarization import checkpoint
from koalarization.callbacks import CurvesPlot, ValidationImages
from koalarization.config import RunConfig
from koalarization.data import SPLIT_FILE, BatchSource, EpochSetter, Split, make_split, scan_photos
from koalarization.data import write_text_atomic
from koalarization.embedding import build_embedder
from koalarization.errors import KoalarizationError
from koalarization.model import build_model, colorizer_of

log = logging.getLogger(__name__)

LOG_FILE = "log.csv"
CURVES_FILE = "curves.png"
BACKUP_DIR = "backup"


@dataclass
class TrainResult:
    history: keras.callbacks.History
    output: Path
    epochs_run: int
    skipped_files: int  # found but not trained on (grayscale, unreadable)
    failed_files: int  # passed the scan but failed to decode during training


def _split_for(cfg: RunConfig, output: Path) -> tuple[Split, int]:
    """Reuse the run's split (a resumed run must test on the same held-out photos), else make one."""
    data_root = Path(cfg.train.data)
    split_file = output / SPLIT_FILE
    if split_file.is_file():
        split = Split.load(split_file)
        if split.root == Path(data_root).absolute():
            return split, 0
        log.warning("%s was made for %s; making a new split for %s", split_file, split.root, data_root)
    usable, skipped = scan_photos(data_root, workers=max(cfg.train.workers, 4))
    for path, reason in skipped:
        log.warning("skipping %s: %s", path, reason)
    if skipped:
        log.warning("skipped %d of %d files (grayscale or unreadable)", len(skipped), len(usable) + len(skipped))
    if not usable:
        raise KoalarizationError(f"--data {data_root}: no usable colour photos found")
    split = make_split(data_root, usable, cfg.train.val_fraction, cfg.train.test_fraction, cfg.train.seed)
    split.save(split_file, seed=cfg.train.seed, skipped=[[str(p), r] for p, r in skipped])
    return split, len(skipped)


def _check_resumable(cfg: RunConfig, output: Path) -> bool:
    """True when `output` holds an interrupted run of the same network (BackupAndRestore will resume it)."""
    if not (output / BACKUP_DIR).is_dir():
        return False
    saved = output / checkpoint.CONFIG_FILE
    if saved.is_file():
        previous = RunConfig.load(saved)
        if previous.model != cfg.model:
            raise KoalarizationError(
                f"--output {output} holds an interrupted run of a different network; resume it with the "
                f"same flags, or choose another --output (or delete {output / BACKUP_DIR})"
            )
    return True


def _last_epoch_row(log_file: Path) -> dict | None:
    try:
        with open(log_file, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError:
        return None
    return rows[-1] if rows else None


def _best_val_loss(log_file: Path) -> float | None:
    try:
        with open(log_file, newline="") as f:
            losses = [float(r["val_loss"]) for r in csv.DictReader(f) if r.get("val_loss")]
    except (OSError, ValueError):
        return None
    finite = [v for v in losses if math.isfinite(v)]
    return min(finite) if finite else None


def distribution_strategy(gpus: int):
    """tf.distribute.MirroredStrategy over `gpus` GPUs (the replacement of the removed multi_gpu_model)."""
    import tensorflow as tf

    available = tf.config.list_logical_devices("GPU")
    if len(available) < gpus:
        raise KoalarizationError(f"--gpus {gpus}: only {len(available)} GPU(s) visible to TensorFlow")
    return tf.distribute.MirroredStrategy([d.name for d in available[:gpus]])


def _scope(cfg: RunConfig, strategy):
    if strategy is not None:
        return strategy.scope()
    if cfg.train.gpus > 1:
        if keras.backend.backend() == "tensorflow":
            return distribution_strategy(cfg.train.gpus).scope()
        if keras.backend.backend() == "jax":
            devices = keras.distribution.list_devices("gpu")[: cfg.train.gpus]
            keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
        else:
            raise KoalarizationError(f"--gpus needs the tensorflow or jax backend, not {keras.backend.backend()}")
    import contextlib

    return contextlib.nullcontext()


def build_callbacks(cfg, output, colorizer, sources, resuming, extra=()):
    t = cfg.train
    callbacks = [
        EpochSetter(*sources),
        # First, so that a later callback that fails (or a kill) finds the epoch already backed up.
        keras.callbacks.BackupAndRestore(
            str(output / BACKUP_DIR), save_freq=t.backup_every_steps or "epoch", double_checkpoint=True
        ),
        checkpoint.ColorizerCheckpoint(
            colorizer,
            str(output / checkpoint.WEIGHTS_FILE),
            monitor="val_loss",
            save_best_only=True,
            # A resumed run must not overwrite the best weights with worse ones.
            initial_value_threshold=_best_val_loss(output / LOG_FILE) if resuming else None,
        ),
        keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=t.early_stopping_patience, min_delta=t.early_stopping_min_delta
        ),
        keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss", factor=t.reduce_lr_factor, patience=t.reduce_lr_patience, min_lr=t.min_learning_rate
        ),
        keras.callbacks.TerminateOnNaN(),
        # After ReduceLROnPlateau, which adds the learning rate to the logs it writes.
        keras.callbacks.CSVLogger(str(output / LOG_FILE), append=True),
    ]
    callbacks.append(CurvesPlot(output / LOG_FILE, output / CURVES_FILE))
    if keras.backend.backend() == "tensorflow":
        callbacks.append(keras.callbacks.TensorBoard(str(output / "logs"), write_graph=False))
        lightness, ab, _ = sources[1][0]  # the first validation batch, the same every epoch
        callbacks.append(ValidationImages(output / "logs", lightness, ab))
    return callbacks + list(extra)


def train(cfg: RunConfig, callbacks=(), verbose="auto", strategy=None) -> TrainResult:
    """Train the network of `cfg.model` with the recipe of `cfg.train`. Rerunning an interrupted call with
    the same output folder resumes it. `callbacks` are appended to the recipe's (tests use this)."""
    t = cfg.train
    output = Path(t.output)
    output.mkdir(parents=True, exist_ok=True)
    resuming = _check_resumable(cfg, output)
    split, skipped = _split_for(cfg, output)
    write_text_atomic(output / checkpoint.CONFIG_FILE, cfg.to_json())
    log.info("photos: %d train, %d val, %d test", len(split.train), len(split.val), len(split.test))

    keras.utils.set_random_seed(t.seed)
    with _scope(cfg, strategy):
        embedder = build_embedder(cfg.model.embedder, t.embedder_weights)
        model = build_model(cfg.model, embedder)
        model.compile(optimizer=keras.optimizers.RMSprop(t.learning_rate), loss="mse")

    if resuming:
        row = _last_epoch_row(output / LOG_FILE)
        if row and row.get("learning_rate"):
            # ReduceLROnPlateau's reductions live in the optimizer, which the backup does not restore.
            model.optimizer.learning_rate = float(row["learning_rate"])
        log.info("resuming the interrupted run in %s", output)

    size = cfg.model.image_size
    train_source = BatchSource(
        split.train, t.batch_size, size, seed=t.seed, augment=t.augment, workers=t.workers
    )
    val_source = BatchSource(split.val, t.batch_size, size, seed=t.seed, shuffle=False, workers=t.workers)
    cbs = build_callbacks(cfg, output, colorizer_of(model), (train_source, val_source), resuming, callbacks)
    history = model.fit(train_source, validation_data=val_source, epochs=t.epochs, callbacks=cbs, verbose=verbose)

    losses = history.history.get("loss", [])
    if losses and not math.isfinite(losses[-1]):
        raise KoalarizationError(
            f"training stopped: the loss became {losses[-1]} (NaN/inf); the best weights so far are in "
            f"{output / checkpoint.WEIGHTS_FILE}; try a lower learning rate"
        )
    failed = len(set(train_source.failed_files) | set(val_source.failed_files))
    if failed:
        log.warning("%d photo(s) failed to decode during training and were left out of the loss", failed)
    return TrainResult(history, output, len(losses), skipped, failed)
