"""The network against the published layer table (docs/reference.md), fusion, freezing and save/load."""

import dataclasses

import keras
import numpy as np
import pytest

from koalarization.config import ModelConfig, RunConfig, TrainConfig
from koalarization.errors import KoalarizationError
from koalarization.model.embedders import build_embedder
from koalarization.model.network import Fusion, build_colorizer, build_model, colorizer_of

from conftest import tiny_inputs

# docs/reference.md, "The network" (Keras versions): (filters, stride) of each 3x3 conv, in order.
REFERENCE_TABLE = [
    (64, 2), (128, 1), (128, 2), (256, 1), (256, 2), (512, 1), (512, 1), (256, 1),  # encoder
    (256, 1),  # fusion, 1x1
    (128, 1), (64, 1), (32, 1), (16, 1), (2, 1),  # decoder
]


def conv_params(cin, cout, k=3):
    return k * k * cin * cout + cout


def test_layer_table_and_parameter_count_match_the_reference():
    model = build_colorizer(ModelConfig())
    convs = [l for l in _flat_layers(model) if isinstance(l, keras.layers.Conv2D)]
    assert [(c.filters, c.strides[0]) for c in convs] == REFERENCE_TABLE
    assert [c.kernel_size for c in convs] == [(3, 3)] * 8 + [(1, 1)] + [(3, 3)] * 5
    assert convs[-1].activation.__name__ == "tanh"
    assert all(c.activation.__name__ == "relu" for c in convs[:-1])
    # Independent count from the table: encoder, 1x1 fusion over 256 + 1000 channels, decoder.
    encoder = [1, 64, 128, 128, 256, 256, 512, 512, 256]
    expected = sum(conv_params(a, b) for a, b in zip(encoder, encoder[1:]))
    expected += conv_params(256 + 1000, 256, k=1)
    decoder = [256, 128, 64, 32, 16, 2]
    expected += sum(conv_params(a, b) for a, b in zip(decoder, decoder[1:]))
    assert model.count_params() == expected == 6_541_202  # "~6.5 M" in the reference
    ab = model.predict_on_batch([np.zeros((1, 256, 256, 1), "float32"), np.zeros((1, 1000), "float32")])
    assert ab.shape == (1, 256, 256, 2)
    ups = [l for l in _flat_layers(model) if isinstance(l, keras.layers.UpSampling2D)]
    assert len(ups) == 3


def _flat_layers(model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _flat_layers(layer)
        else:
            yield layer


def test_fusion_equals_reference_repeatvector_reshape_at_256():
    rng = np.random.default_rng(0)
    grid = rng.normal(size=(2, 32, 32, 256)).astype("float32")
    embedding = rng.random((2, 1000)).astype("float32")
    ours = Fusion()([grid, embedding])
    repeated = keras.layers.RepeatVector(32 * 32)(embedding)
    repeated = keras.layers.Reshape((32, 32, 1000))(repeated)
    reference = keras.layers.concatenate([grid, repeated], axis=3)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(ours), keras.ops.convert_to_numpy(reference))


def test_one_model_serves_every_size_divisible_by_8(tiny_model_config):
    model = build_model(tiny_model_config, build_embedder("tiny_random"))
    for size in (24, 40, 64):
        out = model.predict_on_batch(tiny_inputs(1, size))
        assert out.shape == (1, size, size, 2)
        assert np.abs(out).max() <= 1.0


def test_size_not_divisible_by_8_is_a_clear_error():
    with pytest.raises(KoalarizationError, match="image_size 100: must be a positive multiple of 8"):
        RunConfig(train=TrainConfig(image_size=100))


def test_embedder_is_frozen_and_only_colorizer_trains(tiny_model_config):
    embedder = build_embedder("tiny_random")
    model = build_model(tiny_model_config, embedder)
    assert {id(v) for v in model.trainable_weights} == {id(v) for v in colorizer_of(model).trainable_weights}
    before = [w.copy() for w in embedder.get_weights()]
    model.compile(optimizer="rmsprop", loss="mse")
    y = np.random.default_rng(1).uniform(-0.5, 0.5, (4, 32, 32, 2)).astype("float32")
    colorizer_before = [w.copy() for w in colorizer_of(model).get_weights()]
    model.fit(tiny_inputs(4), y, epochs=1, verbose=0)
    for a, b in zip(before, embedder.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(colorizer_before, colorizer_of(model).get_weights()))


def test_save_then_load_gives_identical_predictions(tmp_path, tiny_model_config):
    model = build_model(tiny_model_config, build_embedder("tiny_random"))
    path = tmp_path / "colorize.weights.h5"
    colorizer_of(model).save_weights(path)
    again = build_model(tiny_model_config, build_embedder("tiny_random"))
    colorizer_of(again).load_weights(path)
    np.testing.assert_array_equal(model.predict_on_batch(tiny_inputs(2)), again.predict_on_batch(tiny_inputs(2)))


def test_the_embedder_sees_its_own_input_not_the_working_size_l(tiny_model_config):
    model = build_model(tiny_model_config, build_embedder("tiny_random"))
    inputs = tiny_inputs(2)
    other = dict(inputs, L_embedder=tiny_inputs(2, seed=5)["L_embedder"])
    assert not np.allclose(model.predict_on_batch(inputs), model.predict_on_batch(other))


def test_fusion_layer_serializes():
    layer = Fusion(name="f")
    clone = Fusion.from_config(layer.get_config())
    assert clone.name == "f"
    assert keras.saving.get_registered_object("koalarization>Fusion") is Fusion


