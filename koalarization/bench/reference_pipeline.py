"""The reference Keras reproduction's input pipeline, rebuilt so `benchmark pipeline --reference` can time it
beside ours on the same photos in the same process (docs/reference.md, "Training recipes", "data loading").

What the reference did, and what this module does the same way:

1. Load phase, once: decode every photo with scikit-image, resize it to S x S with
   `skimage.transform.resize` and keep the whole set in RAM as float64 in [0, 1]: (N, S, S, 3), 1.5 MB a
   photo at 256 px (the reference also kept 299 px gray copies for Inception-ResNet-v2; we leave those out,
   since our pipeline does not make embedder inputs either: the model does, in its graph).
2. Per batch: Keras 2's `ImageDataGenerator.flow` (a `NumpyArrayIterator`): each photo cast to float32,
   a random rotation/shear/zoom warped with `scipy.ndimage.affine_transform` channel by channel (order 1,
   fill_mode "nearest"), a random horizontal flip; then per photo `skimage.color.rgb2lab`, and the
   reference scaling L / 50 - 1, ab / 128, as float32.

The reference wrapped its generator in a lock (`threadsafe_generator`), so however many workers
`fit_generator` had, one batch was made at a time: it runs in one thread here too. The gray copies for the
embedder (`gray2rgb(rgb2gray(batch))` and a 299 px resize per photo) are not made, which flatters the
reference: ours does that work on the device, inside the model.

    load_set(files, S)                -> float64 (N, S, S, 3) in [0, 1]
    ReferenceBatches(photos, B, ...)[i] -> (L (B, S, S, 1) float32 in [-1, 1], ab (B, S, S, 2) float32)
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from koalarization import color
from koalarization.config import AugmentConfig


def load_set(files: list[Path] | tuple[Path, ...], size: int) -> np.ndarray:
    """Decode and resize every photo into one float64 array in RAM, as the reference did before training."""
    from skimage import io, transform

    photos = np.empty((len(files), size, size, 3), np.float64)
    for i, path in enumerate(files):
        rgb = io.imread(path)
        if rgb.ndim == 2:  # the reference crashed on these; the benchmark passes colour photos only
            rgb = np.stack([rgb] * 3, axis=-1)
        photos[i] = transform.resize(rgb[..., :3], (size, size))
    return photos


def affine_matrix(theta: float, shear: float, zx: float, zy: float, height: int, width: int) -> np.ndarray:
    """Keras 2's `apply_affine_transform` matrix (angles in degrees) about the image centre, in array (row,
    column) order: rotation @ shear @ zoom, offset to the centre."""
    theta, shear = np.deg2rad(theta), np.deg2rad(shear)
    rotation = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    shearing = np.array([[1, -np.sin(shear), 0], [0, np.cos(shear), 0], [0, 0, 1]])
    matrix = rotation @ shearing @ np.diag([zx, zy, 1.0])
    # transform_matrix_offset_center
    ox, oy = height / 2 - 0.5, width / 2 - 0.5
    matrix = np.array([[1, 0, ox], [0, 1, oy], [0, 0, 1]]) @ matrix @ np.array([[1, 0, -ox], [0, 1, -oy], [0, 0, 1]])
    # Keras swaps x and y because its matrix is built for (x, y) but the array is indexed (row, column).
    matrix[:, [0, 1]] = matrix[:, [1, 0]]
    matrix[[0, 1]] = matrix[[1, 0]]
    return matrix


def apply_transform(x: np.ndarray, theta: float, shear: float, zx: float, zy: float, flip: bool) -> np.ndarray:
    """One photo (H, W, 3) float, warped channel by channel with scipy, as Keras 2 did."""
    from scipy import ndimage

    matrix = affine_matrix(theta, shear, zx, zy, x.shape[0], x.shape[1])
    channels = [
        ndimage.affine_transform(x[..., c], matrix[:2, :2], matrix[:2, 2], order=1, mode="nearest", cval=0.0)
        for c in range(x.shape[-1])
    ]
    x = np.stack(channels, axis=-1)
    return x[:, ::-1] if flip else x


class ReferenceBatches:
    """`ImageDataGenerator(shear_range, zoom_range, rotation_range, horizontal_flip).flow(photos)` followed
    by the reference's per-batch Lab conversion and scaling. Indexable like our BatchSource."""

    def __init__(self, photos: np.ndarray, batch_size: int, *, augment: AugmentConfig | None = None, seed: int = 0):
        self.photos, self.batch_size = photos, batch_size
        self.augment = augment if augment is not None and augment.enabled else None
        self.rng = np.random.RandomState(seed)  # Keras 2 drew from NumPy's global legacy generator
        self.order = self.rng.permutation(len(photos))

    def __len__(self) -> int:
        return math.ceil(len(self.photos) / self.batch_size)

    def _random_transform(self) -> dict:
        a = self.augment
        return {
            "theta": self.rng.uniform(-a.rotation, a.rotation) if a.rotation else 0.0,
            "shear": self.rng.uniform(-a.shear, a.shear) if a.shear else 0.0,
            "zx": 1.0, "zy": 1.0,
            **(dict(zip(("zx", "zy"), self.rng.uniform(1 - a.zoom, 1 + a.zoom, 2))) if a.zoom else {}),
            "flip": bool(a.flip and self.rng.random_sample() < 0.5),
        }

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        from skimage.color import rgb2lab

        rows = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        batch = np.zeros((len(rows), *self.photos.shape[1:]), np.float32)  # Keras' floatx
        for i, j in enumerate(rows):
            x = self.photos[j].astype(np.float32)
            batch[i] = apply_transform(x, **self._random_transform()) if self.augment is not None else x
        lab = np.stack([rgb2lab(x) for x in batch])
        lightness = color.scale_l(lab[..., :1]).astype(np.float32)
        return lightness, color.scale_ab(lab[..., 1:]).astype(np.float32)
