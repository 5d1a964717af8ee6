"""The command line: `python -m koalarization COMMAND` (parsers.py declares every flag, commands.py runs
them). Errors meant for people print as one line, naming the flag, and exit 1."""

from __future__ import annotations

import logging
import os
import re
import sys

from koalarization.cli.commands import COMMANDS
from koalarization.cli.parsers import build_parser, flag_names, run_config_from_args  # noqa: F401
from koalarization.errors import KoalarizationError


def as_flags(message: str, names: dict[str, str]) -> str:
    """Library errors name their parameter or config field ("weights X: file not found", "try a lower
    learning_rate"); people typed flags. names: flag_names' {name: flag} of the command. A name with an
    underscore is unambiguous anywhere in the message; a one-word name only where the message starts with
    it."""
    head, _, rest = message.partition(" ")
    name = head.rstrip(":")
    if name in names and rest:
        message = f"{names[name]}{head[len(name):]} {rest}"
    return re.sub(r"(?<![\w\-/.])([a-z]+(?:_[a-z]+)+)\b(?![/.])",
                  lambda m: names.get(m.group(1), m.group(1)), message)


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
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s: %(message)s"
    )
    if not args.verbose:
        # JAX reports at INFO, through Python's logging, each platform it did not find ("Unable to initialize
        # backend 'tpu'") on every start.
        logging.getLogger("jax").setLevel(logging.WARNING)
        _import_keras_quietly()
    try:
        return COMMANDS[args.command](args)
    except KoalarizationError as err:
        print(f"koalarization {args.command}: error: {as_flags(str(err), flag_names(parser, args.command))}",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        again = "; rerun the same command to resume" if args.command in ("train", "prepare") else ""
        print(f"koalarization {args.command}: interrupted{again}", file=sys.stderr)
        return 130
