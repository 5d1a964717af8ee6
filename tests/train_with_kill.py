"""Test helper (test_interrupt.py): `koalarization train` that SIGKILLs itself at a chosen point.

    python tests/train_with_kill.py batch EPOCH BATCH -- TRAIN-ARGS
        killed as batch BATCH of epoch EPOCH begins (mid-epoch, between two backups)
    python tests/train_with_kill.py write NAME N -- TRAIN-ARGS
        killed while writing the N-th (1-based) weights file NAME: its temporary file (io.atomic_path's
        .NAME.PID.tmp.weights.h5) is left half written, as by a kill in the middle of HDF5's writes (NAME:
        incoming.weights.h5, a backup being written, or colorize.weights.h5, the best checkpoint)

SIGKILL, not an exception: no `finally`, no atexit, no flush runs; exactly what a pre-empted machine or the
OOM killer leaves behind. The patches live here, in the killed process only; the resumed run is plain.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path


def die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def kill_at_batch(epoch: int, batch: int) -> None:
    import keras

    from koalarization.training import train

    class KillAtBatch(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.epoch = -1

        def on_epoch_begin(self, e, logs=None):
            self.epoch = e

        def on_train_batch_begin(self, b, logs=None):
            if (self.epoch, b) == (epoch, batch):
                die()

    original = train.build_callbacks

    def build_callbacks(*args, **kwargs):
        return original(*args, **kwargs) + [KillAtBatch()]

    train.build_callbacks = build_callbacks


def kill_while_writing(name: str, nth: int) -> None:
    import keras

    original, seen = keras.Model.save_weights, []

    def save_weights(self, filepath, *args, **kwargs):
        original(self, filepath, *args, **kwargs)
        if Path(filepath).name.startswith(f".{name}."):
            seen.append(filepath)
            if len(seen) == nth:
                data = Path(filepath).read_bytes()
                Path(filepath).write_bytes(data[: len(data) // 2])
                die()

    keras.Model.save_weights = save_weights


def main(argv: list[str]) -> int:
    split = argv.index("--")
    mode, args, train_args = argv[0], argv[1:split], argv[split + 1:]
    if mode == "batch":
        kill_at_batch(int(args[0]), int(args[1]))
    elif mode == "write":
        kill_while_writing(args[0], int(args[1]))
    else:
        raise SystemExit(f"unknown mode {mode}")
    from koalarization.cli import main as cli_main

    return cli_main(["train", *train_args])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
