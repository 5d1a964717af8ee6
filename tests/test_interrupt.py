"""A training run SIGKILLed mid-epoch or mid-write resumes with the same command: no epoch lost or logged
twice, and no half-written weights file ever read.

The killed run is a real `koalarization train` process (tests/train_with_kill.py kills it at a chosen
batch, or halfway through writing a chosen weights file); the resumed run is the plain command.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from koalarization.cli import main
from koalarization.run import STAMP, load_trained
from koalarization.training import backup

from conftest import REPO

KILLER = Path(__file__).with_name("train_with_kill.py")
TINY = ["--image-size", "32", "--embedder", "tiny_random", "--batch-size", "2", "--workers", "2"]
STEPS = 3  # photo_dir: 8 photos -> 5 train (3 batches of 2), 1 val, 2 test


def train_args(data, output, epochs=2, *extra):
    return ["--data", str(data), "--output", str(output), "--epochs", str(epochs), *TINY, *extra]


def run_killed(mode: list[str], args: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run([sys.executable, str(KILLER), *mode, "--", *args], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=240)
    assert done.returncode == -9, done.stderr[-2000:]  # SIGKILL: no cleanup ran
    return done


def log_epochs(output: Path) -> list[int]:
    with open(output / "log.csv", newline="") as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


def backup_position(path: Path) -> tuple[int, int]:
    with h5py.File(path, "r") as f:
        start = json.loads(f.attrs[backup.ATTRIBUTE])
    return start["epoch"], start["batch"]


def resume_and_check(args, output: Path, epochs: int, caplog) -> str:
    """Rerun the same command in this process; -> its log text. The run completes with every epoch logged
    once, no backup left, and best weights that load and are finite."""
    caplog.set_level(logging.INFO)
    assert main(["train", *args]) == 0
    assert log_epochs(output) == list(range(epochs))
    assert not (output / "backup").exists()
    model, cfg = load_trained(output / "colorize.weights.h5")
    assert cfg.train.image_size == 32 and all(np.isfinite(w).all() for w in model.get_weights())
    with h5py.File(output / "colorize.weights.h5") as f:
        assert json.loads(f.attrs[STAMP])["embedder"] == "tiny_random"
    return "\n".join(r.getMessage() for r in caplog.records)


def test_killed_mid_epoch_resumes_at_the_batch_it_reached(photo_dir, tmp_path, caplog):
    out = tmp_path / "run"
    args = train_args(photo_dir, out, 2, "--backup-every-steps", "1")
    run_killed(["batch", "1", "2"], args)  # as batch 2 of the second epoch begins
    # Backed up after every step: the newest backup is epoch 1 with 2 batches done, the one before it 1.
    assert backup_position(out / "backup" / backup.LATEST) == (1, 2)
    assert backup_position(out / "backup" / backup.PREVIOUS) == (1, 1)
    assert log_epochs(out) == [0]
    load_trained(out / "colorize.weights.h5")  # epoch 0's best weights are complete already

    messages = resume_and_check(args, out, 2, caplog)
    assert "resuming the interrupted run in" in messages and "at epoch 1, batch 2" in messages


@pytest.mark.large  # ~30 s; the default run kills during the best-weights write below
def test_killed_while_writing_a_backup_resumes_from_the_one_before(photo_dir, tmp_path, caplog):
    out = tmp_path / "run"
    args = train_args(photo_dir, out, 2)
    run_killed(["write", backup.INCOMING, "2"], args)  # the end-of-epoch backup of the second epoch
    (partial,) = (out / "backup").glob(f".{backup.INCOMING}.*")  # half written, never renamed
    with pytest.raises(OSError):
        h5py.File(partial, "r")
    assert backup_position(out / "backup" / backup.LATEST) == (1, 0)
    assert log_epochs(out) == [0, 1]  # logged before the backup: the resumed run must not log it twice

    messages = resume_and_check(args, out, 2, caplog)
    assert "at epoch 1, batch 0" in messages


def test_killed_while_writing_the_best_weights_keeps_no_partial_file(photo_dir, tmp_path, caplog):
    out = tmp_path / "run"
    args = train_args(photo_dir, out, 2, "--backup-every-steps", "2")
    run_killed(["write", "colorize.weights.h5", "1"], args)  # the first epoch's best weights
    # The half-written file has its temporary name; the real name never existed, so nothing can load it.
    assert len(list(out.glob(".colorize.weights.h5.*"))) == 1 and not (out / "colorize.weights.h5").exists()
    assert backup_position(out / "backup" / backup.LATEST) == (0, 2)
    assert main(["test", "--data", str(photo_dir), "--weights", str(out / "colorize.weights.h5"),
                 "--output", str(tmp_path / "test")]) == 1

    messages = resume_and_check(args, out, 2, caplog)
    assert "at epoch 0, batch 2" in messages
    assert not list(out.rglob(".*.tmp*"))  # the resumed run removed the killed one's partial file
