"""Colorize photos of any size: the network sees a small L, the output keeps the photo's own L.

    Colorizer(run).colorize(rgb uint8 (H, W, 3), saturation=1.0, temperature=None) -> uint8 RGB (H, W, 3)

temperature: the classification head's annealed-mean temperature (None: the run's config, 0.38 by default;
1 = the mean colour, smaller = more vivid); weights trained with MSE refuse it.

As in Zhang et al.'s `colorization` and DeOldify (docs/reference.md, "Output at full resolution"): the photo is
squashed to the network size S x S (as in training), the predicted ab (S, S, 2) in [-1, 1] is upsampled
bilinearly to (H, W) and joined with the photo's *original* full-resolution L. Detail comes from L, so the
result is as sharp as the input; only the colour is smooth. A colour photo is colorized from its own L.

Lab -> sRGB can leave the gamut (a saturated blue at L = 95 does not exist in sRGB); plain clipping
would then change the lightness. Such pixels instead get their chroma reduced (hue and L kept) until they
fit, so the output's L equals the input's L to within rounding.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import glob
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import keras
import numpy as np
from PIL import Image
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from koalarization import color
from koalarization.config import COLORIZE_BATCH, COLORIZE_OUT, MAX_SATURATION, check_temperature
from koalarization.data import images, outputs
from koalarization.data.cache import photo_inputs
from koalarization.errors import KoalarizationError
from koalarization.model.network import has_temperature, set_temperature
from koalarization.run import TrainedRun

log = logging.getLogger(__name__)

# Pixels per colour-kernel call. The kernel works on flat pixel lists, so every photo is cut into chunks of
# this one shape and XLA compiles it once per process instead of once per photo size. 2**18 pixels keep a
# chunk's data in the caches (~3 MB in, ~1 MB out) and are ~10 ms of work: 12 MP is 46 calls, over all cores.
PIXEL_CHUNK = 1 << 18
# Gamut fitting finds the largest chroma factor that fits to within 1/2**FIT_STEPS (1 %: invisible).
FIT_STEPS = 7


# Seconds per stage of the calls made inside `timed_stages()` (benchmark-colorize reads them); None outside.
_stage_seconds: contextvars.ContextVar[dict[str, float] | None] = contextvars.ContextVar("stages", default=None)


@contextlib.contextmanager
def timed_stages():
    """Collect how long each stage of colorizing takes in this thread: yields a dict that fills with
    {stage: seconds} ("lab", "network", "upsample", "pixels"), summed over the calls made in the block."""
    seconds: dict[str, float] = {}
    token = _stage_seconds.set(seconds)
    try:
        yield seconds
    finally:
        _stage_seconds.reset(token)


@contextlib.contextmanager
def _stage(name: str):
    seconds, start = _stage_seconds.get(), time.perf_counter()
    try:
        yield
    finally:
        if seconds is not None:
            seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start


def backend_jit(fn):
    """`fn` compiled by the Keras backend's compiler (XLA on TensorFlow and JAX): the per-pixel formulas fuse
    into one loop over the pixels (12 MP: ~0.3 s on one core instead of ~8 s in NumPy)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=True, reduce_retracing=True)
    if backend == "jax":
        import jax

        return jax.jit(fn)
    return fn


def _linear_rgb(fy, a, b, k=1.0):
    """-> (linear (r, g, b), inside): inside is False where the colour (L, k a, k b) is outside sRGB."""
    from keras import ops

    linear = color.linear_from_lab_f(fy, a * k, b * k, xp=ops)
    return linear, functools.reduce(ops.logical_and, [(c > 0.0) & (c < 1.0) for c in linear])


def _to_uint8(linear, neutral):
    from keras import ops

    out = [color.srgb255_from_linear(c, xp=ops) for c in linear]
    # A neutral colour must come out exactly gray: copy G rather than trust three rounded sums.
    return tuple(ops.cast(ops.where(neutral, out[1], c), "uint8") for c in out)


def _lightness_f(rgb_uint8):
    from keras import ops

    return color.lab_f_of_luminance(ops.cast(rgb_uint8, "int32"), xp=ops)  # the photo's L is 116 f - 16


def join_colours(rgb_uint8, a, b):
    """keras.ops: the photo's pixels rgb uint8 (..., 3), a and b (...) float32 in Lab units -> (r, g, b) uint8
    (...) each with the photo's L and (a, b) as given, and whether every pixel fitted in the sRGB gamut."""
    from keras import ops

    linear, inside = _linear_rgb(_lightness_f(rgb_uint8), a, b)
    neutral = (a == 0.0) & (b == 0.0)
    return (*_to_uint8(linear, neutral), ops.all(inside | neutral))


