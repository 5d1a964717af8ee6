"""Pillow's bilinear resize in keras.ops, as matrix products, so an exported model squashes and upsamples
exactly as `colorize` does (which calls Pillow) at sizes known only when it runs.

    squash_uint8(rgb, side)        uint8-valued float64 (B, H, W, C) -> (B, side, side, C): Image.resize(
                                   (side, side), BILINEAR, reducing_gap=REDUCING_GAP) of a uint8 image
    resize_float(x, height, width) float32 (B, h, w, C) -> (B, height, width, C): Image.resize of an "F"
                                   image, BILINEAR (what inference/join.UpsampledAB computes for ab)

Pillow resamples one axis at a time (width first) with the triangle filter widened by the scale when
shrinking, weights normalized over the pixels inside the image; for uint8 it rounds each pass to integers
through 22-bit fixed-point weights. Shrinking by more than reducing_gap times first box-averages blocks of
int(scale / reducing_gap) pixels (partial blocks at the far edges average what they hold). Each pass here
is a (out, in) weight matrix built from the sizes, with the fixed-point arithmetic in float64, where every
sum is an exact integer (< 2**31), so the result is Pillow's to the level (tests/test_resize.py). No
antialiased resize op is needed: tf2onnx has none, and a matrix product exports everywhere.

float64 is what makes the sums exact: TensorFlow (the exporters' backend) has it; JAX without
jax_enable_x64 would compute in float32 and round a level differently here and there.

Memory: the matrices are (out, in) per axis (12 MP to 224: 750 x 3000 after the 4x reduction), small
beside the photo.
"""

from __future__ import annotations

from keras import ops

from koalarization.config import REDUCING_GAP

PRECISION_BITS = 22  # Pillow's fixed-point weights for 8-bit images (32 - 8 - 2)


def _triangle_weights(in_size, out_size, span):
    """(out_size, in_size) float64 weights of Pillow's bilinear resampling of the box [0, span) of an axis of
    in_size pixels onto out_size pixels (Resample.c: precompute_coeffs). in_size, span: scalars, may be
    tensors; out_size: a scalar."""
    span = ops.cast(ops.cast(span, "float32"), "float64")  # Pillow passes the box as C floats
    scale = span / ops.cast(out_size, "float64")
    filterscale = ops.maximum(scale, 1.0)
    support = filterscale  # the triangle's support is 1, widened when shrinking
    center = (ops.cast(ops.arange(out_size), "float64") + 0.5) * scale
    # C's (int) truncates toward zero; the values are clamped to >= 0 right after, so floor is the same there
    low = ops.maximum(ops.floor(center - support + 0.5), 0.0)
    high = ops.minimum(ops.floor(center + support + 0.5), ops.cast(in_size, "float64"))
    x = ops.cast(ops.arange(in_size), "float64")
    inside = (x[None, :] >= low[:, None]) & (x[None, :] < high[:, None])
    weights = ops.where(inside, ops.maximum(1.0 - ops.abs((x[None, :] - center[:, None] + 0.5) / filterscale), 0.0), 0.0)
    total = ops.sum(weights, axis=1, keepdims=True)
    return weights / ops.where(total == 0.0, 1.0, total)


def _fixed_point(weights):
    """Pillow's 8-bit weights: each rounded to an integer multiple of 2**-PRECISION_BITS (as integers)."""
    scaled = weights * float(1 << PRECISION_BITS)
    return ops.where(scaled < 0.0, ops.ceil(scaled - 0.5), ops.floor(scaled + 0.5))


def _round_pass(sums):
    """Fixed-point sums -> clip8((sum + 2**(PRECISION_BITS - 1)) >> PRECISION_BITS) (exact in float64)."""
    return ops.clip(ops.floor((sums + float(1 << (PRECISION_BITS - 1))) / float(1 << PRECISION_BITS)), 0.0, 255.0)


def _block_sums(x, axis: int, factor):
    """Sums of consecutive blocks of `factor` pixels along `axis` (the last block may be partial), and the
    pixel counts (ceil(size / factor),): differences of a running sum at the block edges, so the work is
    one pass over the photo (a 0/1 matrix product would cost size x ceil(size / factor) per line)."""
    size = ops.shape(x)[axis]
    edges = ops.minimum(ops.arange((size + factor - 1) // factor + 1) * factor, size)
    first = ops.zeros_like(ops.take(x, ops.zeros((1,), "int32"), axis=axis))
    running = ops.concatenate([first, ops.cumsum(x, axis=axis)], axis=axis)  # exact: integers in float64
    sums = ops.take(running, edges[1:], axis=axis) - ops.take(running, edges[:-1], axis=axis)
    return sums, ops.cast(edges[1:] - edges[:-1], "float64")


def _reduce(rgb, factor_y, factor_x):
    """Pillow's Image.reduce((factor_x, factor_y)) of uint8 values (Reduce.c): each output the rounded mean
    of its block, ((sum + n // 2) * floor(2**32 / (256 n))) >> 24 for a block of n pixels (for n a power of
    two Pillow shifts instead: the same numbers)."""
    sums, count_x = _block_sums(rgb, 2, factor_x)
    sums, count_y = _block_sums(sums, 1, factor_y)
    n = (count_y[:, None] * count_x[None, :])[None, :, :, None]
    # division_UINT32 divides in C float (float32), then truncates
    multiplier = ops.cast(ops.floor(ops.cast(float(1 << 32), "float32") / ops.cast(256.0 * n, "float32")), "float64")
    return ops.floor((sums + ops.floor(n / 2.0)) * multiplier / float(1 << 24))


def squash_uint8(rgb, side: int, reducing_gap: float = REDUCING_GAP):
    """uint8-valued float64 (B, H, W, C) -> Pillow's resize to (side, side), BILINEAR, reducing_gap, as
    uint8-valued float64 (B, side, side, C)."""
    height, width = ops.shape(rgb)[1], ops.shape(rgb)[2]
    # Image.resize: factor = int(size_in / size_out / reducing_gap) or 1 on each axis
    factor_y = ops.maximum(ops.cast(ops.floor(ops.cast(height, "float64") / side / reducing_gap), "int32"), 1)
    factor_x = ops.maximum(ops.cast(ops.floor(ops.cast(width, "float64") / side / reducing_gap), "int32"), 1)
    reduced = _reduce(rgb, factor_y, factor_x)  # factors of 1 give the image back, exactly
    # the box, in the reduced image's pixels: the whole photo (partial last blocks included in part)
    span_y = ops.cast(height, "float64") / ops.cast(factor_y, "float64")
    span_x = ops.cast(width, "float64") / ops.cast(factor_x, "float64")
    in_y, in_x = ops.shape(reduced)[1], ops.shape(reduced)[2]
    across = _fixed_point(_triangle_weights(in_x, side, span_x))
    wide = _round_pass(ops.einsum("bhwc,uw->bhuc", reduced, across))
    down = _fixed_point(_triangle_weights(in_y, side, span_y))
    return _round_pass(ops.einsum("bhwc,vh->bvwc", wide, down))


def resize_float(x, height, width):
    """float32 (B, h, w, C) -> Pillow's BILINEAR resize of float images to (height, width), float32: width
    first, then height, no rounding."""
    in_y, in_x = ops.shape(x)[1], ops.shape(x)[2]
    across = ops.cast(_triangle_weights(in_x, width, in_x), "float32")
    wide = ops.einsum("bhwc,uw->bhuc", x, across)
    down = ops.cast(_triangle_weights(in_y, height, in_y), "float32")
    return ops.einsum("bhwc,vh->bvwc", wide, down)
