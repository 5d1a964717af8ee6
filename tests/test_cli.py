"""The command line end to end on tiny photos: train, resume, test, and bad input."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from koalarization.cli import build_parser, main, run_config_from_args
from koalarization.training.train import train

from conftest import REPO, synthetic_photo

TINY = ["--image-size", "32", "--embedder", "tiny_random", "--batch-size", "2", "--workers", "2"]


def train_args(data, output, epochs=1, *extra):
    return ["train", "--data", str(data), "--output", str(output), "--epochs", str(epochs), *TINY, *extra]


def event_tags(log_dir: Path) -> set[str]:
    import tensorflow as tf

    tags = set()
    for events in log_dir.rglob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(events)):
            tags.update(v.tag for v in event.summary.value)
    return tags


def read_log(output):
    with open(output / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_train_one_epoch_writes_checkpoint_config_log_and_events(photo_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_args(photo_dir, out)) == 0
    assert "trained 1 epoch" in capsys.readouterr().out
    assert (out / "colorize.weights.h5").stat().st_size > 0
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["image_size"] == 32 and config["model"]["embedder"] == "tiny_random"
    split = json.loads((out / "split.json").read_text())
    assert len(split["train"]) + len(split["val"]) + len(split["test"]) == 8
    rows = read_log(out)
    assert [r["epoch"] for r in rows] == ["0"]
    assert {"loss", "val_loss", "learning_rate"} <= set(rows[0])
    assert np.isfinite(float(rows[0]["val_loss"]))
    tags = event_tags(out / "logs")
    assert "epoch_loss" in tags
    assert "validation/bw|predicted|actual" in tags  # colorized validation photos as image summaries
    with Image.open(out / "curves.png") as curves:
        assert curves.format == "PNG" and curves.size == (1000, 360)  # loss | learning rate panels
    assert not (out / "backup").exists()  # a finished run leaves no backup behind


class StopAfterFirstEpoch(keras.callbacks.Callback):
    """Stands for a Ctrl-C / kill right after the first epoch was backed up."""

    def on_epoch_end(self, epoch, logs=None):
        raise KeyboardInterrupt


def test_interrupted_run_resumes_at_the_next_epoch(photo_dir, tmp_path):
    out = tmp_path / "run"
    args = build_parser().parse_args(train_args(photo_dir, out, 3))
    cfg = run_config_from_args(args)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, callbacks=[StopAfterFirstEpoch()], verbose=0)
    assert (out / "backup").is_dir()
    assert [r["epoch"] for r in read_log(out)] == ["0"]
    # Started again with the same command: continues at the second epoch, not from scratch.
    assert main(train_args(photo_dir, out, 3)) == 0
    assert [r["epoch"] for r in read_log(out)] == ["0", "1", "2"]
    assert not (out / "backup").exists()


def test_resume_with_another_network_is_refused(photo_dir, tmp_path, capsys):
    out = tmp_path / "run"
    cfg = run_config_from_args(build_parser().parse_args(train_args(photo_dir, out, 2)))
    with pytest.raises(KeyboardInterrupt):
        train(cfg, callbacks=[StopAfterFirstEpoch()], verbose=0)
    assert main(train_args(photo_dir, out, 2, "--fusion-filters", "16")) == 1
    assert "different network" in capsys.readouterr().err
    assert main(train_args(photo_dir, out, 2, "--image-size", "40")) == 1
    assert "at 32 px" in capsys.readouterr().err


def test_test_command_writes_folders_metrics_and_summary(photo_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_args(photo_dir, out)) == 0
    test_out = tmp_path / "test"
    assert main(["test", "--data", str(photo_dir), "--weights", str(out / "colorize.weights.h5"),
                 "--output", str(test_out)]) == 0
    summary = json.loads((test_out / "summary.json").read_text())
    held_out = json.loads((out / "split.json").read_text())["test"]
    assert summary["n_images"] == len(held_out) == 2
    for folder in ("predicted", "bw", "actual"):
        written = sorted(p.name for p in (test_out / folder).iterdir())
        assert len(written) == 2
        # colorize's output: the photo's own size (synthetic photos are 48 x 40), not the 32 px network input
        assert all(Image.open(test_out / folder / name).size == (40, 48) for name in written)
    for key in ("psnr", "ssim", "colorfulness", "gray_psnr", "gray_ssim", "gt_colorfulness", "auc", "gray_auc"):
        assert np.isfinite(summary[key]), key
    assert 5 < summary["gray_psnr"] < 60
    assert summary["gt_colorfulness"] > 10
    with Image.open(test_out / "grid.png") as grid:  # one 320 px row per sampled photo, 3 columns
        assert grid.format == "PNG" and grid.size == (1110, 320 * 2)
    with open(test_out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    bw = np.asarray(Image.open(next((test_out / "bw").iterdir())).convert("RGB")).astype(int)
    assert np.abs(bw[..., 0] - bw[..., 1]).max() <= 1  # bw/ is gray: colourfulness ~ 0
    from koalarization.inference.evaluate import colorfulness

    assert colorfulness(bw.astype(np.uint8)) < 1.0
    # predicted/ holds exactly what `colorize` writes for the same photos: the same bytes
    sources = [next(photo_dir.rglob(Path(name).stem + ".*")) for name in written]
    assert main(["colorize", *map(str, sources), "--weights", str(out / "colorize.weights.h5"),
                 "--out", str(tmp_path / "colorized")]) == 0
    for name in written:
        assert (tmp_path / "colorized" / name).read_bytes() == (test_out / "predicted" / name).read_bytes(), name

    # Another folder (no saved split for it): every photo; a photo that is gray itself is counted apart,
    # so the means stay finite (its gray baseline would be a perfect, infinite-PSNR copy).
    other = tmp_path / "other"
    other.mkdir()
    Image.fromarray(synthetic_photo(50)).save(other / "colour.png")
    Image.fromarray(synthetic_photo(51)[..., 1]).convert("RGB").save(other / "gray.png")
    assert main(["test", "--data", str(other), "--weights", str(out / "colorize.weights.h5"),
                 "--output", str(tmp_path / "test2")]) == 0
    summary = json.loads((tmp_path / "test2" / "summary.json").read_text())
    assert summary["n_images"] == 1 and summary["n_gray_truth"] == 1
    assert all(np.isfinite(summary[k]) for k in ("psnr", "gray_psnr", "ssim", "gray_ssim"))


def test_empty_folder_is_one_clear_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(train_args(tmp_path / "empty", tmp_path / "run")) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no photos found" in err and "empty" in err
    Image.fromarray(synthetic_photo(3)[..., 0]).save(tmp_path / "empty" / "gray.png")
    assert main(train_args(tmp_path / "empty", tmp_path / "run")) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no usable colour photos" in err


def test_corrupt_and_fake_images_are_skipped_with_warnings(photo_dir, tmp_path, capsys, caplog):
    (photo_dir / "fake.jpg").write_text("this is text, not a JPEG")
    (photo_dir / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    out = tmp_path / "run"
    assert main(train_args(photo_dir, out)) == 0
    assert "skipped 2 file(s)" in capsys.readouterr().out
    messages = [r.getMessage() for r in caplog.records]
    assert any("fake.jpg" in m and "not an image" in m for m in messages)
    assert any("corrupt.png" in m for m in messages)


def test_missing_weights_is_one_clear_error(photo_dir, tmp_path, capsys):
    code = main(["test", "--data", str(photo_dir), "--weights", str(tmp_path / "nope.weights.h5")])
    assert code == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nope.weights.h5" in err and "not found" in err


def test_wrong_weights_file_is_one_clear_error(photo_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_args(photo_dir, out)) == 0
    (out / "colorize.weights.h5").write_bytes(b"garbage")
    code = main(["test", "--data", str(photo_dir), "--weights", str(out / "colorize.weights.h5")])
    assert code == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "cannot load" in err


def test_unknown_embedder_is_one_clear_error(photo_dir, tmp_path, capsys):
    args = train_args(photo_dir, tmp_path / "run")
    args[args.index("tiny_random")] = "resnet9000"
    assert main(args) == 1
    assert "unknown embedder" in capsys.readouterr().err


def test_out_of_range_flags_are_one_line_naming_the_flag(photo_dir, tmp_path, capsys):
    """Refused before any photo is read, so no run folder is started."""
    for flag, value, message in (("--batch-size", "0", "--batch-size 0: must be at least 1"),
                                 ("--reduce-lr-factor", "2", "--reduce-lr-factor 2: must be above 0 and below 1"),
                                 ("--zoom", "1.5", "--zoom 1.5: must be at least 0 and below 1")):
        assert main([*train_args(photo_dir, tmp_path / "run"), flag, value]) == 1
        err = capsys.readouterr().err.strip()
        assert err == f"koalarization train: error: {message}"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args, message", [
    (["test", "--data", "DATA", "--batch-size", "0"], "test: error: --batch-size 0: must be at least 1"),  # range()
    (["test", "--data", "DATA", "--limit", "-1"], "test: error: --limit -1: must be at least 1"),  # [:-1]
    (["test", "--data", "DATA", "--grid-rows", "0"], "test: error: --grid-rows 0: must be at least 1"),  # matplotlib
    (["colorize", "DATA", "--batch-size", "0"], "colorize: error: --batch-size 0: must be at least 1"),
    (["serve", "--port", "70000"], "serve: error: --port 70000: must be at least 0 and at most 65535"),
    (["benchmark", "train", "--warmup", "-1"], "benchmark: error: --warmup -1: must be at least 0"),
])
def test_out_of_range_numbers_of_the_other_commands_are_one_line(args, message, photo_dir, tmp_path, capsys,
                                                                  monkeypatch):
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    assert main([str(photo_dir) if a == "DATA" else a for a in args]) == 1
    assert capsys.readouterr().err.strip() == f"koalarization {message}"
    assert not any((tmp_path / "work").iterdir())  # refused before anything is written


# What TensorFlow's C++ libraries write while they load (absl, oneDNN, CPU-feature notices).
TF_START_UP = ("absl::InitializeLog", "oneDNN custom operations", "cpu_feature_guard")


def test_a_command_shows_only_its_own_error_and_verbose_shows_tensorflow_start_up(tmp_path):
    """A real process, as in a terminal. oneDNN switched on makes TensorFlow log at start-up even at
    TF_CPP_MIN_LOG_LEVEL=3 (the environment variable alone does not hide it)."""
    (tmp_path / "empty").mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_ENABLE_ONEDNN_OPTS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}

    def run(*flags):
        command = [sys.executable, "-m", "koalarization", *flags, "test", "--data", str(tmp_path / "empty"),
                   "--output", str(tmp_path / "out")]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)

    loud = run("--verbose")
    assert loud.returncode == 1, loud.stderr
    if not any(line in loud.stderr for line in TF_START_UP):
        pytest.skip("this TensorFlow build writes no start-up lines here, so there is nothing to hide")
    quiet = run()
    assert quiet.returncode == 1
    # Only our error: the start-up lines are gone and stderr works again after Keras was imported.
    assert quiet.stderr.splitlines() == [f"koalarization test: error: --data {tmp_path / 'empty'}: no photos to test on"]