def fit_colours(rgb_uint8, a, b):
    """keras.ops: join_colours' (r, g, b) with (a, b) reduced where the gamut needs it. Chroma factor k: 1
    where (L, a, b) fits, else the largest k in [0, 1) that fits, to within 1/2**FIT_STEPS (k = 0 always
    fits, except at pure black and white, where k = 0 is right too). Where join_colours fits, the same."""
    from keras import ops

    fy = _lightness_f(rgb_uint8)
    low, high = ops.zeros_like(fy), ops.ones_like(fy)
    for _ in range(FIT_STEPS):  # unrolled: the test is a few multiplications, and XLA fuses the steps
        mid = (low + high) / 2.0
        inside = _linear_rgb(fy, a, b, mid)[1]
        low, high = ops.where(inside, mid, low), ops.where(inside, high, mid)
    k = ops.where(_linear_rgb(fy, a, b)[1], 1.0, low)
    return _to_uint8(_linear_rgb(fy, a, b, k)[0], (a == 0.0) & (b == 0.0))


@functools.cache
def _kernels():
    """join_colours and fit_colours compiled for flat chunks: rgb uint8 (PIXEL_CHUNK, 3), a and b
    (PIXEL_CHUNK,) float32 -> (r, g, b) uint8 (PIXEL_CHUNK,) each (+ join's all-fitted flag); fit runs only
    for the chunks where join says not. Planar outputs, not one (PIXEL_CHUNK, 3) array: XLA would compute
    a stacked output one channel at a time, repeating the shared work (measured 2-4x slower)."""
    return backend_jit(join_colours), backend_jit(fit_colours)


