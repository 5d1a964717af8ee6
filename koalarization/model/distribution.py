"""The colour-distribution head (Zhang, Isola & Efros, ECCV 2016, "Colorful Image Colorization", section 2).

An L2 loss on ab predicts the mean of the plausible colours, and the mean of red, green and blue is
brown-gray. This head predicts a distribution over Q quantized ab bins instead (color.gamut_ab_bins: the
sRGB gamut's bins on a grid of 10, Q = 261), is trained with a multinomial cross-entropy against soft targets,
reweighted towards rare colours, and decoded with an annealed mean.

Shapes and memory, at the decoder's resolution h = w = S/2 (the network's last x2 upsampling is replaced):
    logits        (B, S/2, S/2, Q) float32: the head's 1x1 conv, Q floats per cell, so Q (S/2)^2 floats per
                  photo (261 x 32 x 32 x 4 B = 1.1 MB at S = 64, 17 MB at S = 256); softmax -> p
    soft target   never materialised: the 5 nearest bins of each cell's true ab, Gaussian weights sigma = 5
                  (Zhang 2.1), enter the cross-entropy as 5 gathered log-probabilities
    class weights (Q,) float32, mean 1 under the prior (`rebalancing_weights`); a cell's weight is its
                  nearest bin's (Zhang eq. 3-4)
    decoded ab    (B, S/2, S/2, 2) in [-1, 1]: softmax(logits / T) . bins, the annealed mean (Zhang 2.3):
                  T = 1 is the mean (pale, safe), T -> 0 the mode (vivid); softmax(log p / T) = softmax(logits / T)

Everything in the graph is keras.ops (TensorFlow, JAX, XLA, tf.distribute); the prior is NumPy, once.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import keras
import numpy as np
from keras import ops

from koalarization import color
from koalarization.config import ModelConfig, check_temperature
from koalarization.errors import KoalarizationError
from koalarization.files import write_text_atomic

log = logging.getLogger(__name__)

NEIGHBOURS = 5  # soft encoding: the nearest bins (Zhang 2.1)
SIGMA = 5.0  # ... weighted by a Gaussian of this width, in ab units; also the prior's smoothing (Zhang 2.2)
REBALANCE_LAMBDA = 0.5  # mix of the smoothed prior with the uniform distribution (Zhang eq. 4)
TEMPERATURE = ModelConfig.temperature  # the annealed mean's default, Zhang's 0.38 (2.3)


def bins() -> np.ndarray:
    """The head's bin centres (Q, 2) float32 in Lab units."""
    return color.gamut_ab_bins()


# ------------------------------------------------------------------------------------------ in the graph
def nearest_bins(ab_lab, centres=None):
    """ab (..., 2) in Lab units -> (indices (..., K) int32, weights (..., K) float32): the K = NEIGHBOURS
    nearest of the bins `centres` (default bins(); any subset of the grid of color.AB_BIN_STEP), nearest
    first, with Gaussian weights (sigma = SIGMA) that sum to 1.

    The bins lie on a regular grid, so the candidates are the 4 x 4 grid points around each ab (16, not Q):
    they hold the 5 nearest points of the full grid (every other one is 2 steps away or more, farther than the
    5th nearest, at most 1.6 steps). Where the gamut lacks some of them (its edge), a bin 2 steps away or more
    could be missed; its weight would be exp(-(2 step)^2 / 2 sigma^2) = 3e-4 of the nearest's."""
    grid, table, low = _grid_table(bins() if centres is None else centres)
    step = color.AB_BIN_STEP
    base = ops.floor(ab_lab / step) - 1.0  # (..., 2): the window's lowest grid coordinates
    offsets = np.stack(np.meshgrid(np.arange(4), np.arange(4), indexing="ij"), -1).reshape(16, 2)
    candidates = base[..., None, :] + ops.convert_to_tensor(offsets.astype("float32"))  # (..., 16, 2)
    at = ops.cast(candidates, "int32") - ops.convert_to_tensor(low.astype("int32"))
    span = table.shape
    inside = (at[..., 0] >= 0) & (at[..., 0] < span[0]) & (at[..., 1] >= 0) & (at[..., 1] < span[1])
    flat = ops.clip(at[..., 0], 0, span[0] - 1) * span[1] + ops.clip(at[..., 1], 0, span[1] - 1)
    index = ops.take(ops.convert_to_tensor(table.reshape(-1).astype("int32")), flat)  # -1: not a bin
    valid = inside & (index >= 0)
    distance2 = ops.sum(ops.square(ab_lab[..., None, :] - candidates * step), axis=-1)  # (..., 16)
    distance2 = ops.where(valid, distance2, 1e9)
    negative, picked = ops.top_k(-distance2, NEIGHBOURS, sorted=True)
    weights = ops.softmax(negative / (2.0 * SIGMA * SIGMA), axis=-1)  # exp(-d^2 / 2 sigma^2), normalised
    # Every sRGB colour's ab lies in a bin's cell (gamut_ab_bins), so the nearest candidate is a bin; the
    # floor at 0 only keeps an ab from outside the gamut (never a photo's) from indexing out of range.
    return ops.maximum(ops.take_along_axis(index, picked, axis=-1), 0), weights


