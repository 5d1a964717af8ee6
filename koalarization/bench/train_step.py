"""`benchmark train`: photos a second of the training step `train` runs, on synthetic batches held in memory
(no input pipeline, no I/O; warm-up steps excluded), the FLOPs a photo costs (flops.py), and on a GPU the
model FLOPs utilisation. The model, optimizer, loss and options are built by train.py's own functions from
a RunConfig (the defaults, or a run's config.json, with the flags on top).

Training never runs the embedder (its outputs are cached once per photo), so neither does this."""

from __future__ import annotations

import sys
import time

import keras
import numpy as np

from koalarization.bench import flops
from koalarization.bench.memory import peak_rss_mb
from koalarization.config import RunConfig, in_range
from koalarization.data.batches import random_affine
from koalarization.model.embedders import embedding_dim
from koalarization.model.task import batch_spec, build_training_model
from koalarization.training.train import make_optimizer, precision_policy


def synthetic_batch(cfg: RunConfig, dim: int) -> dict:
    """A batch shaped as batches.BatchSource gives it, with random values (the cost is the same)."""
    rng = np.random.default_rng(0)
    batch = cfg.train.batch_size
    spec = batch_spec(cfg.train.image_size, dim)
    return {
        "rgb": rng.integers(0, 256, (batch, *spec["rgb"][0]), dtype=spec["rgb"][1]),
        "affine": np.stack([random_affine(rng, cfg.train.augment) for _ in range(batch)]).astype(spec["affine"][1]),
        "embedding": rng.uniform(0, 1, (batch, *spec["embedding"][0])).astype(spec["embedding"][1]),
        "weight": np.ones((batch, *spec["weight"][0]), spec["weight"][1]),
    }


def bench_train(cfg: RunConfig, steps: int = 5, warmup: int = 2) -> dict:
    """Time `steps` training steps (after `warmup` untimed ones) on synthetic batches in memory: what the
    device can do, with no input pipeline."""
    in_range("steps", steps, at_least=1)
    in_range("warmup", warmup, at_least=0)
    t = cfg.train
    dim = embedding_dim(cfg.model.embedder)
    keras.utils.set_random_seed(0)
    with precision_policy(t.precision):
        model = build_training_model(cfg.model, dim, t.image_size, t.augment.fill)
        model.compile(optimizer=make_optimizer(t.optimizer, t.learning_rate), jit_compile=t.jit_compile)
    x = synthetic_batch(cfg, dim)
    for _ in range(warmup):  # tracing, compilation, allocator warm-up
        model.train_on_batch(x)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        loss = model.train_on_batch(x)  # returns host floats: the step has finished
        times.append(time.perf_counter() - start)
    step_s = float(np.median(times))
    cost = flops.training_flops(cfg.model, t.image_size, dim)
    device = flops.accelerator_name()
    peak = flops.peak_tflops(device, t.precision)
    images_per_s = t.batch_size / step_s
    result = {
        "benchmark": "train", "images_per_s": images_per_s, "step_s": step_s, "step_s_all": times,
        **cost, "achieved_tflops": images_per_s * cost["flops_per_image"] / 1e12,
        "device": device or "cpu", "peak_tflops": peak, "mfu": flops.mfu(images_per_s, cost["flops_per_image"], peak),
        "batch_size": t.batch_size, "image_size": t.image_size, "embedder": cfg.model.embedder,
        "optimizer": t.optimizer, "precision": t.precision, "jit_compile": t.jit_compile,
        "backend": keras.backend.backend(), "loss": float(np.ravel(loss)[0]), "peak_rss_mb": peak_rss_mb(),
    }
    print(f"{images_per_s:.2f} photos/s ({step_s:.3f} s a step of {t.batch_size}), "
          f"{result['achieved_tflops'] * 1e3:.1f} GFLOP/s, MFU {result['mfu']}", file=sys.stderr)
    return result