class UpsampledAB:
    """ab (s, s, 2) in [-1, 1] -> a and b in Lab units (times `saturation`) at the photo's size (H, W),
    bilinear, made a band of rows at a time (`band(start, stop)`), so that a 12 MP photo never holds its
    full-size a and b (96 MB) and each band is made by the thread that colours it.

    Same values as Pillow's bilinear resize of ab to (W, H), to within float rounding (tests/test_colorize.py):
    like Pillow, the rows are resized first (here by Pillow itself: antialiased when shrinking), then each
    photo row is a mix of the two nearest resized rows, at Pillow's sample position (y + 0.5) s / H - 0.5,
    clamped at the edges. A photo of fewer than s rows is resized by Pillow in both directions.
    """

    def __init__(self, ab_scaled: np.ndarray, size: tuple[int, int], saturation: float = 1.0):
        self.height, self.width = size
        small = np.asarray(ab_scaled, np.float32) * np.float32(color.AB_SCALE * saturation)  # linear: scale first
        rows = min(self.height, small.shape[0])
        self.rows = [np.asarray(Image.fromarray(np.ascontiguousarray(small[..., c]), "F")
                                .resize((self.width, rows), Image.Resampling.BILINEAR)) for c in range(2)]
        position = (np.arange(self.height) + 0.5) * (rows / self.height) - 0.5
        low = np.floor(position)
        self.weight = (position - low).astype(np.float32)[:, None]
        low = low.astype(np.int64)
        self.low, self.high = np.clip(low, 0, rows - 1), np.clip(low + 1, 0, rows - 1)

    def band(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Pixels start..stop-1 of the photo in row-major order -> (a, b), each (stop - start,) float32."""
        first, last = start // self.width, (stop - 1) // self.width + 1
        low, high, weight = self.low[first:last], self.high[first:last], self.weight[first:last]
        skip = start - first * self.width
        return tuple((r[low] * (1.0 - weight) + r[high] * weight).reshape(-1)[skip : skip + stop - start]
                     for r in self.rows)


@functools.cache
def _pool() -> ThreadPoolExecutor:
    """Threads for the pixel work. A kernel call runs on one core (XLA does not split a loop this size across
    threads: its CPU time equals its wall time) and releases the GIL, so chunks run side by side, one per core."""
    return ThreadPoolExecutor(max(1, os.cpu_count() or 1), thread_name_prefix="koalarization-pixels")


def join_lightness(rgb: np.ndarray, ab_scaled: np.ndarray, saturation: float = 1.0) -> np.ndarray:
    """The photo's own L + upsampled ab: rgb uint8 (H, W, 3), ab (s, s, 2) in [-1, 1] -> uint8 RGB (H, W, 3)."""
    height, width = rgb.shape[:2]
    with _stage("upsample"):
        ab = UpsampledAB(ab_scaled, (height, width), float(saturation))  # the rows; each band is made in `chunk`
    flat_rgb = rgb.reshape(-1, 3)
    out, (join, fit) = np.empty_like(flat_rgb), _kernels()

    def chunk(start):
        stop = min(start + PIXEL_CHUNK, len(flat_rgb))
        pieces = [flat_rgb[start:stop], *ab.band(start, stop)]
        if stop - start < PIXEL_CHUNK:  # the last piece: zero-padded to the one compiled shape
            pieces = [np.pad(p, [(0, PIXEL_CHUNK - (stop - start))] + [(0, 0)] * (p.ndim - 1)) for p in pieces]
        *channels, fitted = join(*pieces)
        if not bool(fitted):  # usually no chunk of a photo: the network's colours are mostly in gamut
            channels = fit(*pieces)
        for c, channel in enumerate(channels):
            out[start:stop, c] = np.asarray(channel)[: stop - start]

    with _stage("pixels"):
        list(_pool().map(chunk, range(0, len(flat_rgb), PIXEL_CHUNK)))
    return out.reshape(height, width, 3)


def gray_from_lightness(rgb: np.ndarray) -> np.ndarray:
    """The gray baseline of a photo: its own L with a = b = 0, uint8 RGB (H, W, 3) -> uint8 RGB (H, W, 3)."""
    return join_lightness(rgb, np.zeros((1, 1, 2), np.float32))


def _check_saturation(saturation: float) -> float:
    saturation = float(saturation)
    if not 0.0 <= saturation <= MAX_SATURATION:  # also refuses NaN
        raise KoalarizationError(f"saturation {saturation}: must be between 0 (gray) and {MAX_SATURATION:g} "
                                 "(1 = as predicted)")
    return saturation


class Colorizer:
    """A trained model loaded once. Thread-safe: the network call is serialised, the pixel work is not.

    size: the network's working size S (a multiple of 8; default the training size). Every layer works at
    any size, so the trained weights serve every S.
    """

    def __init__(self, run: TrainedRun | str | Path | None = None, size: int | None = None,
                 embedder_weights: str | None = None):
        """run: a TrainedRun or its weights file; None: the shipped weights."""
        from koalarization.model.embedders import get_spec

        self.run = TrainedRun.at(run)
        model, cfg = self.run.load(embedder_weights)
        self.config = cfg
        self.size = cfg.model.check_size(int(size or cfg.train.image_size), "size")
        if cfg.model.border_context >= self.size:  # a mirror image is at most the photo itself
            raise KoalarizationError(f"size {self.size}: must be above the weights' border_context "
                                     f"({cfg.model.border_context})")
        self.resolution = get_spec(cfg.model.embedder).resolution
        self._model = model
        self._lock = threading.Lock()  # Keras' predict state is not safe to share between threads

    def temperature(self, temperature: float | None = None) -> float | None:
        """The annealed-mean temperature a call with `temperature` uses: None for weights trained with MSE
        (which refuse any), else `temperature` checked, or the run's default."""
        if not has_temperature(self._model):
            if temperature is not None:
                set_temperature(self._model, temperature)  # raises the one-line error
            return None
        return check_temperature(self.config.model.temperature if temperature is None else temperature)

    def predict_ab(self, rgbs: list[np.ndarray], temperature: float | None = None) -> np.ndarray:
        """uint8 RGB photos of any sizes -> ab (B, S, S, 2) in [-1, 1], from each photo squashed to S x S,
        and the embedder's view of it at its own resolution."""
        temperature = self.temperature(temperature)
        with _stage("lab"):
            small, for_embedder, _ = zip(*(photo_inputs(rgb, self.size, self.resolution) for rgb in rgbs))
            inputs = {"L": color.network_lightness(np.stack(small)), "L_embedder": np.stack(for_embedder)}
        with self._lock, _stage("network"):
            if temperature is not None:  # a variable of the compiled model: no recompiling
                set_temperature(self._model, temperature)
            return np.asarray(self._model.predict_on_batch(inputs), np.float32)

    def colorize_many(self, rgbs: list[np.ndarray], saturation: float = 1.0,
                      temperature: float | None = None) -> list[np.ndarray]:
        """uint8 RGB (H_i, W_i, 3) each -> uint8 RGB of the same sizes; one network call for the batch."""
        saturation = _check_saturation(saturation)
        self.temperature(temperature)  # a bad temperature fails before any work
        for rgb in rgbs:
            if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
                raise KoalarizationError(f"expected uint8 RGB (H, W, 3), got {rgb.dtype} {rgb.shape}")
        if not rgbs:
            return []
        return [join_lightness(rgb, ab, saturation) for rgb, ab in zip(rgbs, self.predict_ab(rgbs, temperature))]

    def colorize(self, rgb: np.ndarray, saturation: float = 1.0, temperature: float | None = None) -> np.ndarray:
        """uint8 RGB (H, W, 3) -> uint8 RGB (H, W, 3) with the photo's own L; saturation 0 gives gray."""
        return self.colorize_many([rgb], saturation, temperature)[0]


def expand_inputs(inputs: list[str]) -> tuple[list[Path], int]:
    """Files, folders (recursive) and globs -> (photo paths, in order, without duplicates; how many were left
    out as colorize's own outputs). A photo found in a folder or by a glob is left out when it is a PNG that
    colorize wrote (outputs.OUTPUT_MARK): a second run over the same tree must not colorize the first run's
    outputs, wherever they were written. A file named directly is always taken."""
    found: list[tuple[Path, bool]] = []  # (path, named directly)
    for item in inputs:
        if os.path.lexists(item):  # lexists: a FIFO, a device or a broken link given directly is named as such
            direct = not os.path.isdir(item)
            found.extend((p, direct) for p in images.find_images(item))
            continue
        matches = sorted(glob.glob(item, recursive=True)) if any(c in item for c in "*?[") else []
        for match in matches:
            if Path(match).is_dir():
                found.extend((p, False) for p in images.find_images(match))
            elif Path(match).suffix.lower() in images.IMAGE_EXTENSIONS:
                found.append((Path(match), False))
        if not matches:
            raise KoalarizationError(f"inputs {item}: no such file or folder, and no photo matches it")
    unique: dict[str, Path] = {}
    left_out = 0
    for p, direct in found:
        # realpath, not Path.resolve(): no RuntimeError on a symlink loop (the loop is skipped later, by name)
        real = os.path.realpath(p)
        if real in unique:
            continue
        if not direct and outputs.is_our_output(p):
            left_out += 1
            continue
        unique[real] = p  # the first name of each file, in order
    return list(unique.values()), left_out


def colorize_files(inputs: list[str], run, out_dir=COLORIZE_OUT, size=None, saturation=1.0,
                   batch_size=COLORIZE_BATCH, embedder_weights=None, temperature=None) -> dict:
    """Colorize every photo of `inputs` into `out_dir` as PNGs of the photos' own sizes (EXIF applied).
    Returns {"colorized", "skipped" (unreadable), "left_out" (earlier outputs), "replaced" (outputs that
    were there before), "out", "seconds"}."""
    start = time.perf_counter()
    saturation = _check_saturation(saturation)
    out_dir = Path(out_dir)
    paths, left_out = expand_inputs(inputs)
    if left_out:
        log.info("left out %d PNG(s) that colorize wrote in an earlier run", left_out)
    if not paths:
        raise KoalarizationError(f"inputs {' '.join(inputs)}: no photos found"
                                 + (f" (left out {left_out} earlier output(s) of colorize)" if left_out else ""))
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise KoalarizationError(f"out {out_dir}: cannot create ({err.strerror or err})") from None
    colorizer = Colorizer(run, size, embedder_weights)
    colorizer.temperature(temperature)  # MSE weights refuse a temperature before any photo is read
    targets = {path: out_dir / name for path, name in zip(paths, outputs.output_names(paths, [out_dir]))}
    replaced = sum(target.exists() for target in targets.values())
    skipped, done = images.SkipLog(log), 0
    with logging_redirect_tqdm(), tqdm(total=len(paths), unit="photo", disable=len(paths) < 2) as bar:
        for first in range(0, len(paths), max(1, batch_size)):
            wanted = paths[first : first + max(1, batch_size)]
            batch = skipped.load_each(wanted, alone=len(paths) == 1)
            bar.update(len(wanted) - len(batch))
            results = colorizer.colorize_many([rgb for _, rgb in batch], saturation, temperature)
            for (path, _), rgb in zip(batch, results):
                outputs.save_png_atomic(rgb, targets[path], text=outputs.OUTPUT_MARK)
                done += 1
                bar.update(1)
    skipped.close()
    if not done:
        raise KoalarizationError(f"inputs {' '.join(inputs)}: none of the {len(paths)} photos could be read")
    return {"colorized": done, "skipped": skipped.count, "left_out": left_out, "replaced": replaced,
            "out": str(out_dir), "seconds": round(time.perf_counter() - start, 2)}
