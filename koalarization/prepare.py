"""`prepare`: decode and resize every photo once into sharded uint8 files, for fast repeated epochs.

Decoding a JPEG and resizing it costs more than everything else the batch source does; a run of many
epochs pays it once here instead of once an epoch. `train --prepared DIR` then reads each photo with one
positioned file read (no memory map, so the resident memory stays a few batches however large the set).
The photos are exactly what the batch source would decode (`images.load_rgb` + `images.resize_rgb` at the
same size), so the batches are identical (tests/test_benchmark.py checks it); augmentation still happens
per epoch, on the stored S x S photo, as it does after decoding.

    DIR/index.json        {"format", "image_size", "root", "shard_size", "photos": [relative path, ...],
                           "failed": {relative path: reason}}   (grayscale files are left out, as in train)
    DIR/shard-00000.npy   uint8 (n, S, S, 3): photos[k * shard_size : (k + 1) * shard_size], in order

At 256 px a photo takes 192 KiB (ImageNet's 1.28 M photos: 250 GB; a JPEG is about 110 KiB).
"""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from koalarization import images
from koalarization.errors import KoalarizationError

log = logging.getLogger(__name__)

INDEX_FILE = "index.json"
SHARD_FILE = "shard-{:05d}.npy"
FORMAT = 1
CHUNK = 64  # photos decoded in parallel and written at a time: bounds memory whatever the shard size


def decode(path: Path, size: int) -> np.ndarray:
    """What BatchSource decodes for a photo: uint8 (size, size, 3)."""
    return images.resize_rgb(images.load_rgb(path, max_side=size), size)


def prepare(data: str | Path, out: str | Path, image_size: int, workers: int = 4, shard_size: int = 1024) -> dict:
    """Decode the colour photos under `data` into `out` (see the module docstring); returns the index."""
    from koalarization.data import scan_photos, write_text_atomic

    if image_size <= 0 or shard_size <= 0:
        raise KoalarizationError("--image-size and --shard-size must be positive")
    root, out = Path(os.path.abspath(data)), Path(out)
    usable, skipped = scan_photos(root, workers=max(workers, 4))
    if not usable:
        raise KoalarizationError(f"--data {data}: no usable colour photos found")
    out.mkdir(parents=True, exist_ok=True)
    files = sorted(Path(os.path.abspath(f)) for f in usable)
    failed: dict[str, str] = {}

    def one(path: Path) -> np.ndarray:
        try:
            return decode(path, image_size)
        except images.ImageError as err:
            failed[path.relative_to(root).as_posix()] = str(err)
            return np.full((image_size, image_size, 3), 128, np.uint8)  # never read: listed as failed

    with ThreadPoolExecutor(max(1, workers)) as pool:
        for k, first in enumerate(range(0, len(files), shard_size)):
            shard = files[first : first + shard_size]
            target = out / SHARD_FILE.format(k)
            tmp = Path(f"{target}.tmp")
            with open(tmp, "wb") as f:
                header = {"descr": "|u1", "fortran_order": False, "shape": (len(shard), image_size, image_size, 3)}
                np.lib.format.write_array_header_1_0(f, header)
                for c in range(0, len(shard), CHUNK):
                    for rgb in pool.map(one, shard[c : c + CHUNK]):
                        f.write(np.ascontiguousarray(rgb, np.uint8).tobytes())
            tmp.replace(target)
            log.info("prepared %d of %d photos", min(first + shard_size, len(files)), len(files))
    index = {
        "format": FORMAT, "image_size": image_size, "root": str(root), "shard_size": shard_size,
        "photos": [f.relative_to(root).as_posix() for f in files], "failed": failed,
        "skipped": {p.relative_to(root).as_posix(): r for p, r in skipped},
    }
    write_text_atomic(out / INDEX_FILE, json.dumps(index))  # last: a killed run leaves no usable index
    return index


