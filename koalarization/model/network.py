"""The Deep Koalarization network: encoder -> fusion -> decoder (paper section 3; docs/reference.md layer table).

Pure builders: they read no files and touch no global state. Every input size works that is a multiple of
the encoder's downsampling (8); the working size is a fact of training and data, not of the network.

    build_colorizer(cfg, D)       the trainable network: L (B, H, W, 1) in [-1, 1] and the embedding (B, D)
                                  -> ab (B, H, W, 2) in [-1, 1] (tanh; loss "mse"), or logits over the ab
                                  bins (B, H/2, W/2, Q) (loss "classification": a 1x1 conv instead of the
                                  2-channel tanh and the last upsampling, distribution.py); what checkpoints store
    build_model(cfg, embedder)    inference: {"L": (B, H, W, 1), "L_embedder": (B, R, R, 1)}, both L scaled
                                  to [-1, 1] (the photo at the working size, and at the embedder's resolution
                                  R, both resized from the full photo) -> ab (B, H, W, 2); the frozen embedder
                                  runs inside, then the head's decoding (the annealed mean of the bins,
                                  upsampled x2), the weightless border context and ab gain

Training does not run the embedder: its outputs are cached once per photo (cache.py) and the training model
(task.build_training_model) feeds them to the colorizer.
"""

from __future__ import annotations

import keras
from keras import layers, ops

from koalarization.config import UP, ModelConfig
from koalarization.errors import KoalarizationError
from koalarization.model import distribution


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
    """fused grid (B, S/8, S/8, fusion_filters) -> ab (B, S, S, 2) in [-1, 1], or the bins' logits
    (B, S/2, S/2, Q) for the classification head."""
    inputs = keras.Input((None, None, channels), name="fused")
    x = inputs
    for i, spec in enumerate(cfg.decoder):
        x = layers.UpSampling2D(2, name=f"decoder_up{i}")(x) if spec == UP else _hidden_conv(x, cfg, spec, f"decoder_conv{i}")
    if cfg.loss == "classification":
        # Zhang et al.: a 1x1 conv to the Q bins at the decoder's resolution; the softmax is in the loss
        # (log-softmax, exact) and in the decoding (softmax(logits / T), the annealed mean).
        x = layers.Conv2D(len(distribution.bins()), 1, name="decoder_bins", dtype="float32")(x)
        return keras.Model(inputs, x, name="decoder")
    # Keras reproduction: Conv 2 tanh, then the last x2 upsampling (docs/reference.md).
    x = _conv(2, "decoder_ab", activation="tanh")(x)
    x = layers.UpSampling2D(2, name="decoder_up_out")(x)
    return keras.Model(inputs, x, name="decoder")


def build_colorizer(cfg: ModelConfig, embedding_dim: int = 1000) -> keras.Model:
    """The trainable network: (L, precomputed embedding) -> ab (see the module docstring)."""
    lightness = keras.Input((None, None, 1), name="L")
    embedding = keras.Input((embedding_dim,), name="embedding")
    grid = build_encoder(cfg)(lightness)
    global_feature = layers.Dropout(cfg.embedding_dropout, name="embedding_dropout")(embedding) \
        if cfg.embedding_dropout else embedding
    fused = Fusion(name="fusion")([grid, global_feature])
    fused = _hidden_conv(fused, cfg, cfg.fusion_filters, "fusion_conv", kernel=1)
    ab = build_decoder(cfg, cfg.fusion_filters)(fused)
    return keras.Model([lightness, embedding], ab, name="colorizer")


def mirror_pad(x, pad: int):
    """(B, H, W, C) -> (B, H + 2p, W + 2p, C), the border mirrored (ModelConfig.border_context; p < H, W).
    Keras' own pad: a node of the model when `x` is a Keras input, a tensor when it is an array."""
    return ops.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="reflect")


def build_model(cfg: ModelConfig, embedder: keras.Model) -> keras.Model:
    """Inference: the colorizer with the frozen `embedder` (embedders.build_embedder) inside it, the border
    context and the ab gain (see the module docstring)."""
    colorizer = build_colorizer(cfg, embedding_dim=embedder.output.shape[-1])
    lightness = keras.Input((None, None, 1), name="L")
    for_embedder = keras.Input((None, None, 1), name="L_embedder")
    x = mirror_pad(lightness, cfg.border_context) if cfg.border_context else lightness  # Colorizer checks p < S
    ab = colorizer([x, embedder(for_embedder)])
    if cfg.loss == "classification":
        ab = distribution.AnnealedMean(cfg.temperature, name="annealed_mean")(ab)
        # the last x2 upsampling of the MSE decoder, after the decoding (Keras' bilinear UpSampling2D cannot be
        # exported at a size unknown until run time)
        ab = layers.UpSampling2D(2, name="decoder_up_out", dtype="float32")(ab)
    if cfg.border_context:
        ab = layers.Cropping2D(cfg.border_context, name="border_crop")(ab)
    if cfg.ab_gain != 1.0:
        ab = ABGain(cfg.ab_gain, name="ab_gain")(ab)
    return keras.Model({"L": lightness, "L_embedder": for_embedder}, ab, name="koalarization")


def colorizer_of(model: keras.Model) -> keras.Model:
    """The trainable colorizer inside a full or training model (what checkpoints store)."""
    return model.get_layer("colorizer")


def set_temperature(model: keras.Model, temperature: float) -> None:
    """Decode the classification head of an inference model (build_model's) at `temperature` from now on."""
    try:
        layer = model.get_layer("annealed_mean")
    except ValueError:
        raise KoalarizationError("temperature: these weights were trained with the MSE loss, which predicts "
                                 "one colour and has no temperature; use saturation instead") from None
    layer.set_temperature(temperature)


def has_temperature(model: keras.Model) -> bool:
    return any(layer.name == "annealed_mean" for layer in model.layers)
