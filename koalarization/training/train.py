"""Training: `Model.fit` on streamed batches with the reference recipe's callbacks (docs/reference.md).

Before the first epoch every photo is decoded once into the cache (cache.py), with its embedding; the
epochs read it back. Files in the output folder:
    config.json            the RunConfig used (what `test` and `colorize` rebuild)
    split.json             train/val/test files (what `test` evaluates on)
    colorize.weights.h5    best colorizer weights by val_loss (ModelCheckpoint, written atomically)
    log.csv                loss, val_loss and learning rate per epoch (appended across resumed runs)
    curves.png             the same as a picture, redrawn every epoch
    curve.csv              val_loss against photos seen, every validate_every_steps steps (when set)
    ab_prior.json          classification head: the ab bins, their prior in the training photos and the
                           class weights of the loss (distribution.write_prior)
    logs/                  TensorBoard events: scalars, and colorized validation photos every epoch
    backup/                backup.py's state while a run is unfinished: rerunning resumes from it, mid-epoch

Several GPUs or machines (--gpus, TF_CONFIG): see distribute.py; only the chief writes these files.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import logging
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from koalarization import run
from koalarization.config import OPTIMIZERS, PRECISIONS, RunConfig
from koalarization.data import cache, images, sources
from koalarization.data.batches import BatchSource, EpochSetter
from koalarization.data.split import Split, make_split
from koalarization.errors import KoalarizationError
from koalarization.files import write_text_atomic
from koalarization.model import distribution
from koalarization.model.network import colorizer_of
from koalarization.model.task import build_training_model
from koalarization.training import backup, distribute
from koalarization.training.callbacks import CurvesPlot, LearningRateLog, ValidationCurve, ValidationImages

log = logging.getLogger(__name__)



@dataclass
class TrainResult:
    history: keras.callbacks.History
    output: Path
    epochs_run: int  # by this process (a resumed run counts only its own)
    skipped_files: int  # found but not trained on (gray, unreadable)
    best_epoch: int | None = None  # 1-based, over the whole run (log.csv), resumed parts included
    best_val_loss: float | None = None
    stopped_early: bool = False  # EarlyStopping ended the run before `epochs`


def photo_cache(cfg: RunConfig, progress: bool = True) -> cache.Cache:
    """The cache of every photo of cfg.train's data sources at its image size, built (or completed) now."""
    t = cfg.train
    if not (t.data or t.data_list):
        raise KoalarizationError("data: give at least one folder of photos or a data_list file")
    files = sources.photo_paths(t.data, t.data_list, t.exclude_list)
    if not files:
        raise KoalarizationError(f"data {' '.join(t.data + t.data_list)}: no photos found")
    folder = Path(t.cache) if t.cache else cache.default_folder(files, t.image_size, cfg.model.embedder,
                                                                   t.embedder_weights)
    log.info("caching %d photos at %d px with their %s embeddings in %s", len(files), t.image_size,
             cfg.model.embedder, folder)
    store = cache.build(files, folder, t.image_size, cfg.model.embedder, t.embedder_weights,
                        workers=max(t.workers, 2), progress=progress)
    if store.image_size != t.image_size or store.embedder != cfg.model.embedder:
        raise KoalarizationError(f"cache {folder}: holds {store.image_size} px photos with {store.embedder} "
                                 f"embeddings, not {t.image_size} px with {cfg.model.embedder}")
    return store


def _split_for(cfg: RunConfig, output: Path, store: cache.Cache) -> tuple[Split, int]:
    """Reuse the run's split (a resumed run must test on the same held-out photos), else make one."""
    t = cfg.train
    split_file = output / run.SPLIT_FILE
    usable = store.usable
    skipped = [(p, r) for p, r in store.skipped.items()]
    if split_file.is_file():
        split = Split.load(split_file)
        if set(split.train + split.val + split.test) <= set(usable):
            return split, len(skipped)
        log.warning("%s lists photos that are not among these photos; making a new split", split_file)
    skips = images.SkipLog(log, "files (gray or unreadable)")
    for path, reason in skipped:
        skips.add(f"{images.display_name(path)}: {reason}")
    skips.close()
    if not usable:
        named = ", ".join(str(s) for s in (*t.data, *t.data_list))
        raise KoalarizationError(f"data: no usable colour photos found in {named} "
                                 f"({len(skipped)} skipped as gray or unreadable)")
    split = make_split(usable, t.val_fraction, t.test_fraction, t.seed, sources=t.data + t.data_list)
    split.save(split_file, seed=t.seed, skipped=[[str(p), r] for p, r in skipped])
    return split, len(skipped)


