"""Training: `Model.fit` on streamed batches with the reference recipe's callbacks (docs/reference.md).

Files in the output folder:
    config.json            the RunConfig used (what `test` and `colorize` rebuild)
    split.json             train/val/test files (what `test` evaluates on)
    colorize.weights.h5    best colorizer weights by val_loss (ModelCheckpoint, written atomically)
    log.csv                loss, val_loss and learning rate per epoch (appended across resumed runs)
    curves.png             the same as a picture, redrawn every epoch
    logs/                  TensorBoard events: scalars, and colorized validation photos every epoch
    backup/                backup.py's state while a run is unfinished: rerunning resumes from it, mid-epoch

Several GPUs or machines (--gpus, TF_CONFIG): see distribute.py; only the chief writes these files.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import keras

from koalarization import backup, checkpoint, distribute
from koalarization.callbacks import CurvesPlot, ValidationImages
from koalarization.config import OPTIMIZERS, PRECISIONS, RunConfig
from koalarization.data import SPLIT_FILE, BatchSource, EpochSetter, Split, make_split, scan_photos
from koalarization.data import rgb_to_network, write_text_atomic
from koalarization.embedding import build_embedder
from koalarization.errors import KoalarizationError
from koalarization.device_preprocessing import WithModel, build_device_model, inference_model
from koalarization.model import build_model, colorizer_of
from koalarization.prepare import open_prepared

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
        if split.belongs_to(data_root):
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


def build_callbacks(cfg, output, colorizer, sources, val_batch, extra=(), start=backup.Start(), steps=1,
                    chief=True):
    """The recipe's callbacks. sources: the BatchSources to tell the epoch; val_batch: (L, ab, weight)
    photos shown in TensorBoard; start, steps: where this `fit` starts, and batches per epoch; chief: False
    on the other workers of a multi-worker job (no logs)."""
    t = cfg.train
    best = checkpoint.ColorizerCheckpoint(
        colorizer,
        str(output / checkpoint.WEIGHTS_FILE),
        stamp=cfg.model,  # load_trained refuses these weights beside another run's config.json
        monitor="val_loss",
        save_best_only=True,  # on resume, backup.StepBackup restores its `best`: no worse weights overwrite it
    )
    early_stopping = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=t.early_stopping_patience, min_delta=t.early_stopping_min_delta
    )
    reduce_lr = keras.callbacks.ReduceLROnPlateau(
        monitor="val_loss", factor=t.reduce_lr_factor, patience=t.reduce_lr_patience, min_lr=t.min_learning_rate
    )
    callbacks = [
        EpochSetter(*sources),
        best,
        early_stopping,
        reduce_lr,
        keras.callbacks.TerminateOnNaN(),
    ]
    if chief:  # logs only; on the other workers Keras' TensorBoard also stalled every epoch ~10 s (TF 2.21)
        # After ReduceLROnPlateau, which adds the learning rate to the logs it writes.
        callbacks.append(keras.callbacks.CSVLogger(str(output / LOG_FILE), append=True))
        callbacks.append(CurvesPlot(output / LOG_FILE, output / CURVES_FILE))
        if keras.backend.backend() == "tensorflow":
            callbacks.append(keras.callbacks.TensorBoard(str(output / "logs"), write_graph=False))
    if keras.backend.backend() == "tensorflow":  # on every worker: its predict is a collective operation
        callbacks.append(ValidationImages(output / "logs", val_batch[0], val_batch[1]))
    # After the callbacks whose state (and learning rate) it backs up; before `extra`, which may stop the run.
    callbacks.append(backup.StepBackup(
        output / BACKUP_DIR, steps, t.backup_every_steps, start, (best, early_stopping, reduce_lr), write=chief
    ))
    return callbacks + list(extra)


def make_optimizer(name: str, learning_rate: float) -> keras.optimizers.Optimizer:
    """config.OPTIMIZERS by name, with Keras' defaults otherwise."""
    optimizers = {"rmsprop": keras.optimizers.RMSprop, "adam": keras.optimizers.Adam}
    if name not in optimizers:
        raise KoalarizationError(f"--optimizer {name}: choose one of {', '.join(OPTIMIZERS)}")
    return optimizers[name](learning_rate)


