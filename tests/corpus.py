"""A corpus of awkward and broken photos, written by code at test time (no binaries in the repository).

    make_corpus(root) -> {name: Case}       every case below, as files directly under `root`
    make_empty_folder(root) -> Path         an empty folder (every command must refuse it in one line)
    deny_reads(monkeypatch, path)           makes `path` unreadable even for root (see `reads_denied`)

Each Case says what every command must do with it (docs/robustness.md shows the same table):
    "ok"    processed (after conversion to RGB and EXIF rotation), output of the photo's upright size
    "skip"  left out with one warning line naming the file and `reason`; the run goes on
    "error" the photo was not processed because the command cannot use it at all
    "n/a"   the case cannot happen there (an upload has no file name on disk, no permissions, no links, no file type)
For a single-file command (`colorize FILE`, `test --data FILE`) a "skip" becomes one error line naming the
file and the reason, and exit status 1. `web` is an upload to the API: "ok" = colorized, "error" = a 4xx
with a one-line message. Linux only: a FIFO and a link to /dev/zero (and write_non_utf8_photo's name).
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

BOMB_SIDE = 30_000  # 900 M pixels: ten times Pillow's MAX_IMAGE_PIXELS, refused before decoding
EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class Case:
    path: Path
    kind: str  # "ok" or "skip": what a folder-walking command does with it when it is not gray-only
    train: str  # "ok" | "skip" ("skip": also grayscale photos, which teach no colour)
    test: str
    colorize: str
    web: str
    reason: str = ""  # a regular expression the warning/error line matches, for "skip" and "error"
    size: tuple[int, int] | None = None  # (width, height) of the upright photo, for "ok"
    output: str = ""  # the output file name `test` and `colorize` give it, when not NAME.png

    @property
    def output_name(self) -> str:
        return self.output or f"{self.path.stem}.png"


def colour_pixels(height: int, width: int, seed: int = 0) -> np.ndarray:
    """uint8 RGB (height, width, 3): smooth colour gradients plus noise, different per seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width, 1)
    phases = rng.uniform(0, 6, 3)
    rgb = np.stack([0.5 + 0.45 * np.sin(6 * (x + (i + 1) * y) + p) for i, p in enumerate(phases)], -1)
    return np.clip(rgb * 255 + rng.integers(-10, 10, rgb.shape), 0, 255).astype(np.uint8)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_bomb(path: Path, side: int = BOMB_SIDE) -> None:
    """A valid 1-bit gray PNG of side x side black pixels: ~110 kB on disk, ~0.4 s to make (zlib streams
    the rows), but 900 M pixels once decoded."""
    row = b"\0" * (1 + (side + 7) // 8)  # filter byte + packed bits
    compressor, parts, done = zlib.compressobj(9), [], 0
    while done < side:
        rows = min(256, side - done)
        parts.append(compressor.compress(row * rows))
        done += rows
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # bit depth 1, gray, deflate, no interlace
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", b"".join(parts))
                     + png_chunk(b"IEND", b""))


def _truncated(path: Path, image: Image.Image, fmt: str, keep: float = 0.6, then: str = "", **save) -> None:
    """`image` saved as `fmt`, cut after `keep` of its bytes. then="end marker": JPEG's EOI appended (as tools
    that "repair" a cut file do); then="zeros": zero bytes up to the full length (a preallocated download).
    Pillow decodes both of these without an error: libjpeg fills in the missing part."""
    image.save(path, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}), **save)
    data = path.read_bytes()
    cut = data[: int(len(data) * keep)]
    path.write_bytes(cut + {"": b"", "end marker": b"\xff\xd9", "zeros": bytes(len(data) - len(cut))}[then])


def _png_with_chunk(path: Path, rgb: np.ndarray, kind: bytes, data: bytes, in_header: bool) -> None:
    """A valid PNG with one more chunk: right after IHDR (read when the file is opened) or before IEND (read
    only when the pixels are)."""
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    png = buffer.getvalue()
    at = 8 + 25 if in_header else png.rindex(b"IEND") - 4  # signature + IHDR; the IEND chunk's length field
    path.write_bytes(png[:at] + png_chunk(kind, data) + png[at:])


def metadata_bomb(megabytes: int = 2) -> bytes:
    """zlib data of `megabytes` MB of zeros (2 kB): over Pillow's 1 MB limit for a text or ICC chunk."""
    return zlib.compress(bytes(megabytes << 20), 9)


def write_float_tiff(path: Path, values: np.ndarray) -> None:
    """A 32-bit float gray TIFF (Pillow mode F) of `values` (H, W), NaN and inf kept."""
    Image.fromarray(np.asarray(values, np.float32), "F").save(path, format="TIFF")


