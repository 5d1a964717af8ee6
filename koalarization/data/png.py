"""Writing PNG files fast: full-resolution outputs are 12 MP and more, and PNG encoding was most of the time.

    write_png(pixels uint8 (H, W) | (H, W, 3) | (H, W, 4), file)  -> an ordinary 8-bit PNG

Pillow's PNG writer takes ~7 s for a 12 MP photo at its default level 6, and still ~1.5 s at level 1, on one
core: it tries five filters on every row to pick one, then deflates the whole image with zlib on one thread.
Here every row gets the Up filter (PNG spec, section 9.2: each byte minus the byte above it; one NumPy
subtraction), and bands of rows are deflated on all cores at once, as pigz does: each band is its own raw
deflate stream, ended with a sync flush (an empty stored block, RFC 1951 section 3.2.4) so that the next
one starts on a byte boundary and the bands concatenate into one valid zlib stream; a band never refers
back into the one before it. The deflater is ISA-L's (the `isal` package), ~3x faster than zlib's fastest
level for files as small; without it, zlib's. Any PNG reader reads the result (tests/test_png.py decodes it
with Pillow, and with zlib alone); sizes and times are in docs/colorize.md, "Latency".
"""

from __future__ import annotations

import functools
import os
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np

try:
    from isal import isal_zlib as DEFLATE

    # ISA-L's scale is 0-3. 3, on the 12 MP benchmark photo: ~0.25 s of CPU for 16.6 MB, where zlib's level 1
    # takes ~0.6 s for 16.6 MB and Pillow's level 6 ~7 s for 16.6 MB. On the photos in data/ the files are
    # 6 % larger than zlib's level 6 (zlib's level 1: 5 %).
    LEVEL = 3
except ImportError:  # same API, stdlib
    DEFLATE = zlib
    # 1 deflates ~6x faster than 6; the files are 0-16 % larger than Pillow's level 6 on the photos in
    # data/, and the same size on a noisy 12 MP photo, where noise, not the search for matches, decides.
    LEVEL = 1
# Raw bytes per band: every band restarts the compressor's 32 KB window, which costs nothing at this size.
BAND_BYTES = 4 << 20
_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COLOUR_TYPES = {1: 0, 3: 2, 4: 6}  # channels -> PNG colour type: gray, RGB, RGBA
_UP = 2  # PNG filter type 2


@functools.cache
def _pool() -> ThreadPoolExecutor:
    """zlib and ISA-L let go of the GIL while they deflate, so threads use every core."""
    return ThreadPoolExecutor(max(1, os.cpu_count() or 1), thread_name_prefix="koalarization-png")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


def filtered_rows(pixels: np.ndarray) -> np.ndarray:
    """uint8 (H, W, C) -> the PNG scanlines (H, 1 + W C) uint8: filter-type byte, then the Up-filtered row
    (mod 256; the first row's "above" is zero, so it is kept as it is)."""
    rows = pixels.reshape(pixels.shape[0], -1)
    out = np.empty((rows.shape[0], rows.shape[1] + 1), np.uint8)
    out[:, 0] = _UP
    out[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=out[1:, 1:])  # uint8 wraps around: the mod 256 the spec asks for
    return out


def write_png(pixels: np.ndarray, file, level: int | None = None, text: dict[str, str] | None = None) -> None:
    """Write `pixels` (uint8 (H, W) gray, (H, W, 3) RGB or (H, W, 4) RGBA) to the binary file object `file`.
    level: on DEFLATE's own scale (default LEVEL); text: tEXt chunks {keyword: Latin-1 text} (PNG 11.3.4.3),
    written before the pixels so that a reader finds them without decoding any."""
    level = LEVEL if level is None else level
    pixels = np.ascontiguousarray(pixels)
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] not in _COLOUR_TYPES or 0 in pixels.shape:
        raise ValueError(f"write_png: expected uint8 (H, W), (H, W, 3) or (H, W, 4), got {pixels.dtype} {pixels.shape}")
    height, width, channels = pixels.shape
    scanlines = filtered_rows(pixels)
    band_rows = max(1, BAND_BYTES // scanlines.shape[1])
    bands = [scanlines[start : start + band_rows] for start in range(0, height, band_rows)]
    header = DEFLATE.compress(b"", level)[:2]  # the zlib wrapper: written once, around the bands' raw streams

    def deflate(i: int) -> tuple[bytes, int]:
        """-> (band i's raw deflate data, CRC-32 of "IDAT" + what comes before it in its chunk + it)."""
        compressor = DEFLATE.compressobj(level, DEFLATE.DEFLATED, -15)
        data = compressor.compress(bands[i]) + compressor.flush(DEFLATE.Z_FINISH if i == len(bands) - 1
                                                                else DEFLATE.Z_SYNC_FLUSH)
        return data, zlib.crc32(data, zlib.crc32(header if i == 0 else b"", zlib.crc32(b"IDAT")))

    deflated = _pool().map(deflate, range(len(bands)))
    trailer = struct.pack(">I", zlib.adler32(scanlines))  # in this thread, while the bands deflate
    file.write(_SIGNATURE + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, _COLOUR_TYPES[channels],
                                                        0, 0, 0)))
    for keyword, value in (text or {}).items():
        file.write(_chunk(b"tEXt", keyword.encode("latin-1") + b"\0" + value.encode("latin-1")))
    for i, (data, crc) in enumerate(deflated):  # one IDAT chunk per band; the first and last carry the wrapper
        before, after = (header if i == 0 else b""), (trailer if i == len(bands) - 1 else b"")
        file.write(struct.pack(">I", len(before) + len(data) + len(after)) + b"IDAT" + before)
        file.write(data)
        file.write(after + struct.pack(">I", zlib.crc32(after, crc)))
    file.write(_chunk(b"IEND", b""))