def _grid_table(centres: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """centres (Q, 2) on the grid -> (their grid coordinates (Q, 2), a table over the grid's bounding box
    holding each coordinate's bin index or -1, the box's lowest coordinates (2,))."""
    grid = np.round(np.asarray(centres, np.float64) / color.AB_BIN_STEP).astype(np.int64)
    low = grid.min(axis=0)
    table = np.full(grid.max(axis=0) - low + 1, -1, np.int64)
    table[tuple((grid - low).T)] = np.arange(len(grid))
    return grid, table, low


@keras.saving.register_keras_serializable(package="koalarization")
class AnnealedMean(keras.layers.Layer):
    """logits (B, h, w, Q) -> ab (B, h, w, 2) in [-1, 1]: softmax(logits / T) times the bin centres.

    T is a non-trainable variable (the layer's `temperature`), so a loaded model is decoded at any T by
    `set_temperature` without rebuilding or recompiling it; an exported model keeps the T it was exported at.
    Always float32."""

    def __init__(self, temperature: float = TEMPERATURE, **kwargs):
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        self.initial_temperature = check_temperature(temperature)
        self.centres = bins() / color.AB_SCALE  # (Q, 2), the network's ab scale

    def build(self, input_shape):
        if input_shape[-1] != len(self.centres):
            raise KoalarizationError(f"the distribution head has {input_shape[-1]} bins; this version of "
                                     f"koalarization decodes {len(self.centres)}")
        self.temperature = self.add_weight(shape=(), initializer=keras.initializers.Constant(self.initial_temperature),
                                           trainable=False, name="temperature")

    def set_temperature(self, temperature: float) -> None:
        self.temperature.assign(check_temperature(temperature))

    def call(self, logits):
        p = ops.softmax(ops.cast(logits, "float32") / self.temperature, axis=-1)
        return ops.clip(ops.matmul(p, ops.convert_to_tensor(self.centres, "float32")), -1.0, 1.0)

    def compute_output_shape(self, shape):
        return (*shape[:-1], 2)

    def get_config(self):
        return {**super().get_config(), "temperature": self.initial_temperature}


class BinLoss(keras.losses.Loss):
    """The rebalanced multinomial cross-entropy (Zhang eq. 2): for each cell of the decoder's grid,
    -v(q*) sum_k z_k log p(q_k), the q_k the true ab's nearest bins (nearest_bins), z_k their weights, v the
    class weights (all ones: no rebalancing); Keras' sample-weighted mean over the cells (each photo's
    cells times its weight, 0 for padding; divided by B * h * w, and by the replicas under tf.distribute).

    y_true: ab (B, S, S, 2) scaled (the photo's, averaged over 2x2 to the grid); y_pred: logits (B, S/2, S/2, Q)."""

    def __init__(self, class_weights=None, name: str = "bin_loss"):
        super().__init__(name=name)
        self.class_weights = None if class_weights is None else [float(w) for w in np.ravel(class_weights)]

    def call(self, y_true, y_pred):
        log_p = y_pred - ops.logsumexp(y_pred, axis=-1, keepdims=True)
        ab = ops.average_pool(y_true, 2, strides=2, padding="valid") * color.AB_SCALE  # (B, h, w, 2), Lab units
        indices, z = nearest_bins(ab)
        per_cell = -ops.sum(z * ops.take_along_axis(log_p, indices, axis=-1), axis=-1)  # (B, h, w)
        if self.class_weights is None:
            return per_cell
        return per_cell * ops.take(ops.convert_to_tensor(self.class_weights, "float32"), indices[..., 0])

    def get_config(self):
        return {"name": self.name, "class_weights": self.class_weights}


# --------------------------------------------------------------------------------- the prior, in NumPy
def ab_histogram(photos, chunk: int = 256) -> np.ndarray:
    """uint8 photos (N, S, S, 3) (an iterable of such batches, or one array) -> counts (Q,) float64 of the
    nearest bin of every pixel's ab."""
    centres = bins().astype(np.float64)
    counts = np.zeros(len(centres))
    batches = [photos] if isinstance(photos, np.ndarray) else photos
    for batch in batches:
        for first in range(0, len(batch), chunk):
            ab = color.unscale_ab(color.network_ab(batch[first : first + chunk])).reshape(-1, 2)
            # the grid is regular: the nearest centre is the rounded cell, when that cell is in the gamut
            cell = np.round(ab / color.AB_BIN_STEP) * color.AB_BIN_STEP
            index = _index_of(cell, centres)
            missing = index < 0  # a rounding step outside the gamut's cells: the nearest by distance
            if missing.any():
                index[missing] = np.argmin(((ab[missing, None, :] - centres[None]) ** 2).sum(-1), axis=1)
            counts += np.bincount(index, minlength=len(centres))
    return counts


def _index_of(cells: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """The index of each cell centre (N, 2) among `centres` (a subset of the grid), -1 where absent."""
    _, table, low = _grid_table(centres)
    at = np.round(cells / color.AB_BIN_STEP).astype(np.int64) - low
    inside = np.all((at >= 0) & (at < table.shape), axis=1)
    index = np.full(len(cells), -1, np.int64)
    index[inside] = table[tuple(at[inside].T)]
    return index


def smoothed_prior(counts: np.ndarray) -> np.ndarray:
    """Counts (Q,) -> the empirical distribution smoothed by a Gaussian of width SIGMA in ab (Zhang 2.2)."""
    centres = bins().astype(np.float64)
    distance2 = ((centres[:, None, :] - centres[None, :, :]) ** 2).sum(-1)
    kernel = np.exp(-distance2 / (2.0 * SIGMA**2))
    empirical = counts / max(counts.sum(), 1.0)
    smooth = kernel @ empirical
    return smooth / smooth.sum()


def rebalancing_weights(prior: np.ndarray, lam: float = REBALANCE_LAMBDA) -> np.ndarray:
    """w(q) proportional to ((1 - lam) p(q) + lam / Q)^-1, normalised so that sum_q p(q) w(q) = 1 (Zhang eq. 4)."""
    weights = 1.0 / ((1.0 - lam) * prior + lam / len(prior))
    return weights / float(np.sum(prior * weights))


def write_prior(path: Path, counts: np.ndarray, photos: int, rebalance: bool) -> dict:
    """The run's ab prior, as `read_prior` reads it back: bins, counts, smoothed prior, class weights."""
    prior = smoothed_prior(counts)
    weights = rebalancing_weights(prior) if rebalance else np.ones_like(prior)
    body = {"bins": bins().tolist(), "step": color.AB_BIN_STEP, "photos": int(photos),
            "counts": counts.tolist(), "prior": prior.tolist(), "rebalance": bool(rebalance),
            "lambda": REBALANCE_LAMBDA, "sigma": SIGMA, "class_weights": weights.tolist()}
    write_text_atomic(path, json.dumps(body))
    return body


def read_prior(path: Path) -> dict:
    """A run's ab_prior.json; refused when its bins are not this version's (the head would decode wrongly)."""
    try:
        body = json.loads(Path(path).read_text())
        stored = np.asarray(body["bins"], np.float32)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise KoalarizationError(f"{path}: unreadable ab prior ({err}); delete it to compute it again") from None
    if stored.shape != bins().shape or not np.array_equal(stored, bins()):
        raise KoalarizationError(f"{path}: made for {len(stored)} other ab bins than this version's {len(bins())}")
    return body


def prior_summary(body: dict) -> str:
    weights = np.asarray(body["class_weights"])
    entropy = -sum(p * math.log(p) for p in body["prior"] if p > 0)
    return (f"ab prior of {body['photos']} photos over {len(weights)} bins (entropy {entropy:.2f} nats); "
            f"class weights {weights.min():.2f}..{weights.max():.2f}"
            + ("" if body["rebalance"] else " (no rebalancing: all 1)"))
