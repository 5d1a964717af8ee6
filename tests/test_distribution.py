"""The colour-distribution head (model/distribution.py) against independent NumPy arithmetic, and its
behaviour: it overfits one photo to vivid colour, and the temperature dial works on a compiled model."""

import keras
import numpy as np
import pytest

from koalarization import color
from koalarization.config import UP, ModelConfig
from koalarization.errors import KoalarizationError
from koalarization.inference.evaluate import colorfulness
from koalarization.model import distribution
from koalarization.model.network import build_model, colorizer_of, has_temperature, set_temperature
from koalarization.model.task import build_training_model


def test_gamut_bins_are_the_bins_of_every_srgb_colour():
    bins = color.gamut_ab_bins()
    assert bins.shape[1] == 2 and len(bins) == 261
    assert np.all(bins % color.AB_BIN_STEP == 0)
    # Inside the cube too (every 5th level): each colour's rounded cell is one of the surface's bins.
    levels = np.arange(0, 256, 5, dtype=np.uint8)
    cube = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), -1).reshape(-1, 3)
    cells = np.round(color.unscale_ab(color.network_ab(cube)) / color.AB_BIN_STEP) * color.AB_BIN_STEP
    known = {tuple(b) for b in bins.astype(int)}
    assert {tuple(c) for c in cells.astype(int)} <= known
    # and the gamut's extremes are there: pure red, green, blue, yellow
    for rgb in ([255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]):
        ab = color.unscale_ab(color.network_ab(np.array([rgb], np.uint8)))[0]
        assert tuple((np.round(ab / 10) * 10).astype(int)) in known


def soft_targets(indices, weights, q):
    """(..., K) indices and weights -> the soft-encoded distribution (..., Q)."""
    out = np.zeros((*indices.shape[:-1], q))
    np.put_along_axis(out, indices, weights, axis=-1)
    return out


