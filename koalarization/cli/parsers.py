"""Every command line of koalarization: the one place that uses argparse.

Flags shared by several commands are declared once (argparse `parents=`); `train`'s and `prepare`'s flags
are generated from the config dataclasses (config.option's help text), so every config field has a flag.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing

from koalarization.config import (
    COLORIZE_BATCH,
    COLORIZE_OUT,
    EMBEDDER_CHECK_LIMIT,
    EXPORT_FORMATS,
    EXPORT_OUT,
    GRID_ROWS,
    LATENCY_MEGAPIXELS,
    LATENCY_RUNS,
    MAX_SATURATION,
    MAX_TEMPERATURE,
    SERVE_HOST,
    SERVE_PORT,
    TEST_BATCH,
    TEST_OUT,
    ModelConfig,
    RunConfig,
    TrainConfig,
)

WEIGHTS_HELP = ("colorize.weights.h5 of a trained run (config.json beside it); default: the weights shipped "
                "with koalarization (docs/model_card.md)")

# Each command: (its line in `koalarization --help`, the description its own --help opens with).
ABOUT = {
    "train": ("train on folders of photos",
             "Train Deep Koalarization. Every setting of the run has a flag; --config reruns a saved config.json "
             "(flags given beside it override it)."),
    "prepare": ("decode the photos and compute their embeddings once, ahead of train",
               "Build the cache that train reads (train builds it itself when it is missing): every photo at the "
               "working size, with its embedding."),
    "test": ("colorize the held-out photos and measure them",
            "Write predicted/, bw/, actual/, metrics.csv and summary.json."),
    "colorize": ("colorize photos at their full resolution",
                "Colorize photos; each output PNG keeps its photo's size and orientation."),
    "serve": ("web page and HTTP API for colorizing photos",
             "Serve the colorizing page at http://HOST:PORT/ and the API at /api (docs: /docs)."),
    "export": ("export a trained model as a TensorFlow SavedModel or ONNX",
              "Export the whole of colorize for serving elsewhere: input 'image', uint8 RGB (B, H, W, 3) at any "
              "size; output the colorized photo, uint8 RGB (B, H, W, 3)."),
    "check-embedder": ("ImageNet top-1 of an embedder on labelled photos",
                      "Classify photos named nXXXXXXXX_label.JPEG (all 1000 classes present) and print top-1/top-5 accuracy"
                      " and the time per image."),
    "benchmark-colorize": ("latency of colorizing a 1 MP and a 12 MP photo, by stage",
                          "Colorize synthetic JPEG files to PNG files as `colorize` does; print the median and min-max of each "
                          "stage (decode ... encode), then one JSON object on the last line."),
    "benchmark": ("measure the input pipeline or the training step",
                 "Print photos/s (and more) as one JSON object on the last line."),
    "benchmark pipeline": ("batches as `train` makes them: cache, batches, in-graph preprocessing", None),
    "benchmark train": ("training steps of the model `train` builds, on synthetic batches", None),
}


def _command(subparsers, name: str, parents=()) -> argparse.ArgumentParser:
    """The parser of command `name` ("benchmark train": a benchmark's), with ABOUT's texts."""
    summary, description = ABOUT[name]
    return subparsers.add_parser(name.rsplit(" ", 1)[-1], help=summary, description=description, parents=list(parents))


def config_flags(parser, cls, section: str, only=None) -> None:
    """One flag per field of the config dataclass `cls` (nested ones included), named after the field, with
    its help text; default None, so unset flags keep the value of --config or of the config's defaults.
    dest is "section.field" (run_config_from_args reads them back). only: the field names to include."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            if only is None:
                config_flags(parser, hints[f.name], f"{section}.{f.name}")
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


def _parents() -> dict[str, argparse.ArgumentParser]:
    """Flags that several commands share, each declared here once."""
    weights = argparse.ArgumentParser(add_help=False)
    weights.add_argument("--weights", default=None, help=WEIGHTS_HELP)
    embedder_weights = argparse.ArgumentParser(add_help=False)
    embedder_weights.add_argument("--embedder-weights", default=None, metavar="PATH",
                                  help="local weights file of the embedder (instead of its download or package)")
    size = argparse.ArgumentParser(add_help=False)
    size.add_argument("--size", type=int, default=None, metavar="S",
                      help="network working size, a multiple of 8 (default: the size the weights were trained at)")
    dial = argparse.ArgumentParser(add_help=False)
    dial.add_argument("--saturation", type=float, default=1.0,
                      help=f"0 gray, 1 as predicted (default), up to {MAX_SATURATION:g}")
    dial.add_argument("--temperature", type=float, default=None, metavar="T",
                      help=f"weights with the classification head: annealed-mean temperature, above 0 and at most "
                           f"{MAX_TEMPERATURE:g}; 1 = the mean colour (pale), smaller = more vivid (default: the weights' config, "
                           "0.38)")
    return {"weights": weights, "embedder_weights": embedder_weights, "size": size, "dial": dial}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="koalarization", description="Deep Koalarization: colorize photos with a CNN and a global embedding."
    )
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging, and TensorFlow's own start-up messages")
    sub = parser.add_subparsers(dest="command", required=True)
    shared = _parents()
    for add in (_train, _prepare, _test, _colorize, _serve, _export, _check_embedder, _benchmark_colorize,
                _benchmark):
        add(sub, shared)
    return parser


