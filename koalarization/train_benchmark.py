"""`benchmark train`: photos a second of training steps on synthetic batches held in memory (no input
pipeline, no I/O; warm-up steps excluded), the FLOPs a photo costs (flops.py), and on a GPU the model FLOPs
utilisation. The model, optimizer and loss are those `train` builds, under the same options."""

from __future__ import annotations

import sys
import time

import keras
import numpy as np

from koalarization import flops
from koalarization.benchmark import peak_rss_mb
from koalarization.config import AugmentConfig, ModelConfig, TrainConfig
from koalarization.data import random_affine
from koalarization.device_preprocessing import build_device_model
from koalarization.embedding import RANDOM, build_embedder, get_spec
from koalarization.model import build_colorizer, build_model
from koalarization.train import precision_policy


def synthetic_batch(batch: int, size: int, *, colorizer_only=False, device_preprocessing=False):
    """(x, y, sample_weight) shaped as `train` feeds the model, with random values (the cost is the same)."""
    rng = np.random.default_rng(0)
    weight = np.ones((batch, 1, 1), np.float32)  # as BatchSource gives
    if device_preprocessing and not colorizer_only:  # uint8 photos, their augmentation; the loss is inside
        matrices = np.stack([random_affine(rng, AugmentConfig()) for _ in range(batch)]).astype(np.float32)
        rgb = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
        return {"rgb": rgb, "affine": matrices, "weight": weight}, None, None
    lightness = rng.uniform(-1, 1, (batch, size, size, 1)).astype(np.float32)
    ab = rng.uniform(-0.5, 0.5, (batch, size, size, 2)).astype(np.float32)
    if colorizer_only:  # the trainable part alone takes (L, embedding), as with cached embeddings
        return [lightness, rng.dirichlet(np.ones(1000), batch).astype(np.float32)], ab, weight
    return lightness, ab, weight


def bench_train(args) -> dict:
    """Time training steps on synthetic batches in memory: what the device can do, with no input pipeline."""
    get_spec(args.embedder)
    cfg = ModelConfig(image_size=args.image_size, embedder=args.embedder)
    keras.utils.set_random_seed(0)
    with precision_policy(args.precision):
        # Random embedder weights: the same arithmetic as pretrained ones, and no download.
        embedder = None if args.colorizer_only else build_embedder(args.embedder, RANDOM)
        if embedder is None:
            model = build_colorizer(cfg)
        else:
            model = (build_device_model if args.device_preprocessing else build_model)(cfg, embedder)
        loss = None if args.device_preprocessing and embedder is not None else "mse"
        model.compile(optimizer=keras.optimizers.RMSprop(TrainConfig().learning_rate), loss=loss,
                      jit_compile=args.jit_compile)
    size, batch = args.image_size, args.batch_size
    x, ab, weight = synthetic_batch(batch, size, colorizer_only=embedder is None,
                                    device_preprocessing=args.device_preprocessing)

    for _ in range(args.warmup):  # tracing, compilation, allocator warm-up
        model.train_on_batch(x, ab, sample_weight=weight)
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        loss = model.train_on_batch(x, ab, sample_weight=weight)  # returns host floats: the step has finished
        times.append(time.perf_counter() - start)
    step_s = float(np.median(times))
    cost = flops.training_flops(cfg, embedder)
    device = flops.accelerator_name()
    peak = flops.peak_tflops(device, args.precision)
    images_per_s = batch / step_s
    result = {
        "benchmark": "train", "images_per_s": images_per_s, "step_s": step_s, "step_s_all": times,
        **cost, "achieved_tflops": images_per_s * cost["flops_per_image"] / 1e12,
        "device": device or "cpu", "peak_tflops": peak, "mfu": flops.mfu(images_per_s, cost["flops_per_image"], peak),
        "batch_size": batch, "image_size": size, "embedder": None if args.colorizer_only else args.embedder,
        "precision": args.precision, "jit_compile": args.jit_compile, "device_preprocessing": args.device_preprocessing,
        "backend": keras.backend.backend(),
        "loss": float(np.ravel(loss)[0]), "peak_rss_mb": peak_rss_mb(),
    }
    print(f"{images_per_s:.2f} photos/s ({step_s:.3f} s a step of {batch}), "
          f"{result['achieved_tflops'] * 1e3:.1f} GFLOP/s, MFU {result['mfu']}", file=sys.stderr)
    return result