def float_values(low: float, high: float, bad: bool) -> np.ndarray:
    """(48, 64) float32 from `low` (top left) to `high` (bottom right); bad: NaN at [0, 0], +inf at [0, 1],
    -inf at [0, 2] (the pixels the float cases check)."""
    values = np.linspace(low, high, 48 * 64, dtype=np.float32).reshape(48, 64)
    if bad:
        values[0, :3] = np.nan, np.inf, -np.inf
    return values


def make_empty_folder(root: Path, name: str = "empty") -> Path:
    folder = Path(root) / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def reads_denied(path: Path) -> bool:
    """True when chmod 000 really stops reads here (not as root, which reads anything)."""
    try:
        with open(path, "rb"):
            return False
    except PermissionError:
        return True


def deny_reads(monkeypatch, path: Path) -> None:
    """Make opening `path` raise PermissionError, as chmod 000 does for a normal user. Patches the
    `open` Pillow calls, so the project's own error handling is what gets tested."""
    import builtins

    real_open, denied = builtins.open, os.path.abspath(path)

    def guarded_open(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and os.path.abspath(file) == denied:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)


def make_corpus(root: Path) -> dict[str, Case]:
    """Write every case into `root` (created); returns them by name. Takes well under 2 s."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    cases: dict[str, Case] = {}
    rgb = colour_pixels(48, 64)

    def ok(name, filename, size, train="ok", test="ok", colorize="ok", web="ok", reason="", output=""):
        cases[name] = Case(root / filename, "ok", train, test, colorize, web, reason, size, output)

    def bad(name, filename, reason, web="error"):
        cases[name] = Case(root / filename, "skip", "skip", "skip", "skip", web, reason)

    # ---- broken files: skipped by folder-walking commands
    (root / "zero_byte.jpg").write_bytes(b"")
    bad("zero_byte", "zero_byte.jpg", "not an image")
    _truncated(root / "truncated_jpeg.jpg", Image.fromarray(rgb), "JPEG")
    bad("truncated_jpeg", "truncated_jpeg.jpg", "corrupt or truncated")
    _truncated(root / "truncated_png.png", Image.fromarray(rgb), "PNG")
    bad("truncated_png", "truncated_png.png", "corrupt or truncated")
    (root / "text.jpg").write_text("This is a text file, not a photo.\n")
    bad("text_as_jpg", "text.jpg", "not an image")
    (root / "page.png").write_text("<!doctype html><html><body><img src='photo.png'></body></html>\n")
    bad("html_as_png", "page.png", "not an image")
    write_bomb(root / "bomb.png")
    bad("bomb", "bomb.png", "pixels")
    os.symlink("loop.jpg", root / "loop.jpg")  # points at itself: opening it fails with ELOOP
    os.symlink(".", root / "loopdir")  # a folder loop: loopdir/loopdir/... must not be walked forever
    bad("symlink_loop", "loop.jpg", "cannot read|symbolic links|no such file", web="n/a")
    Image.fromarray(rgb).save(root / "unreadable.jpg", quality=95)
    os.chmod(root / "unreadable.jpg", 0)  # as root this stops nothing: tests use deny_reads there
    bad("unreadable", "unreadable.jpg", "permission denied", web="n/a")
    # Pillow's limit on PNG metadata (a zlib bomb in an ICC profile or a text chunk): 2 kB files.
    _png_with_chunk(root / "big_icc.png", rgb, b"iCCP", b"icc\0\0" + metadata_bomb(), in_header=True)
    bad("big_iccp", "big_icc.png", r"metadata chunk too large \(over 1 MB when decompressed\)")
    _png_with_chunk(root / "big_text.png", rgb, b"zTXt", b"Comment\0\0" + metadata_bomb(), in_header=False)
    bad("big_ztxt", "big_text.png", r"metadata chunk too large \(over 1 MB when decompressed\)")
    # Not regular files: opening a FIFO blocks until a writer comes; /dev/zero never ends.
    os.mkfifo(root / "pipe.jpg")
    bad("fifo", "pipe.jpg", r"not a regular file: a FIFO", web="n/a")
    os.symlink("/dev/zero", root / "zero.jpg")
    bad("device_link", "zero.jpg", "not a regular file: a character device", web="n/a")
    # JPEGs whose data ends early that Pillow decodes without an error (libjpeg fills in the rest).
    _truncated(root / "gray_filled.jpg", Image.fromarray(rgb), "JPEG", then="end marker")
    bad("gray_filled_jpeg", "gray_filled.jpg", r"truncated JPEG \(the end of the picture is missing")
    _truncated(root / "zero_padded.jpg", Image.fromarray(rgb), "JPEG", then="zeros")
    bad("zero_padded_jpeg", "zero_padded.jpg", r"truncated JPEG \(the data stops before the end-of-image marker")
    _truncated(root / "cut_progressive.jpg", Image.fromarray(rgb), "JPEG", keep=0.4, then="end marker",
               progressive=True)
    bad("cut_progressive_jpeg", "cut_progressive.jpg", r"truncated JPEG \(scans are missing")

    # ---- valid photos of every awkward kind: converted and processed
    Image.fromarray(rgb).convert("CMYK").save(root / "cmyk.jpg", quality=95)
    ok("cmyk_jpeg", "cmyk.jpg", (64, 48))
    alpha = np.linspace(0, 255, 64, dtype=np.uint8)[None].repeat(48, 0)
    Image.fromarray(np.dstack([rgb, alpha])).save(root / "rgba.png")
    ok("rgba_png", "rgba.png", (64, 48))
    Image.fromarray(rgb).quantize(32).save(root / "palette.png")
    ok("palette_png", "palette.png", (64, 48))
    # Grayscale: nothing to learn colour from, so training leaves it out (docs: "Training data"); test and
    # colorize process it (colorizing old gray photos is the point of the project).
    Image.fromarray(rgb[..., 1].astype(np.uint16) * 257).save(root / "deep16.png")  # mode I;16
    ok("png16", "deep16.png", (64, 48), train="skip", reason="grayscale")
    Image.fromarray(rgb[..., 1]).save(root / "gray.jpg", quality=95)
    ok("gray_jpeg", "gray.jpg", (64, 48), train="skip", reason="grayscale")
    Image.new("RGB", (1, 1), (200, 40, 90)).save(root / "one_by_one.png")
    ok("one_by_one", "one_by_one.png", (1, 1))
    Image.fromarray(colour_pixels(3, 7, seed=1)).save(root / "seven_by_three.png")
    ok("seven_by_three", "seven_by_three.png", (7, 3))
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # stored 64 x 48, shown rotated 90 degrees clockwise: 48 x 64
    Image.fromarray(colour_pixels(48, 64, seed=2)).save(root / "exif_rotated.jpg", quality=95, exif=exif)
    ok("exif_rotated", "exif_rotated.jpg", (48, 64))
    Image.fromarray(colour_pixels(40, 30, seed=3)).save(root / "my photo.jpg", quality=95)
    ok("name_with_spaces", "my photo.jpg", (30, 40))
    Image.fromarray(colour_pixels(36, 52, seed=4)).save(root / "фото_é.jpg", quality=95)
    ok("non_ascii_name", "фото_é.jpg", (52, 36))
    # Two photos of one name: each gets its own output (sorted, the PNG comes first).
    Image.fromarray(colour_pixels(12, 20, seed=6)).save(root / "twin.png")
    ok("twin_png", "twin.png", (20, 12))
    Image.fromarray(colour_pixels(20, 12, seed=7)).save(root / "twin.tif")
    ok("twin_tif", "twin.tif", (12, 20), output="twin-1.png")
    # Float gray TIFFs: NaN and +-inf pixels, and a signed range; gray, so training leaves them out.
    write_float_tiff(root / "float_nan_inf.tif", float_values(0.0, 1000.0, bad=True))
    ok("float_nan_inf", "float_nan_inf.tif", (64, 48), train="skip", reason="grayscale")
    write_float_tiff(root / "float_signed.tif", float_values(-1.0, 1.0, bad=False))
    ok("float_signed", "float_signed.tif", (64, 48), train="skip", reason="grayscale")
    return cases


def write_non_utf8_photo(folder: Path) -> Path:
    """A colour JPEG named b"bytes_\\xff\\xfe.jpg": a Linux name may hold any bytes but / and NUL, and Python
    carries the ones that are not UTF-8 as lone surrogates, which no UTF-8 writer accepts. Kept out of
    make_corpus: `train` still fails on such a name (its resume fingerprint encodes the names as UTF-8),
    which would stop the whole corpus run."""
    path = os.path.join(os.fsencode(folder), b"bytes_\xff\xfe.jpg")
    with open(path, "wb") as f:
        Image.fromarray(colour_pixels(30, 44, seed=5)).save(f, format="JPEG", quality=95)
    return Path(os.fsdecode(path))


def expectation_table(commands=("train", "test", "colorize", "web")) -> list[tuple[str, ...]]:
    """(case, what each command does) rows, in corpus order: the table of docs/robustness.md."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        cases = make_corpus(Path(tmp) / "corpus")
        return [(name, *(getattr(case, c) for c in commands)) for name, case in cases.items()]
