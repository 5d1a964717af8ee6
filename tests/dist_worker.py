"""One training process of tests/test_distributed.py: `python tests/dist_worker.py --report R [options] --
TRAIN_FLAGS` trains like `koalarization train TRAIN_FLAGS` (TF_CONFIG comes from the environment) and writes
R.json (served photos per epoch, epoch logs, steps run) and R.npz (the final colorizer weights).

--mirrored N: N logical CPU devices, one run on one device (output OUT/single) and one under a
MirroredStrategy over all N (OUT/mirrored); R-single.* and R-mirrored.* hold their reports.
--kill-at-step K: SIGKILL this process at the end of global step K (after that step's backup, if any).
--kill-while-saving K: SIGKILL this process half-way through writing the backup of global step K.
--step-sleep S: sleep S seconds after every step (so that a test can kill it mid-epoch).
--no-workaround: do not patch Keras for MultiWorkerMirroredStrategy (to show that it is still needed).
--tiny: the tiny network of tests/conftest.py (tiny_model_config) instead of the flags' one.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import time
from pathlib import Path

STARTED = time.monotonic()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from koalarization.cli import build_parser, run_config_from_args  # noqa: E402
from koalarization.config import UP, ModelConfig  # noqa: E402
from koalarization.data import batches
from koalarization.model.network import colorizer_of  # noqa: E402
from koalarization.training import (
    backup,
    distribute,  # noqa: E402
)
from koalarization.training.train import train  # noqa: E402

TINY = dict(  # tests/conftest.py: tiny_model_config
    encoder=((8, 2), (8, 1), (16, 2), (16, 1), (16, 2), (16, 1), (16, 1), (8, 1)),
    fusion_filters=8, decoder=(16, UP, 8, UP, 8, 8), embedder="tiny_random",
)
SERVED: list = []  # (epoch, photo, weight) of every training sample read
IMPORTED = time.monotonic() - STARTED
_sample = batches.BatchSource.sample


def recording_sample(self, epoch, position):
    photo = _sample(self, epoch, position)
    if self.shuffle:  # the training source; validation is not shuffled
        SERVED.append((int(epoch), self.files[self._order(epoch)[position]].name, 1.0))
    return photo


class Recorder(keras.callbacks.Callback):
    def __init__(self, args):
        super().__init__()
        self.args, self.epochs, self.steps = args, [], 0
        self.times = {"imported": IMPORTED}

    def on_train_begin(self, logs=None):
        self.times.setdefault("fit", time.monotonic() - STARTED)

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        self.times.setdefault("first_step", time.monotonic() - STARTED)
        step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        if step == self.args.kill_at_step:
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(self.args.step_sleep)

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append({"epoch": epoch, **{k: float(v) for k, v in (logs or {}).items()}})
        self.times[f"epoch{epoch}"] = time.monotonic() - STARTED


def cut_short_save(step):
    """backup.save that dies half-way through writing the backup of global step `step`."""
    save = backup.save

    def save_or_die(model, directory, start):
        if int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == step:
            incoming = directory / backup.INCOMING
            model.save_weights(incoming, overwrite=True)
            incoming.write_bytes(incoming.read_bytes()[: incoming.stat().st_size // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        save(model, directory, start)

    return save_or_die


def run(cfg, report: Path, args, strategy=None) -> None:
    SERVED.clear()
    recorder = Recorder(args)
    result = train(cfg, callbacks=[recorder], verbose=0, strategy=strategy)
    weights = [np.asarray(w) for w in colorizer_of(recorder.model).get_weights()]
    np.savez(f"{report}.npz", *weights)
    Path(f"{report}.json").write_text(json.dumps({
        "served": SERVED, "epochs": recorder.epochs, "steps": recorder.steps, "epochs_run": result.epochs_run,
        "devices": strategy.num_replicas_in_sync if strategy is not None else 1,
        "seconds": {**recorder.times, "end": time.monotonic() - STARTED},
    }))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--report", required=True)
    parser.add_argument("--mirrored", type=int, default=0)
    parser.add_argument("--kill-at-step", type=int, default=-1)
    parser.add_argument("--kill-while-saving", type=int, default=-1)
    parser.add_argument("--step-sleep", type=float, default=0.0)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--no-workaround", action="store_true")
    parser.add_argument("train_flags", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    flags = args.train_flags[1:] if args.train_flags[:1] == ["--"] else args.train_flags
    cfg = run_config_from_args(build_parser().parse_args(["train", *flags]))
    if args.tiny:
        cfg = dataclasses.replace(cfg, model=ModelConfig(**TINY), train=dataclasses.replace(cfg.train, image_size=32))
    batches.BatchSource.sample = recording_sample
    if args.no_workaround:
        distribute.apply_keras_workaround = lambda: False
    if args.kill_while_saving >= 0:
        backup.save = cut_short_save(args.kill_while_saving)
    if not args.mirrored:
        run(cfg, Path(args.report), args)
        return 0
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * args.mirrored)
    output = Path(cfg.train.output)
    run(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, output=str(output / "single"))), Path(f"{args.report}-single"), args)
    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    strategy = tf.distribute.MirroredStrategy(devices)
    run(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, output=str(output / "mirrored"))), Path(f"{args.report}-mirrored"),
        args, strategy)
    return 0


if __name__ == "__main__":
    try:
        code = main()
    except BaseException:  # noqa: BLE001 - report it, then exit like below
        import traceback

        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skips TensorFlow's teardown: ~10 s after a multi-worker job, forever after some errors
