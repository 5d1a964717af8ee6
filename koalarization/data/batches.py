"""Training batches: the augmentation draw and the batch source.

The batch source reads photos and their embeddings from the cache (cache.py): memory holds a few batches,
never the data set (the reference decoded everything into float arrays first: 27 GB for 12.5 k photos).
Batch `i` of epoch `e` is a pure function of (seed, e, i), so any number of worker threads yields identical
batches, and every photo appears exactly once per epoch.

    BatchSource[i] -> ({"rgb": uint8 (B, S, S, 3) unwarped, "affine": float32 (B, 2, 2) random_affine's,
                        "embedding": float32 (B, D), "weight": float32 (B, 1, 1): 1, or 0 for padding},)
    the layout of task.batch_spec, which task.build_training_model takes (augmentation, Lab and
    scaling happen in its graph).
"""

from __future__ import annotations

import copy
import math
from functools import lru_cache

import keras
import numpy as np

from koalarization.config import AugmentConfig
from koalarization.errors import KoalarizationError
from koalarization.model.task import batch_spec


# ----------------------------------------------------------------------------------------- augmentation
def random_affines(rng: np.random.Generator, aug: AugmentConfig, count: int) -> np.ndarray:
    """`count` matrices (count, 2, 2) float64, each mapping output offsets to input offsets, drawn as Keras'
    ImageDataGenerator draws them: rotation @ shear @ zoom, then a horizontal flip. Drawn and multiplied out
    for the whole batch at once: per photo, NumPy's small-array calls cost more than reading the photo."""
    theta = np.deg2rad(rng.uniform(-aug.rotation, aug.rotation, count)) if aug.rotation else np.zeros(count)
    shear = np.deg2rad(rng.uniform(-aug.shear, aug.shear, count)) if aug.shear else np.zeros(count)
    zx, zy = rng.uniform(1 - aug.zoom, 1 + aug.zoom, (2, count)) if aug.zoom else np.ones((2, count))
    flip = np.where(rng.random(count) < 0.5, -1.0, 1.0) if aug.flip else np.ones(count)
    cos, sin, shear_sin, shear_cos = np.cos(theta), np.sin(theta), np.sin(shear), np.cos(shear)
    # [[cos, -sin], [sin, cos]] @ [[1, -shear_sin], [0, shear_cos]] @ diag(zx, zy) @ diag(flip, 1)
    return np.stack([
        np.stack([cos * zx * flip, (-cos * shear_sin - sin * shear_cos) * zy], -1),
        np.stack([sin * zx * flip, (-sin * shear_sin + cos * shear_cos) * zy], -1),
    ], 1)


def random_affine(rng: np.random.Generator, aug: AugmentConfig) -> np.ndarray:
    """One random_affines matrix (2, 2)."""
    return random_affines(rng, aug, 1)[0]


# --------------------------------------------------------------------------------------------- batches
class BatchSource(keras.utils.PyDataset):
    """Thread-safe, augmented, streaming batches for `Model.fit` (see the module docstring).

    `set_epoch(e)` chooses the epoch (the EpochSetter callback calls it before Keras starts fetching);
    everything else is read-only after construction, so Keras' worker threads share one instance safely.
    """

    def __init__(self, cache, files, batch_size: int, *, seed: int = 0, augment: AugmentConfig | None = None,
                 shuffle: bool = True, workers: int = 1, max_queue_size: int = 8):
        """cache: a cache.Cache holding every photo of `files`."""
        super().__init__(workers=workers, use_multiprocessing=False, max_queue_size=max_queue_size)
        if not files:
            raise KoalarizationError("no photos to make batches from")
        self.cache, self.files = cache, tuple(files)
        self.rows = np.array([cache.row_of(f) for f in self.files])
        self.batch_size, self.image_size, self.seed = batch_size, cache.image_size, seed
        self.augment = augment if augment is not None and augment.enabled else None
        self.shuffle = shuffle
        self.epoch = 0
        self.shard, self.pad, self.start = (0, 1), False, 0  # see view()

    def view(self, *, shard: tuple[int, int] = (0, 1), pad: bool = False, start: int = 0) -> "BatchSource":
        """The same batches for distributed or resumed runs (distribute.py): slice k of `shard = (k, n)`, n
        equal slices of every batch (so each replica reads only its own photos); padded to full size with
        weight-0 gray images when `pad` or n > 1 (so every replica gets the same share); numbered from batch
        `start` of the epoch (a run resumed in mid-epoch skips the batches it already trained on)."""
        k, n = shard
        if not 0 <= k < n or self.batch_size % n:
            raise KoalarizationError(
                f"batch_size {self.batch_size} must be a multiple of the {n} replicas that share each batch"
            )
        other = copy.copy(self)  # the epoch order cache is per instance
        other.shard, other.pad, other.start = (k, n), pad or n > 1, start
        return other

    def __len__(self) -> int:
        return math.ceil(len(self.files) / self.batch_size) - self.start

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @lru_cache(maxsize=2)  # noqa: B019 - two epochs' orders at most; the instance lives for the whole run
    def _order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self.files))
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.files))

    def matrices(self, epoch: int, index: int) -> np.ndarray:
        """The augmentation of every place of batch `index` of `epoch`, float32 (batch_size, 2, 2) (identity
        without augmentation). One generator per batch: seeding one costs as much as drawing a batch."""
        if self.augment is None:
            return np.tile(np.eye(2, dtype=np.float32), (self.batch_size, 1, 1))
        rng = np.random.default_rng([self.seed, epoch, index, 1])
        return random_affines(rng, self.augment, self.batch_size).astype(np.float32)

    def sample(self, epoch: int, position: int) -> tuple[np.ndarray, np.ndarray]:
        """The `position`-th photo of `epoch`: (uint8 (S, S, 3), embedding float32 (D,))."""
        row = self.rows[self._order(epoch)[position]]
        return self.cache.photo(row), self.cache.embedding(row)

    def __getitem__(self, index: int):
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} out of range (0..{len(self) - 1})")
        return self.batch(index + self.start, self.epoch)

    def batch(self, index: int, epoch: int):
        """Batch `index` of `epoch` (this view's slice of it; `start` ignored), whatever set_epoch said:
        distributed pipelines read ahead across epochs."""
        share = self.batch_size // self.shard[1]
        first = index * self.batch_size + self.shard[0] * share
        positions = list(range(min(first, len(self.files)), min(first + share, len(self.files))))
        count = share if self.pad else len(positions)  # weight-0 padding: every replica computes alike
        spec = batch_spec(self.image_size, self.cache.embedding_dim)
        batch = {name: np.zeros((count, *shape), dtype) for name, (shape, dtype) in spec.items()}
        batch["rgb"][:], batch["affine"][:] = 128, np.eye(2)  # padding: a gray photo, unwarped, of weight 0
        for i, p in enumerate(positions):
            (batch["rgb"][i], batch["embedding"][i]), batch["weight"][i] = self.sample(epoch, p), 1.0
        # this view's places of the batch
        batch["affine"][: len(positions)] = self.matrices(epoch, index)[first - index * self.batch_size :][: len(positions)]
        return (batch,)


class EpochSetter(keras.callbacks.Callback):
    """Tells batch sources which epoch is starting (Keras starts its fetch threads after this hook)."""

    def __init__(self, *sources: BatchSource):
        super().__init__()
        self.sources = sources

    def on_epoch_begin(self, epoch, logs=None):
        for source in self.sources:
            source.set_epoch(epoch)
