"""The training cache: every photo decoded once, at the working size, with its global embedding.

Decoding a JPEG costs more than everything else a batch needs, and the embedder is frozen, so its output
for a photo never changes: both are computed once per photo (the paper stored precomputed embeddings in
TFRecords for the same reason) and every epoch reads them back with positioned reads, so the resident
memory stays a few batches whatever the size of the set.

    DIR/manifest.json          {"format", "image_size", "embedder", "embedder_weights", "shard_size",
                                "photos": [absolute path, ...]}          written first: what the cache holds
    DIR/photos-00000.npy       uint8 (n, S, S, 3): photos[k * shard_size + i] squashed to S x S
    DIR/embeddings-00000.npy   float32 (n, D): the embedder's output for the photo's gray version at the
                               embedder's own resolution, resized from the full photo (not from S x S:
                               a classifier fed a 64 px blur loses most of what it knows)
    DIR/shard-00000.json       {"skipped": {i: reason}}: written last, so a shard without it is redone
                               (every file is written through io.atomic_path)

A build that is interrupted resumes at its first unfinished shard. Photos that are gray (by file mode or by
content, color.is_gray) or unreadable are recorded with the reason and never trained on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from koalarization import color
from koalarization.data import images, squash
from koalarization.errors import KoalarizationError
from koalarization.files import atomic_path, cache_dir, write_text_atomic

log = logging.getLogger(__name__)

FORMAT = 2
MANIFEST = "manifest.json"
PHOTOS, EMBEDDINGS, DONE = "photos-{:05d}.npy", "embeddings-{:05d}.npy", "shard-{:05d}.json"
SHARD_SIZE = 4096
EMBED_BATCH = 128  # photos decoded in parallel and embedded at a time
GRAY = "grayscale: its colour channels are (nearly) equal"


def default_folder(files, image_size: int, embedder: str, embedder_weights: str | None = None) -> Path:
    """The automatic cache folder of a photo list: keyed by every file's path, size and modification time,
    the working size and the embedder, so a changed photo or setting builds a new cache."""
    digest = hashlib.sha256(json.dumps([FORMAT, image_size, embedder, embedder_weights]).encode())
    for path in files:
        try:
            stat = os.stat(path)
            digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
        except OSError:
            digest.update(f"{path}\0missing\n".encode("utf-8", "surrogateescape"))
    return cache_dir() / "prepared" / f"{image_size}px-{embedder}-{digest.hexdigest()[:16]}"


def photo_inputs(rgb: np.ndarray, image_size: int, resolution: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """A photo uint8 (H, W, 3) -> what the network sees of it: (uint8 (S, S, 3), the embedder's input
    L scaled (R, R, 1) float32 in [-1, 1], gray), both squashed from the full photo (as the reference
    squashed it); gray: color.is_gray, judged at R px (cheap on a 12 MP photo; JPEG noise averages out)."""
    for_embedder, small = squash.resize_rgb_each(rgb, [resolution, image_size])
    return small, color.network_lightness(for_embedder), color.is_gray(for_embedder)


def decode_for_cache(path: Path, image_size: int, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """One colour photo -> photo_inputs' (uint8 (S, S, 3), L (R, R, 1)). Gray photos raise ImageError(GRAY)."""
    small, for_embedder, gray = photo_inputs(images.load_rgb(path, max_side=max(image_size, resolution)),
                                             image_size, resolution)
    if gray:
        raise images.ImageError(f"{path}: {GRAY}")
    return small, for_embedder


