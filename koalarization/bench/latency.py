"""`benchmark-colorize`: how long `Colorizer.colorize` takes on a 1 MP and a 12 MP photo."""

from __future__ import annotations

import statistics
import time

import numpy as np

from koalarization.inference.colorize import Colorizer


def synthetic_rgb(megapixels: float, seed: int = 0) -> np.ndarray:
    """A 4:3 uint8 RGB photo of about `megapixels` million pixels: smooth colour gradients plus noise."""
    width = int(round((megapixels * 1e6 * 4 / 3) ** 0.5))
    height = int(round(width * 3 / 4))
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    rgb = np.stack(np.broadcast_arrays(x, y, 0.5 + 0.5 * np.sin(6.0 * (x + y))), -1) * 230.0
    noise = np.random.default_rng(seed).integers(0, 25, rgb.shape, dtype=np.uint8)
    return rgb.astype(np.uint8) + noise


def benchmark_latency(run, megapixels=(1, 12), runs: int = 5, size=None) -> dict[float, float]:
    """Median seconds of `Colorizer.colorize` on synthetic photos (decoding/encoding excluded) with the
    weights of `run` (a TrainedRun or weights file); prints them."""
    colorizer = Colorizer(run, size)
    medians = {}
    for mp in megapixels:
        rgb = synthetic_rgb(mp)
        colorizer.colorize(rgb)  # warm-up: traces the network and compiles the pixel kernels
        seconds = []
        for _ in range(runs):
            tic = time.perf_counter()
            colorizer.colorize(rgb)
            seconds.append(time.perf_counter() - tic)
        medians[mp] = statistics.median(seconds)
        print(f"{mp} MP ({rgb.shape[1]}x{rgb.shape[0]}): median {medians[mp]:.3f} s over {runs} runs "
              f"(network at {colorizer.size} px, {colorizer.config.model.embedder})")
    return medians
