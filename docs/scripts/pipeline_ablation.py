"""Measure the input pipeline one change at a time, side by side in one process (docs/performance.md).

    python docs/scripts/pipeline_ablation.py --data path/to/photos --prepared /tmp/prepared256 [--rounds 3]

--data is a folder of JPEG photos (docs/performance.md measured 977 colour ImageNet photos, one per
class) and --prepared a `prepare --image-size 256` folder of the same photos.

Each variant makes one epoch of batches (batch 32, 256 px, augmentation on) exactly as `train` would, through
Keras' PyDataset adapter (koalarization.benchmark.consume); the variants run in turns, `--rounds` times, and
the median of each is printed as a Markdown table. Earlier states of the code are restored by swapping one
function back for what the first commit did, so each row differs from the previous one by one change.
Not part of the package: a measurement script for the performance notes.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import numpy as np

from koalarization import color, data, images
from koalarization.benchmark import consume
from koalarization.config import AugmentConfig
from koalarization.prepare import PreparedPhotos


@contextlib.contextmanager
def first_commit(lab=False, padding=False, draft=False):
    """Temporarily restore what commit 4705bb0 did: Lab with float powers on whole batches (color.py),
    half the image size of edge padding with np.pad, JPEG decoding at full size (no draft mode)."""
    saved = data.rgb_to_network, data._pad_for, data._pad_edge, data.images.load_rgb
    if lab:
        data.rgb_to_network = color.rgb_uint8_to_network
    if padding:
        data._pad_for = lambda matrix, size: size // 2 + 1
        data._pad_edge = lambda rgb, pad: np.pad(rgb, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    if draft:
        load = images.load_rgb
        data.images.load_rgb = lambda path, max_side=None: load(path)  # noqa: ARG005
    try:
        yield
    finally:
        data.rgb_to_network, data._pad_for, data._pad_edge, data.images.load_rgb = saved


def variants(files, store):
    """(label, source factory, what to restore) in the order of the table."""
    def source(workers=4, **kw):
        return lambda: data.BatchSource(files, 32, 256, seed=0, augment=AugmentConfig(), workers=workers, **kw)

    old = {"lab": True, "padding": True}
    return [
        ("first commit, 1 thread, no draft mode", source(1), {**old, "draft": True}),
        ("first commit, 1 thread (draft mode JPEG decoding)", source(1), old),
        ("first commit, 4 threads (PyDataset workers)", source(4), old),
        ("+ Lab by table, multiply-adds and exp/log, one photo at a time", source(4), {"padding": True}),
        ("+ edge padding only as far as the warp reads", source(4), {}),
        ("+ prepared shards (`prepare`, `--prepared`)", source(4, store=store), {}),
        ("decoding, + device preprocessing (`--device-preprocessing`)", source(4, device_preprocessing=True), {}),
        ("prepared + device preprocessing", source(4, store=store, device_preprocessing=True), {}),
    ]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--prepared", required=True, help="a `prepare --image-size 256` folder of --data")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    files, _ = data.scan_photos(args.data)
    store = PreparedPhotos(args.prepared, 256)
    table = variants(files, store)
    rates: dict[str, list[tuple[float, float]]] = {label: [] for label, _, _ in table}
    steps = -(-len(files) // 32)
    for round_ in range(args.rounds):
        for label, make, restore in table:
            with first_commit(**restore):
                source = make()
                start, cpu = time.perf_counter(), time.process_time()
                photos = consume(source, steps)
                seconds, cpu_s = time.perf_counter() - start, time.process_time() - cpu
            rates[label].append((photos / seconds, photos / cpu_s))
            print(f"round {round_}: {label}: {photos / seconds:.0f} photos/s, {photos / cpu_s:.0f} per CPU s", flush=True)
    print("\n| change | photos/s | photos per CPU second |\n|---|---:|---:|")
    for label, values in rates.items():
        wall = statistics.median(v[0] for v in values)
        cpu = statistics.median(v[1] for v in values)
        print(f"| {label} | {wall:.0f} | {cpu:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
