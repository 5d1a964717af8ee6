"""Training data: scanning a folder, the train/val/test split, augmentation and the batch source.

The batch source streams photos from disk: memory holds one batch per worker, never the data set (the
reference decoded everything into float arrays first: 27 GB for 12.5 k photos). Batch `i` of epoch `e` is a
pure function of (seed, e, i), so any number of worker threads yields identical batches, and every photo
appears exactly once per epoch.

    BatchSource[i] -> (L (B, S, S, 1) float32 in [-1, 1],
                       ab (B, S, S, 2) float32 in about [-1, 1],
                       weight (B, 1, 1) float32: 1, or 0 for a photo that failed to decode)
    device_preprocessing: ({"rgb": uint8 (B, S, S, 3) unwarped, "affine": (B, 2, 2) random_affine's, "weight"},)
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import keras
import numpy as np
from PIL import Image

from koalarization import images
from koalarization.config import AugmentConfig
from koalarization.errors import KoalarizationError
from koalarization.fast_lab import rgb_to_network

log = logging.getLogger(__name__)

SPLIT_FILE = "split.json"


# ----------------------------------------------------------------------------------------------- scanning
def scan_photos(root: str | Path, workers: int = 8) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Colour photos under `root`, and the skipped files with the reason (grayscale, unreadable, truncated).

    Decodes every colour photo once (JPEGs at 1/8 scale): a truncated file found only in mid-training
    would be skipped there without a word if it fell into the test split, and counted apart from these."""
    files = images.find_images(root)

    def probe(path: Path) -> str | None:
        try:
            return None if images.has_colour(path) else "grayscale"
        except images.ImageError as err:
            return str(err).removeprefix(f"{path}: ")

    with ThreadPoolExecutor(max(1, workers)) as pool:
        reasons = list(pool.map(probe, files))
    usable = [f for f, r in zip(files, reasons) if r is None]
    skipped = [(f, r) for f, r in zip(files, reasons) if r is not None]
    return usable, skipped


# -------------------------------------------------------------------------------------------------- split
@dataclass(frozen=True)
class Split:
    root: Path
    train: tuple[Path, ...]
    val: tuple[Path, ...]
    test: tuple[Path, ...]

    def save(self, path: Path, **extra) -> None:
        rel = lambda files: [f.relative_to(self.root).as_posix() for f in files]  # noqa: E731
        body = {"root": str(self.root), "train": rel(self.train), "val": rel(self.val), "test": rel(self.test)}
        write_text_atomic(path, json.dumps({**body, **extra}, indent=1))

    def belongs_to(self, data: str | Path) -> bool:
        """True when this split was made of the folder `data` (normalised: "../data" == "/abs/data")."""
        return self.root == Path(os.path.abspath(data))

    @classmethod
    def load(cls, path: Path) -> "Split":
        try:
            raw = json.loads(Path(path).read_text())
            root = Path(raw["root"])
            return cls(root, *(tuple(root / f for f in raw[k]) for k in ("train", "val", "test")))
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise KoalarizationError(f"{path}: unreadable split file ({err}); delete it to make a new split") from None


def make_split(root: str | Path, files: list[Path], val_fraction: float, test_fraction: float, seed: int) -> Split:
    """Deterministic train/val/test split (reference fractions 0.7225 / 0.1275 / 0.15) with scikit-learn."""
    from sklearn.model_selection import train_test_split

    if len(files) < 3:
        raise KoalarizationError(
            f"{root}: found {len(files)} usable colour photo(s); training needs at least 3 (train, val, test)"
        )
    # abspath, not resolve: a symlinked photo stays inside the root, so the split can store relative paths.
    files = sorted(Path(os.path.abspath(f)) for f in files)
    rest, test = train_test_split(files, test_size=test_fraction, random_state=seed)
    # val_fraction is of the whole set; of what remains after the test split it is a larger share.
    train, val = train_test_split(rest, test_size=val_fraction / (1.0 - test_fraction), random_state=seed)
    return Split(Path(os.path.abspath(root)), tuple(sorted(train)), tuple(sorted(val)), tuple(sorted(test)))


