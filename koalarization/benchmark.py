"""`benchmark pipeline` and `benchmark train`: photos a second of the input pipeline and of a training step.

Each prints a few lines for people, then one JSON object on the last line (for scripts and docs/performance.md):

    benchmark pipeline  what `train` feeds its model, on the same cache: cache_s (the one-time decoding and
                        embedding, the first epoch's extra cost), images_per_s of the batches, and
                        preprocess_images_per_s of the in-graph augmentation and Lab conversion run here;
                        with --reference the reference-style pipeline's load and per-batch phases on the
                        same photos (reference_pipeline.py) and the ratios; with --memory-check K, the
                        peak memory of a run whose photo list is K times longer
    benchmark train     images_per_s on synthetic in-memory batches (no I/O, warm-up excluded),
                        flops_per_image (flops.py), and on a GPU the MFU against the device's peak
                        (train_benchmark.py)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time

BENCH_EMBEDDER = "efficientnet_lite0_pooled"  # installs offline, and is the shipped weights' embedder
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_mb() -> float:
    """Resident memory of this process now (Linux /proc), or the peak so far elsewhere."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE / 2**20
    except OSError:
        return peak_rss_mb()


def peak_rss_mb() -> float:
    """Peak resident memory of this process since it started (the kernel's own count)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


class PeakRSS:
    """Samples the resident memory every `interval` s while active: the peak of one phase of a run, which
    the process-wide ru_maxrss cannot give once an earlier phase has been bigger."""

    def __init__(self, interval: float = 0.005):
        self.interval, self.peak, self._stop = interval, 0.0, threading.Event()

    def __enter__(self):
        self.peak = self.start = rss_mb()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_mb())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())


# ------------------------------------------------------------------------------------------------ pipeline
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


def pipeline_config(args):
    """The RunConfig whose batches `benchmark pipeline` makes (the flags train would take)."""
    from koalarization.config import AugmentConfig, ModelConfig, RunConfig, TrainConfig

    train = TrainConfig(data=tuple(args.data), image_size=args.image_size, batch_size=args.batch_size,
                        seed=args.seed, workers=args.workers if args.workers is not None else TrainConfig().workers,
                        cache=args.cache, augment=AugmentConfig(enabled=not args.no_augment))
    return RunConfig(ModelConfig(embedder=args.embedder), train)


def bench_pipeline(args) -> dict:
    from koalarization.data import BatchSource
    from koalarization.train import photo_cache

    cfg = pipeline_config(args)
    t = cfg.train
    start = time.perf_counter()
    store = photo_cache(cfg, progress=False)
    cache_s = time.perf_counter() - start
    files = store.usable
    listed = list(files) * args.repeat_list
    source = BatchSource(store, listed, t.batch_size, seed=t.seed, augment=t.augment, workers=t.workers)
    steps = args.steps or -(-len(files) // t.batch_size)  # default: one epoch of the photos, not the list
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
    if not args.memory_only:
        result["preprocess_images_per_s"] = bench_preprocess(source, t.augment.fill)
    print(f"ours: cache {cache_s:.1f} s for {len(store.photos)} photos (once); batches: {photos} photos in "
          f"{seconds:.1f} s = {result['images_per_s']:.0f} photos/s, peak RSS {result['peak_rss_mb']:.0f} MB"
          + (f"; in-graph preprocessing here: {result['preprocess_images_per_s']:.0f} photos/s"
             if "preprocess_images_per_s" in result else ""), file=sys.stderr)
    if args.reference:
        result["reference"] = bench_reference(files, args, t.augment, steps)
        result["speedup"] = result["images_per_s"] / result["reference"]["images_per_s"]
        result["speedup_first_epoch"] = result["images_per_s"] / result["reference"]["first_epoch_images_per_s"]
        print(f"ours / reference: {result['speedup']:.1f}x per batch, "
              f"{result['speedup_first_epoch']:.1f}x counting its load phase", file=sys.stderr)
    if args.memory_check:
        result["memory_check"] = memory_check(args, -(-len(files) // t.batch_size))
    return result


def bench_preprocess(source, fill: str, batches: int = 4) -> float:
    """Photos a second of the training model's in-graph augmentation and Lab conversion on this machine's
    default device (on a CPU-only machine the same cores also feed the batches)."""
    import keras

    from koalarization.preprocess import Preprocess

    layer = Preprocess(fill)
    samples = [source.batch(i % len(source), 0)[0] for i in range(batches)]
    step = keras.ops  # noqa: F841 - the layer runs eagerly through keras.ops on every backend
    layer(samples[0]["rgb"], samples[0]["affine"])  # warm-up
    start, photos = time.perf_counter(), 0
    for batch in samples:
        lightness, _ = layer(batch["rgb"], batch["affine"])
        keras.ops.convert_to_numpy(lightness)
        photos += len(batch["rgb"])
    return photos / (time.perf_counter() - start)


def bench_reference(files, args, augment, steps: int) -> dict:
    """The reference-style pipeline on the same photos: load phase, then `steps` batches (one thread, as
    its lock-guarded generator ran)."""
    from koalarization.reference_pipeline import ReferenceBatches, load_set

    with PeakRSS() as memory:
        start = time.perf_counter()
        photos = load_set(files, args.image_size)
        load_s = time.perf_counter() - start
        batches = ReferenceBatches(photos, args.batch_size, augment=augment, seed=args.seed)
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


def memory_check(args, epoch_steps: int, repeats: int = 3) -> dict:
    """Peak memory of fresh processes making the same batches from the photo list 1x and K x as long.

    Each run makes 1.5 epochs of the 1x list (or --steps, if more), so that every run ends in mid-epoch
    with Keras' read-ahead in flight, as in training; the runs alternate `repeats` times and the medians
    are compared, because the peak varies by several percent from run to run (how many finished batches
    wait in the queue depends on how the threads were scheduled), whatever the list length."""
    steps = max(args.steps or 0, epoch_steps + epoch_steps // 2 + 1)
    runs: dict[int, list[dict]] = {1: [], args.memory_check: []}
    for _ in range(repeats):
        for repeat in runs:
            runs[repeat].append(_child_run(args, steps, repeat))
    peak = {k: statistics.median(r["peak_rss_mb"] for r in v) for k, v in runs.items()}
    ratio = peak[args.memory_check] / peak[1]
    print(f"memory: median peak RSS {peak[1]:.0f} MB with {runs[1][0]['photos_listed']} photos listed, "
          f"{peak[args.memory_check]:.0f} MB with {runs[args.memory_check][0]['photos_listed']} ({ratio:.3f}x)",
          file=sys.stderr)
    return {"steps": steps, "runs": runs[1] + runs[args.memory_check], "median_peak_rss_mb": list(peak.values()),
            "peak_ratio": ratio}


def _child_run(args, steps: int, repeat: int) -> dict:
    command = [sys.executable, "-m", "koalarization", "benchmark", "pipeline", "--data", *map(str, args.data),
               "--batch-size", str(args.batch_size), "--image-size", str(args.image_size), "--embedder",
               args.embedder, "--steps", str(steps), "--repeat-list", str(repeat), "--seed", str(args.seed),
               "--memory-only"]
    command += (["--workers", str(args.workers)] if args.workers is not None else [])
    command += (["--cache", args.cache] if args.cache else []) + (["--no-augment"] if args.no_augment else [])
    run = subprocess.run(command, capture_output=True, text=True, check=False)
    if run.returncode:
        from koalarization.errors import KoalarizationError

        raise KoalarizationError(f"memory check run failed: {run.stderr.strip().splitlines()[-1:]}")
    child = json.loads(run.stdout.strip().splitlines()[-1])
    return {k: child[k] for k in ("photos_listed", "peak_rss_mb", "rss_before_mb", "images_per_s")}


# ----------------------------------------------------------------------------------------------------- CLI
def add_parsers(sub) -> None:
    """`benchmark pipeline` and `benchmark train` (called by cli.build_parser)."""
    from koalarization.config import PRECISIONS, TrainConfig

    t = TrainConfig()
    bench = sub.add_parser("benchmark", help="measure the input pipeline or the training step",
                           description="Print photos/s (and more) as one JSON object on the last line.")
    kinds = bench.add_subparsers(dest="benchmark", required=True)
    p = kinds.add_parser("pipeline", help="batches as `train` makes them: cache, batches, in-graph preprocessing")
    p.add_argument("--data", required=True, nargs="+", metavar="DIR", help="folders of photos")
    p.add_argument("--batch-size", type=int, default=t.batch_size, help=f"(default: {t.batch_size})")
    p.add_argument("--image-size", type=int, default=t.image_size, help=f"(default: {t.image_size})")
    p.add_argument("--embedder", default=BENCH_EMBEDDER, help=f"whose embeddings the cache holds (default: {BENCH_EMBEDDER})")
    p.add_argument("--cache", default=None, metavar="DIR", help="cache folder (default: automatic, as train's)")
    p.add_argument("--steps", type=int, default=None, help="batches to make (default: one epoch of the photos)")
    p.add_argument("--workers", type=int, default=None, help=f"reading threads (default: {t.workers})")
    p.add_argument("--no-augment", action="store_true", help="turn augmentation off")
    p.add_argument("--seed", type=int, default=t.seed)
    p.add_argument("--reference", action="store_true", help="also time the reference-style pipeline, same photos")
    p.add_argument("--repeat-list", type=int, default=1, metavar="K", help="list every photo K times")
    p.add_argument("--memory-check", type=int, default=None, metavar="K",
                   help="compare peak memory of fresh runs with the photo list 1x and Kx as long")
    p.add_argument("--memory-only", action="store_true", help=argparse.SUPPRESS)  # the memory check's runs
    p = kinds.add_parser("train", help="training steps of the model `train` builds, on synthetic batches")
    p.add_argument("--config", metavar="FILE", help="a run's config.json (default: the defaults, as train's)")
    p.add_argument("--batch-size", type=int, default=None, help=f"(default: the config's, {t.batch_size})")
    p.add_argument("--image-size", type=int, default=None, help=f"(default: the config's, {t.image_size})")
    p.add_argument("--embedder", default=None, help="whose embedding size to use (default: the config's)")
    p.add_argument("--steps", type=int, default=5, help="timed steps (default: 5; the median is reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (default: 2)")
    p.add_argument("--precision", default=None, choices=PRECISIONS, help="(default: the config's, float32)")
    p.add_argument("--jit-compile", action=argparse.BooleanOptionalAction, default=None,
                   help="compile the step with XLA (default: the config's)")


def _run(args) -> int:
    if args.benchmark == "pipeline":
        result = bench_pipeline(args)
    else:
        from koalarization.train_benchmark import bench_train

        result = bench_train(args)
    print(json.dumps(result))
    return 0


COMMANDS = {"benchmark": _run}
