"""Command line: argument parsing only. Each subcommand maps its flags 1:1 onto config fields and calls
one function of the package. Errors meant for people print as one line and exit 1."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from koalarization import benchmark, prepare, serving_cli
from koalarization.config import OPTIMIZERS
from koalarization.errors import KoalarizationError

# Defaults are read from the frozen config, never repeated here.
DEFAULT = None


def _add_train(sub) -> None:
    from koalarization.config import AugmentConfig, ModelConfig, TrainConfig

    t, m, a = TrainConfig(), ModelConfig(), AugmentConfig()
    p = sub.add_parser("train", help="train on a folder of photos", description="Train Deep Koalarization.")
    p.add_argument("--data", required=True, help="folder of photos (searched recursively)")
    p.add_argument("--output", default=DEFAULT, help=f"run folder (default: {t.output})")
    p.add_argument("--epochs", type=int, default=DEFAULT, help=f"maximum epochs (default: {t.epochs})")
    p.add_argument("--batch-size", type=int, default=DEFAULT, help=f"photos per step (default: {t.batch_size})")
    p.add_argument("--image-size", type=int, default=DEFAULT, help=f"training size, multiple of 8 (default: {m.image_size})")
    p.add_argument("--embedder", default=DEFAULT, help=f"global feature extractor (default: {m.embedder})")
    p.add_argument("--embedder-weights", default=DEFAULT, metavar="PATH", help="local weights file of the embedder")
    p.add_argument("--learning-rate", type=float, default=DEFAULT, help=f"learning rate (default: {t.learning_rate})")
    p.add_argument("--optimizer", default=DEFAULT, choices=OPTIMIZERS, help=f"optimizer (default: {t.optimizer})")
    p.add_argument("--gpus", type=int, default=DEFAULT,
                   help="train on N GPUs with MirroredStrategy (--batch-size is global); several machines: "
                        "set TF_CONFIG (docs/distributed.md)")
    p.add_argument("--seed", type=int, default=DEFAULT, help=f"split, shuffle and augmentation seed (default: {t.seed})")
    p.add_argument("--workers", type=int, default=DEFAULT, help=f"decoding threads (default: {t.workers})")
    p.add_argument("--backup-every-steps", type=int, default=DEFAULT, metavar="N",
                   help="also back up every N steps, not only every epoch (a killed run loses at most N steps)")
    p.add_argument("--no-augment", action="store_true", help="turn augmentation off")
    p.add_argument("--shear", type=float, default=DEFAULT, help=f"shear angle, degrees (default: {a.shear})")
    p.add_argument("--zoom", type=float, default=DEFAULT, help=f"zoom range (default: {a.zoom})")
    p.add_argument("--rotation", type=float, default=DEFAULT, help=f"rotation, degrees (default: {a.rotation})")
    p.add_argument("--no-flip", action="store_true", help="no horizontal flips")
    p.add_argument("--prepared", default=DEFAULT, metavar="DIR", help="read photos from a `prepare` folder (same batches)")
    p.add_argument("--precision", default=DEFAULT, help=f"float32, mixed_float16 or mixed_bfloat16 (default: {t.precision})")
    p.add_argument("--jit-compile", action="store_true", help="compile the train step with XLA")
    p.add_argument("--device-preprocessing", action="store_true",
                   help="uint8 batches; augmentation, Lab and scaling in the model's graph")


def _add_test(sub) -> None:
    p = sub.add_parser("test", help="colorize the held-out photos and measure them",
                       description="Write predicted/, bw/, actual/, metrics.csv and summary.json.")
    p.add_argument("--data", required=True, help="the folder trained on (its saved test split is used), or any folder")
    p.add_argument("--weights", default=None, help=serving_cli.WEIGHTS_HELP)
    p.add_argument("--output", default="model_output/test", help="where to write (default: model_output/test)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--limit", type=int, default=None, help="test on the first N photos only")
    p.add_argument("--grid-rows", type=int, default=8, help="photos in grid.png (default: 8)")
    p.add_argument("--embedder-weights", default=None, metavar="PATH", help="local weights file of the embedder")


def _add_check_embedder(sub) -> None:
    p = sub.add_parser("check-embedder", help="ImageNet top-1 of an embedder on labelled photos",
                       description="Classify photos named nXXXXXXXX_label.JPEG (all 1000 classes present) "
                                   "and print top-1/top-5 accuracy and the time per image.")
    p.add_argument("--embedder", default="efficientnet_lite0")
    p.add_argument("--data", required=True, help="e.g. ../shared/data/imagenet-sample")
    p.add_argument("--limit", type=int, default=250, help="first N photos by file name (default: 250)")
    p.add_argument("--embedder-weights", default=None, metavar="PATH")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="koalarization", description="Deep Koalarization: colorize photos with a CNN and a global embedding."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_test(sub)
    _add_check_embedder(sub)
    benchmark.add_parsers(sub)
    prepare.add_parser(sub)
    serving_cli.add_parsers(sub)
    return parser


def run_config_from_args(args):
    from koalarization.config import AugmentConfig, ModelConfig, RunConfig, TrainConfig, replace

    augment = replace(
        AugmentConfig(), enabled=False if args.no_augment else None, shear=args.shear, zoom=args.zoom,
        rotation=args.rotation, flip=False if args.no_flip else None,
    )
    model = replace(ModelConfig(), image_size=args.image_size, embedder=args.embedder)
    train = replace(
        TrainConfig(), data=args.data, output=args.output, epochs=args.epochs, batch_size=args.batch_size,
        learning_rate=args.learning_rate, optimizer=args.optimizer, gpus=args.gpus, seed=args.seed, workers=args.workers,
        embedder_weights=args.embedder_weights, backup_every_steps=args.backup_every_steps, augment=augment,
        prepared=args.prepared, precision=args.precision, jit_compile=True if args.jit_compile else None,
        device_preprocessing=True if args.device_preprocessing else None,
    )
    return RunConfig(model=model, train=train)


def _train(args) -> int:
    from koalarization.embedding import get_spec
    from koalarization.train import train

    cfg = run_config_from_args(args)
    get_spec(cfg.model.embedder)  # an unknown name fails before anything is built
    result = train(cfg)
    print(f"trained {result.epochs_run} epoch(s); best weights: {result.output / 'colorize.weights.h5'}"
          + (f"; skipped {result.skipped_files} file(s)" if result.skipped_files else "")
          + (f"; {result.failed_files} failed to decode" if result.failed_files else ""))
    return 0


def _test(args) -> int:
    from koalarization.evaluate import evaluate, format_summary

    summary = evaluate(args.data, serving_cli.shipped_or(args.weights), args.output, batch_size=args.batch_size,
                       embedder_weights=args.embedder_weights, limit=args.limit, grid_rows=args.grid_rows)
    print(format_summary(summary, args.output))
    return 0


def _check_embedder(args) -> int:
    from koalarization.efficientnet_lite import VARIANTS
    from koalarization.embedder_check import imagenet_top1

    if args.embedder not in VARIANTS:
        raise KoalarizationError(f"--embedder {args.embedder}: check-embedder supports {', '.join(VARIANTS)}")
    weights = args.embedder_weights or "auto"
    print(json.dumps(imagenet_top1(args.embedder, args.data, limit=args.limit, weights=weights)))
    return 0


COMMANDS = {
    "train": _train,
    "test": _test,
    "check-embedder": _check_embedder,
    **benchmark.COMMANDS,
    **prepare.COMMANDS,
    **serving_cli.COMMANDS,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s: %(message)s"
    )
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter is not for users
    try:
        return COMMANDS[args.command](args)
    except KoalarizationError as err:
        print(f"koalarization {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"koalarization {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
