"""Exported models are the whole of `colorize`: uint8 photo in, uint8 colorized photo out, in TensorFlow
SavedModel and ONNX, equal to what `colorize` writes for the same photo."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from koalarization.cli import main
from koalarization.data import images
from koalarization.errors import KoalarizationError
from koalarization.inference.colorize import Colorizer
from koalarization.inference.export import export

from test_colorize import make_weights

DATA = Path(__file__).resolve().parents[1] / "data"
# Three shipped photos of different shapes (each shrunk more than config.REDUCING_GAP times to the tiny
# network's 32 px, so the box reduction runs too), a small one that is stretched to S x S, and a portrait.
PHOTOS = ("astronaut.jpg", "coffee.jpg", "chelsea.jpg")


def assert_same_as_colorize(got: np.ndarray, expected: np.ndarray) -> None:
    """Within one level everywhere: both squash with Pillow's arithmetic (resize.py) and join alike; only
    float rounding in the network and the colour formulas differs."""
    assert got.dtype == np.uint8 and got.shape == expected.shape
    diff = np.abs(got.astype(np.int16) - expected.astype(np.int16))
    assert diff.max() <= 1, diff.max()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    weights = make_weights(tmp_path_factory.mktemp("run"), ab_bias=(0.1, -0.05))
    photos = [images.load_rgb(DATA / name) for name in PHOTOS]
    photos.append(photos[0][:20, :27])  # smaller than the network's 32 x 32: upsampled on the way in
    photos.append(np.ascontiguousarray(photos[2].transpose(1, 0, 2)))  # portrait
    colorizer = Colorizer(weights)
    expected = [colorizer.colorize(rgb) for rgb in photos]
    # a model that gave back its input's gray would match a gray colorize: these are coloured
    assert all(images_colourful(e) for e in expected)
    return weights, photos, expected


def images_colourful(rgb: np.ndarray) -> bool:
    return float(np.ptp(rgb.astype(np.int16), axis=-1).mean()) > 5.0


def test_savedmodel_is_colorize(trained, tmp_path):
    import tensorflow as tf

    weights, photos, expected = trained
    out = export(weights, "savedmodel", tmp_path / "saved")
    assert out == tmp_path / "saved" and (out / "saved_model.pb").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["saved"]  # no temporary left behind
    reloaded = tf.saved_model.load(str(out))
    for rgb, want in zip(photos, expected):
        got = reloaded.serve(tf.constant(rgb[None])).numpy()[0]
        assert_same_as_colorize(got, want)
    # a batch of photos of one size gives each its own colours
    batch = reloaded.serve(tf.constant(np.stack([photos[0], photos[0][::-1]]))).numpy()
    assert_same_as_colorize(batch[0], expected[0])
    assert np.abs(batch[1].astype(int) - batch[0].astype(int)).max() > 0


def test_onnx_is_colorize(trained, tmp_path):
    pytest.importorskip("tf2onnx", reason="ONNX export needs tf2onnx (pip install -e .[test])")
    ort = pytest.importorskip("onnxruntime", reason="checking the ONNX file needs onnxruntime")
    weights, photos, expected = trained
    out = export(weights, "onnx", tmp_path / "model.onnx")
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (image,) = session.get_inputs()
    assert image.name == "image" and image.type == "tensor(uint8)"
    for rgb, want in zip(photos, expected):
        assert_same_as_colorize(session.run(None, {"image": rgb[None]})[0][0], want)


def test_export_command_and_errors(trained, tmp_path, capsys):
    weights = trained[0]
    (tmp_path / "again").mkdir()
    (tmp_path / "again" / "stale.txt").write_text("an older export")
    assert main(["export", "--weights", str(weights), "--format", "savedmodel", "--out", str(tmp_path / "again")]) == 0
    assert not (tmp_path / "again" / "stale.txt").exists() and (tmp_path / "again" / "saved_model.pb").is_file()
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"exported savedmodel to {tmp_path / 'again'}"
    with pytest.raises(KoalarizationError, match="format tflite: choose one of savedmodel, onnx"):
        export(weights, "tflite", tmp_path / "x")
    with pytest.raises(KoalarizationError, match="file not found"):
        export(tmp_path / "missing.weights.h5", "savedmodel", tmp_path / "y")
