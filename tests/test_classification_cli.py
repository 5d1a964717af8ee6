"""`train --loss classification`, `--init-from`, the cosine schedule and the temperature dial, end to end on
tiny photos; `test` scores exactly what `colorize` writes."""

import json

import numpy as np
import pytest
from PIL import Image

from koalarization import color
from koalarization.cli import build_parser, main, run_config_from_args
from koalarization.inference.evaluate import ab_accuracy_auc, colorfulness
from koalarization.model import distribution
from koalarization.run import PRIOR_FILE
from koalarization.training.train import train

from conftest import synthetic_photo
from test_cli import StopAfterFirstEpoch, read_log, train_args

CLASSIFICATION = ["--loss", "classification", "--learning-rate", "3e-3"]


@pytest.fixture
def classification_run(photo_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "cls"
    assert main(train_args(photo_dir, out, 3, *CLASSIFICATION)) == 0
    return out


def test_classification_run_stores_its_bins_prior_and_config(classification_run):
    config = json.loads((classification_run / "config.json").read_text())
    assert config["model"]["loss"] == "classification" and config["model"]["temperature"] == 0.38
    prior = json.loads((classification_run / PRIOR_FILE).read_text())
    assert np.array_equal(np.asarray(prior["bins"], np.float32), distribution.bins())
    weights, p = np.asarray(prior["class_weights"]), np.asarray(prior["prior"])
    assert float(np.sum(p * weights)) == pytest.approx(1.0) and weights.std() > 0  # rebalanced
    trained_on = json.loads((classification_run / "split.json").read_text())["train"]
    assert sum(prior["counts"]) == len(trained_on) * 32 * 32  # every pixel of the training photos


def make_bimodal_weights(folder):
    """A tiny classification-head run whose head says, for every pixel, 'red, or else green' (logits 3 and 2
    on a red and the greenest bin, -10 elsewhere): the mean (T = 1) mixes the two, a low T picks red."""
    from koalarization.config import UP, ModelConfig, RunConfig, TrainConfig
    from koalarization.model.embedders import build_embedder
    from koalarization.model.network import build_model, colorizer_of

    cfg = ModelConfig(encoder=((8, 2), (8, 1), (16, 2), (16, 1), (16, 2), (16, 1), (16, 1), (8, 1)),
                      fusion_filters=8, decoder=(16, UP, 8, UP, 8, 8), embedder="tiny_random", loss="classification")
    colorizer = colorizer_of(build_model(cfg, build_embedder("tiny_random")))
    head = colorizer.get_layer("decoder").get_layer("decoder_bins")
    centres = distribution.bins()
    bias = np.full(len(centres), -10.0, np.float32)
    bias[np.argmax(centres[:, 0] + centres[:, 1])] = 3.0  # red: a and b high, (80, 70)
    bias[np.argmin(centres[:, 0])] = 2.0  # green: a lowest, (-90, 80)
    kernel = head.get_weights()[0]
    head.set_weights([np.zeros_like(kernel), bias])
    folder.mkdir(parents=True, exist_ok=True)
    colorizer.save_weights(folder / "colorize.weights.h5")
    (folder / "config.json").write_text(RunConfig(model=cfg, train=TrainConfig(image_size=32)).to_json())
    return folder / "colorize.weights.h5"


def test_temperature_dial_of_colorize(classification_run, photo_dir, tmp_path, capsys):
    weights = str(make_bimodal_weights(tmp_path / "bimodal"))
    photo = str(next(photo_dir.glob("*.jpg")))
    vivid = {}
    for t in ("0.25", "1.0"):
        out = tmp_path / t
        assert main(["colorize", photo, "--weights", weights, "--out", str(out), "--temperature", t]) == 0
        vivid[t] = colorfulness(np.asarray(Image.open(next(out.iterdir())).convert("RGB")))
    assert vivid["0.25"] > vivid["1.0"] * 1.1, vivid
    capsys.readouterr()
    trained = str(classification_run / "colorize.weights.h5")  # a trained run refuses bad values alike
    for bad in ("0", "-1", "nan", "11"):
        assert main(["colorize", photo, "--weights", trained, "--out", str(tmp_path / "bad"), "--temperature", bad]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "temperature" in err, err
    # weights trained with MSE (the shipped ones) refuse a temperature
    assert main(["colorize", photo, "--out", str(tmp_path / "mse"), "--temperature", "0.5"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "MSE" in err, err


def test_test_scores_and_writes_exactly_what_colorize_writes(classification_run, photo_dir, tmp_path):
    weights = str(classification_run / "colorize.weights.h5")
    assert main(["test", "--data", str(photo_dir), "--weights", weights, "--output", str(tmp_path / "t"),
                 "--temperature", "0.5"]) == 0
    held_out = json.loads((classification_run / "split.json").read_text())["test"]
    inputs = [str(photo_dir / name) for name in held_out]
    assert main(["colorize", *inputs, "--weights", weights, "--out", str(tmp_path / "c"), "--temperature", "0.5"]) == 0
    written = sorted(p.name for p in (tmp_path / "t" / "predicted").iterdir())
    assert written == sorted(p.name for p in (tmp_path / "c").iterdir()) and len(written) == 2
    for name in written:
        ours = np.asarray(Image.open(tmp_path / "t" / "predicted" / name))
        assert np.array_equal(ours, np.asarray(Image.open(tmp_path / "c" / name)))
        assert ours.shape == (48, 40, 3)  # the photo's own size
    summary = json.loads((tmp_path / "t" / "summary.json").read_text())
    assert summary["temperature"] == 0.5 and 0 < summary["gray_auc"] < 1 and 0 < summary["auc"] < 1


def test_ab_accuracy_is_one_for_the_photo_itself_and_lower_for_gray():
    photo = synthetic_photo(3)
    true_ab = color.network_ab(photo)
    assert ab_accuracy_auc(true_ab, photo) == pytest.approx(1.0)
    gray = np.repeat(photo.mean(-1, keepdims=True).astype(np.uint8), 3, -1)
    assert ab_accuracy_auc(true_ab, gray) < 0.9


def test_init_from_copies_the_trunk_and_a_resumed_classification_run_continues(photo_dir, tmp_path, caplog):
    mse = tmp_path / "mse"
    assert main(train_args(photo_dir, mse, 1)) == 0
    out = tmp_path / "warm"
    args = train_args(photo_dir, out, 3, *CLASSIFICATION, "--init-from", str(mse), "--lr-schedule", "cosine")
    cfg = run_config_from_args(build_parser().parse_args(args))
    with caplog.at_level("INFO"), pytest.raises(KeyboardInterrupt):
        train(cfg, callbacks=[StopAfterFirstEpoch()], verbose=0)
    assert "layers copied, 1 left as initialised (decoder_bins)" in caplog.text
    assert main(args) == 0  # resumes (no second warm start: the backup has the weights)
    rows = read_log(out)
    assert [r["epoch"] for r in rows] == ["0", "1", "2"]
    rates = [float(r["learning_rate"]) for r in rows]
    assert rates[0] > rates[1] > rates[2]  # cosine decay, continued across the interruption


def test_init_from_a_missing_or_unrelated_run_is_one_line(photo_dir, tmp_path, capsys):
    assert main(train_args(photo_dir, tmp_path / "a", 1, "--init-from", str(tmp_path / "nothing.h5"))) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nothing.h5" in err and "not found" in err


def test_an_exported_classification_model_returns_colours_at_its_temperature(classification_run, tmp_path):
    tf = pytest.importorskip("tensorflow")
    from koalarization.inference.colorize import Colorizer
    from koalarization.inference.export import export

    weights = classification_run / "colorize.weights.h5"
    rgb = np.random.default_rng(0).integers(0, 256, (40, 52, 3)).astype(np.uint8)
    expected = Colorizer(weights).colorize(rgb)  # at config.json's temperature, 0.38
    out = export(weights, "savedmodel", tmp_path / "saved")
    reloaded = tf.saved_model.load(str(out))  # kept: its variables (the temperature) live in this object
    got = reloaded.serve(tf.constant(rgb[None])).numpy()[0]
    assert got.shape == rgb.shape and got.dtype == np.uint8  # a photo, not the bins' probabilities
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1
