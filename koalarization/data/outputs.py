"""What the commands write for people: colorized PNGs, named so that nothing is overwritten by accident,
marked so that a later `colorize` over the same folders knows them, written atomically.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from koalarization.data import png
from koalarization.errors import KoalarizationError
from koalarization.files import atomic_path


def output_names(paths: list[Path], folders: list[Path]) -> list[str]:
    """One output file name per photo, in order: NAME.png from the photo's NAME, or NAME-1.png, NAME-2.png,
    ... when that name is taken by an earlier photo (case-insensitively: a.png and A.tif would overwrite each
    other on macOS and Windows) or is an input file itself in one of `folders`."""
    inputs = {os.path.realpath(p) for p in paths}  # realpath, not resolve(): no RuntimeError on a link loop
    used: set[str] = set()
    names = []
    for path in paths:
        name, i = f"{path.stem}.png", 0
        while name.lower() in used or any(os.path.realpath(Path(f) / name) in inputs for f in folders):
            i += 1
            name = f"{path.stem}-{i}.png"
        used.add(name.lower())
        names.append(name)
    return names


# The PNG `Software` text of what `colorize` (and `test`'s predicted/) writes: how a later `colorize` over
# the same folders knows its own outputs and leaves them out.
OUTPUT_MARK = {"Software": "koalarization colorize"}


def is_our_output(path: str | Path) -> bool:
    """True when `path` is a PNG that koalarization colorized (OUTPUT_MARK); reads its header only."""
    if Path(path).suffix.lower() != ".png":
        return False
    try:
        with Image.open(path) as image:
            return image.info.get("Software") == OUTPUT_MARK["Software"]
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):  # the decoder says why, later
        return False


def save_png_atomic(rgb: np.ndarray, path: Path, compress_level: int | None = None,
                    text: dict[str, str] | None = None) -> None:
    """uint8 RGB (H, W, 3) -> PNG at `path` (io.atomic_path: a killed or failed run never leaves half a PNG
    under NAME.png), encoded by data.png on every core; compress_level on its deflater's scale (default
    png.LEVEL); text: PNG tEXt chunks (OUTPUT_MARK for colorized photos). A write error is one
    KoalarizationError naming the folder."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as file:
            png.write_png(rgb, file, compress_level, text)
    except OSError as err:
        raise KoalarizationError(f"{path.parent}: cannot write {path.name} ({err.strerror or err})") from None