def _train(sub, shared) -> None:
    p = _command(sub, "train")
    p.add_argument("--config", metavar="FILE", help="a run's config.json to start from (e.g. the shipped "
                                                     "weights' koalarization/weights/config.json)")
    config_flags(p.add_argument_group("data and training"), TrainConfig, "train")
    config_flags(p.add_argument_group("network"), ModelConfig, "model")


def _prepare(sub, shared) -> None:
    p = _command(sub, "prepare")
    config_flags(p, TrainConfig, "train", only={"data", "data_list", "exclude_list", "image_size", "cache",
                                                "workers", "embedder_weights"})
    config_flags(p, ModelConfig, "model", only={"embedder"})


def _colorizing_parents(shared) -> list[argparse.ArgumentParser]:
    """The flags of the commands that colorize with trained weights (commands._colorizing reads them)."""
    return [shared["weights"], shared["embedder_weights"], shared["size"], shared["dial"]]


def _test(sub, shared) -> None:
    p = _command(sub, "test", _colorizing_parents(shared))
    p.add_argument("--data", default=None,
                   help="a folder the run trained on (its held-out photos there), or any folder (default: the "
                        "held-out photos of every folder the run trained on, from its split.json)")
    p.add_argument("--output", default=TEST_OUT, help=f"where to write (default: {TEST_OUT})")
    p.add_argument("--batch-size", type=int, default=TEST_BATCH,
                   help=f"photos per network call (default: {TEST_BATCH})")
    p.add_argument("--limit", type=int, default=None, help="test on the first N photos only")
    p.add_argument("--grid-rows", type=int, default=GRID_ROWS, help=f"photos in grid.png (default: {GRID_ROWS})")


def _colorize(sub, shared) -> None:
    p = _command(sub, "colorize", _colorizing_parents(shared))
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="photo files, folders (searched recursively) or globs")
    p.add_argument("--out", default=COLORIZE_OUT, metavar="DIR",
                   help=f"folder for the colorized PNGs, created if needed (default: {COLORIZE_OUT}/ in the working "
                        "folder); an output of the same name is replaced, and said so")
    p.add_argument("--batch-size", type=int, default=COLORIZE_BATCH,
                   help=f"photos per network call (default: {COLORIZE_BATCH})")


def _serve(sub, shared) -> None:
    p = _command(sub, "serve", [shared["embedder_weights"]])
    p.add_argument("--weights", default=None, action="append",
                   help=WEIGHTS_HELP + "; give it twice to compare two models side by side")
    p.add_argument("--host", default=SERVE_HOST,
                   help=f"address to listen on (default: {SERVE_HOST}, this machine only)")
    p.add_argument("--port", type=int, default=SERVE_PORT, help=f"port (default: {SERVE_PORT})")


def _export(sub, shared) -> None:
    p = _command(sub, "export", [shared["weights"], shared["embedder_weights"]])
    p.add_argument("--format", default=EXPORT_FORMATS[0], choices=EXPORT_FORMATS,
                   help="savedmodel: a TensorFlow SavedModel folder; onnx: one .onnx file (pip install -e "
                        f"\".[onnx]\") (default: {EXPORT_FORMATS[0]})")
    p.add_argument("--out", default=None, metavar="PATH",
                   help=f"SavedModel folder or .onnx file to write (default: {EXPORT_OUT['savedmodel']} or "
                        f"{EXPORT_OUT['onnx']} in the working folder)")