@contextlib.contextmanager
def precision_policy(name: str):
    """Build layers under the Keras dtype policy `name` (config.PRECISIONS), then restore the global one.
    Mixed policies keep the variables in float32; Keras adds loss scaling for mixed_float16 at compile."""
    if name not in PRECISIONS:
        raise KoalarizationError(f"--precision {name}: choose one of {', '.join(PRECISIONS)}")
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def train(cfg: RunConfig, callbacks=(), verbose="auto", strategy=None) -> TrainResult:
    """Train the network of `cfg.model` with the recipe of `cfg.train`. Rerunning an interrupted call with
    the same output folder resumes it. `callbacks` are appended to the recipe's (tests use this).
    `strategy`: a tf.distribute strategy instead of the one --gpus and TF_CONFIG choose (distribute.py)."""
    t = cfg.train
    place = distribute.placement(t.gpus, strategy)  # first: MultiWorkerMirroredStrategy must precede TF work
    output = place.run_dir(Path(t.output))  # --output on the chief, a temporary folder on other workers
    output.mkdir(parents=True, exist_ok=True)
    resuming = _check_resumable(cfg, output)
    split, skipped = _split_for(cfg, output)
    write_text_atomic(output / checkpoint.CONFIG_FILE, cfg.to_json())
    log.info("photos: %d train, %d val, %d test", len(split.train), len(split.val), len(split.test))

    keras.utils.set_random_seed(t.seed)
    with place.scope(), precision_policy(t.precision):
        embedder = build_embedder(cfg.model.embedder, t.embedder_weights)
        # --device-preprocessing: uint8 in, warp and Lab on the device, the loss inside; the same colorizer.
        if t.device_preprocessing and place.strategy is not None:  # distribute.feed makes (L, ab, weight)
            raise KoalarizationError("--device-preprocessing does not work with several devices or workers yet")
        model = (build_device_model if t.device_preprocessing else build_model)(cfg.model, embedder)
        loss = None if t.device_preprocessing else "mse"
        model.compile(optimizer=make_optimizer(t.optimizer, t.learning_rate), loss=loss, jit_compile=t.jit_compile)
        model.optimizer.build(model.trainable_variables)  # backups hold the optimizer's variables too

    # Weights, optimizer (learning rate included), position and callback state; every worker takes the chief's.
    start = backup.restore(model, output / BACKUP_DIR) if resuming else backup.Start()
    photos = "\n".join(str(p.relative_to(split.root)) for p in split.train + split.val).encode()
    trained = colorizer_of(model).variables + model.optimizer.variables
    start = place.sync(trained, start, hashlib.sha256(photos).hexdigest())
    if resuming:
        backup.trim_log(output / LOG_FILE, start.epoch)
        log.info("resuming the interrupted run in %s at epoch %d, batch %d", output, start.epoch, start.batch)

    size = cfg.model.image_size
    store = open_prepared(t.prepared, size, split.train + split.val) if t.prepared else None  # same batches
    train_source = BatchSource(
        split.train, t.batch_size, size, seed=t.seed, augment=t.augment, workers=t.workers, store=store,
        device_preprocessing=t.device_preprocessing,
    )
    val_source = BatchSource(split.val, t.batch_size, size, seed=t.seed, shuffle=False, workers=t.workers,
                             store=store, device_preprocessing=t.device_preprocessing)
    val_batch = val_source[0]  # TensorBoard's photos, as (L, ab, weight)
    if t.device_preprocessing:  # validation photos are not augmented: convert the uint8 ones on the host
        val_batch = (*rgb_to_network(val_batch[0]["rgb"]), val_batch[0]["weight"])
    merged: dict[str, list] = {}
    # One `fit` per segment: the rest of an interrupted epoch, then the other epochs (backup.segments).
    for first, skip in backup.segments(start, t.epochs):
        last = first + 1 if skip else t.epochs
        # Distributed: full batches (weight-0 padding), so every replica computes the same number of photos.
        train_data, train_views = place.feed(train_source.view(pad=place.replicas > 1, start=skip), (first, last))
        val_data, val_views = place.feed(val_source)
        cbs = build_callbacks(cfg, output, colorizer_of(model), train_views + val_views, val_batch,
                              callbacks, start, len(train_source), place.cluster.is_chief)
        if t.device_preprocessing:  # TensorBoard's photos are predicted from L, by a view of the same layers
            view = inference_model(model)
            cbs = [WithModel(cb, view) if isinstance(cb, ValidationImages) else cb for cb in cbs]
        # shuffle=False: the source shuffles per (seed, epoch); Keras would also reorder a PyDataset's batches
        # with Python's global random state, which a resumed run cannot reproduce.
        history = model.fit(train_data, validation_data=val_data, initial_epoch=first, epochs=last, shuffle=False,
                            steps_per_epoch=len(train_views[0]) if place.cluster.count > 1 else None,  # feed()
                            callbacks=cbs, verbose=verbose)
        for key, values in history.history.items():
            merged.setdefault(key, []).extend(values)
        start = next(cb.last for cb in cbs if isinstance(cb, backup.StepBackup))
        if model.stop_training:
            break
    shutil.rmtree(output / BACKUP_DIR, ignore_errors=True)  # the run is complete
    place.release(output)
    history.history = merged

    losses = history.history.get("loss", [])
    diverged = next(cb.diverged for cb in cbs if isinstance(cb, backup.StepBackup))
    if diverged or (losses and not math.isfinite(losses[-1])):
        best = output / checkpoint.WEIGHTS_FILE  # AtomicWeightsSaver never writes non-finite weights
        kept = (f"the best weights so far are in {best}" if best.is_file()
                else "no epoch ended with finite weights, so none were saved")
        what = (f"the loss became {losses[-1]}" if losses and not math.isfinite(losses[-1])
                else "the weights became NaN or infinite")
        raise KoalarizationError(f"training stopped: {what}; {kept}; try a lower --learning-rate")
    failed = len(set(train_source.failed_files) | set(val_source.failed_files))
    if failed:
        log.warning("%d photo(s) failed to decode during training and were left out of the loss", failed)
    return TrainResult(history, Path(t.output), len(losses), skipped, failed)
