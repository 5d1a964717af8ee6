"""Command-line wiring for using a trained model: colorize, serve, export, benchmark-colorize.

cli.py calls `add_parsers(sub)` and dispatches through `COMMANDS`; each handler takes the parsed args and
returns an exit code. Argument parsing only: the work is in colorize.py, web/server.py and export.py.
"""

from __future__ import annotations

import argparse

WEIGHTS_HELP = ("colorize.weights.h5 of a trained run (config.json beside it); default: the weights shipped "
                "with koalarization (docs/model_card.md)")


def add_parsers(sub) -> None:
    p = sub.add_parser("colorize", help="colorize photos at their full resolution",
                       description="Colorize photos; each output PNG keeps its photo's size and orientation.")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="photo files, folders (searched recursively) or globs")
    p.add_argument("--weights", default=None, help=WEIGHTS_HELP)
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the colorized PNGs")
    p.add_argument("--size", type=int, default=None, metavar="S",
                   help="network working size, a multiple of 8 (default: the trained image size)")
    p.add_argument("--saturation", type=float, default=1.0, help="0 gray, 1 as predicted (default), up to 4")
    p.add_argument("--batch-size", type=int, default=8, help="photos per network call (default: 8)")
    p.add_argument("--embedder-weights", default=None, metavar="PATH", help="local weights file of the embedder")

    p = sub.add_parser("serve", help="web page and HTTP API for colorizing photos",
                       description="Serve the colorizing page at http://HOST:PORT/ and the API at /api (docs: /docs).")
    p.add_argument("--weights", default=None, action="append",
                   help=WEIGHTS_HELP + "; give it twice to compare two models side by side")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument("--embedder-weights", default=None, metavar="PATH", help="local weights file of the embedder")

    p = sub.add_parser("export", help="export a trained model as a TensorFlow SavedModel or ONNX",
                       description="Export the full model (L -> ab at the trained size) for serving elsewhere.")
    p.add_argument("--weights", default=None, help=WEIGHTS_HELP)
    p.add_argument("--format", required=True, choices=["savedmodel", "onnx"], dest="fmt")
    p.add_argument("--out", required=True, metavar="PATH", help="SavedModel folder or .onnx file to write")
    p.add_argument("--embedder-weights", default=None, metavar="PATH", help="local weights file of the embedder")

    p = sub.add_parser("benchmark-colorize", help="median CPU latency of colorizing a 1 MP and a 12 MP photo")
    p.add_argument("--weights", default=None, help=WEIGHTS_HELP)
    p.add_argument("--runs", type=int, default=5, help="timed runs per size (default: 5)")
    p.add_argument("--size", type=int, default=None, metavar="S", help="network working size (default: trained)")


def shipped_or(weights: str | None) -> str:
    """--weights, or the weights that ship inside the package when it is not given."""
    from koalarization.checkpoint import SHIPPED_WEIGHTS

    return weights if weights is not None else str(SHIPPED_WEIGHTS)


def _colorize(args: argparse.Namespace) -> int:
    from koalarization.colorize import colorize_files

    s = colorize_files(args.inputs, shipped_or(args.weights), args.out, size=args.size, saturation=args.saturation,
                       batch_size=args.batch_size, embedder_weights=args.embedder_weights)
    print(f"colorized {s['colorized']} photo(s) into {s['out']} in {s['seconds']:.1f} s"
          + (f"; skipped {s['skipped']} unreadable" if s["skipped"] else ""))
    return 0


def _serve(args: argparse.Namespace) -> int:
    from koalarization.errors import KoalarizationError

    weights = args.weights or [shipped_or(None)]  # action="append" leaves None when --weights is not given
    if len(weights) > 2:
        raise KoalarizationError(f"--weights given {len(weights)} times: the page compares at most two models")
    try:
        from koalarization.web.server import serve
    except ImportError as err:
        raise KoalarizationError(f"serve needs {err.name}: "
                                 "pip install fastapi fastapi-offline uvicorn python-multipart") from None
    serve(weights, host=args.host, port=args.port, embedder_weights=args.embedder_weights)
    return 0


def _export(args: argparse.Namespace) -> int:
    from koalarization.export import export

    out = export(shipped_or(args.weights), args.fmt, args.out, embedder_weights=args.embedder_weights)
    print(f"exported {args.fmt} to {out}")
    return 0


def _benchmark(args: argparse.Namespace) -> int:
    from koalarization.colorize import benchmark_latency

    benchmark_latency(shipped_or(args.weights), runs=args.runs, size=args.size)
    return 0


COMMANDS = {"colorize": _colorize, "serve": _serve, "export": _export, "benchmark-colorize": _benchmark}
