"""The PNG writer: files that Pillow reads back exactly, and that hold together byte by byte (chunk CRCs,
one zlib stream across the bands, the Up filter) when decoded with nothing but zlib."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from koalarization.data import outputs, png


@pytest.fixture(params=["zlib", "isal"], autouse=True)
def deflater(request, monkeypatch):
    """Every test with zlib's deflate (the fallback) and ISA-L's (when installed, the default)."""
    if request.param == "isal":
        module = pytest.importorskip("isal.isal_zlib")
        monkeypatch.setattr(png, "DEFLATE", module)
        monkeypatch.setattr(png, "LEVEL", 3)
    else:
        monkeypatch.setattr(png, "DEFLATE", zlib)
        monkeypatch.setattr(png, "LEVEL", 1)
    return request.param


def encode(pixels: np.ndarray, **kwargs) -> bytes:
    buffer = io.BytesIO()
    png.write_png(pixels, buffer, **kwargs)
    return buffer.getvalue()


def decode_with_zlib(data: bytes) -> np.ndarray:
    """A minimal PNG reader for what write_png writes (8 bits, Up filter only): checks every CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(data):
        (length,), kind = struct.unpack(">I", data[pos : pos + 4]), data[pos + 4 : pos + 8]
        body, (crc,) = data[pos + 8 : pos + 8 + length], struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, kind
        chunks.append((kind, body))
        pos += 12 + length
    assert [k for k, _ in chunks][0] == b"IHDR" and chunks[-1] == (b"IEND", b"")
    width, height, depth, colour_type = struct.unpack(">IIBB", chunks[0][1][:10])
    channels = {0: 1, 2: 3, 6: 4}[colour_type]
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))  # checks the Adler-32 too
    rows = np.frombuffer(raw, np.uint8).reshape(height, 1 + width * channels)
    assert depth == 8 and (rows[:, 0] == 2).all()  # Up everywhere
    return np.cumsum(rows[:, 1:], axis=0, dtype=np.uint8).reshape(height, width, channels)  # undo Up, mod 256


@pytest.mark.parametrize("shape", [(1, 1, 3), (1, 9, 3), (9, 1, 3), (37, 23, 3), (37, 23, 4), (20, 31)])
def test_round_trips_exactly(shape):
    pixels = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    data = encode(pixels)
    with Image.open(io.BytesIO(data)) as read:
        assert read.mode == {2: "L", 3: "RGB", 4: "RGBA"}[len(shape) if len(shape) == 2 else shape[2]]
        assert np.array_equal(np.asarray(read), pixels)
    assert np.array_equal(decode_with_zlib(data), pixels.reshape(*shape[:2], -1))


@pytest.mark.parametrize("level", ["lowest", "default", "highest"])
def test_bands_deflated_apart_make_one_valid_stream(monkeypatch, deflater, level):
    monkeypatch.setattr(png, "BAND_BYTES", 1000)  # 61-byte rows: 16 rows a band, 7 bands
    pixels = np.random.default_rng(0).integers(0, 256, (100, 20, 3), dtype=np.uint8)
    pixels[40:] = pixels[40:41]  # repeated rows: Up filters them to zeros, which deflate to almost nothing
    data = encode(pixels, level={"lowest": 0, "default": png.LEVEL, "highest": {"zlib": 9, "isal": 3}[deflater]}[level])
    assert data.count(b"IDAT") == 7
    assert np.array_equal(decode_with_zlib(data), pixels)
    with Image.open(io.BytesIO(data)) as read:
        assert np.array_equal(np.asarray(read), pixels)
    assert len(encode(pixels)) < pixels.size / 2  # the repeated rows did deflate


def test_refuses_what_it_cannot_write():
    for bad in (np.zeros((4, 4, 3), np.float32), np.zeros((4, 4, 2), np.uint8), np.zeros((0, 4, 3), np.uint8)):
        with pytest.raises(ValueError, match="write_png"):
            encode(bad)


def test_save_png_atomic_writes_the_pixels_and_no_temporary_file(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    outputs.save_png_atomic(pixels, tmp_path / "out.png")
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]
    with Image.open(tmp_path / "out.png") as read:
        assert read.format == "PNG" and np.array_equal(np.asarray(read), pixels)
