"""Finding and decoding photos. Every photo of any mode becomes uint8 sRGB (H, W, 3), upright.

Shared by training, `test`, `colorize` and the web server, so a photo that works in one works in all.
Errors are `ImageError` (a KoalarizationError) with a one-line message naming the file and the problem.
The commands that walk folders also share from here how skipped files are reported (`SkipLog`). Squashing
a photo to the network's size is squash.py's; what the commands write is outputs.py's.
"""

from __future__ import annotations

import io
import logging
import mmap
import os
import re
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, PngImagePlugin, UnidentifiedImageError

from koalarization.errors import KoalarizationError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
# The one pixel limit of every command and of the web server, checked from the header before decoding.
# It is Pillow's own limit (about 89 M pixels warns, twice that raises), which guards against decompression
# bombs; we make the warning an error too, so a 30,000 x 30,000 PNG is refused instead of decoded. A photo
# at the limit needs about 2.2 GB of working memory to colorize (~25 bytes per pixel, docs/colorize.md).
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485
# Pillow must not silently accept truncated files: a half-decoded photo would train on gray garbage.
ImageFile.LOAD_TRUNCATED_IMAGES = False
# Skipped files named one by one; the rest are counted on one line (10,000 broken files would bury the output).
SKIP_LINES = 5
# What os.stat says a path is, for "not a regular file: ..." (opening a FIFO blocks until a writer comes;
# a device such as /dev/zero never ends).
_NOT_REGULAR = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
# Bytes put before a JPEG's end marker to test whether its scan ran out of data (see _jpeg_problem); no 0xFF,
# so no byte stuffing is needed and no marker can appear.
_FILLER = bytes(range(255)) * 16
_SOS = re.compile(rb"\xff\xda")
# Pillow's names for JPEG files; MPO is a camera's JPEG with more pictures after its end marker.
_JPEG = ("JPEG", "MPO")


class ImageError(KoalarizationError):
    """A file that cannot be used as a photo. kind: "pixels" (over the pixel limit, or a decompression
    bomb), "format" (not an image, or a format Pillow cannot read) or "broken" (everything else)."""

    def __init__(self, message: str, kind: str = "broken"):
        super().__init__(message)
        self.kind = kind


def pixel_count(n: int) -> str:
    """A number of pixels for people: 40000000 -> '40 million', 39690000 -> '39.7 million', 65536 -> '65,536'."""
    return f"{n / 1e6:.1f}".removesuffix(".0") + " million" if n >= 100_000 else f"{n:,}"


def find_images(root: str | Path) -> list[Path]:
    """All photos under `root` (recursively, any case of extension), sorted; `root` may also be one file.

    In a folder every name with a photo's extension is listed, FIFOs and devices too: loading one says what
    it is, so it is skipped with that reason. Given as `root`, anything but a regular file is an ImageError."""
    root = Path(root)
    if root.is_dir():
        found = []
        # followlinks=False: a symlink loop cannot make the walk run forever.
        for folder, dirs, files in os.walk(root, followlinks=False):
            dirs.sort()
            found.extend(Path(folder) / f for f in files if Path(f).suffix.lower() in IMAGE_EXTENSIONS)
        return sorted(found)
    if not os.path.lexists(root):
        raise KoalarizationError(f"{root}: no such folder")
    _check_regular(root)
    return [root]


def _check_regular(path: Path) -> None:
    """ImageError unless `path` is a regular file or a link to one; os.stat only, nothing is opened."""
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        raise ImageError(f"{path}: {_os_problem(err)}") from None
    if not stat.S_ISREG(mode):
        kind = next((name for is_kind, name in _NOT_REGULAR if is_kind(mode)), "an unknown kind of file")
        raise ImageError(f"{path}: not a regular file: {kind}")


