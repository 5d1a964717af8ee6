"""A photo squashed to the network's square (or any size) with Pillow: bilinear, antialiased.

    resize_rgb(uint8 RGB (H, W, 3), S or (h, w)) -> uint8 RGB (S, S, 3) or (h, w, 3)

The reference squashes every photo to a square without keeping the aspect ratio; so do we. The cache,
`colorize` and `test` squash here; model/resize.py repeats the same arithmetic in the graph for export.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from koalarization.config import REDUCING_GAP


def resize_rgb(rgb: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """uint8 RGB (H, W, 3) -> uint8 RGB (size, size, 3) (or (h, w) for a tuple), bilinear with antialiasing."""
    return resize_rgb_each(rgb, [size])[0]


def resize_rgb_each(rgb: np.ndarray, sizes: list[int | tuple[int, int]]) -> list[np.ndarray]:
    """resize_rgb to each of `sizes`, handing the photo to Pillow once: for a 12 MP photo the hand-over (a
    fresh 48 MB Pillow image, filled and copied into) takes ~60 ms, more than a resize."""
    image, resized = None, []
    for size in sizes:
        height, width = (size, size) if isinstance(size, int) else size
        if rgb.shape[:2] == (height, width):
            resized.append(rgb)
            continue
        image = Image.fromarray(rgb) if image is None else image
        resized.append(np.asarray(image.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=REDUCING_GAP)))
    return resized
