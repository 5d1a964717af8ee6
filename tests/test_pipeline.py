"""The training model's in-graph preprocessing computes what the host used to: the same warp, the same Lab,
the same weighted loss; and `train` runs end to end on it."""

import json

import numpy as np
import pytest
from PIL import Image

from koalarization import color
from koalarization.cli import main
from koalarization.config import AugmentConfig
from koalarization.data import batches
from koalarization.model.preprocessor import Preprocessor

from conftest import synthetic_photo
from test_cli import event_tags


def host_warp(rgb: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """The host-side augmentation the batch source used to run: a Pillow affine warp about the centre, with
    the photo's edge repeated (Keras' fill_mode="nearest") and a bilinear, uint8-truncated result."""
    size, pad = rgb.shape[0], rgb.shape[0]
    padded = Image.fromarray(np.pad(rgb, ((pad, pad), (pad, pad), (0, 0)), mode="edge"))
    (a, b), (d, e) = matrix
    c = size / 2 + pad - (a + b) * size / 2
    f = size / 2 + pad - (d + e) * size / 2
    return np.asarray(padded.transform((size, size), Image.Transform.AFFINE, (a, b, c, d, e, f),
                                       Image.Resampling.BILINEAR))


def preprocess(rgb, affine, fill="nearest"):
    """Training's Preprocessor on uint8 photos (B, S, S, 3) -> NumPy (L (B, S, S, 1), ab target (B, S, S, 2))."""
    seen = Preprocessor(rgb.shape[1], fill=fill, targets=True)(rgb, affine)
    return np.asarray(seen["L"]), np.asarray(seen["ab"])


def test_in_graph_warp_and_lab_equal_the_host_arithmetic():
    rng = np.random.default_rng(1)
    rgb = np.stack([synthetic_photo(i, (32, 32)) for i in range(4)])
    aug = AugmentConfig(rotation=30, zoom=0.3, shear=10)
    affine = np.stack([batches.random_affine(rng, aug) for _ in range(4)]).astype(np.float32)
    lightness, ab = preprocess(rgb, affine)
    expected = np.stack([host_warp(x, m) for x, m in zip(rgb, affine)])
    # The host's warp truncated its bilinear result to uint8: on average 0.5 darker, never more than 1.
    lab = color.rgb_to_lab(expected.astype(np.float64) / 255)
    warped_l = color.unscale_l(lightness)
    assert np.all(warped_l - lab[..., :1] > -1e-3)
    assert 0 < np.mean(warped_l - lab[..., :1]) < 0.4  # L units of 100: 0.5 of 255 is about 0.2
    np.testing.assert_allclose(color.unscale_ab(ab), lab[..., 1:], atol=1.0)  # ab moves less than 1 of 128
    # the identity matrix: exactly color.rgb_to_lab of the photo, within float32
    identity = np.tile(np.eye(2, dtype=np.float32), (4, 1, 1))
    lightness, ab = preprocess(rgb, identity)
    lab = color.rgb_to_lab(rgb.astype(np.float64) / 255)
    np.testing.assert_allclose(lightness, color.scale_l(lab[..., :1]), atol=1e-4)
    np.testing.assert_allclose(ab, color.scale_ab(lab[..., 1:]), atol=1e-4)


@pytest.mark.parametrize("fill", ["nearest", "reflect"])
def test_warp_equals_keras_affine_transform(fill):
    """preprocessor.warp is keras.ops.image.affine_transform's bilinear sampling, in ops that XLA compiles."""
    import keras

    from koalarization.model.preprocessor import affine_params, warp

    rng = np.random.default_rng(4)
    rgb = np.stack([synthetic_photo(i, (24, 24)) for i in range(3)])
    affine = np.stack([batches.random_affine(rng, AugmentConfig(rotation=40, zoom=0.5, shear=20))
                       for _ in range(3)]).astype(np.float32)
    ours = np.asarray(warp(rgb, affine, fill))
    theirs = keras.ops.image.affine_transform(rgb.astype(np.float32), affine_params(affine, 24),
                                              interpolation="bilinear", fill_mode=fill)
    np.testing.assert_allclose(ours, np.asarray(theirs), atol=1e-3)


def test_reflect_fill_mirrors_the_photo_instead_of_repeating_its_edge():
    rgb = np.zeros((1, 32, 32, 3), np.uint8)
    rgb[0, :, :4] = 255  # a white stripe along the left edge
    shrink = np.array([[[1.5, 0.0], [0.0, 1.0]]], np.float32)  # reads 25 % beyond each side
    nearest, _ = preprocess(rgb, shrink, "nearest")
    reflect, _ = preprocess(rgb, shrink, "reflect")
    left = lambda lightness: np.asarray(lightness)[0, 16, :8, 0]  # noqa: E731
    assert (left(nearest) > 0.9).all()  # the edge repeated: a wide white band
    assert (left(reflect)[:2] < -0.9).all() and (left(reflect)[3:5] > 0.9).all()  # black beyond the mirror


def test_train_end_to_end_writes_the_validation_images_and_curve(photo_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", str(photo_dir), "--output", str(out), "--epochs", "1", "--image-size", "32",
                 "--embedder", "tiny_random", "--batch-size", "2", "--workers", "2", "--fill", "reflect",
                 "--validate-every-steps", "2"]) == 0
    printed = capsys.readouterr().out
    assert "trained 1 epoch(s): ran the epochs asked for; best epoch 1 (val_loss" in printed
    config = json.loads((out / "config.json").read_text())["train"]
    assert config["augment"]["fill"] == "reflect" and config["validate_every_steps"] == 2
    assert "validation/bw|predicted|actual" in event_tags(out / "logs")
    curve = (out / "curve.csv").read_text().splitlines()
    assert curve[0] == "step,photos,val_loss" and [r.split(",")[0] for r in curve[1:]] == ["2", "3"]
    with Image.open(out / "curve.png") as picture:  # drawn from those rows
        assert picture.format == "PNG" and picture.width > 300


def test_validation_curve_plot_draws_loss_against_photos_seen(tmp_path):
    from koalarization.plots import plot_validation_curve

    (tmp_path / "curve.csv").write_text("step,photos,val_loss\n1000,32000,0.0121\n2000,64000,0.0117\n")
    out = plot_validation_curve(tmp_path / "curve.csv", tmp_path / "curve.png", baseline=0.0156)
    figure = np.asarray(Image.open(out).convert("L"))
    assert figure.shape == (360, 600) and figure.std() > 10  # a drawn plot, not a blank canvas
