"""Finding and decoding photos. Every photo of any mode becomes uint8 sRGB (H, W, 3), upright.

Shared by training, `test`, `colorize` and the web server, so a photo that works in one works in all.
Errors are `ImageError` (a KoalarizationError) with a one-line message naming the file and the problem.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from koalarization.errors import KoalarizationError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
# Pillow's own limit (about 89 M pixels warns, twice that raises) guards against decompression bombs;
# we make the warning an error too, so a 30,000 x 30,000 PNG is refused instead of decoded.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485
# Pillow must not silently accept truncated files: a half-decoded photo would train on gray garbage.
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageError(KoalarizationError):
    """A file that cannot be used as a photo."""


def find_images(root: str | Path) -> list[Path]:
    """All photos under `root` (recursively, any case of extension), sorted; `root` may also be one file."""
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise KoalarizationError(f"{root}: no such folder")
    found = []
    # followlinks=False: a symlink loop cannot make the walk run forever.
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs.sort()
        found.extend(Path(folder) / f for f in files if Path(f).suffix.lower() in IMAGE_EXTENSIONS)
    return sorted(found)


def _open(source, path) -> Image.Image:
    """Open a file path or an in-memory stream; `path` names it in the one-line errors."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(source)
        if image.width * image.height > MAX_PIXELS:
            raise ImageError(f"{path}: {image.width}x{image.height} pixels is more than the {MAX_PIXELS} allowed")
        return image
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{path}: file not found") from None
    except PermissionError:
        raise ImageError(f"{path}: permission denied") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"{path}: too many pixels (decompression bomb?)") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image (or an unsupported format)") from None
    except OSError as err:
        raise ImageError(f"{path}: cannot read ({err})") from None


def has_colour(path: str | Path) -> bool:
    """False when the file's header says it has no colour (modes 1, L, LA, I, I;16, F). A colour file is
    also decoded whole, in the same open: JPEGs at 1/8 scale (Pillow's draft mode still reads the
    entropy-coded data to its end, so truncation shows), so a scan stays cheap. Broken files: ImageError."""
    path = Path(path)
    with _open(path, path) as image:
        if image.mode in ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
            return False
        _decode(image, path, max_side=1)
        return True


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB; transparency is composited on white (how a viewer shows it)."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        # 16-bit / float gray: scale its full range to 8 bits (Pillow's convert("L") would clip at 255).
        values = np.asarray(image, dtype=np.float64)
        high = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
        if image.mode == "F":
            high = max(float(values.max()), 1.0)
        gray = np.clip(np.rint(values / high * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if image.mode in ("RGBA", "LA", "La", "RGBa", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_rgb(path: str | Path, max_side: int | None = None) -> np.ndarray:
    """Decode `path` to uint8 RGB (H, W, 3), EXIF-rotated upright.

    max_side: a hint that the caller will shrink the photo to about this size; JPEGs are then decoded at a
    reduced scale (Pillow's draft mode, a free 2-8x speed-up), never below max_side on the short side.
    """
    path = Path(path)
    with _open(path, path) as image:
        return _decode(image, path, max_side)


def _decode(image: Image.Image, path, max_side: int | None = None) -> np.ndarray:
    try:
        if max_side and image.format == "JPEG":
            image.draft("RGB", (max_side, max_side))
        rgb = _to_rgb(ImageOps.exif_transpose(image))
        rgb.load()
    except OSError as err:
        raise ImageError(f"{path}: corrupt or truncated image ({err})") from None
    except (ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise ImageError(f"{path}: cannot decode ({err})") from None
    array = np.asarray(rgb, dtype=np.uint8)
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise ImageError(f"{path}: empty image")
    return array


def resize_rgb(rgb: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """uint8 RGB (H, W, 3) -> uint8 RGB (size, size, 3) (or (h, w) for a tuple), bilinear with antialiasing.

    The reference squashes every photo to a square without keeping the aspect ratio; so do we.
    """
    height, width = (size, size) if isinstance(size, int) else size
    if rgb.shape[:2] == (height, width):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((width, height), Image.Resampling.BILINEAR, reducing_gap=3.0))


def load_rgb_bytes(data: bytes, name: str = "upload") -> np.ndarray:
    """Decode an image held in memory (an upload) like `load_rgb`: uint8 RGB (H, W, 3), upright.

    Nothing touches the disk; `name` only labels the one-line `ImageError` messages. Same pixel limit.
    """
    with _open(io.BytesIO(data), name) as image:
        return _decode(image, name)


def save_png_atomic(rgb: np.ndarray, path: Path, flag: str = "--out") -> None:
    """uint8 RGB (H, W, 3) -> PNG at `path`, through a temporary name + os.replace: a killed or failed run
    never leaves half a PNG under NAME.png. A write error is one KoalarizationError naming `flag`'s folder."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        Image.fromarray(rgb).save(tmp, format="PNG")
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise KoalarizationError(f"{flag} {path.parent}: cannot write {path.name} ({err.strerror or err})") from None
