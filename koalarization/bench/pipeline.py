"""`benchmark pipeline`: photos a second of the input pipeline `train` runs (`benchmark train`, the training
step: train_step.py). The CLI prints a few lines for people, then the result as one JSON object on the last
line (for scripts and docs/performance.md):

    benchmark pipeline  what `train` feeds its model, on the same cache: cache_s (the one-time decoding and
                        embedding, the first epoch's extra cost), images_per_s of the batches, and
                        preprocess_images_per_s of the in-graph augmentation and Lab conversion run here
                        (preprocess_xla_images_per_s: XLA-compiled, as in `train --jit-compile`);
                        with --reference the reference-style pipeline's load and per-batch phases on the
                        same photos (reference_pipeline.py) and the ratios; with --memory-check K, the
                        peak memory of a run whose photo list is K times longer
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

from koalarization.bench.memory import PeakRSS, peak_rss_mb
from koalarization.config import in_range


def consume(source, steps: int) -> int:
    """Fetch `steps` batches the way `Model.fit` does (Keras' PyDataset adapter and its worker threads),
    moving on to the next epoch when one ends; returns the number of photos."""
    import keras
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter

    photos, epoch = 0, 0
    while steps > 0:
        source.set_epoch(epoch)
        adapter = PyDatasetAdapter(source, shuffle=False)
        adapter.on_epoch_begin()
        try:
            for batch in adapter.get_numpy_iterator():
                photos += len(keras.tree.flatten(batch)[0])  # (L, ab, weight), or ({"rgb", ...},)
                steps -= 1
                if steps == 0:
                    break
        finally:
            adapter.on_epoch_end()
        epoch += 1
    return photos


def bench_pipeline(cfg, steps: int | None = None, repeat_list: int = 1, reference: bool = False,
                   memory_check: int | None = None, memory_only: bool = False) -> dict:
    """Batches of `cfg.train`'s photos as `train` makes them (the cache first, built if missing). steps:
    batches to make (default one epoch of the photos); repeat_list: list every photo K times; reference:
    also time the reference-style pipeline; memory_check K: peak memory of fresh runs with the list 1x and
    Kx as long; memory_only: leave out the preprocessing measurement (the memory check's runs)."""
    from koalarization.data.batches import BatchSource
    from koalarization.training.train import photo_cache

    for name, value, low in (("steps", steps, 1), ("repeat_list", repeat_list, 1), ("memory_check", memory_check, 2)):
        if value is not None:  # memory_check compares the list 1x with Kx
            in_range(name, value, at_least=low)
    t = cfg.train
    start = time.perf_counter()
    store = photo_cache(cfg, progress=False)
    cache_s = time.perf_counter() - start
    files = store.usable
    listed = list(files) * repeat_list
    source = BatchSource(store, listed, t.batch_size, seed=t.seed, augment=t.augment, workers=t.workers)
    steps = steps or -(-len(files) // t.batch_size)  # default: one epoch of the photos, not the list
    with PeakRSS() as memory:
        start, cpu = time.perf_counter(), time.process_time()
        photos = consume(source, steps)
        seconds, cpu_s = time.perf_counter() - start, time.process_time() - cpu
    result = {
        "benchmark": "pipeline", "images_per_s": photos / seconds, "peak_rss_mb": peak_rss_mb(),
        "phase_peak_rss_mb": memory.peak, "rss_before_mb": memory.start, "images": photos, "seconds": seconds,
        # CPU seconds of all threads: on a machine shared with other work, photos per CPU second is steadier
        "cpu_s": cpu_s, "images_per_cpu_s": photos / cpu_s, "cache_s": cache_s, "cache": str(store.folder),
        "steps": steps, "batch_size": t.batch_size, "image_size": t.image_size, "workers": t.workers,
        "augment": t.augment.enabled, "embedder": cfg.model.embedder,
        "photos": len(files), "photos_listed": len(listed), "skipped": len(store.skipped), "cpus": os.cpu_count(),
    }
    if not memory_only:
        result["preprocess_images_per_s"] = bench_preprocess(source, t.augment.fill, jit_compile=False)
        result["preprocess_xla_images_per_s"] = bench_preprocess(source, t.augment.fill, jit_compile=True)
    print(f"ours: cache {cache_s:.1f} s for {len(store.photos)} photos (once); batches: {photos} photos in "
          f"{seconds:.1f} s = {result['images_per_s']:.0f} photos/s, peak RSS {result['peak_rss_mb']:.0f} MB"
          + (f"; in-graph preprocessing here: {result['preprocess_images_per_s']:.0f} photos/s, "
             f"{result['preprocess_xla_images_per_s']:.0f} with XLA"
             if "preprocess_images_per_s" in result else ""), file=sys.stderr)
    if reference:
        result["reference"] = bench_reference(files, cfg, steps)
        result["speedup"] = result["images_per_s"] / result["reference"]["images_per_s"]
        result["speedup_first_epoch"] = result["images_per_s"] / result["reference"]["first_epoch_images_per_s"]
        print(f"ours / reference: {result['speedup']:.1f}x per batch, "
              f"{result['speedup_first_epoch']:.1f}x counting its load phase", file=sys.stderr)
    if memory_check:
        result["memory_check"] = check_memory(cfg, memory_check, -(-len(files) // t.batch_size), steps)
    return result


def bench_preprocess(source, fill: str, jit_compile: bool, batches: int = 4) -> float:
    """Photos a second of the training model's in-graph augmentation and Lab conversion on this machine's
    default device, compiled as the train step compiles it (`jit_compile`: by XLA; else TensorFlow's graph
    or JAX's own), on `batches` batches of `source` (on a CPU-only machine the same cores feed the batches)."""
    import keras

    from koalarization.model.preprocessor import Preprocessor

    samples = [source.batch(i % len(source), 0)[0] for i in range(batches)]
    size = source.image_size
    rgb, affine = keras.Input((size, size, 3), dtype="uint8"), keras.Input((2, 2), dtype="float32")
    model = keras.Model([rgb, affine], Preprocessor(size, fill=fill, targets=True)(rgb, affine))
    model.compile(jit_compile=jit_compile)
    model.predict_on_batch([samples[0]["rgb"], samples[0]["affine"]])  # tracing, compilation
    start, photos = time.perf_counter(), 0
    for batch in samples:
        model.predict_on_batch([batch["rgb"], batch["affine"]])  # returns NumPy: the work has finished
        photos += len(batch["rgb"])
    return photos / (time.perf_counter() - start)


def bench_reference(files, cfg, steps: int) -> dict:
    """The reference-style pipeline on the same photos: load phase, then `steps` batches (one thread, as
    its lock-guarded generator ran)."""
    from koalarization.bench.reference_pipeline import ReferenceBatches, load_set

    with PeakRSS() as memory:
        start = time.perf_counter()
        photos = load_set(files, cfg.train.image_size)
        load_s = time.perf_counter() - start
        batches = ReferenceBatches(photos, cfg.train.batch_size, augment=cfg.train.augment, seed=cfg.train.seed)
        count, start, cpu = 0, time.perf_counter(), time.process_time()
        for i in range(steps):
            count += len(batches[i % len(batches)][0])
        batch_s, cpu_s = time.perf_counter() - start, time.process_time() - cpu
    out = {
        "load_s": load_s, "load_images_per_s": len(files) / load_s, "images_per_s": count / batch_s,
        "images": count, "seconds": batch_s, "cpu_s": cpu_s, "images_per_cpu_s": count / cpu_s,
        "array_mb": photos.nbytes / 2**20, "peak_rss_mb": memory.peak,
        # one epoch as the reference ran it: load everything, then make the batches
        "first_epoch_images_per_s": len(files) / (load_s + batch_s * len(files) / count),
    }
    print(f"reference: load {len(files)} photos {load_s:.1f} s ({out['load_images_per_s']:.0f}/s, "
          f"{out['array_mb']:.0f} MB of float64), batches {out['images_per_s']:.0f} photos/s, "
          f"peak RSS {memory.peak:.0f} MB", file=sys.stderr)
    return out


def check_memory(cfg, factor: int, epoch_steps: int, steps: int | None = None, repeats: int = 3) -> dict:
    """Peak memory of fresh processes making the same batches from the photo list 1x and `factor` x as long.

    Each run makes 1.5 epochs of the 1x list (or `steps`, if more), so that every run ends in mid-epoch
    with Keras' read-ahead in flight, as in training; the runs alternate `repeats` times and the medians
    are compared, because the peak varies by several percent from run to run (how many finished batches
    wait in the queue depends on how the threads were scheduled), whatever the list length."""
    steps = max(steps or 0, epoch_steps + epoch_steps // 2 + 1)
    runs: dict[int, list[dict]] = {1: [], factor: []}
    for _ in range(repeats):
        for repeat in runs:
            runs[repeat].append(_child_run(cfg, steps, repeat))
    peak = {k: statistics.median(r["peak_rss_mb"] for r in v) for k, v in runs.items()}
    ratio = peak[factor] / peak[1]
    print(f"memory: median peak RSS {peak[1]:.0f} MB with {runs[1][0]['photos_listed']} photos listed, "
          f"{peak[factor]:.0f} MB with {runs[factor][0]['photos_listed']} ({ratio:.3f}x)", file=sys.stderr)
    return {"steps": steps, "runs": runs[1] + runs[factor], "median_peak_rss_mb": list(peak.values()),
            "peak_ratio": ratio}


def _child_run(cfg, steps: int, repeat: int) -> dict:
    t = cfg.train
    command = [sys.executable, "-m", "koalarization", "benchmark", "pipeline", "--data", *t.data,
               "--batch-size", str(t.batch_size), "--image-size", str(t.image_size), "--embedder",
               cfg.model.embedder, "--steps", str(steps), "--repeat-list", str(repeat), "--seed", str(t.seed),
               "--workers", str(t.workers), "--memory-only"]
    command += (["--cache", t.cache] if t.cache else []) + ([] if t.augment.enabled else ["--no-augment"])
    run = subprocess.run(command, capture_output=True, text=True, check=False)
    if run.returncode:
        from koalarization.errors import KoalarizationError

        raise KoalarizationError(f"memory check run failed: {run.stderr.strip().splitlines()[-1:]}")
    child = json.loads(run.stdout.strip().splitlines()[-1])
    return {k: child[k] for k in ("photos_listed", "peak_rss_mb", "rss_before_mb", "images_per_s")}
