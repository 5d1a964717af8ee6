"""The command line: `python -m koalarization COMMAND` (parsers.py declares every flag, commands.py runs
them). Errors meant for people print as one line, naming the flag, and exit 1."""

from __future__ import annotations

import logging
import os
import re
import sys
import time

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


# What TensorFlow's C++ libraries write to the process's stderr: absl/glog lines ("I0000 00:00:... file.cc:12]",
# "E0000 ... oneDNN supports DT_INT64 only ..."), absl's pre-initialisation warning and the CPU-feature notice.
NATIVE_LINE = re.compile(rb"^(?:[IWEF]\d{4} \d+:\d+:\d+\.\d+\s+\d+ [^\]]+\] |WARNING: All log messages before "
                         rb"absl::InitializeLog|To enable the following instructions: )")


def _drop_native_lines(reader: int, writer: int) -> None:
    """Copy lines from the pipe `reader` to the descriptor `writer`, leaving out NATIVE_LINE's."""
    with os.fdopen(reader, "rb", buffering=0) as pipe:
        pending = b""
        while chunk := pipe.read(65536):
            *lines, pending = (pending + chunk).split(b"\n")
            kept = b"".join(line + b"\n" for line in lines if not NATIVE_LINE.match(line))
            if kept:
                os.write(writer, kept)
        if pending and not NATIVE_LINE.match(pending):
            os.write(writer, pending)


def _quiet_native_stderr() -> None:
    """Keep TensorFlow's C++ log lines out of the command's stderr, for the whole command.

    They go straight to file descriptor 2, under Python's `sys.stderr`, at start-up and later (a train step's
    "oneDNN supports DT_INT64 only ..."); some come before TF_CPP_MIN_LOG_LEVEL is read, and with oneDNN on
    they show even at level 3. So descriptor 2 becomes a pipe whose lines a thread copies to the real stderr
    without those; Python's own `sys.stderr` (our errors, logging, progress bars) writes to the real stderr
    directly. `--verbose` skips this. Deliberately no TF_ENABLE_ONEDNN_OPTS: switching oneDNN changes the
    numbers (colorized pixels differ by 1/255).
    """
    import atexit
    import threading

    # Later INFO/WARNING lines (XLA start-up, device lists); an explicit user setting wins.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if sys.stderr is not sys.__stderr__:  # already filtered, or captured (main called by tests): leave it
        return
    sys.stderr.flush()
    real = os.dup(2)
    reader, writer = os.pipe()
    os.dup2(writer, 2)
    os.close(writer)
    sys.stderr = open(real, "w", buffering=1, encoding=sys.stderr.encoding, errors="backslashreplace",
                      closefd=False)
    copier = threading.Thread(target=_drop_native_lines, args=(reader, real), daemon=True,
                              name="koalarization-stderr")
    copier.start()

    def restore() -> None:  # at exit: the pipe's last lines are copied before the process ends
        sys.stderr.flush()
        os.dup2(real, 2)  # closes the pipe's write end: the thread reads to the end and stops
        copier.join(timeout=2)

    atexit.register(restore)


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    parser = build_parser()
    args = parser.parse_args(argv)
    args.started = started  # commands that report their time count from here
    if not args.verbose:
        _quiet_native_stderr()  # first: logging's handler below writes to the sys.stderr it sets
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s: %(message)s"
    )
    if not args.verbose:
        # JAX reports at INFO, through Python's logging, each platform it did not find ("Unable to initialize
        # backend 'tpu'") on every start.
        logging.getLogger("jax").setLevel(logging.WARNING)
        import keras  # noqa: F401 - every command needs it; its start-up lines go through the filter
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
