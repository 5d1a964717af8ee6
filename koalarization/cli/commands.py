"""What each command does with its parsed flags: call one function of the package, print its result for
people. Errors are KoalarizationError; cli.main prints them on one line."""

from __future__ import annotations

import json
import time

from koalarization.cli.parsers import run_config_from_args
from koalarization.config import in_range
from koalarization.errors import KoalarizationError


def trained_run(weights):
    """--weights as a TrainedRun (the shipped weights when not given). Imported here, not at the top:
    importing the CLI must not import Keras (cli.main imports it with TensorFlow's start-up lines hidden)."""
    from koalarization.run import TrainedRun

    return TrainedRun.at(weights)


def train(args) -> int:
    from koalarization.model.embedders import get_spec
    from koalarization.training.train import train as run_training

    cfg = run_config_from_args(args)
    get_spec(cfg.model.embedder)  # an unknown name fails before anything is built
    result = run_training(cfg)
    ended = "early stopping ended the run" if result.stopped_early else "ran the epochs asked for"
    best = (f"; best epoch {result.best_epoch} (val_loss {result.best_val_loss:.5f})"
            if result.best_epoch is not None else "")
    print(f"trained {result.epochs_run} epoch(s): {ended}{best}; best weights: "
          f"{trained_run(result.output / 'colorize.weights.h5').weights}"
          + (f"; skipped {result.skipped_files} file(s) (gray or unreadable)" if result.skipped_files else ""))
    return 0


def _colorizing(args) -> dict:
    """The flags `test` and `colorize` share (parsers._colorizing_parents), as their functions' keywords."""
    return {name: getattr(args, name) for name in ("size", "saturation", "batch_size", "embedder_weights",
                                                   "temperature")}


def prepare(args) -> int:
    from koalarization.training.train import photo_cache

    store = photo_cache(run_config_from_args(args))
    print(f"cached {len(store.rows)} photos ({len(store.skipped)} skipped: gray or unreadable) at "
          f"{store.image_size} px in {store.folder}; train with the same flags uses it")
    return 0


def test(args) -> int:
    from koalarization.inference.evaluate import evaluate, format_summary

    run = trained_run(args.weights)
    summary = evaluate(args.data, run, args.output, limit=args.limit, grid_rows=args.grid_rows,
                       **_colorizing(args))
    print(format_summary(summary, args.output))
    split = run.split()
    if split is not None and summary["psnr"] <= summary["gray_psnr"] and len(split.train) < 1000:
        # the quick start's case: its numbers say nothing of what the network can do
        print(f"worse than gray: this run trained on {len(split.train)} photos for minutes, far too few to "
              "learn colours; the shipped weights (docs/model_card.md) trained on three public photo sets: try `python -m koalarization test --data "
              f"{args.data or 'DIR'}` (no --weights) or `python -m koalarization colorize PHOTO`")
    return 0


def colorize(args) -> int:
    from koalarization.inference.colorize import colorize_files

    s = colorize_files(args.inputs, trained_run(args.weights), args.out, **_colorizing(args))
    total = time.perf_counter() - args.started  # from cli.main's start: what the user waited
    print(f"colorized {s['colorized']} photo(s) into {s['out']} in {total:.1f} s ({s['seconds']:.1f} s of it "
          f"loading the model and colorizing)"
          + (f"; replaced {s['replaced']} earlier output(s) of the same name" if s["replaced"] else "")
          + (f"; left out {s['left_out']} earlier output(s) of colorize" if s["left_out"] else "")
          + (f"; skipped {s['skipped']} unreadable" if s["skipped"] else ""))

    return 0


def serve(args) -> int:
    runs = [trained_run(w) for w in args.weights or [None]]  # append: None when --weights is not given
    if len(runs) > 2:
        raise KoalarizationError(f"weights given {len(runs)} times: the page compares at most two models")
    try:
        from koalarization.inference.web.server import serve as run_server
    except ImportError as err:
        raise KoalarizationError(f"serve needs {err.name}: "
                                 "pip install fastapi fastapi-offline uvicorn python-multipart") from None
    run_server(runs, host=args.host, port=args.port, embedder_weights=args.embedder_weights)
    return 0


def export(args) -> int:
    from koalarization.inference.export import default_out
    from koalarization.inference.export import export as write_export

    out = write_export(trained_run(args.weights), args.format, args.out or default_out(args.format),
                       embedder_weights=args.embedder_weights)
    print(f"exported {args.format} to {out}")
    return 0


def check_embedder(args) -> int:
    from koalarization.bench.embedder_check import imagenet_top1
    from koalarization.model.efficientnet_lite import VARIANTS

    if args.embedder not in VARIANTS:
        raise KoalarizationError(f"embedder {args.embedder}: check-embedder supports {', '.join(VARIANTS)}")
    print(json.dumps(imagenet_top1(args.embedder, args.data, limit=args.limit,
                                   weights=args.embedder_weights or "auto")))
    return 0


def benchmark_colorize(args) -> int:
    from koalarization.bench.latency import benchmark_latency

    in_range("runs", args.runs, at_least=1)
    if any(not 0 < mp <= 100 for mp in args.megapixels):
        sizes = " ".join(f"{mp:g}" for mp in args.megapixels)
        raise KoalarizationError(f"megapixels {sizes}: each must be above 0 and at most 100")
    benchmark_latency(trained_run(args.weights), megapixels=args.megapixels, runs=args.runs, size=args.size,
                      saturation=args.saturation, folder=args.out)
    return 0


def benchmark(args) -> int:
    cfg = run_config_from_args(args)
    if args.benchmark == "pipeline":
        import dataclasses

        from koalarization.bench.pipeline import bench_pipeline

        if args.no_augment:
            cfg = dataclasses.replace(cfg, train=dataclasses.replace(
                cfg.train, augment=dataclasses.replace(cfg.train.augment, enabled=False)))
        if not vars(args).get("model.embedder"):  # installs offline, and is the shipped weights' embedder
            cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, embedder="efficientnet_lite0_pooled"))
        result = bench_pipeline(cfg, steps=args.steps, repeat_list=args.repeat_list, reference=args.reference,
                                memory_check=args.memory_check, memory_only=args.memory_only)
    else:
        from koalarization.bench.train_step import bench_train

        result = bench_train(cfg, steps=args.steps, warmup=args.warmup)
    print(json.dumps(result))
    return 0


COMMANDS = {
    "train": train, "prepare": prepare, "test": test, "colorize": colorize, "serve": serve, "export": export,
    "check-embedder": check_embedder, "benchmark-colorize": benchmark_colorize, "benchmark": benchmark,
}