def test_nearest_bins_match_a_brute_force_search():
    """On the ab of photos' pixels (random sRGB colours, and 2x2 averages of them as the loss takes them)
    the 16-candidate search gives the soft targets of a search over all Q bins."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (4, 2, 64, 3), dtype=np.uint8)
    ab = color.unscale_ab(color.network_ab(rgb))
    ab = np.concatenate([ab.reshape(-1, 2), ab.mean(axis=1).reshape(-1, 2)]).astype(np.float32)
    centres = distribution.bins()
    indices, weights = (np.asarray(x) for x in distribution.nearest_bins(keras.ops.convert_to_tensor(ab)))
    distance2 = ((ab[:, None, :] - centres) ** 2).sum(-1)
    expected = np.argsort(distance2, axis=-1)[:, : distribution.NEIGHBOURS]
    np.testing.assert_array_equal(indices[:, 0], expected[:, 0])  # the nearest bin, first
    nearest = np.take_along_axis(distance2, expected, -1)
    gauss = np.exp(-(nearest - nearest[:, :1]) / (2 * distribution.SIGMA**2))
    q = len(centres)
    np.testing.assert_allclose(soft_targets(indices, weights, q), soft_targets(expected, gauss / gauss.sum(-1, keepdims=True), q),
                               atol=1e-3)
    assert (np.sort(indices, -1) == np.sort(expected, -1)).all(axis=-1).mean() > 0.95  # most: the same 5


def test_bin_loss_is_the_rebalanced_cross_entropy():
    rng = np.random.default_rng(1)
    q = len(distribution.bins())
    logits = rng.normal(size=(2, 4, 4, q)).astype(np.float32)
    # the ab of real colours (the loss's targets are photos' ab)
    target = color.network_ab(rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8))
    weight = np.array([1.0, 0.0], np.float32).reshape(2, 1, 1)
    class_weights = rng.uniform(0.5, 2.0, q)
    got = float(distribution.BinLoss(class_weights)(target, logits, sample_weight=weight))
    # NumPy: soft targets on the 2x2-averaged ab, cross-entropy, nearest bin's weight, photo 2 weighs 0
    ab = target.reshape(2, 4, 2, 4, 2, 2).mean(axis=(2, 4)) * color.AB_SCALE
    distance2 = ((ab[..., None, :] - distribution.bins()) ** 2).sum(-1)
    near = np.argsort(distance2, -1)[..., :5]
    z = np.exp(-np.take_along_axis(distance2, near, -1) / 50.0)
    z /= z.sum(-1, keepdims=True)
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    per_cell = -(z * np.take_along_axis(log_p, near, -1)).sum(-1) * class_weights[near[..., 0]]
    assert got == pytest.approx((per_cell * weight).sum() / per_cell.size, rel=1e-3)


def test_rebalancing_weights_have_mean_one_under_the_prior_and_favour_rare_colours():
    counts = np.zeros(len(distribution.bins()))
    counts[:10] = 1000.0
    counts[10:] = 1.0
    prior = distribution.smoothed_prior(counts)
    assert prior.sum() == pytest.approx(1.0)
    weights = distribution.rebalancing_weights(prior)
    assert float(np.sum(prior * weights)) == pytest.approx(1.0)
    assert weights[:10].max() < weights[10:].min()
    flat = distribution.rebalancing_weights(np.full(len(counts), 1.0 / len(counts)))
    np.testing.assert_allclose(flat, 1.0)


def test_ab_histogram_counts_each_pixel_in_its_nearest_bin():
    rng = np.random.default_rng(2)
    photos = rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    counts = distribution.ab_histogram(photos)
    ab = color.unscale_ab(color.network_ab(photos)).reshape(-1, 2)
    nearest = np.argmin(((ab[:, None, :] - distribution.bins()) ** 2).sum(-1), axis=1)
    np.testing.assert_array_equal(counts, np.bincount(nearest, minlength=len(counts)))


def test_annealed_mean_goes_from_the_mean_at_t1_to_the_mode_at_small_t():
    centres = distribution.bins() / color.AB_SCALE
    q = len(centres)
    logits = np.full((1, 1, 1, q), -10.0, np.float32)
    red, green = np.argmax(centres[:, 0]), np.argmin(centres[:, 0])
    logits[..., red], logits[..., green] = 2.0, 1.5  # more red than green
    p = np.exp(logits[0, 0, 0]) / np.exp(logits[0, 0, 0]).sum()
    layer = distribution.AnnealedMean(1.0)
    np.testing.assert_allclose(np.asarray(layer(logits))[0, 0, 0], np.clip(p @ centres, -1, 1), atol=1e-5)
    layer.set_temperature(0.05)
    np.testing.assert_allclose(np.asarray(layer(logits))[0, 0, 0], centres[red], atol=1e-3)
    for bad in (0.0, -1.0, float("nan"), 10.5):
        with pytest.raises(KoalarizationError, match="temperature"):
            layer.set_temperature(bad)


def test_temperature_changes_a_compiled_models_output_without_rebuilding(tiny_model_config):
    from koalarization.model.embedders import build_embedder

    from conftest import tiny_inputs

    cfg = ModelConfig(**{**tiny_model_config.__dict__, "loss": "classification"})
    model = build_model(cfg, build_embedder("tiny_random"))
    assert has_temperature(model)
    # a head that says "red, or else green" everywhere: the mean mixes them, a low temperature picks red
    head = colorizer_of(model).get_layer("decoder").get_layer("decoder_bins")
    centres = distribution.bins()
    bias = np.full(len(centres), -10.0, np.float32)
    bias[np.argmax(centres[:, 0] + centres[:, 1])], bias[np.argmin(centres[:, 0])] = 3.0, 2.0  # red, green
    head.set_weights([np.zeros_like(head.get_weights()[0]), bias])
    inputs = tiny_inputs(1)
    chroma = {}
    for t in (1.0, 0.2):
        set_temperature(model, t)
        ab = np.asarray(model.predict_on_batch(inputs))
        assert ab.shape == (1, 32, 32, 2)
        chroma[t] = float(np.hypot(ab[..., 0], ab[..., 1]).mean())
    assert chroma[0.2] > chroma[1.0] * 1.1, chroma
    mse = build_model(tiny_model_config, build_embedder("tiny_random"))
    with pytest.raises(KoalarizationError, match="MSE"):
        set_temperature(mse, 0.5)


def test_classification_head_overfits_one_photo_to_vivid_colour():
    """A photo of saturated red and blue halves: the MSE-free head learns both colours, not their mean."""
    keras.utils.set_random_seed(0)
    cfg = ModelConfig(encoder=((16, 2), (32, 1), (32, 2), (32, 1), (32, 2), (32, 1), (32, 1), (32, 1)),
                      fusion_filters=32, decoder=(32, UP, 32, UP, 16, 16), embedder="tiny_random",
                      loss="classification")
    rgb = np.zeros((1, 32, 32, 3), np.uint8)
    rgb[:, :, :16] = (200, 30, 30)
    rgb[:, :, 16:] = (40, 60, 200)
    # texture in L so that the network can tell the halves apart from the L alone
    rgb[:, ::4] = (rgb[:, ::4] * 0.8).astype(np.uint8)
    batch = {"rgb": rgb, "affine": np.eye(2, dtype="float32")[None], "embedding": np.zeros((1, 1000), "float32"),
             "weight": np.ones((1, 1, 1), "float32")}
    model = build_training_model(cfg, 1000, 32)
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    history = model.fit(batch, epochs=150, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0] / 2
    logits = colorizer_of(model).predict_on_batch([color.network_lightness(rgb), batch["embedding"]])
    ab = np.asarray(distribution.AnnealedMean()(logits)).repeat(2, 1).repeat(2, 2)
    out = color.to_uint8(color.network_to_rgb(color.network_lightness(rgb), ab))
    truth = colorfulness(rgb[0])
    assert colorfulness(out[0]) > 0.7 * truth, (colorfulness(out[0]), truth)
    assert out[0, 16, 4, 0] > out[0, 16, 4, 2] + 60  # red half red
    assert out[0, 16, 28, 2] > out[0, 16, 28, 0] + 60  # blue half blue