def _check_embedder(sub, shared) -> None:
    p = _command(sub, "check-embedder", [shared["embedder_weights"]])
    p.add_argument("--embedder", default="efficientnet_lite0",
                   help="the classifier to check: efficientnet_lite0, _lite1 or _lite2 (default: efficientnet_lite0)")
    p.add_argument("--data", required=True,
                   help="folder of ImageNet photos named nXXXXXXXX_label.JPEG, all 1000 classes (docs/reference.md)")
    p.add_argument("--limit", type=int, default=EMBEDDER_CHECK_LIMIT,
                   help=f"first N photos by file name (default: {EMBEDDER_CHECK_LIMIT})")


def _benchmark_colorize(sub, shared) -> None:
    p = _command(sub, "benchmark-colorize", [shared["weights"], shared["size"]])
    p.add_argument("--runs", type=int, default=LATENCY_RUNS,
                   help=f"timed runs per size, after one warm-up run (default: {LATENCY_RUNS})")
    p.add_argument("--megapixels", type=float, nargs="+", default=list(LATENCY_MEGAPIXELS), metavar="MP",
                   help="photo sizes in millions of pixels, 4:3 (default: "
                        f"{' '.join(f'{mp:g}' for mp in LATENCY_MEGAPIXELS)})")
    p.add_argument("--saturation", type=float, default=1.0,
                   help=f"as for colorize (0 to {MAX_SATURATION:g}); above 1 more pixels need gamut fitting (default: 1)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="keep the JPEG and PNG files here (default: a temporary folder, removed)")


def _benchmark(sub, shared) -> None:
    bench = _command(sub, "benchmark")
    kinds = bench.add_subparsers(dest="benchmark", required=True)
    p = _command(kinds, "benchmark pipeline")
    config_flags(p, TrainConfig, "train", only={"data", "batch_size", "image_size", "cache", "workers", "seed"})
    config_flags(p, ModelConfig, "model", only={"embedder"})
    p.add_argument("--no-augment", action="store_true", help="turn augmentation off")
    p.add_argument("--steps", type=int, default=None, help="batches to make (default: one epoch of the photos)")
    p.add_argument("--reference", action="store_true", help="also time the reference-style pipeline, same photos")
    p.add_argument("--repeat-list", type=int, default=1, metavar="K", help="list every photo K times")
    p.add_argument("--memory-check", type=int, default=None, metavar="K",
                   help="compare peak memory of fresh runs with the photo list 1x and Kx as long")
    p.add_argument("--memory-only", action="store_true", help=argparse.SUPPRESS)  # the memory check's runs
    p = _command(kinds, "benchmark train")
    p.add_argument("--config", metavar="FILE", help="a run's config.json (default: the defaults, as train's)")
    config_flags(p, TrainConfig, "train", only={"batch_size", "image_size", "precision", "jit_compile"})
    config_flags(p, ModelConfig, "model", only={"embedder"})
    p.add_argument("--steps", type=int, default=5, help="timed steps (default: 5; the median is reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (default: 2)")


def run_config_from_args(args):
    """The RunConfig of the config flags: --config (or the defaults), with every given flag on top."""
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


def flag_names(parser: argparse.ArgumentParser, command: str) -> dict[str, str]:
    """{dest or config field: how people write it} for one command, e.g. {"weights": "--weights",
    "inputs": "INPUT", "learning_rate": "--learning-rate"}."""
    actions = list(parser._actions)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            sub = action.choices[command]
            actions += sub._actions
            for inner in sub._actions:  # `benchmark pipeline`: one level more
                if isinstance(inner, argparse._SubParsersAction):
                    for choice in inner.choices.values():
                        actions += choice._actions
    names = {}
    for action in actions:
        name = action.dest.rsplit(".", 1)[-1]
        if action.option_strings:
            names.setdefault(name, max(action.option_strings, key=len).replace("--no-", "--"))
        elif action.metavar:
            names.setdefault(name, action.metavar)
    return names