class PreparedPhotos:
    """Read access to a `prepare` folder: `load(path)` -> uint8 (S, S, 3), thread-safe (positioned reads)."""

    def __init__(self, folder: str | Path, image_size: int | None = None):
        self.folder = Path(folder)
        try:
            index = json.loads((self.folder / INDEX_FILE).read_text())
            self.root, self.size = Path(index["root"]), int(index["image_size"])
            self.shard_size, photos = int(index["shard_size"]), index["photos"]
            self.failed: dict[str, str] = dict(index.get("failed", {}))
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise KoalarizationError(
                f"--prepared {folder}: not a prepared folder ({err}); make one with "
                f"`python -m koalarization prepare --data DIR --out {folder}`"
            ) from None
        if image_size is not None and image_size != self.size:
            raise KoalarizationError(
                f"--prepared {folder} holds {self.size} px photos but --image-size is {image_size}; rerun "
                f"prepare with --image-size {image_size} (into another --out)"
            )
        self.rows = {rel: i for i, rel in enumerate(photos)}
        self.photo_bytes = self.size * self.size * 3
        self._offsets: dict[int, int] = {}  # shard -> byte offset of its data (after the .npy header)

    def __len__(self) -> int:
        return len(self.rows)

    def missing(self, files) -> list[Path]:
        """The files this folder does not hold (prepared from another folder, or before they were added)."""
        return [f for f in files if self._relative(f) not in self.rows]

    def _relative(self, path) -> str:
        try:
            return Path(os.path.abspath(path)).relative_to(self.root).as_posix()
        except ValueError:
            return ""

    def _offset(self, shard: int, f) -> int:
        if shard not in self._offsets:  # a race only computes the same number twice
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            read_header(f)
            self._offsets[shard] = f.tell()
        return self._offsets[shard]

    def load(self, path) -> np.ndarray:
        rel = self._relative(path)
        if rel in self.failed:
            raise images.ImageError(self.failed[rel])
        row = self.rows.get(rel)
        if row is None:
            raise KoalarizationError(f"{path}: not in --prepared {self.folder}; rerun prepare on this --data")
        shard, position = divmod(row, self.shard_size)
        buffer = bytearray(self.photo_bytes)
        with open(self.folder / SHARD_FILE.format(shard), "rb", buffering=0) as f:
            f.seek(self._offset(shard, f) + position * self.photo_bytes)
            if f.readinto(buffer) != self.photo_bytes:
                raise images.ImageError(f"{path}: truncated prepared shard {f.name}; rerun prepare")
        return np.frombuffer(buffer, np.uint8).reshape(self.size, self.size, 3)


def open_prepared(folder: str | Path, image_size: int, files) -> PreparedPhotos:
    """The prepared folder for a run, checked to hold every photo of `files` at `image_size`."""
    store = PreparedPhotos(folder, image_size)
    missing = store.missing(files)
    if missing:
        raise KoalarizationError(
            f"--prepared {folder} lacks {len(missing)} of the {len(files)} photos to train on (first: "
            f"{missing[0]}); it was made from {store.root}: rerun prepare on this --data"
        )
    return store


# ----------------------------------------------------------------------------------------------------- CLI
def add_parser(sub) -> None:
    """`prepare` (called by cli.build_parser)."""
    p = sub.add_parser("prepare", help="decode and resize the photos once, for fast repeated epochs",
                       description="Store decoded, resized uint8 photos in sharded .npy files for train --prepared.")
    p.add_argument("--data", required=True, help="folder of photos (searched recursively)")
    p.add_argument("--out", required=True, help="folder to write index.json and shard-*.npy into")
    p.add_argument("--image-size", type=int, required=True, help="the --image-size you will train at")
    p.add_argument("--workers", type=int, default=4, help="decoding threads (default: 4)")
    p.add_argument("--shard-size", type=int, default=1024, help="photos per shard file (default: 1024)")


def _run(args) -> int:
    index = prepare(args.data, args.out, args.image_size, workers=args.workers, shard_size=args.shard_size)
    print(json.dumps({"out": str(args.out), "photos": len(index["photos"]), "failed": len(index["failed"]),
                      "skipped": len(index["skipped"]), "image_size": index["image_size"]}))
    return 0


COMMANDS = {"prepare": _run}
