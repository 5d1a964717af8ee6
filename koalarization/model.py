"""The Deep Koalarization network: encoder -> fusion -> decoder (paper section 3; docs/reference.md layer table).

Pure builders: they read no files and touch no global state.

    build_colorizer(cfg)          two inputs: L (B, S, S, 1) in [-1, 1] and embedding (B, D) -> ab (B, S, S, 2)
    build_model(cfg, embedder)    one input:  L (B, S, S, 1) in [-1, 1] -> ab (B, S, S, 2) in [-1, 1] (tanh);
                                  the frozen embedder runs inside the graph

The trainable part is the colorizer alone (~6.5 M parameters at the reference configuration); checkpoints
store only its weights, and the embedder is rebuilt from its own pretrained source.
"""

from __future__ import annotations

import keras
from keras import layers, ops

from koalarization.config import UP, ModelConfig


@keras.saving.register_keras_serializable(package="koalarization")
class Fusion(layers.Layer):
    """Repeat a global embedding over every cell of the encoder grid and concatenate (paper 3.3).

    grid (B, h, w, C), embedding (B, D) -> (B, h, w, C + D), for any h, w. At 256 px (h = w = 32) this is
    the reference's RepeatVector(32 * 32) + Reshape((32, 32, D)) + concatenate, without fixing the size.
    """

    def call(self, inputs):
        grid, embedding = inputs
        # (B, 1, 1, D) * (B, h, w, 1) broadcasts the embedding over the grid whatever its size.
        tiled = embedding[:, None, None, :] * ops.ones_like(grid[..., :1], dtype=embedding.dtype)
        return ops.concatenate([grid, ops.cast(tiled, grid.dtype)], axis=-1)

    def compute_output_shape(self, input_shapes):
        grid, embedding = input_shapes
        return (*grid[:3], grid[3] + embedding[-1])


@keras.saving.register_keras_serializable(package="koalarization")
class ABGain(layers.Layer):
    """ab (B, S, S, 2) in [-1, 1] -> clip(m + gain * (ab - m), -1, 1), m = each photo's mean ab (B, 1, 1, 2).

    ModelConfig.ab_gain, a fixed calibration: it scales how the colour varies within the photo and keeps
    the photo's overall cast as predicted. MSE shrinks the uncertain within-photo variation far more than
    the cast; scaling the whole ab instead also amplified wrong casts (docs/model_card.md compares both).
    """

    def __init__(self, gain: float, **kwargs):
        super().__init__(**kwargs)
        self.gain = float(gain)

    def call(self, ab):
        cast = ops.mean(ab, axis=(1, 2), keepdims=True)
        return ops.clip(cast + self.gain * (ab - cast), -1.0, 1.0)

    def get_config(self):
        return {**super().get_config(), "gain": self.gain}


def _conv(filters: int, name: str, strides: int = 1, kernel: int = 3, activation: str = "relu"):
    return layers.Conv2D(filters, kernel, strides=strides, padding="same", activation=activation, name=name)


def _hidden_conv(x, cfg: ModelConfig, filters: int, name: str, strides: int = 1, kernel: int = 3):
    """A 3x3 ReLU conv; with cfg.batch_norm, conv (no bias) -> BatchNormalization -> ReLU."""
    if not cfg.batch_norm:
        return _conv(filters, name, strides=strides, kernel=kernel)(x)
    x = layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False, name=name)(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def build_encoder(cfg: ModelConfig) -> keras.Model:
    """L (B, S, S, 1) -> grid (B, S/8, S/8, C) with the reference encoder."""
    inputs = keras.Input((None, None, 1), name="L")
    x = inputs
    for i, (filters, stride) in enumerate(cfg.encoder):
        x = _hidden_conv(x, cfg, filters, f"encoder_conv{i}", strides=stride)
    return keras.Model(inputs, x, name="encoder")


def build_decoder(cfg: ModelConfig, channels: int) -> keras.Model:
    """fused grid (B, S/8, S/8, fusion_filters) -> ab (B, S, S, 2) in [-1, 1]."""
    inputs = keras.Input((None, None, channels), name="fused")
    x = inputs
    for i, spec in enumerate(cfg.decoder):
        x = layers.UpSampling2D(2, name=f"decoder_up{i}")(x) if spec == UP else _hidden_conv(x, cfg, spec, f"decoder_conv{i}")
    # Keras reproduction: Conv 2 tanh, then the last x2 upsampling (docs/reference.md).
    x = _conv(2, "decoder_ab", activation="tanh")(x)
    x = layers.UpSampling2D(2, name="decoder_up_out")(x)
    return keras.Model(inputs, x, name="decoder")


def build_colorizer(cfg: ModelConfig, embedding_dim: int = 1000) -> keras.Model:
    """The trainable network in its two-input form (L, precomputed embedding) -> ab."""
    size = cfg.image_size
    lightness = keras.Input((size, size, 1), name="L")
    embedding = keras.Input((embedding_dim,), name="embedding")
    grid = build_encoder(cfg)(lightness)
    global_feature = layers.Dropout(cfg.embedding_dropout, name="embedding_dropout")(embedding) \
        if cfg.embedding_dropout else embedding
    fused = Fusion(name="fusion")([grid, global_feature])
    fused = _hidden_conv(fused, cfg, cfg.fusion_filters, "fusion_conv", kernel=1)
    ab = build_decoder(cfg, cfg.fusion_filters)(fused)
    if cfg.ab_gain != 1.0:
        ab = ABGain(cfg.ab_gain, name="ab_gain")(ab)
    return keras.Model([lightness, embedding], ab, name="colorizer")


def build_model(cfg: ModelConfig, embedder: keras.Model) -> keras.Model:
    """The full model: L only; the frozen `embedder` (embedding.build_embedder) computes the embedding."""
    colorizer = build_colorizer(cfg, embedding_dim=embedder.output.shape[-1])
    lightness = keras.Input((cfg.image_size, cfg.image_size, 1), name="L")
    ab = colorizer([lightness, embedder(lightness)])
    return keras.Model(lightness, ab, name="koalarization")


def colorizer_of(model: keras.Model) -> keras.Model:
    """The trainable colorizer inside a full model (what checkpoints store)."""
    return model.get_layer("colorizer")
