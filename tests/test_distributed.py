"""Distributed training and fault tolerance (docs/distributed.md), on CPU and loopback only:
MirroredStrategy over two logical CPU devices, MultiWorkerMirroredStrategy with two worker processes on
127.0.0.1, and SIGKILL for a pre-empted machine. Every subprocess runs under a timeout; the slowest checks
(a two-worker job killed and restarted) carry the `large` marker."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
from PIL import Image

from koalarization import run
from koalarization.cli import build_parser, run_config_from_args
from koalarization.config import ModelConfig
from koalarization.data.batches import BatchSource
from koalarization.errors import KoalarizationError
from koalarization.model.network import colorizer_of
from koalarization.training import backup, distribute
from koalarization.training.train import train

from conftest import synthetic_photo
from dist_worker import TINY

WORKER = Path(__file__).with_name("dist_worker.py")
TIMEOUT = 420  # seconds for any one distributed run, however loaded the machine


# ------------------------------------------------------------------------------------------------ helpers
def make_photos(root: Path, count: int) -> Path:
    root.mkdir(parents=True)
    for i in range(count):
        Image.fromarray(synthetic_photo(i)).save(root / f"photo{i:02d}.png")
    return root


def flags(data, output, epochs=2, *extra):
    return ["--data", str(data), "--output", str(output), "--epochs", str(epochs), "--batch-size", "2",
            "--workers", "2", *extra]


class Final(keras.callbacks.Callback):
    """Keeps the colorizer's weights at the end of training; raises KeyboardInterrupt at global step `stop`."""

    def __init__(self, stop=None):
        super().__init__()
        self.stop, self.weights = stop, None

    def on_train_batch_end(self, batch, logs=None):
        if int(keras.ops.convert_to_numpy(self.model.optimizer.iterations)) == self.stop:
            raise KeyboardInterrupt

    def on_train_end(self, logs=None):
        self.weights = [np.asarray(w) for w in colorizer_of(self.model).get_weights()]


def train_here(args, stop=None):
    """Train in this process with the tiny network; returns the final colorizer weights."""
    cfg = run_config_from_args(build_parser().parse_args(["train", *args]))
    final = Final(stop)
    train(dataclasses.replace(cfg, model=ModelConfig(**TINY), train=dataclasses.replace(cfg.train, image_size=32)), callbacks=[final], verbose=0)
    return final.weights


def relative_difference(a, b) -> float:
    a, b = (np.concatenate([np.ravel(w) for w in ws]).astype(np.float64) for ws in (a, b))
    return float(np.linalg.norm(a - b) / np.linalg.norm(a))


def npz_weights(report: Path) -> list:
    with np.load(f"{report}.npz") as f:
        return [f[f"arr_{i}"] for i in range(len(f.files))]


def log_epochs(output: Path) -> list[str]:
    with open(output / "log.csv", newline="") as f:
        return [row["epoch"] for row in csv.DictReader(f)]


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def start_workers(tmp, reports, train_flags, *options, ports=None):
    """Worker processes of one job (TF_CONFIG on 127.0.0.1), each writing its report; logs in tmp."""
    ports = ports or free_ports(len(reports))
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for index, report in enumerate(reports):
        env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
                   TMPDIR=str(tmp / "worker-tmp"))
        (tmp / "worker-tmp").mkdir(exist_ok=True)
        log = open(f"{report}.log", "w")  # noqa: SIM115 - closed with the process
        procs.append(subprocess.Popen([sys.executable, str(WORKER), "--tiny", "--report", str(report), *options,
                                       "--", *train_flags], env=env, stdout=log, stderr=subprocess.STDOUT))
    return procs


