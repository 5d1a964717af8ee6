"""Distributed training: the strategy, who is chief, which photos each replica reads, and the workaround
that lets Keras 3 `fit` run under MultiWorkerMirroredStrategy (docs/distributed.md).

    placement(gpus, strategy=None) -> Placement
        TF_CONFIG naming 2+ tasks   MultiWorkerMirroredStrategy: this process is worker `worker_index` of `worker_count`
        --gpus N > 1                MirroredStrategy over N GPUs (JAX backend: keras.distribution.DataParallel)
        otherwise                   one device

`--batch-size` is global: one optimizer step reads `batch_size` photos split evenly over all replicas (all
GPUs of all workers), so the same flags train the same way on any number of replicas; scale the learning
rate yourself if you scale the batch. Every worker reads only its slice of each batch (BatchSource.view),
so each photo is read once per epoch across the job. Only the chief writes to --output (checkpoints, logs,
config, backups); other workers write to a temporary folder, as TensorFlow's documentation recommends.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import keras
import numpy as np

from koalarization.errors import KoalarizationError
from koalarization.model.task import batch_spec
from koalarization.training.backup import Start

log = logging.getLogger(__name__)


def parse_tf_config(text: str | None) -> tuple[int, int]:
    """This process's place in the job, (worker_index, worker_count), in TensorFlow's order (chief first), from
    TF_CONFIG = {"cluster": {"chief": [addr], "worker": [addr, ...]}, "task": {"type": ..., "index": i}}.
    Without a "chief" list, worker 0 is the chief."""
    if not text:
        return 0, 1
    try:
        raw = json.loads(text)
        tasks = [("chief", i) for i in range(len(raw["cluster"].get("chief", [])))]
        tasks += [("worker", i) for i in range(len(raw["cluster"].get("worker", [])))]
        me = (raw["task"]["type"], int(raw["task"]["index"]))
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise KoalarizationError(
            f"TF_CONFIG is not a valid cluster description ({err!r}); see docs/distributed.md"
        ) from None
    if set(raw["cluster"]) - {"chief", "worker"} or me not in tasks:
        raise KoalarizationError(
            f"TF_CONFIG: task {me[0]} {me[1]} in cluster {sorted(raw['cluster'])}: only 'chief' and 'worker' "
            "tasks are supported, and the task must be one of them"
        )
    return tasks.index(me), len(tasks)


@dataclass
class Placement:
    """Where training runs: this process is worker `worker_index` of `worker_count` (0 is the chief);
    `replicas`: how many replicas, over all workers, share each global batch."""

    strategy: object = None
    worker_index: int = 0
    worker_count: int = 1
    replicas: int = 1

    @property
    def is_chief(self) -> bool:
        return self.worker_index == 0

    def scope(self):
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()

    def run_dir(self, output: Path) -> Path:
        """Where this process writes: --output on the chief, a new temporary folder on the other workers."""
        if self.is_chief:
            return output
        return Path(tempfile.mkdtemp(prefix=f"koalarization-worker{self.worker_index}-"))

    def release(self, run_dir: Path) -> None:
        if not self.is_chief:
            shutil.rmtree(run_dir, ignore_errors=True)

    def feed(self, source, epochs: tuple[int, int] | None = None):
        """(what `fit` reads, the BatchSources whose epoch EpochSetter sets). `epochs` = (first, last) for
        training, None for validation. One worker: `source` itself, a PyDataset; MirroredStrategy splits each
        batch over the local replicas (evenly: --batch-size must be a multiple of them). Several workers: a
        tf.distribute dataset in which this worker reads only its own slices: of every global batch, from
        batch `source.start` of epoch `first` to the end of epoch `last - 1`, read ahead across epochs (with
        `fit(steps_per_epoch=...)`, one iterator for all epochs: a new one per epoch stalled every epoch start
        ~10 s), or, for validation, of the whole set, so that every worker computes the same val_loss."""
        train = epochs is not None
        if train and source.batch_size % self.replicas:
            raise KoalarizationError(f"batch_size {source.batch_size} must be a multiple of the "
                                     f"{self.replicas} replicas that share each batch")
        if self.worker_count == 1:
            return source, [source]
        import tensorflow as tf

        local = self.replicas // self.worker_count
        first, count = (self.worker_index * local, self.replicas) if train else (0, local)
        views = [source.view(shard=(first + r, count), pad=source.pad, start=source.start) for r in range(local)]
        per_epoch, size = len(source) + source.start, source.image_size
        begin, end = (epochs[0] * per_epoch + source.start, epochs[1] * per_epoch) if train else (0, per_epoch)
        spec = batch_spec(size, source.cache.embedding_dim)  # batches.BatchSource's batch
        keys = tuple(spec)
        dtypes = tuple(tf.as_dtype(dtype) for _, dtype in spec.values())
        shapes = tuple((None, *shape) for shape, _ in spec.values())

        def load(j):  # consecutive elements go to consecutive local replicas
            step, replica = divmod(int(j), len(views))
            epoch, index = divmod(begin + step, per_epoch)
            batch = views[replica].batch(index, epoch if train else views[replica].epoch)[0]
            return tuple(batch[k] for k in keys)

        def as_batch(*arrays):
            return ({k: tf.ensure_shape(a, shape) for k, a, shape in zip(keys, arrays, shapes)},)

        def dataset_fn(context):
            steps = tf.data.Dataset.range((end - begin) * len(views))
            batches = steps.map(lambda j: tf.numpy_function(load, [j], dtypes),
                                num_parallel_calls=max(1, source.workers), deterministic=True)
            return batches.map(as_batch).prefetch(1)

        return self.strategy.distribute_datasets_from_function(dataset_fn), views

    def sync(self, variables, start: Start, fingerprint: str) -> Start:
        """Several workers: all continue from the chief's `start` and `variables` (only the chief reads the
        backup), after checking that all of them split the same photos (`fingerprint`)."""
        if self.worker_count == 1:
            return start
        chief = json.loads(self._broadcast_bytes(json.dumps({"start": asdict(start), "fp": fingerprint}).encode()))
        if self._sum(np.array([float(chief["fp"] != fingerprint)]))[0]:
            raise KoalarizationError(
                "TF_CONFIG workers see different photos (their splits of the data differ): give every worker "
                "the same data and seed"
            )
        values = [np.asarray(keras.ops.convert_to_numpy(v)) for v in variables]
        flat = self._broadcast(np.concatenate([v.ravel().astype(np.float64) for v in values]))
        offset = 0
        for variable, value in zip(variables, values):
            variable.assign(flat[offset : offset + value.size].reshape(value.shape).astype(value.dtype))
            offset += value.size
        return Start(**chief["start"])

    def _sum(self, array: np.ndarray) -> np.ndarray:
        """Element-wise sum over the workers (a collective all-reduce)."""
        import tensorflow as tf

        return self.strategy.reduce("SUM", tf.constant(array, tf.float64), axis=None).numpy()

    def _broadcast(self, array: np.ndarray) -> np.ndarray:
        return self._sum(array if self.is_chief else np.zeros_like(array))

    def _broadcast_bytes(self, data: bytes) -> bytes:
        length = int(self._broadcast(np.array([len(data)], np.float64))[0])
        mine = np.frombuffer(data, np.uint8) if self.is_chief else np.zeros(length, np.uint8)
        return self._broadcast(mine.astype(np.float64)).astype(np.uint8).tobytes()


def placement(gpus: int = 0, strategy=None, environ=None) -> Placement:
    """The Placement for `--gpus` and the TF_CONFIG environment variable (or an explicit tf.distribute
    `strategy`, e.g. MirroredStrategy over logical CPU devices in tests). Call it before any other
    TensorFlow work: MultiWorkerMirroredStrategy must be created first."""
    worker_index, worker_count = parse_tf_config((os.environ if environ is None else environ).get("TF_CONFIG"))
    backend = keras.backend.backend()
    if strategy is None and worker_count > 1:
        if backend != "tensorflow":
            raise KoalarizationError(f"TF_CONFIG: multi-worker training needs KERAS_BACKEND=tensorflow, not {backend}")
        import tensorflow as tf

        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    elif strategy is None and gpus > 1:
        if backend == "jax":
            devices = keras.distribution.list_devices("gpu")
            if len(devices) < gpus:
                raise KoalarizationError(f"gpus {gpus}: only {len(devices)} GPU(s) visible to JAX")
            keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices[:gpus]))
            return Placement(None, replicas=gpus)
        if backend != "tensorflow":
            raise KoalarizationError(f"gpus needs the tensorflow or jax backend, not {backend}")
        import tensorflow as tf

        available = tf.config.list_logical_devices("GPU")
        if len(available) < gpus:
            raise KoalarizationError(f"gpus {gpus}: only {len(available)} GPU(s) visible to TensorFlow")
        strategy = tf.distribute.MirroredStrategy([d.name for d in available[:gpus]])
    if strategy is None:
        return Placement()
    import tensorflow as tf

    apply_keras_workaround()
    if not (isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and worker_count > 1):
        worker_index, worker_count = 0, 1
    return Placement(strategy, worker_index, worker_count, strategy.num_replicas_in_sync)


# ------------------------------------------------------------------- Keras 3 + MultiWorkerMirroredStrategy
# keras-team/keras issue 20585 (open): under MultiWorkerMirroredStrategy, `fit` in Keras' TensorFlow trainer
# fails twice. (1) `_maybe_symbolic_build` averages a distributed *data batch* over the workers with
# strategy.reduce("MEAN", batch, axis=None): "Attempt to convert a value (PerReplica ...)"; under
# MirroredStrategy too when the replicas' shares differ in shape (a validation set smaller than the number
# of replicas): "Inputs to operation AddN ... must have the same size and shape". (2) `reduce_per_replica`
# averages scalar logs with strategy.reduce("MEAN", v, axis=0): "Invalid reduction dimension 0 for input
# with 0 dimensions". The workaround builds from the first local replica's batch (the build reads only its
# shapes and dtypes) and averages each log over all replicas with axis=None, so every worker gets
# the same loss and val_loss, and EarlyStopping, ReduceLROnPlateau and TerminateOnNaN decide alike on all
# of them (a worker that stopped alone would leave the others waiting forever). Anything else (no strategy,
# other reductions, logs under MirroredStrategy) goes to Keras' own code. The patched functions are
# identical (hashes below) in Keras 3.11.0, 3.14.0 and 3.15.1; 3.5-3.8 have the same bugs in older code.
# Run on 3.15.1 only (tests/test_distributed.py).
KERAS_CHECKED = ((3, 11), (3, 15))  # minor versions, inclusive, whose sources were compared
KERAS_SOURCES = {"_maybe_symbolic_build": "1fbeb86bd389cc3b", "reduce_per_replica": "057432ef48d5232c"}


def _keras_internals():
    from keras.src.backend.tensorflow import trainer

    return trainer, {"_maybe_symbolic_build": trainer.TensorFlowTrainer._maybe_symbolic_build,
                     "reduce_per_replica": trainer.reduce_per_replica}


def source_hash(function) -> str:
    """Hash of a function's source, ignoring indentation and blank lines."""
    text = "\n".join(line.strip() for line in inspect.getsource(function).splitlines() if line.strip())
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def keras_needs_workaround() -> bool:
    """True when the installed Keras is a checked, broken version; raises if its internals changed."""
    version = tuple(int(p) for p in keras.__version__.split(".")[:2])
    if not KERAS_CHECKED[0] <= version <= KERAS_CHECKED[1]:
        log.warning("Keras %s is outside %s-%s, where the MultiWorkerMirroredStrategy workaround was checked; "
                    "not applying it (docs/distributed.md says how to re-check)", keras.__version__, *KERAS_CHECKED)
        return False
    _, functions = _keras_internals()
    found = {name: source_hash(getattr(f, "__wrapped__", f)) for name, f in functions.items()}
    if found != KERAS_SOURCES:
        changed = ", ".join(name for name in functions if found[name] != KERAS_SOURCES.get(name))
        raise KoalarizationError(f"Keras {keras.__version__}: {changed} changed since the multi-worker "
                                 "workaround was checked; re-check keras-team/keras issue 20585 (docs/distributed.md)")
    return True


def apply_keras_workaround() -> bool:
    """Patch Keras' TensorFlow trainer for tf.distribute strategies (see above); idempotent."""
    if not keras_needs_workaround():
        return False
    trainer, functions = _keras_internals()
    build, reduce = functions["_maybe_symbolic_build"], functions["reduce_per_replica"]
    if hasattr(build, "__wrapped__"):
        return True
    multi_worker = trainer._collective_all_reduce_multi_worker

    def maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = self._distribute_strategy
        if iterator is not None and strategy is not None:
            for _, _, it in iterator:
                batch = next(it)
                data_batch = keras.tree.map_structure(lambda x: strategy.experimental_local_results(x)[0], batch)
                break
            iterator = None
        return build(self, iterator=iterator, data_batch=data_batch)

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and multi_worker(strategy):
            return keras.tree.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return reduce(values, strategy, reduction)

    maybe_symbolic_build.__wrapped__, reduce_per_replica.__wrapped__ = build, reduce
    trainer.TensorFlowTrainer._maybe_symbolic_build = maybe_symbolic_build
    trainer.reduce_per_replica = reduce_per_replica
    log.info("applied the Keras %s MultiWorkerMirroredStrategy workaround (keras-team/keras#20585)", keras.__version__)
    return True
