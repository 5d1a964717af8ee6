"""Training data: scanning a folder, the train/val/test split, augmentation and the batch source.

The batch source streams photos from disk: memory holds one batch per worker, never the data set (the
reference decoded everything into float arrays first: 27 GB for 12.5 k photos). Batch `i` of epoch `e` is a
pure function of (seed, e, i), so any number of worker threads yields identical batches, and every photo
appears exactly once per epoch.

    BatchSource[i] -> (L (B, S, S, 1) float32 in [-1, 1],
                       ab (B, S, S, 2) float32 in about [-1, 1],
                       weight (B, 1, 1) float32: 1, or 0 for a photo that failed to decode)
"""

from __future__ import annotations

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

from koalarization import color, images
from koalarization.config import AugmentConfig
from koalarization.errors import KoalarizationError

log = logging.getLogger(__name__)

SPLIT_FILE = "split.json"


# ----------------------------------------------------------------------------------------------- scanning
def scan_photos(root: str | Path, workers: int = 8) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Colour photos under `root`, and the skipped files with the reason. Reads file headers only."""
    files = images.find_images(root)

    def probe(path: Path) -> str | None:
        try:
            return "grayscale" if images.is_grayscale_mode(path) else None
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
    pad = size // 2 + 1  # enough for 20 degree rotations with 1.2 zoom (corner radius 0.85 S)
    padded = Image.fromarray(np.pad(rgb, ((pad, pad), (pad, pad), (0, 0)), mode="edge"))
    centre_out = size / 2.0
    centre_in = centre_out + pad
    (a, b), (d, e) = matrix
    # Pillow maps each output pixel (x, y) to input (a x + b y + c, d x + e y + f).
    c = centre_in - a * centre_out - b * centre_out
    f = centre_in - d * centre_out - e * centre_out
    warped = padded.transform((size, size), Image.Transform.AFFINE, (a, b, c, d, e, f), Image.Resampling.BILINEAR)
    return np.asarray(warped)


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
    ):
        super().__init__(workers=workers, use_multiprocessing=False, max_queue_size=max_queue_size)
        if not files:
            raise KoalarizationError("no photos to make batches from")
        self.files = tuple(files)
        self.batch_size, self.image_size, self.seed = batch_size, image_size, seed
        self.augment = augment if augment is not None and augment.enabled else None
        self.shuffle = shuffle
        self.epoch = 0
        self._failed: set[Path] = set()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return math.ceil(len(self.files) / self.batch_size)

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
            rgb = images.resize_rgb(images.load_rgb(path, max_side=self.image_size), self.image_size)
        except images.ImageError as err:
            with self._lock:
                first = path not in self._failed
                self._failed.add(path)
            if first:
                log.warning("skipping %s", err)
            return np.full((self.image_size, self.image_size, 3), 128, np.uint8), 0.0
        if self.augment is not None:
            rng = np.random.default_rng([self.seed, epoch, position, 1])
            rgb = apply_affine(rgb, random_affine(rng, self.augment))
        return rgb, 1.0

    def __getitem__(self, index: int):
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} out of range (0..{len(self) - 1})")
        epoch = self.epoch
        positions = range(index * self.batch_size, min((index + 1) * self.batch_size, len(self.files)))
        samples = [self.sample(epoch, p) for p in positions]
        rgb = np.stack([s[0] for s in samples])
        lightness, ab = color.rgb_uint8_to_network(rgb)
        # (B, 1, 1): broadcasts over the per-pixel loss that Keras' MSE leaves after averaging the ab axis.
        return lightness, ab, np.array([s[1] for s in samples], np.float32)[:, None, None]


class EpochSetter(keras.callbacks.Callback):
    """Tells batch sources which epoch is starting (Keras starts its fetch threads after this hook)."""

    def __init__(self, *sources: BatchSource):
        super().__init__()
        self.sources = sources

    def on_epoch_begin(self, epoch, logs=None):
        for source in self.sources:
            source.set_epoch(epoch)
