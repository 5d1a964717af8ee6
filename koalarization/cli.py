"""Command line: argument parsing only. Each subcommand maps its flags 1:1 onto config fields and calls
one function of the package. Errors meant for people print as one line and exit 1."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import sys
import typing

from koalarization import benchmark, serving_cli
from koalarization.errors import KoalarizationError

def _config_flags(parser, cls, section: str, only=None) -> None:
    """One flag per field of the config dataclass `cls` (nested ones included), named after the field, with
    its help text; default None, so unset flags keep the value of --config or of the config's defaults.
    only: the field names to make flags of (default: all)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            if only is None:
                _config_flags(parser, hints[f.name], f"{section}.{f.name}")
            continue
        if f.metadata.get("flag") is False or (only is not None and f.name not in only):
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        flag = "--" + f.name.replace("_", "-")
        if f.name == "enabled":  # AugmentConfig.enabled is --augment / --no-augment
            flag = "--" + section.rsplit(".", 1)[-1]
        shown = "" if default in ((), None) else f" (default: {default})"
        kwargs = {"dest": f"{section}.{f.name}", "default": None, "help": f"{f.metadata['help']}{shown}"}
        if isinstance(default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kind = next((t for t in (int, float, str) if t in typing.get_args(hints[f.name]) or t is hints[f.name]), str)
            kwargs.update(type=kind, nargs=f.metadata.get("nargs"), choices=f.metadata.get("choices"),
                          metavar=f.metadata.get("metavar", None if "choices" in f.metadata else f.name.upper()))
        parser.add_argument(flag, **kwargs)


def _add_train(sub) -> None:
    from koalarization.config import ModelConfig, TrainConfig

    p = sub.add_parser("train", help="train on folders of photos",
                       description="Train Deep Koalarization. Every setting of the run has a flag; --config "
                                   "reruns a saved config.json (flags given beside it override it).")
    p.add_argument("--config", metavar="FILE", help="a run's config.json to start from (e.g. the shipped "
                                                     "weights' koalarization/weights/config.json)")
    _config_flags(p.add_argument_group("data and training"), TrainConfig, "train")
    _config_flags(p.add_argument_group("network"), ModelConfig, "model")


def _add_prepare(sub) -> None:
    from koalarization.config import ModelConfig, TrainConfig

    p = sub.add_parser("prepare", help="decode the photos and compute their embeddings once, ahead of train",
                       description="Build the cache that train reads (train builds it itself when it is "
                                   "missing): every photo at the working size, with its embedding.")
    _config_flags(p, TrainConfig, "train", only={"data", "data_list", "exclude_list", "image_size", "cache",
                                                 "workers", "embedder_weights"})
    _config_flags(p, ModelConfig, "model", only={"embedder"})


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
    _add_prepare(sub)
    benchmark.add_parsers(sub)
    serving_cli.add_parsers(sub)
    return parser


def run_config_from_args(args):
    """The RunConfig of `train`'s flags: --config (or the defaults), with every given flag on top."""
    from koalarization.config import RunConfig

    cfg = RunConfig.load(args.config) if getattr(args, "config", None) else RunConfig()
    given = {k: v for k, v in vars(args).items() if "." in k and v is not None}
    for section in ("model", "train", "train.augment"):
        changes = {k.rsplit(".", 1)[1]: v for k, v in given.items() if k.rsplit(".", 1)[0] == section}
        if not changes:
            continue
        if section == "train.augment":
            cfg = dataclasses.replace(cfg, train=dataclasses.replace(
                cfg.train, augment=dataclasses.replace(cfg.train.augment, **changes)))
        else:
            cfg = dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **changes)})
    return cfg


def _train(args) -> int:
    from koalarization.embedding import get_spec
    from koalarization.train import train

    cfg = run_config_from_args(args)
    get_spec(cfg.model.embedder)  # an unknown name fails before anything is built
    result = train(cfg)
    ended = "early stopping ended the run" if result.stopped_early else "ran the epochs asked for"
    best = (f"; best epoch {result.best_epoch} (val_loss {result.best_val_loss:.5f})"
            if result.best_epoch is not None else "")
    print(f"trained {result.epochs_run} epoch(s): {ended}{best}; best weights: "
          f"{result.output / 'colorize.weights.h5'}"
          + (f"; skipped {result.skipped_files} file(s) (gray or unreadable)" if result.skipped_files else ""))
    return 0


def _prepare(args) -> int:
    from koalarization.train import photo_cache

    store = photo_cache(run_config_from_args(args))
    print(f"cached {len(store.rows)} photos ({len(store.skipped)} skipped: gray or unreadable) at "
          f"{store.image_size} px in {store.folder}; train with the same flags uses it")
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
    "prepare": _prepare,
    **benchmark.COMMANDS,
    **serving_cli.COMMANDS,
}


def as_flags(message: str) -> str:
    """Library errors name config fields (`learning_rate`); people type flags (`--learning-rate`). Names
    with an underscore are unambiguous anywhere in the message; a one-word name (`data`, `optimizer`) is a
    field only where the message starts with it ("optimizer sgd: choose one of ...")."""
    from koalarization.config import AugmentConfig, ModelConfig, TrainConfig

    names = {f.name for cls in (ModelConfig, TrainConfig, AugmentConfig) for f in dataclasses.fields(cls)}
    names.discard("enabled")
    flag = lambda name: "--" + name.replace("_", "-")  # noqa: E731
    head, _, rest = message.partition(" ")
    if head.rstrip(":") in names and rest:
        message = f"{flag(head.rstrip(':'))}{head[len(head.rstrip(':')):]} {rest}"
    return re.sub(r"(?<![\w\-/.])([a-z]+(?:_[a-z]+)+)\b(?![/.])",
                  lambda m: flag(m.group(1)) if m.group(1) in names else m.group(1), message)


def _import_keras_quietly() -> None:
    """Import Keras (and so TensorFlow) with file descriptor 2 pointed at /dev/null, then restore it.

    TensorFlow's C++ libraries write start-up lines while they load: absl's "All log messages before
    absl::InitializeLog() ..." warning, "oneDNN custom operations are on", CPU-feature notices. Some come
    before TF_CPP_MIN_LOG_LEVEL is read (with oneDNN on they show even at level 3), and all go straight to
    the process's stderr, under Python's `sys.stderr`, so only the descriptor can hide them. It is
    restored right after the import: our own errors and later real errors still show. `--verbose` skips
    this. Every command imports Keras anyway, so importing it here costs nothing.
    """
    # Later INFO/WARNING lines (XLA start-up, device lists); an explicit user setting wins. Deliberately no
    # TF_ENABLE_ONEDNN_OPTS: switching oneDNN changes the numbers (colorized pixels differ by 1/255).
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "keras" in sys.modules:  # called again in one process (tests): nothing left to hide
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import keras  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s: %(message)s"
    )
    if not args.verbose:
        _import_keras_quietly()
    try:
        return COMMANDS[args.command](args)
    except KoalarizationError as err:
        print(f"koalarization {args.command}: error: {as_flags(str(err))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"koalarization {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
