"""A corpus of awkward and broken photos, written by code at test time (no binaries in the repository).

    make_corpus(root) -> {name: Case}       every case below, as files directly under `root`
    make_empty_folder(root) -> Path         an empty folder (every command must refuse it in one line)
    deny_reads(monkeypatch, path)           makes `path` unreadable even for root (see `reads_denied`)

Each Case says what every command must do with it (docs/robustness.md shows the same table):
    "ok"    processed (after conversion to RGB and EXIF rotation), output of the photo's upright size
    "skip"  left out with one warning line naming the file and `reason`; the run goes on
    "error" the photo was not processed because the command cannot use it at all
    "n/a"   the case cannot happen there (an upload has no file name on disk, no permissions, no links)
For a single-file command (`colorize FILE`, `test --data FILE`) a "skip" becomes one error line naming the
file and the reason, and exit status 1. `web` is an upload to the API: "ok" = colorized, "error" = a 4xx
with a one-line message.
"""

from __future__ import annotations

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


def colour_pixels(height: int, width: int, seed: int = 0) -> np.ndarray:
    """uint8 RGB (height, width, 3): smooth colour gradients plus noise, different per seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width, 1)
    phases = rng.uniform(0, 6, 3)
    rgb = np.stack([0.5 + 0.45 * np.sin(6 * (x + (i + 1) * y) + p) for i, p in enumerate(phases)], -1)
    return np.clip(rgb * 255 + rng.integers(-10, 10, rgb.shape), 0, 255).astype(np.uint8)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
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
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", b"".join(parts))
                     + _png_chunk(b"IEND", b""))


def _truncated(path: Path, image: Image.Image, fmt: str, keep: float = 0.6) -> None:
    image.save(path, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


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

    def ok(name, filename, size, train="ok", test="ok", colorize="ok", web="ok", reason=""):
        cases[name] = Case(root / filename, "ok", train, test, colorize, web, reason, size)

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
    return cases


def expectation_table(commands=("train", "test", "colorize", "web")) -> list[tuple[str, ...]]:
    """(case, what each command does) rows, in corpus order: the table of docs/robustness.md."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        cases = make_corpus(Path(tmp) / "corpus")
        return [(name, *(getattr(case, c) for c in commands)) for name, case in cases.items()]