def wait_all(procs, timeout=TIMEOUT) -> list[int]:
    deadline = time.monotonic() + timeout
    try:
        return [p.wait(timeout=max(1.0, deadline - time.monotonic())) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def tail(report) -> str:
    return Path(f"{report}.log").read_text()[-3000:]


def backup_position(directory: Path):
    try:
        with h5py.File(directory / backup.LATEST, "r") as f:
            start = json.loads(f.attrs[backup.ATTRIBUTE])
        return start["epoch"], start["batch"]
    except (OSError, KeyError):
        return None


@pytest.fixture(scope="module")
def long_epochs(tmp_path_factory):
    """20 photos (14 train: 7 steps of 2 per epoch), and the weights of an uninterrupted 2-epoch run."""
    root = tmp_path_factory.mktemp("long")
    data = make_photos(root / "photos", 20)
    weights = train_here(flags(data, root / "uninterrupted", 2, "--backup-every-steps", "2"))
    return data, weights


# -------------------------------------------------------------------------------------- fast unit checks
def test_tf_config_names_this_worker_and_the_chief():
    assert distribute.parse_tf_config(None) == (0, 1)
    config = {"cluster": {"chief": ["a:1"], "worker": ["b:1", "c:1"]}, "task": {"type": "worker", "index": 1}}
    assert distribute.parse_tf_config(json.dumps(config)) == (2, 3)  # chief first
    config["task"] = {"type": "chief", "index": 0}
    assert distribute.parse_tf_config(json.dumps(config)) == (0, 3)
    config = {"cluster": {"worker": ["b:1", "c:1"]}, "task": {"type": "worker", "index": 0}}
    assert distribute.parse_tf_config(json.dumps(config)) == (0, 2)  # no chief list: worker 0 is the chief
    for bad in ("{not json", json.dumps({"cluster": {"worker": ["b:1"]}, "task": {"type": "worker", "index": 3}}),
                json.dumps({"cluster": {"ps": ["p:1"], "worker": ["b:1"]}, "task": {"type": "ps", "index": 0}})):
        with pytest.raises(KoalarizationError, match="TF_CONFIG"):
            distribute.parse_tf_config(bad)


def test_only_the_chief_writes_to_the_output(tmp_path):
    chief, other = distribute.Placement(), distribute.Placement(worker_index=1, worker_count=2)
    assert chief.run_dir(tmp_path) == tmp_path
    temporary = other.run_dir(tmp_path)
    assert temporary != tmp_path and temporary.is_dir() and "worker1" in temporary.name
    other.release(temporary)
    assert not temporary.exists()


def test_workers_take_the_chiefs_state_and_refuse_other_photos():
    """Placement.sync on two threads whose only collective (_sum) is an exchange through a barrier."""
    barrier, slots = threading.Barrier(2), [None, None]

    def exchange(index, array):
        slots[index] = array
        barrier.wait()
        total = slots[0] + slots[1]
        barrier.wait()
        return total

    def worker(index, start, fingerprint, results):
        place = distribute.Placement(object(), worker_index=index, worker_count=2, replicas=2)
        place._sum = lambda array: exchange(index, array)
        variables = [keras.Variable(np.full((2, 3), 10.0 * index + 1)), keras.Variable(np.int64(5 + index))]
        try:
            got = place.sync(variables, start, fingerprint)
            results[index] = (got, [np.asarray(keras.ops.convert_to_numpy(v)) for v in variables])
        except KoalarizationError as err:
            results[index] = err

    chief_start = backup.Start(3, 2, [1, None, 0.25])
    for fingerprints, agree in ((("a", "a"), True), (("a", "b"), False)):
        results = [None, None]
        threads = [threading.Thread(target=worker, args=(i, chief_start if i == 0 else backup.Start(),
                                                          fingerprints[i], results)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        if agree:
            for got, values in results:
                assert got == chief_start
                np.testing.assert_array_equal(values[0], np.full((2, 3), 1.0))
                assert values[1] == 5 and values[1].dtype == np.int64
        else:  # both stop, neither waits for the other forever
            assert all(isinstance(r, KoalarizationError) and "different photos" in str(r) for r in results)


def test_shards_split_every_batch_once_and_pad_with_weight_zero(photo_dir, tmp_path):
    from koalarization.data import cache

    files = sorted(photo_dir.rglob("*.*"))[:7]
    store = cache.build(files, tmp_path / "cache", 32, "tiny_random", progress=False)
    source = BatchSource(store, files, 4, seed=3)
    source.set_epoch(1)
    whole = [source[i][0] for i in range(len(source))]  # batches of 4 and 3
    views = [source.view(shard=(k, 2)) for k in range(2)]
    for view in views:
        view.set_epoch(1)
    for i, batch in enumerate(whole):
        parts = [view[i][0] for view in views]
        assert all(len(p["rgb"]) == 2 for p in parts)  # every replica gets 2 photos, padded if needed
        for key in ("rgb", "affine", "embedding"):  # the slices, in order, are the batch
            np.testing.assert_array_equal(np.concatenate([p[key] for p in parts])[: len(batch["rgb"])], batch[key])
        pad = np.concatenate([p["weight"] for p in parts])[len(batch["rgb"]):]
        assert pad.size == 4 - len(batch["rgb"]) and not pad.any()
    resumed = source.view(start=1)
    resumed.set_epoch(1)
    assert len(resumed) == 1 and np.array_equal(resumed[0][0]["rgb"], whole[1]["rgb"])
    with pytest.raises(KoalarizationError, match="batch_size 4 must be a multiple of the 3 replicas"):
        source.view(shard=(0, 3))


def test_segments_and_log_trimming(tmp_path):
    assert backup.segments(backup.Start(0, 0), 5) == [(0, 0)]
    assert backup.segments(backup.Start(2, 3), 5) == [(2, 3), (3, 0)]
    assert backup.segments(backup.Start(4, 3), 5) == [(4, 3)]
    log = tmp_path / "log.csv"
    log.write_text("epoch,loss\n0,1.0\n1,0.5\n2,0.4\n")
    backup.trim_log(log, 2)
    assert log.read_text().split() == ["epoch,loss", "0,1.0", "1,0.5"]


def test_keras_workaround_matches_the_installed_keras():
    """Fails when Keras changes the patched functions. Then run `pytest tests/test_distributed.py -k
    without_the_workaround`: if multi-worker `fit` works without it, delete the workaround, else check it
    against the new code and update KERAS_CHECKED and KERAS_SOURCES (docs/distributed.md)."""
    assert distribute.keras_needs_workaround(), (
        f"Keras {keras.__version__} is outside the versions checked for keras-team/keras#20585"
    )


def test_a_changed_keras_internal_is_a_one_line_error(monkeypatch):
    """The patch refuses to touch Keras functions whose source differs from the checked one."""
    monkeypatch.setitem(distribute.KERAS_SOURCES, "reduce_per_replica", "0" * 16)
    with pytest.raises(KoalarizationError, match=r"reduce_per_replica changed since .* issue 20585") as err:
        distribute.keras_needs_workaround()
    assert "\n" not in str(err.value) and "_maybe_symbolic_build" not in str(err.value)


# ------------------------------------------------------------------------------ MirroredStrategy, 2 CPUs
def test_mirrored_on_two_logical_cpus_matches_one_device(tmp_path):
    """Same seed, same global batch of 2 (one photo per replica): same losses and weights as one device."""
    data = make_photos(tmp_path / "photos", 10)  # 6 train photos: 3 full batches
    report = tmp_path / "report"
    with open(tmp_path / "log", "w") as log:
        code = subprocess.run([sys.executable, str(WORKER), "--tiny", "--mirrored", "2", "--report", str(report),
                               "--", *flags(data, tmp_path / "runs", 3)], stdout=log, stderr=subprocess.STDOUT,
                              timeout=TIMEOUT).returncode
    assert code == 0, (tmp_path / "log").read_text()[-3000:]
    single, mirrored = (json.loads(Path(f"{report}-{kind}.json").read_text()) for kind in ("single", "mirrored"))
    assert mirrored["devices"] == 2 and single["steps"] == mirrored["steps"] == 9
    for one, two in zip(single["epochs"], mirrored["epochs"], strict=True):
        assert two["loss"] == pytest.approx(one["loss"], rel=1e-5)
        assert two["val_loss"] == pytest.approx(one["val_loss"], rel=1e-5)
    assert single["epochs"][-1]["loss"] < single["epochs"][0]["loss"]  # it trains
    assert relative_difference(npz_weights(f"{report}-single"), npz_weights(f"{report}-mirrored")) < 1e-5


# -------------------------------------------------------------------- MultiWorkerMirroredStrategy, 2 CPUs
def test_two_workers_each_read_their_half_and_train_like_one_device(tmp_path):
    data = make_photos(tmp_path / "photos", 10)
    output = tmp_path / "run"
    reports = [tmp_path / "worker0", tmp_path / "worker1"]
    codes = wait_all(start_workers(tmp_path, reports, flags(data, output, 2)))
    assert codes == [0, 0], tail(reports[0]) + tail(reports[1])
    chief, other = (json.loads(Path(f"{r}.json").read_text()) for r in reports)
    train_photos = {Path(p).name for p in json.loads((output / "split.json").read_text())["train"]}
    for epoch in (0, 1):
        seen = [{name for e, name, w in report["served"] if e == epoch and w > 0} for report in (chief, other)]
        assert not seen[0] & seen[1] and seen[0] | seen[1] == train_photos  # each photo once per epoch
        assert len(seen[0]) == len(seen[1]) == 3
    assert chief["steps"] == other["steps"] == 6
    assert chief["epochs"] == other["epochs"]  # the same logs everywhere: callbacks decide alike
    assert relative_difference(npz_weights(reports[0]), npz_weights(reports[1])) == 0.0  # lock-step
    assert log_epochs(output) == ["0", "1"]  # written once, by the chief
    assert not list((tmp_path / "worker-tmp").glob("koalarization-*"))  # the other worker's folder is gone
    model, cfg = run.load_trained(output / run.WEIGHTS_FILE)
    assert cfg.model == ModelConfig(**TINY) and model.count_params() > 0
    # One device, same seed and global batch: the same training.
    alone = train_here(flags(data, tmp_path / "alone", 2))
    assert relative_difference(alone, npz_weights(reports[0])) < 1e-5


# ------------------------------------------------------------------------------------- fault tolerance
def test_sigkill_in_mid_epoch_resumes_from_the_last_backup_to_the_same_weights(long_epochs, tmp_path):
    data, uninterrupted = long_epochs
    output = tmp_path / "run"
    args = flags(data, output, 2, "--backup-every-steps", "2")
    with open(tmp_path / "log", "w") as log:  # killed after step 10 = epoch 1, batch 3 (backed up: 10 % 2 == 0)
        code = subprocess.run([sys.executable, str(WORKER), "--tiny", "--kill-at-step", "10", "--report",
                               str(tmp_path / "killed"), "--", *args], stdout=log, stderr=subprocess.STDOUT,
                              timeout=TIMEOUT).returncode
    assert code == -signal.SIGKILL, (tmp_path / "log").read_text()[-3000:]
    assert backup_position(output / "backup") == (1, 3)
    assert log_epochs(output) == ["0"]
    resumed = train_here(args)  # the same command again
    assert log_epochs(output) == ["0", "1"] and not (output / "backup").exists()
    assert relative_difference(uninterrupted, resumed) < 1e-6


def test_run_killed_while_writing_a_backup_resumes_from_the_previous_one(long_epochs, tmp_path):
    data, uninterrupted = long_epochs
    output = tmp_path / "run"
    args = flags(data, output, 2, "--backup-every-steps", "2")
    with open(tmp_path / "log", "w") as log:  # SIGKILL half-way through writing the step-10 backup
        code = subprocess.run([sys.executable, str(WORKER), "--tiny", "--kill-while-saving", "10", "--report",
                               str(tmp_path / "killed"), "--", *args], stdout=log, stderr=subprocess.STDOUT,
                              timeout=TIMEOUT).returncode
    assert code == -signal.SIGKILL, (tmp_path / "log").read_text()[-3000:]
    assert (output / "backup" / backup.INCOMING).is_file()  # the half-written one
    assert backup_position(output / "backup") == (1, 1)  # step 8
    assert relative_difference(uninterrupted, train_here(args)) < 1e-6


def test_unreadable_latest_backup_falls_back_to_the_previous_one(long_epochs, tmp_path):
    data, uninterrupted = long_epochs
    output = tmp_path / "run"
    args = flags(data, output, 2, "--backup-every-steps", "2")
    with pytest.raises(KeyboardInterrupt):
        train_here(args, stop=11)  # backups at steps 8 (epoch 1, batch 1) and 10 (batch 3)
    latest = output / "backup" / backup.LATEST
    latest.write_bytes(latest.read_bytes()[:1000])  # e.g. a disk that lost the end of the file
    assert relative_difference(uninterrupted, train_here(args)) < 1e-6  # resumed from step 8
    with pytest.raises(KeyboardInterrupt):
        train_here(flags(data, tmp_path / "again", 2, "--backup-every-steps", "2"), stop=11)
    for name in (backup.LATEST, backup.PREVIOUS):
        (tmp_path / "again" / "backup" / name).write_bytes(b"garbage")
    with pytest.raises(KoalarizationError, match="no readable backup"):
        train_here(flags(data, tmp_path / "again", 2, "--backup-every-steps", "2"))


@pytest.mark.large
def test_two_workers_one_killed_in_mid_epoch_restart_to_the_same_weights(long_epochs, tmp_path):
    data, uninterrupted = long_epochs
    output = tmp_path / "run"
    args = flags(data, output, 2, "--backup-every-steps", "2")
    reports = [tmp_path / "first0", tmp_path / "first1"]
    procs = start_workers(tmp_path, reports, args, "--step-sleep", "0.3")
    deadline = time.monotonic() + TIMEOUT
    while backup_position(output / "backup") not in {(1, 1), (1, 3), (1, 5)}:  # the second epoch, mid-way
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), tail(reports[0])
        time.sleep(0.05)
    procs[1].send_signal(signal.SIGKILL)
    # The chief notices the lost worker (TensorFlow's coordination service) and fails; give it a minute.
    codes = wait_all(procs, timeout=90)
    assert codes[1] == -signal.SIGKILL and codes[0] != 0
    stopped_at = backup_position(output / "backup")
    assert stopped_at[0] == 1 and stopped_at[1] > 0
    reports = [tmp_path / "again0", tmp_path / "again1"]
    codes = wait_all(start_workers(tmp_path, reports, args))  # the same job, restarted
    assert codes == [0, 0], tail(reports[0]) + tail(reports[1])
    assert log_epochs(output) == ["0", "1"] and not (output / "backup").exists()
    resumed = [npz_weights(r) for r in reports]
    assert relative_difference(resumed[0], resumed[1]) == 0.0
    assert relative_difference(uninterrupted, resumed[0]) < 1e-5


def test_multi_worker_fit_fails_without_the_workaround(tmp_path):
    """keras-team/keras#20585 is still there: if this fails, Keras fixed it; remove the workaround."""
    data = make_photos(tmp_path / "photos", 10)
    reports = [tmp_path / "worker0", tmp_path / "worker1"]
    codes = wait_all(start_workers(tmp_path, reports, flags(data, tmp_path / "run", 1), "--no-workaround"),
                     timeout=240)
    logs = tail(reports[0]) + tail(reports[1])
    assert codes != [0, 0]
    assert "PerReplica" in logs or "Invalid reduction dimension" in logs, logs