def _check_resumable(cfg: RunConfig, output: Path) -> bool:
    """True when `output` holds an interrupted run of the same network (BackupAndRestore will resume it)."""
    if not (output / run.BACKUP_DIR).is_dir():
        return False
    saved = output / run.CONFIG_FILE
    if saved.is_file():
        previous = RunConfig.load(saved)
        if previous.model != cfg.model:
            raise KoalarizationError(
                f"output {output} holds an interrupted run of a different network; resume it with the "
                f"same settings, or choose another output folder (or delete {output / run.BACKUP_DIR})"
            )
        if previous.train.image_size != cfg.train.image_size:
            raise KoalarizationError(
                f"output {output} holds an interrupted run at {previous.train.image_size} px, not "
                f"{cfg.train.image_size}; resume it at its size, or choose another output folder"
            )
    return True


@dataclass(frozen=True)
class Segment:
    """One `fit` call of a run (backup.segments: the rest of an interrupted epoch, or the epochs after it)."""

    output: Path  # the run folder
    colorizer: keras.Model  # the network inside the training model: what checkpoints and previews use
    sources: tuple  # the BatchSource views the call reads, told each epoch (EpochSetter)
    val_data: object  # what `fit` validates on
    shown: tuple  # (rgb uint8, embedding) of the validation photos TensorBoard shows
    start: backup.Start = backup.Start()  # where the call starts
    steps: int = 1  # batches per epoch
    chief: bool = True  # False on the other workers of a multi-worker job: they write no logs


def build_callbacks(cfg: RunConfig, segment: Segment, extra=()) -> list[keras.callbacks.Callback]:
    """The recipe's callbacks for one `fit` call of the run, then `extra`."""
    t, output, colorizer, start, steps, chief = (cfg.train, segment.output, segment.colorizer, segment.start,
                                                 segment.steps, segment.chief)
    best = run.ColorizerCheckpoint(
        colorizer,
        str(output / run.WEIGHTS_FILE),
        stamp=cfg.model,  # load_trained refuses these weights beside another run's config.json
        monitor="val_loss",
        save_best_only=True,  # on resume, backup.StepBackup restores its `best`: no worse weights overwrite it
    )
    early_stopping = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=t.early_stopping_patience, min_delta=t.early_stopping_min_delta
    )
    # A cosine schedule sets the learning rate by step itself; ReduceLROnPlateau cannot change it.
    reduce_lr = keras.callbacks.ReduceLROnPlateau(
        monitor="val_loss", factor=t.reduce_lr_factor, patience=t.reduce_lr_patience, min_lr=t.min_learning_rate
    ) if t.lr_schedule == "plateau" else LearningRateLog()
    callbacks = [
        EpochSetter(*segment.sources),
        best,
        early_stopping,
        reduce_lr,
        keras.callbacks.TerminateOnNaN(),
    ]
    if chief:  # logs only; on the other workers Keras' TensorBoard also stalled every epoch ~10 s (TF 2.21)
        # After ReduceLROnPlateau, which adds the learning rate to the logs it writes.
        callbacks.append(keras.callbacks.CSVLogger(str(output / run.LOG_FILE), append=True))
        callbacks.append(CurvesPlot(output / run.LOG_FILE, output / run.CURVES_FILE))
        if keras.backend.backend() == "tensorflow":
            callbacks.append(keras.callbacks.TensorBoard(str(output / run.LOGS_DIR), write_graph=False))
    if keras.backend.backend() == "tensorflow":  # on every worker: its predict is a collective operation
        callbacks.append(ValidationImages(output / run.LOGS_DIR, colorizer, *segment.shown))
    if t.validate_every_steps:
        callbacks.append(ValidationCurve(segment.val_data, t.validate_every_steps, output / run.CURVE_FILE,
                                         t.batch_size, steps, start.epoch * steps + start.batch, write=chief))
    # After the callbacks whose state (and learning rate) it backs up; before `extra`, which may stop the run.
    callbacks.append(backup.StepBackup(
        output / run.BACKUP_DIR, steps, t.backup_every_steps, start, (best, early_stopping, reduce_lr), write=chief
    ))
    return callbacks + list(extra)


def learning_rate(cfg: RunConfig, steps_per_epoch: int):
    """The optimizer's learning rate: a number (ReduceLROnPlateau lowers it on plateaus), or for the cosine
    schedule a function of the optimizer's step (restored by backups, so a resumed run continues on it)."""
    t = cfg.train
    if t.lr_schedule == "plateau":
        return t.learning_rate
    steps = max(1, t.epochs * steps_per_epoch)
    return keras.optimizers.schedules.CosineDecay(t.learning_rate, steps, alpha=t.min_learning_rate / t.learning_rate)