def write_text_atomic(path: Path, text: str) -> None:
    """Write to a temporary name, then rename: a killed process never leaves half a file."""
    tmp = Path(f"{path}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


# ----------------------------------------------------------------------------------------- augmentation
def random_affine(rng: np.random.Generator, aug: AugmentConfig) -> np.ndarray:
    """A 2x2 matrix mapping output offsets to input offsets, drawn as Keras' ImageDataGenerator does:
    rotation @ shear @ zoom, plus a horizontal flip."""
    theta = np.deg2rad(rng.uniform(-aug.rotation, aug.rotation)) if aug.rotation else 0.0
    shear = np.deg2rad(rng.uniform(-aug.shear, aug.shear)) if aug.shear else 0.0
    zx, zy = rng.uniform(1 - aug.zoom, 1 + aug.zoom, 2) if aug.zoom else (1.0, 1.0)
    flip = aug.flip and rng.random() < 0.5
    rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    shearing = np.array([[1.0, -np.sin(shear)], [0.0, np.cos(shear)]])
    matrix = rotation @ shearing @ np.diag([zx, zy])
    return matrix @ np.diag([-1.0, 1.0]) if flip else matrix


def apply_affine(rgb: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Warp a square uint8 RGB image (S, S, 3) about its centre; pixels from outside repeat the nearest
    edge (Keras' fill_mode="nearest"). Pillow does the warp in C on uint8."""
    size = rgb.shape[0]
    pad = _pad_for(matrix, size)
    padded = Image.fromarray(_pad_edge(rgb, pad))
    centre_out = size / 2.0
    centre_in = centre_out + pad
    (a, b), (d, e) = matrix
    # Pillow maps each output pixel (x, y) to input (a x + b y + c, d x + e y + f).
    c = centre_in - a * centre_out - b * centre_out
    f = centre_in - d * centre_out - e * centre_out
    warped = padded.transform((size, size), Image.Transform.AFFINE, (a, b, c, d, e, f), Image.Resampling.BILINEAR)
    return np.asarray(warped)


def _pad_for(matrix: np.ndarray, size: int) -> int:
    """Edge padding that covers every input pixel the warp reads: the output square's corners mapped to the
    input, plus 2 pixels for the bilinear neighbours. Usually 10-40 pixels at 256 px, so padding costs a
    few percent of what half the image size on every side did (and large rotations no longer read black)."""
    corners = (np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float64) - 0.5) * size
    reach = np.abs(corners @ np.asarray(matrix, np.float64).T).max()  # farthest input offset from the centre
    return max(0, math.ceil(reach - size / 2.0)) + 2


def _pad_edge(rgb: np.ndarray, pad: int) -> np.ndarray:
    """np.pad(rgb, pad, mode="edge") for (H, W, 3), with four broadcast copies instead of np.pad's loops."""
    height, width = rgb.shape[:2]
    out = np.empty((height + 2 * pad, width + 2 * pad, rgb.shape[2]), rgb.dtype)
    out[pad : pad + height, pad : pad + width] = rgb
    out[:pad, pad : pad + width] = rgb[:1]
    out[pad + height :, pad : pad + width] = rgb[-1:]
    out[:, :pad] = out[:, pad : pad + 1]
    out[:, pad + width :] = out[:, pad + width - 1 : pad + width]
    return out


# --------------------------------------------------------------------------------------------- batches
class BatchSource(keras.utils.PyDataset):
    """Thread-safe, augmented, streaming batches for `Model.fit` (see the module docstring).

    `set_epoch(e)` chooses the epoch (the EpochSetter callback calls it before Keras starts fetching);
    everything else is read-only after construction, so Keras' worker threads share one instance safely.
    """

    def __init__(
        self,
        files: list[Path] | tuple[Path, ...],
        batch_size: int,
        image_size: int,
        *,
        seed: int = 0,
        augment: AugmentConfig | None = None,
        shuffle: bool = True,
        workers: int = 1,
        max_queue_size: int = 8,
        store=None,
        device_preprocessing: bool = False,
    ):
        """store: photos already decoded and resized to `image_size` (prepare.PreparedPhotos), read instead
        of decoding `files`; the batches are the same either way. device_preprocessing: yield the photos
        unwarped as uint8 with their affine matrices, for device_preprocessing.build_device_model."""
        super().__init__(workers=workers, use_multiprocessing=False, max_queue_size=max_queue_size)
        if not files:
            raise KoalarizationError("no photos to make batches from")
        self.files = tuple(files)
        self.batch_size, self.image_size, self.seed = batch_size, image_size, seed
        self.augment = augment if augment is not None and augment.enabled else None
        self.shuffle = shuffle
        self.store, self.device_preprocessing = store, device_preprocessing
        self.epoch = 0
        self.shard, self.pad, self.start = (0, 1), False, 0  # see view()
        self._failed: set[Path] = set()
        self._lock = threading.Lock()

    def view(self, *, shard: tuple[int, int] = (0, 1), pad: bool = False, start: int = 0) -> "BatchSource":
        """The same batches for distributed or resumed runs (distribute.py): slice k of `shard = (k, n)`, n
        equal slices of every batch (so each replica reads only its own photos); padded to full size with
        weight-0 gray images when `pad` or n > 1 (so every replica gets the same share); numbered from batch
        `start` of the epoch (a run resumed in mid-epoch skips the batches it already trained on)."""
        k, n = shard
        if not 0 <= k < n or self.batch_size % n:
            raise KoalarizationError(
                f"--batch-size {self.batch_size} must be a multiple of the {n} replicas that share each batch"
            )
        other = copy.copy(self)  # shares the failed-file record; the epoch order cache is per instance
        other.shard, other.pad, other.start = (k, n), pad or n > 1, start
        return other

    def __len__(self) -> int:
        return math.ceil(len(self.files) / self.batch_size) - self.start

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def failed_files(self) -> list[Path]:
        with self._lock:
            return sorted(self._failed)

    @lru_cache(maxsize=2)  # noqa: B019 - two epochs' orders at most; the instance lives for the whole run
    def _order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self.files))
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.files))

    def sample(self, epoch: int, position: int) -> tuple[np.ndarray, float]:
        """The `position`-th photo of `epoch`, decoded, resized and augmented: uint8 (S, S, 3), weight."""
        path = self.files[self._order(epoch)[position]]
        try:
            if self.store is not None:
                rgb = self.store.load(path)
            else:
                rgb = images.resize_rgb(images.load_rgb(path, max_side=self.image_size), self.image_size)
        except images.ImageError as err:
            with self._lock:
                first = path not in self._failed
                self._failed.add(path)
            if first:
                log.warning("skipping %s", err)
            return np.full((self.image_size, self.image_size, 3), 128, np.uint8), 0.0
        if self.augment is not None and not self.device_preprocessing:
            rgb = apply_affine(rgb, self.matrix(epoch, position))
        return rgb, 1.0

    def matrix(self, epoch: int, position: int) -> np.ndarray:
        """The augmentation of the `position`-th photo of `epoch` (identity without augmentation)."""
        if self.augment is None:
            return np.eye(2)
        return random_affine(np.random.default_rng([self.seed, epoch, position, 1]), self.augment)

    def __getitem__(self, index: int):
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} out of range (0..{len(self) - 1})")
        return self.batch(index + self.start, self.epoch)

    def batch(self, index: int, epoch: int):
        """Batch `index` of `epoch` (this view's slice of it; `start` ignored), whatever set_epoch said:
        distributed pipelines read ahead across epochs."""
        share = self.batch_size // self.shard[1]
        first = index * self.batch_size + self.shard[0] * share
        positions = range(min(first, len(self.files)), min(first + share, len(self.files)))
        samples = [self.sample(epoch, p) for p in positions]
        if self.pad:  # weight 0: no gradient; every replica still computes the same number of samples
            samples += [(np.full((self.image_size, self.image_size, 3), 128, np.uint8), 0.0)] * (share - len(samples))
        rgb = np.stack([s[0] for s in samples])
        # (B, 1, 1): broadcasts over the per-pixel loss that Keras' MSE leaves after averaging the ab axis.
        weight = np.array([s[1] for s in samples], np.float32)[:, None, None]
        if self.device_preprocessing:  # padding photos (weight 0) get the identity
            affine = np.tile(np.eye(2, dtype=np.float32), (len(samples), 1, 1))
            for i, p in enumerate(positions):
                affine[i] = self.matrix(epoch, p)
            return ({"rgb": rgb, "affine": affine, "weight": weight},)
        lightness, ab = rgb_to_network(rgb)
        return lightness, ab, weight


class EpochSetter(keras.callbacks.Callback):
    """Tells batch sources which epoch is starting (Keras starts its fetch threads after this hook)."""

    def __init__(self, *sources: BatchSource):
        super().__init__()
        self.sources = sources

    def on_epoch_begin(self, epoch, logs=None):
        for source in self.sources:
            source.set_epoch(epoch)