def _os_problem(err: OSError) -> str:
    """An OSError of reading a file in words (a symlink loop: "Too many levels of symbolic links")."""
    if isinstance(err, FileNotFoundError):
        return "file not found"
    if isinstance(err, PermissionError):
        return "permission denied"
    return f"cannot read ({err.strerror or err})"


def _value_error(err: ValueError) -> str:
    """Pillow's ValueErrors in words. Its PNG limits refuse text and ICC-profile chunks that inflate past
    MAX_TEXT_CHUNK each or MAX_TEXT_MEMORY together (zlib bombs hidden in the metadata)."""
    text, mb = str(err), 2**20
    if text.startswith("Decompressed data too large"):
        return f"metadata chunk too large (over {PngImagePlugin.MAX_TEXT_CHUNK / mb:g} MB when decompressed)"
    if text.startswith("Too much memory used in text chunks"):
        return f"metadata chunks too large (over {PngImagePlugin.MAX_TEXT_MEMORY / mb:g} MB in all when decompressed)"
    return f"cannot decode ({text})"


def _open(source, path, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open a file path or an in-memory stream (its header only); `path` names it in the one-line errors.
    max_pixels: a smaller limit than MAX_PIXELS (a server's), checked before any pixel is decoded."""
    limit = f"at most {pixel_count(min(max_pixels, MAX_PIXELS))} pixels are accepted"
    try:
        if not isinstance(source, io.BytesIO):
            _check_regular(source)
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(source)
        pixels = image.width * image.height
        if pixels > max_pixels:
            image.close()
            raise ImageError(f"{path}: {image.width}x{image.height} is {pixel_count(pixels)} pixels; {limit}", "pixels")
        return image
    except ImageError:
        raise
    except _PILLOW_ERRORS as err:
        raise _image_error(path, err, limit, opening=True) from None


# What Pillow and the OS raise for a file that is not a usable image (UnidentifiedImageError is an OSError;
# SyntaxError is Pillow's word for a malformed header).
_PILLOW_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning)


def _image_error(path, err: Exception, limit: str, opening: bool) -> ImageError:
    """One of _PILLOW_ERRORS -> the one-line ImageError naming `path`. opening: raised while reading the
    header (an OSError is then about the file), else while decoding the pixels (the data is broken)."""
    if isinstance(err, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return ImageError(f"{path}: too many pixels (decompression bomb?); {limit}", "pixels")
    if isinstance(err, UnidentifiedImageError):
        return ImageError(f"{path}: not an image (or an unsupported format)", "format")
    if isinstance(err, ValueError):
        return ImageError(f"{path}: {_value_error(err)}")
    if isinstance(err, OSError):
        return ImageError(f"{path}: {_os_problem(err) if opening else f'corrupt or truncated image ({err})'}")
    return ImageError(f"{path}: cannot decode ({err})")


def _float_to_gray(values: np.ndarray) -> np.ndarray:
    """Float gray (mode F, any range, signed too) -> uint8: the finite values' min..max becomes 0..255.
    NaN takes the minimum, +-inf the nearest end, so one bad pixel cannot turn the whole photo black."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        raise ValueError("every pixel is NaN or infinite")
    low, high = float(finite.min()), float(finite.max())
    values = np.clip(np.nan_to_num(values, nan=low, posinf=high, neginf=low), low, high)
    if high == low:  # one flat value: no range to stretch, and no reason to call it black or white
        return np.full(values.shape, 128, np.uint8)
    return np.rint((values - low) / (high - low) * 255.0).astype(np.uint8)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB; transparency is composited on white (how a viewer shows it)."""
    if image.mode == "F":
        return Image.fromarray(_float_to_gray(np.asarray(image, np.float64)), "L").convert("RGB")
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        # 16-bit / 32-bit gray: scale its full range to 8 bits (Pillow's convert("L") would clip at 255).
        values = np.asarray(image, dtype=np.float64)
        high = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
        gray = np.clip(np.rint(values / high * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if image.mode in ("RGBA", "LA", "La", "RGBa", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def load_rgb(path: str | Path, max_side: int | None = None) -> np.ndarray:
    """Decode `path` to uint8 RGB (H, W, 3), EXIF-rotated upright.

    max_side: a hint that the caller will shrink the photo to about this size; JPEGs are then decoded at a
    reduced scale (Pillow's draft mode, a free 2-8x speed-up), never below max_side on the short side.
    """
    path = Path(path)
    with _open(path, path) as image:
        return _decode(image, path, path, max_side)


def frame_note(image: Image.Image) -> str | None:
    """'frame 1 of N' for an animated or multi-page image (GIF, APNG, TIFF, WebP), else None: every command
    uses the first frame only."""
    frames = int(getattr(image, "n_frames", 1) or 1)
    return f"frame 1 of {frames}" if frames > 1 else None


def _decode(image: Image.Image, path, source, max_side: int | None = None) -> np.ndarray:
    """`image`, opened from `source` (a path or the upload's BytesIO), -> uint8 RGB (H, W, 3), upright.
    A file of several frames logs one warning line naming it: only its first frame is used."""
    note = frame_note(image)
    if note:
        log.warning("%s: %s used (an animated or multi-page file; the other frames are ignored)",
                    display_name(path), note)
    try:
        if max_side and image.format in _JPEG:
            image.draft("RGB", (max_side, max_side))
        image.load()
        if image.format in _JPEG:
            problem = _jpeg_problem(image, source, max_side)
            if problem:
                raise ImageError(f"{path}: {problem}")
        ImageOps.exif_transpose(image, in_place=True)  # in place: no copy of a 12 MP photo
        rgb = _to_rgb(image)
        rgb.load()
    except ImageError:
        raise
    except _PILLOW_ERRORS as err:
        raise _image_error(path, err, f"at most {pixel_count(MAX_PIXELS)} pixels are accepted", opening=False) from None
    array = np.asarray(rgb, dtype=np.uint8)
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise ImageError(f"{path}: empty image")
    return array


# ------------------------------------------------------------------------------------- truncated JPEGs
def _jpeg_problem(image: Image.Image, source, max_side: int | None) -> str | None:
    """Why a JPEG that Pillow decoded without an error is incomplete, or None.

    Pillow raises when the file simply stops, but libjpeg itself fills what is missing and only warns (Pillow
    drops its warnings) when the data ends early and something follows: an end marker (a cut file "repaired"
    by a tool) leaves the rest of a baseline picture flat gray and a progressive one blurred; zeros (a
    preallocated download) decode as garbage. `image` is the decoded JPEG, before any conversion."""
    if isinstance(source, io.BytesIO):
        return _jpeg_data_problem(image, source.getvalue(), max_side)
    with open(source, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        return _jpeg_data_problem(image, data, max_side)  # mapped: a huge file is not copied


def _jpeg_data_problem(image: Image.Image, data, max_side: int | None) -> str | None:
    """_jpeg_problem on the file's bytes (`data`: bytes or a read-only mmap)."""
    scan = _first_scan(data)
    if scan is None:  # a segment layout we cannot follow; libjpeg could, so let it be
        return None
    end = data.find(b"\xff\xd9", scan)  # entropy-coded data never holds FF D9: its FF bytes are stuffed (FF 00)
    if end < 0:
        return "truncated JPEG (the data stops before the end-of-image marker)"
    if image.info.get("progressive") and not _scans_complete(data, scan, end, [c[0] for c in image.layer]):
        return "truncated JPEG (scans are missing; the picture would be blurred)"
    corner = image.getpixel((image.width - 1, image.height - 1))
    corner = corner if isinstance(corner, tuple) else (corner,)
    # libjpeg's fill is zero coefficients: exactly 128 (127 in Adobe's inverted CMYK) in every channel. The
    # last pixel is filled whenever a whole MCU is missing; a real photo rarely has that value, and then a
    # second decode, with more data before the end marker, tells the two apart: a complete scan ignores
    # the extra bytes, one that ran out of data decodes them instead of gray.
    if all(v in (127, 128) for v in corner):
        with Image.open(io.BytesIO(bytes(data[:end]) + _FILLER + b"\xff\xd9")) as again:
            if max_side:  # at the scale `image` was decoded at, as _decode asked for it
                again.draft("RGB", (max_side, max_side))
            again.load()
            if not np.array_equal(np.asarray(again), np.asarray(image)):
                return "truncated JPEG (the end of the picture is missing; it would be flat gray)"
    return None


def _first_scan(data) -> int | None:
    """Offset of the first SOS marker of the main image, found by walking the segments from SOI (so a
    thumbnail inside the EXIF segment is skipped); None when the layout is not the standard one."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
        elif marker == 0xDA:
            return pos
        elif 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            pos += 2
        else:
            pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return None


def _scans_complete(data, first: int, end: int, components: list[int]) -> bool:
    """Whether a progressive JPEG's scans bring every coefficient (0..63) of every component to its last
    bit (Al = 0; ITU T.81 Annex G): a file cut between or inside scans and closed by an end marker decodes
    blurred, silently. Each SOS header: length, Ns, Ns x (id, tables), Ss, Se, Ah|Al."""
    final: dict[int, set[int]] = {c: set() for c in components}
    for match in _SOS.finditer(data, first, end):
        pos = match.start() + 4
        ids = [data[pos + 1 + 2 * k] for k in range(data[pos])]
        start, stop, approximation = (data[pos + 1 + 2 * len(ids) + k] for k in range(3))
        if approximation & 0x0F == 0:
            for c in ids:
                final.get(c, set()).update(range(start, stop + 1))
    return all(len(done) == 64 for done in final.values())


def load_rgb_bytes(data: bytes, name: str = "upload", max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, str | None]:
    """Decode an image held in memory (an upload) like `load_rgb`, once -> (uint8 RGB (H, W, 3) upright,
    frame_note: "frame 1 of N" for a file of several frames, else None).

    Nothing touches the disk; `name` only labels the one-line `ImageError` messages. max_pixels: as `_open`'s,
    checked from the header before decoding.
    """
    source = io.BytesIO(data)
    with _open(source, name, max_pixels) as image:
        return _decode(image, name, source), frame_note(image)


class SkipLog:
    """Reports the files a command skips: the first SKIP_LINES on a warning line each ("skipped FILE: reason"),
    then `close()` counts the rest on one line ("... and 9,995 more unreadable files skipped").

    `count` is the number skipped. Used by `train`'s scan, `test` and `colorize`."""

    def __init__(self, log: logging.Logger, what: str = "unreadable files"):
        self.log, self.what, self.limit, self.count = log, what, SKIP_LINES, 0

    def add(self, problem) -> None:
        """problem: an ImageError, or any "FILE: reason" text."""
        self.count += 1
        if self.count <= self.limit:
            self.log.warning("skipped %s", problem)

    def close(self) -> None:
        if self.count > self.limit:
            self.log.warning("... and %s more %s skipped", f"{self.count - self.limit:,}", self.what)

    def load_each(self, paths: list[Path], alone: bool = False) -> list[tuple[Path, np.ndarray]]:
        """(path, load_rgb(path)) for each readable photo of `paths`, skipping the others; `alone`: the only
        photo a command was asked for, whose problem is then the command's error (raised, not skipped)."""
        loaded = []
        for path in paths:
            try:
                loaded.append((path, load_rgb(path)))
            except ImageError as err:
                if alone:
                    raise
                self.add(err)
        return loaded


def display_name(path: str | Path) -> str:
    """`path` as text any UTF-8 writer and reader accepts. A Linux file name may hold any bytes; Python
    carries the ones that are not UTF-8 as lone surrogates, which no encoder takes: they become \\xNN."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")