def make_optimizer(name: str, learning_rate) -> keras.optimizers.Optimizer:
    """config.OPTIMIZERS by name, with Keras' defaults otherwise."""
    optimizers = {"rmsprop": keras.optimizers.RMSprop, "adam": keras.optimizers.Adam}
    if name not in optimizers:
        raise KoalarizationError(f"optimizer {name}: choose one of {', '.join(OPTIMIZERS)}")
    return optimizers[name](learning_rate)


@contextlib.contextmanager
def precision_policy(name: str):
    """Build layers under the Keras dtype policy `name` (config.PRECISIONS), then restore the global one.
    Mixed policies keep the variables in float32; Keras adds loss scaling for mixed_float16 at compile."""
    if name not in PRECISIONS:
        raise KoalarizationError(f"precision {name}: choose one of {', '.join(PRECISIONS)}")
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def train(cfg: RunConfig, callbacks=(), verbose="auto", strategy=None) -> TrainResult:
    """Train the network of `cfg.model` with the recipe of `cfg.train`. Rerunning an interrupted call with
    the same output folder resumes it. `callbacks` are appended to the recipe's (tests use this).
    `strategy`: a tf.distribute strategy instead of the one `gpus` and TF_CONFIG choose (distribute.py)."""
    t = cfg.train
    place = distribute.placement(t.gpus, strategy)  # first: MultiWorkerMirroredStrategy must precede TF work
    output = _output_folder(place, t.output)
    resuming = _check_resumable(cfg, output)
    source = run.TrainedRun.named(t.init_from) if t.init_from and not resuming else None
    if source is not None and not source.weights.is_file():  # before hours of caching
        raise KoalarizationError(f"init_from {source.weights}: file not found")
    store = photo_cache(cfg, progress=verbose != 0)
    split, skipped = _split_for(cfg, output, store)
    write_text_atomic(output / run.CONFIG_FILE, cfg.to_json())
    log.info("photos: %d train, %d val, %d test", len(split.train), len(split.val), len(split.test))

    class_weights = class_weights_for(cfg, output, store, split) if cfg.model.loss == "classification" else None
    keras.utils.set_random_seed(t.seed)
    train_source = BatchSource(store, split.train, t.batch_size, seed=t.seed, augment=t.augment, workers=t.workers)
    val_source = BatchSource(store, split.val, t.batch_size, seed=t.seed, shuffle=False, workers=t.workers)
    with place.scope(), precision_policy(t.precision):
        model = build_training_model(cfg.model, store.embedding_dim, t.image_size, t.augment.fill, class_weights)
        model.compile(optimizer=make_optimizer(t.optimizer, learning_rate(cfg, len(train_source))),
                      jit_compile=t.jit_compile)
        model.optimizer.build(model.trainable_variables)  # backups hold the optimizer's variables too
    start = _starting_state(model, place, output, split, source, resuming)

    history, cbs = _fit(cfg, model, place, output, train_source, val_source, start, callbacks, verbose)
    shutil.rmtree(output / run.BACKUP_DIR, ignore_errors=True)  # the run is complete
    place.release(output)
    losses = history.history.get("loss", [])
    _raise_if_diverged(losses, next(cb.diverged for cb in cbs if isinstance(cb, backup.StepBackup)), output)
    best_epoch, best_loss = best_in_log(output / run.LOG_FILE)
    # NaN and divergence were raised above, so a stop is EarlyStopping's
    return TrainResult(history, Path(t.output), len(losses), skipped, best_epoch, best_loss,
                       stopped_early=bool(model.stop_training))


def _output_folder(place, output: str) -> Path:
    """The run folder (--output on the chief, a temporary folder on other workers), without the partial
    files of a killed run (io.atomic_path's: never renamed, never read)."""
    folder = place.run_dir(Path(output))
    folder.mkdir(parents=True, exist_ok=True)
    for partial in [*folder.glob(".*.tmp*"), *(folder / run.BACKUP_DIR).glob(".*.tmp*")]:
        partial.unlink()
    return folder


def _starting_state(model, place, output: Path, split: Split, source, resuming: bool) -> backup.Start:
    """Where training starts: `source`'s matching layers copied in (--init-from), or an interrupted run's
    weights, optimizer (learning rate included), position and callback state from its backup; every worker
    then takes the chief's."""
    if source is not None:
        copied, left = run.load_matching(colorizer_of(model), source)
        log.info("init_from %s: %d layers copied%s", source.weights, len(copied),
                 f", {len(left)} left as initialised ({', '.join(left)})" if left else "")
    start = backup.restore(model, output / run.BACKUP_DIR) if resuming else backup.Start()
    photos = b"\n".join(os.fsencode(p.relative_to(split.root)) for p in split.train + split.val)
    trained = colorizer_of(model).variables + model.optimizer.variables
    start = place.sync(trained, start, hashlib.sha256(photos).hexdigest())
    if resuming:
        backup.trim_log(output / run.LOG_FILE, start.epoch)
        log.info("resuming the interrupted run in %s at epoch %d, batch %d", output, start.epoch, start.batch)
    return start