# ------------------------------------------------------------------ options the shipped weights use
def test_batch_norm_adds_a_normalisation_after_every_hidden_conv(tiny_model_config):
    cfg = tiny_model_config
    plain = build_colorizer(cfg)
    normed = build_colorizer(ModelConfig(**{**cfg.__dict__, "batch_norm": True}))
    hidden = [l for l in _flat_layers(plain) if isinstance(l, keras.layers.Conv2D)][:-1]  # not the tanh one
    norms = [l for l in _flat_layers(normed) if isinstance(l, keras.layers.BatchNormalization)]
    assert len(norms) == len(hidden) == 8 + 1 + 4
    # Same convolutions otherwise; each BatchNormalization replaces that conv's bias.
    assert normed.count_params() == plain.count_params() + sum(4 * c.filters - c.filters for c in hidden)


def test_ab_gain_scales_the_variation_around_each_photos_cast_and_loads_the_same_weights(tmp_path, tiny_model_config):
    cfg = tiny_model_config
    embedder = build_embedder("tiny_random")
    base = build_model(cfg, embedder)
    gained = build_model(ModelConfig(**{**cfg.__dict__, "ab_gain": 3.0}), embedder)
    colorizer_of(base).save_weights(tmp_path / "w.weights.h5")
    colorizer_of(gained).load_weights(tmp_path / "w.weights.h5")  # the gain has no weights
    inputs = tiny_inputs(2)
    out, out3 = (np.asarray(m.predict_on_batch(inputs)) for m in (base, gained))
    cast = out.mean(axis=(1, 2), keepdims=True)  # each photo's mean ab stays; the variation around it x3
    np.testing.assert_allclose(out3, np.clip(cast + 3.0 * (out - cast), -1, 1), atol=1e-6)
    assert np.abs(out - cast).max() > 0  # there is variation to scale
    assert np.abs(out).max() > 0  # not a trivially zero network
    with pytest.raises(KoalarizationError, match="ab_gain"):
        ModelConfig(**{**cfg.__dict__, "ab_gain": 0.0})


def test_embedding_dropout_acts_only_in_training(tiny_model_config):
    cfg = ModelConfig(**{**tiny_model_config.__dict__, "embedding_dropout": 0.9})
    model = build_colorizer(cfg, embedding_dim=16)
    rng = np.random.default_rng(1)
    inputs = [rng.uniform(-1, 1, (4, 32, 32, 1)).astype("float32"), rng.uniform(0.5, 1, (4, 16)).astype("float32")]
    inference = [np.asarray(model(inputs, training=False)) for _ in range(2)]
    np.testing.assert_array_equal(*inference)  # deterministic outside training
    dropout = model.get_layer("embedding_dropout")
    kept = np.asarray(dropout(inputs[1], training=True))
    assert 0.0 < (kept == 0).mean() < 1.0  # some units dropped, some kept (and scaled by 1 / (1 - 0.9))
    np.testing.assert_allclose(kept[kept != 0], (inputs[1] / 0.1)[kept != 0], rtol=1e-5)


def test_pooled_embedder_gives_the_classifiers_pooled_features():
    from koalarization.model.embedders import RANDOM

    pooled = build_embedder("efficientnet_lite0_pooled", RANDOM)
    full = build_embedder("efficientnet_lite0", RANDOM)
    assert pooled.output.shape == (None, 1280) and full.output.shape == (None, 1000)
    lightness = np.random.default_rng(2).uniform(-1, 1, (2, 64, 64, 1)).astype("float32")
    features = np.asarray(pooled(lightness))
    assert np.isfinite(features).all() and features.std() > 0
    assert not pooled.trainable_weights  # frozen, like every embedder


def test_optimizer_by_name():
    from koalarization.training.train import make_optimizer

    assert isinstance(make_optimizer("adam", 1e-4), keras.optimizers.Adam)
    assert isinstance(make_optimizer("rmsprop", 1e-3), keras.optimizers.RMSprop)
    with pytest.raises(KoalarizationError, match="optimizer sgd"):
        make_optimizer("sgd", 1e-3)


def test_border_context_predicts_on_the_mirrored_photo_and_crops(tiny_model_config):
    """border_context p: the colorizer sees the photo with p mirrored pixels on each side; the output is
    the colorizer's output on that bigger input, cropped back to the photo."""

    embedder = build_embedder("tiny_random")
    plain = build_model(tiny_model_config, embedder)
    framed = build_model(dataclasses.replace(tiny_model_config, border_context=8), embedder)
    colorizer_of(framed).set_weights(colorizer_of(plain).get_weights())
    inputs = tiny_inputs(2)
    out = np.asarray(framed.predict_on_batch(inputs))
    mirrored = np.pad(inputs["L"], ((0, 0), (8, 8), (8, 8), (0, 0)), mode="reflect")
    embedding = embedder.predict_on_batch(inputs["L_embedder"])
    expected = np.asarray(colorizer_of(plain).predict_on_batch([mirrored, embedding]))[:, 8:-8, 8:-8]
    assert out.shape == (2, 32, 32, 2)
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert not np.allclose(out, plain.predict_on_batch(inputs), atol=1e-4)  # the border changed something
    with pytest.raises(KoalarizationError, match="border_context 4: must be a multiple of 8"):
        dataclasses.replace(tiny_model_config, border_context=4)
