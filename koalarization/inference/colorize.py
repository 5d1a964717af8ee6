"""Colorize photos of any size: the network sees a small L, the output keeps the photo's own L.

    Colorizer(run).colorize(rgb uint8 (H, W, 3), saturation=1.0, temperature=None) -> uint8 RGB (H, W, 3)

temperature: the classification head's annealed-mean temperature (None: the run's config, 0.38 by default;
1 = the mean colour, smaller = more vivid); weights trained with MSE refuse it.

The photo is squashed to the network size S x S (as in training) and to the embedder's R x R; the
predicted ab (S, S, 2) in [-1, 1] is upsampled to (H, W) and joined with the photo's *original*
full-resolution L, fitted into the sRGB gamut (join.py). A colour photo is colorized from its own L.
`Colorizer` is the one object `colorize`, `test`, `serve` and `export` (Colorizer.photo_model) use.
"""

from __future__ import annotations

import glob
import logging
import os
import threading
import time
from pathlib import Path

import keras
import numpy as np
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from koalarization import color
from koalarization.config import COLORIZE_BATCH, COLORIZE_OUT, MAX_SATURATION, check_temperature, in_range
from koalarization.data import images, outputs
from koalarization.data.cache import photo_inputs
from koalarization.errors import KoalarizationError
from koalarization.inference.join import join_lightness
from koalarization.inference.stages import stage
from koalarization.model.network import has_temperature, set_temperature
from koalarization.run import TrainedRun

log = logging.getLogger(__name__)


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
        with stage("lab"):
            small, for_embedder, _ = zip(*(photo_inputs(rgb, self.size, self.resolution) for rgb in rgbs))
            inputs = {"L": color.network_lightness(np.stack(small)), "L_embedder": np.stack(for_embedder)}
        with self._lock, stage("network"):
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

    def photo_model(self) -> keras.Model:
        """All of `colorize` as one Keras model at this size and the run's defaults (saturation 1), for export:
        "image" uint8 (B, H, W, 3) -> uint8 RGB (B, H, W, 3) (photo_model.build_photo_model)."""
        from koalarization.inference.photo_model import build_photo_model

        return build_photo_model(self._model, self.size, self.resolution)


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
    in_range("batch_size", batch_size, at_least=1)
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
        for first in range(0, len(paths), batch_size):
            wanted = paths[first : first + batch_size]
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