def _fit(cfg, model, place, output, train_source, val_source, start, callbacks, verbose):
    """Keras' fit, once per segment: the rest of an interrupted epoch, then the other epochs
    (backup.segments). -> (the history of all segments, the last segment's callbacks)."""
    t = cfg.train
    shown = val_source[0][0]  # TensorBoard's photos: validation photos are not augmented
    merged: dict[str, list] = {}
    for first, skip in backup.segments(start, t.epochs):
        last = first + 1 if skip else t.epochs
        # Distributed: full batches (weight-0 padding), so every replica computes the same number of photos.
        train_data, train_views = place.feed(train_source.view(pad=place.replicas > 1, start=skip), (first, last))
        val_data, val_views = place.feed(val_source)
        segment = Segment(output, colorizer_of(model), train_views + val_views, val_data,
                          (shown["rgb"], shown["embedding"]), start, len(train_source), place.is_chief)
        cbs = build_callbacks(cfg, segment, callbacks)
        # shuffle=False: the source shuffles per (seed, epoch); Keras would also reorder a PyDataset's batches
        # with Python's global random state, which a resumed run cannot reproduce.
        history = model.fit(train_data, validation_data=val_data, initial_epoch=first, epochs=last, shuffle=False,
                            steps_per_epoch=len(train_views[0]) if place.worker_count > 1 else None,  # feed()
                            callbacks=cbs, verbose=verbose)
        for key, values in history.history.items():
            merged.setdefault(key, []).extend(values)
        start = next(cb.last for cb in cbs if isinstance(cb, backup.StepBackup))
        if model.stop_training:
            break
    history.history = merged
    return history, cbs


def _raise_if_diverged(losses: list[float], diverged: bool, output: Path) -> None:
    if diverged or (losses and not math.isfinite(losses[-1])):
        best = output / run.WEIGHTS_FILE  # AtomicWeightsSaver never writes non-finite weights
        kept = (f"the best weights so far are in {best}" if best.is_file()
                else "no epoch ended with finite weights, so none were saved")
        what = (f"the loss became {losses[-1]}" if losses and not math.isfinite(losses[-1])
                else "the weights became NaN or infinite")
        raise KoalarizationError(f"training stopped: {what}; {kept}; try a lower learning_rate")


PRIOR_PHOTOS = 20_000  # training photos the ab prior is counted on: 82 M pixels at 64 px, for 261 bins


def class_weights_for(cfg: RunConfig, output: Path, store: cache.Cache, split: Split) -> np.ndarray:
    """The classification loss's class weights: the run's ab_prior.json when it has one (a resumed run),
    else counted now on up to PRIOR_PHOTOS of its training photos (a seeded sample) and written there."""
    path = output / run.PRIOR_FILE
    if path.is_file():
        body = distribution.read_prior(path)
        if body["rebalance"] == cfg.train.rebalance:
            return np.asarray(body["class_weights"], np.float32)
    rng = np.random.default_rng(cfg.train.seed)
    chosen = [split.train[i] for i in sorted(rng.permutation(len(split.train))[:PRIOR_PHOTOS])]
    rows = [store.row_of(p) for p in chosen]
    batches = (np.stack([store.photo(r) for r in rows[i : i + 1024]]) for i in range(0, len(rows), 1024))
    body = distribution.write_prior(path, distribution.ab_histogram(batches), len(rows), cfg.train.rebalance)
    log.info(distribution.prior_summary(body))
    return np.asarray(body["class_weights"], np.float32)


def best_in_log(log_csv: Path) -> tuple[int | None, float | None]:
    """(1-based epoch, val_loss) of the lowest val_loss in a run's CSV log, resumed parts included."""
    try:
        with open(log_csv, newline="") as f:
            rows = [r for r in csv.DictReader(f) if r.get("val_loss") not in (None, "")]
    except OSError:
        return None, None
    losses = [float(r["val_loss"]) for r in rows]
    if not losses or not np.isfinite(losses).any():
        return None, None
    i = int(np.nanargmin(np.where(np.isfinite(losses), losses, np.nan)))
    return int(float(rows[i]["epoch"])) + 1, losses[i]