class Cache:
    """Read access to a complete cache folder; thread-safe (positioned reads on shared descriptors)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        manifest = _read_json(self.folder / MANIFEST)
        if manifest.get("format") != FORMAT:
            raise KoalarizationError(f"{self.folder}: not a cache of this version (format "
                                     f"{manifest.get('format')}); delete it to rebuild")
        self.image_size, self.embedder = int(manifest["image_size"]), manifest["embedder"]
        self.shard_size, self.photos = int(manifest["shard_size"]), [Path(p) for p in manifest["photos"]]
        self.skipped: dict[Path, str] = {}
        for shard in range(_shards(len(self.photos), self.shard_size)):
            done = self.folder / DONE.format(shard)
            if not done.is_file():
                raise KoalarizationError(f"{self.folder}: unfinished cache (no {done.name}); rebuild it")
            for i, reason in _read_json(done)["skipped"].items():
                self.skipped[self.photos[shard * self.shard_size + int(i)]] = reason
        self.rows = {p: i for i, p in enumerate(self.photos) if p not in self.skipped}
        self.photo_bytes = self.image_size * self.image_size * 3
        self.embedding_dim = int(manifest.get("embedding_dim", 0))
        self._files: dict[str, tuple[int, int]] = {}  # name -> (descriptor, data offset)

    @property
    def usable(self) -> list[Path]:
        return sorted(self.rows)

    def row_of(self, path: Path) -> int:
        row = self.rows.get(Path(os.path.abspath(path)))
        if row is None:
            raise KoalarizationError(f"{path}: not in the cache {self.folder}")
        return row

    def _descriptor(self, name: str) -> tuple[int, int]:
        """(descriptor, offset of the data) of a shard's .npy file. NumPy reads the header (np.load with
        mmap_mode also checks that the file holds all the data its header promises); the rows are then read
        with pread, not through the memory map, so that the process's resident memory stays a few batches
        (a mapped page that was read counts as resident until the kernel needs it back)."""
        if name not in self._files:  # a race opens the file twice; both descriptors work
            path = self.folder / name
            try:
                offset = np.load(path, mmap_mode="r").offset
            except ValueError as err:  # shorter than its header says
                raise KoalarizationError(f"{path}: truncated ({err}); delete the cache to rebuild it") from None
            self._files[name] = (os.open(path, os.O_RDONLY), offset)
        return self._files[name]

    def _read(self, pattern: str, row: int, size: int) -> bytes:
        shard, position = divmod(row, self.shard_size)
        descriptor, offset = self._descriptor(pattern.format(shard))
        data = os.pread(descriptor, size, offset + position * size)
        if len(data) != size:
            raise KoalarizationError(f"{self.folder / pattern.format(shard)}: truncated; delete the cache to rebuild it")
        return data

    def photo(self, row: int) -> np.ndarray:
        """uint8 (S, S, 3)."""
        data = self._read(PHOTOS, row, self.photo_bytes)
        return np.frombuffer(data, np.uint8).reshape(self.image_size, self.image_size, 3)

    def embedding(self, row: int) -> np.ndarray:
        """float32 (D,)."""
        return np.frombuffer(self._read(EMBEDDINGS, row, 4 * self.embedding_dim), np.float32)

    def close(self) -> None:
        for descriptor, _ in self._files.values():
            os.close(descriptor)
        self._files.clear()


def build(files, folder: str | Path, image_size: int, embedder_name: str, embedder_weights: str | None = None,
          workers: int = 4, shard_size: int = SHARD_SIZE, progress: bool = True, runner=None) -> Cache:
    """Fill `folder` with the cache of `files` (see the module docstring), resuming an interrupted build.
    runner: embedder -> a function computing its outputs for a batch of inputs as NumPy (default: Keras'
    predict_on_batch); another runtime may compute the same function faster."""
    from koalarization.model.embedders import build_embedder, get_spec

    folder, files = Path(folder), [Path(os.path.abspath(f)) for f in files]
    if not files:
        raise KoalarizationError("no photos to cache")
    manifest = {"format": FORMAT, "image_size": image_size, "embedder": embedder_name,
                "embedder_weights": embedder_weights, "shard_size": shard_size, "photos": [str(f) for f in files]}
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / MANIFEST).is_file():
        previous = _read_json(folder / MANIFEST)
        previous.pop("embedding_dim", None)
        if previous != manifest:
            raise KoalarizationError(f"{folder}: holds the cache of other photos or settings; delete it or "
                                     "choose another folder")
    resolution = get_spec(embedder_name).resolution
    shards = _shards(len(files), shard_size)
    todo = [k for k in range(shards) if not (folder / DONE.format(k)).is_file()]
    if todo:
        embedder = build_embedder(embedder_name, embedder_weights)
        manifest["embedding_dim"] = int(embedder.output.shape[-1])
        embed = runner(embedder) if runner is not None else _default_runner(embedder)
        write_text_atomic(folder / MANIFEST, json.dumps(manifest))
        done_photos = len(files) - sum(len(files[k * shard_size : (k + 1) * shard_size]) for k in todo)
        with ThreadPoolExecutor(max(1, workers)) as pool, tqdm(
            total=len(files), initial=done_photos, unit="photo", desc="caching photos", disable=not progress,
            delay=2,  # a few photos: no bar
        ) as bar:
            for k in todo:
                _build_shard(folder, k, files[k * shard_size : (k + 1) * shard_size], image_size, resolution,
                             manifest["embedding_dim"], embed, pool, bar)
    return Cache(folder)


def _default_runner(embedder):
    """Keras' predict_on_batch, or ONNX Runtime checked against it when the optional packages are
    installed (onnx_runner.py: about 4x faster on a CPU, the same features to within 1e-4)."""
    from koalarization.model import onnx_runner

    fast = onnx_runner.onnx_runner(embedder)
    return onnx_runner.checked(fast, embedder.predict_on_batch) if fast else embedder.predict_on_batch


def _build_shard(folder, k, shard, image_size, resolution, dim, embed, pool, bar) -> None:
    def one(path):
        try:
            return decode_for_cache(path, image_size, resolution)
        except images.ImageError as err:
            return str(err).removeprefix(f"{path}: ")

    skipped: dict[int, str] = {}
    # io.atomic_path's names are per process: several workers of one machine may build the same cache
    # at once; each writes its own temporary files, and identical contents are renamed into place.
    with atomic_path(folder / PHOTOS.format(k)) as photo_tmp, atomic_path(folder / EMBEDDINGS.format(k)) as embedding_tmp:
        # .npy files written through NumPy's memory map: a skipped photo's row stays zeros
        photos = np.lib.format.open_memmap(photo_tmp, "w+", np.uint8, (len(shard), image_size, image_size, 3))
        embeddings = np.lib.format.open_memmap(embedding_tmp, "w+", np.float32, (len(shard), dim))
        for first in range(0, len(shard), EMBED_BATCH):
            results = list(pool.map(one, shard[first : first + EMBED_BATCH]))
            good = [r for r in results if not isinstance(r, str)]
            vectors = iter(np.asarray(embed(np.stack([r[1] for r in good])), np.float32) if good else [])
            for i, result in enumerate(results, start=first):
                if isinstance(result, str):
                    skipped[i] = result
                else:
                    photos[i], embeddings[i] = result[0], next(vectors)
            bar.update(len(results))
        photos.flush()
        embeddings.flush()
        del photos, embeddings  # unmapped before the rename
    write_text_atomic(folder / DONE.format(k), json.dumps({"skipped": {str(i): r for i, r in skipped.items()}}))


def _shards(count: int, shard_size: int) -> int:
    return -(-count // shard_size)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise KoalarizationError(f"{path}: unreadable ({err}); delete the cache folder to rebuild it") from None
