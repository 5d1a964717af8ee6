"""Exported models give the Keras model's output: TensorFlow SavedModel and ONNX, within 1e-4."""

from __future__ import annotations

import numpy as np
import pytest

from koalarization.cli import main
from koalarization.errors import KoalarizationError
from koalarization.inference.export import export
from koalarization.run import load_trained

from test_colorize import make_weights

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    weights = make_weights(tmp_path_factory.mktemp("run"), ab_bias=(0.1, -0.05))
    model, cfg = load_trained(weights)
    size = cfg.train.image_size
    # L in [-1, 1] of a smooth gray image plus noise, 3 photos: exercises the batch dimension too.
    rng = np.random.default_rng(0)
    ramp = np.linspace(-0.9, 0.9, size * size, dtype=np.float32).reshape(1, size, size, 1)
    lightness = np.clip(ramp + rng.normal(0, 0.2, (3, size, size, 1)), -1, 1).astype(np.float32)
    inputs = {"L": lightness, "L_embedder": lightness[:, ::-1].copy()}  # tiny_random's resolution is 32 too
    return weights, inputs, np.asarray(model.predict_on_batch(inputs))


def test_savedmodel_matches_keras(trained, tmp_path):
    import tensorflow as tf

    weights, inputs, expected = trained
    out = export(weights, "savedmodel", tmp_path / "saved")
    assert out == tmp_path / "saved" and (out / "saved_model.pb").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["saved"]  # no temporary left behind
    reloaded = tf.saved_model.load(str(out))
    got = reloaded.serve({k: tf.constant(v) for k, v in inputs.items()}).numpy()
    assert got.shape == expected.shape == inputs["L"].shape[:3] + (2,)
    assert np.abs(got - expected).max() < TOLERANCE
    assert np.abs(expected).max() > 0.01  # a model that outputs zeros would match trivially


def test_onnx_matches_keras(trained, tmp_path):
    pytest.importorskip("tf2onnx", reason="ONNX export needs tf2onnx (pip install -e .[test])")
    ort = pytest.importorskip("onnxruntime", reason="checking the ONNX file needs onnxruntime")
    weights, inputs, expected = trained
    out = export(weights, "onnx", tmp_path / "model.onnx")
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert sorted(i.name for i in session.get_inputs()) == ["L", "L_embedder"]
    got = session.run(None, inputs)[0]
    assert np.abs(got - expected).max() < TOLERANCE


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
