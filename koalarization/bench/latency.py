"""`benchmark-colorize`: how long colorizing a photo takes end to end, stage by stage.

For each size, a synthetic photo is written as a JPEG file, then colorized the way `koalarization colorize`
does it, file to file: images.load_rgb (decode) -> Colorizer.colorize -> outputs.save_png_atomic (encode).
The stages inside Colorizer.colorize are timed by its own hook (inference/stages.py):

    decode    JPEG file -> uint8 RGB (libjpeg-turbo via Pillow), EXIF orientation applied
    lab       the network's inputs: the photo squashed to S and to the embedder's size, their L
    network   the colorizer and its embedder, one call
    upsample  the predicted ab, S x S -> the photo's size
    pixels    the photo's own L, Lab -> sRGB, gamut fitting, per pixel (the compiled kernels)
    encode    the PNG written (and flushed to disk) under its final name

One untimed warm-up run per size (it traces the network and compiles the kernels), then `runs` timed runs;
median and min-max of each stage and of the whole, printed for people, then one JSON object on the last line.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
from PIL import Image

from koalarization.config import LATENCY_MEGAPIXELS, LATENCY_RUNS
from koalarization.data import images, outputs
from koalarization.inference.colorize import Colorizer
from koalarization.inference.stages import timed_stages

STAGES = ("decode", "lab", "network", "upsample", "pixels", "encode")
JPEG_QUALITY = 92  # a camera's "fine" setting


def synthetic_rgb(megapixels: float, seed: int = 0) -> np.ndarray:
    """A 4:3 uint8 RGB photo of about `megapixels` million pixels: smooth colour gradients plus noise."""
    width = int(round((megapixels * 1e6 * 4 / 3) ** 0.5))
    height = int(round(width * 3 / 4))
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    rgb = np.stack(np.broadcast_arrays(x, y, 0.5 + 0.5 * np.sin(6.0 * (x + y))), -1) * 230.0
    noise = np.random.default_rng(seed).integers(0, 25, rgb.shape, dtype=np.uint8)
    return rgb.astype(np.uint8) + noise


def machine() -> dict:
    """What the numbers were measured on: cores, CPU model, load average (other work on the machine)."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass

    return {"cpus": os.cpu_count(), "cpu": model, "backend": keras.backend.backend(),
            "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None}


def colorize_file(colorizer: Colorizer, source: Path, target: Path, saturation: float) -> dict[str, float]:
    """One photo file -> PNG file, as `koalarization colorize` does it; -> {stage: seconds, "total": seconds,
    "cpu": CPU seconds of the process, all threads}."""
    start, cpu = time.perf_counter(), time.process_time()
    rgb = images.load_rgb(source)
    decoded = time.perf_counter()
    with timed_stages() as seconds:
        out = colorizer.colorize(rgb, saturation)
    colorized = time.perf_counter()
    outputs.save_png_atomic(out, target)
    end = time.perf_counter()
    return {"decode": decoded - start, **seconds, "encode": end - colorized, "total": end - start,
            "cpu": time.process_time() - cpu}


def _summary(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 4), "min": round(min(values), 4),
            "max": round(max(values), 4)}


def benchmark_latency(run, megapixels=LATENCY_MEGAPIXELS, runs: int = LATENCY_RUNS, size=None, saturation: float = 1.0,
                      folder=None) -> dict:
    """Time `runs` file-to-file colorizations per size with the weights of `run` (a TrainedRun or weights
    file); prints a table per size, then the result as one JSON line, and returns it. folder: where the
    JPEG and PNG files go (default: a temporary folder, removed afterwards)."""
    colorizer = Colorizer(run, size)
    result = {"runs": runs, "network_size": colorizer.size, "embedder": colorizer.config.model.embedder,
              "saturation": saturation, "machine": machine(), "photos": []}
    with tempfile.TemporaryDirectory(prefix="koalarization-latency-") as tmp:
        folder = Path(folder or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for mp in megapixels:
            rgb = synthetic_rgb(mp)
            source, target = folder / f"synthetic-{mp:g}mp.jpg", folder / f"synthetic-{mp:g}mp.png"
            Image.fromarray(rgb).save(source, quality=JPEG_QUALITY)
            warmup = colorize_file(colorizer, source, target, saturation)["total"]  # traces and compiles
            timings = [colorize_file(colorizer, source, target, saturation) for _ in range(runs)]
            photo = {"megapixels": mp, "width": rgb.shape[1], "height": rgb.shape[0],
                     "jpeg_bytes": source.stat().st_size, "png_bytes": target.stat().st_size,
                     "stages": {s: _summary([t.get(s, 0.0) for t in timings]) for s in STAGES},
                     "total": _summary([t["total"] for t in timings]), "cpu": _summary([t["cpu"] for t in timings]),
                     "warmup_seconds": round(warmup, 3)}
            result["photos"].append(photo)
            _print_photo(photo, result)
    result["machine"]["load_average_after"] = machine()["load_average"]
    print(json.dumps(result))
    return result


def _print_photo(photo: dict, result: dict) -> None:
    print(f"{photo['megapixels']:g} MP ({photo['width']}x{photo['height']}), JPEG {photo['jpeg_bytes'] / 1e6:.1f} MB "
          f"-> PNG {photo['png_bytes'] / 1e6:.1f} MB; network at {result['network_size']} px, "
          f"{result['embedder']}; {result['runs']} runs on {result['machine']['cpus']} CPUs "
          f"(load average {result['machine']['load_average'][0] if result['machine']['load_average'] else '?'})")
    print(f"  {'stage':<10} {'median s':>9} {'min-max s':>15}")
    for name, s in [*photo["stages"].items(), ("total", photo["total"]), ("cpu", photo["cpu"])]:
        print(f"  {name:<10} {s['median']:>9.3f} {s['min']:>7.3f}-{s['max']:<7.3f}")
    print(f"  (cpu: CPU seconds of all threads per run; above the total where the work used several cores. "
          f"The warm-up run, which compiles, took {photo['warmup_seconds']:.1f} s)")
