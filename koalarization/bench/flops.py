"""What a training step costs: FLOPs per photo counted from the layers, device peaks, and MFU.

Conventions (those of PaLM's "model FLOPs utilisation"):
- a multiply-add is 2 FLOPs; only convolutions and dense layers are counted (bias adds, activations,
  BatchNorm, resizes and the in-graph Lab arithmetic are under 2% here and are left out);
- a training step costs 3x the forward pass of the trainable part (forward, gradient with respect to the
  activations, gradient with respect to the weights); the frozen embedder does not run in training (its
  outputs are cached once per photo), and costs its forward pass once per photo at inference.

At 256 px the reference network's trainable part is 9.78 GMAC forward (docs/reference.md: "about 10 GMAC"),
so a training step is 3 x 19.6 = 58.7 GFLOP. An embedder's forward pass: 0.77 GFLOP for EfficientNet-Lite0,
26.3 GFLOP for Inception-ResNet-v2 (13.2 GMAC; the "~6.5 GMAC" some write-ups quote is half that).
tests/test_benchmark.py checks the counts against TensorFlow's profiler.
"""

from __future__ import annotations

import keras

from koalarization import color
from koalarization.config import UP, ModelConfig

# Dense peak TFLOP/s by device name (vendor data sheets, without sparsity). "float32" is the plain FP32
# rate; TensorFlow and JAX run float32 matmuls and convolutions on TF32 tensor cores by default on these
# GPUs, so MFU for --precision float32 is taken against "tf32".
PEAK_TFLOPS = {
    "H100 SXM": {"bfloat16": 989.0, "float16": 989.0, "tf32": 494.7, "float32": 66.9},
    "H100 PCIe": {"bfloat16": 756.0, "float16": 756.0, "tf32": 378.0, "float32": 51.2},
    "H100 NVL": {"bfloat16": 835.0, "float16": 835.0, "tf32": 417.5, "float32": 60.0},
    "H200": {"bfloat16": 989.0, "float16": 989.0, "tf32": 494.7, "float32": 66.9},
    "A100": {"bfloat16": 312.0, "float16": 312.0, "tf32": 156.0, "float32": 19.5},
}
# Names the drivers report, e.g. "NVIDIA H100 80GB HBM3" (SXM), "NVIDIA H100 PCIe", "NVIDIA H200".
_ALIASES = (("H100 PCIE", "H100 PCIe"), ("H100 NVL", "H100 NVL"), ("H100", "H100 SXM"), ("H200", "H200"),
            ("A100", "A100"))
PRECISION_PEAK = {"float32": "tf32", "mixed_float16": "float16", "mixed_bfloat16": "bfloat16"}


def colorizer_macs(cfg: ModelConfig, size: int, embedding_dim: int = 1000) -> int:
    """Forward multiply-adds per photo of the trainable network (encoder, fusion, decoder) at size x size."""
    side, channels, macs = size, 1, 0
    for filters, stride in cfg.encoder:  # 3x3 "same" convolutions
        side = -(-side // stride)
        macs += side * side * 9 * channels * filters
        channels = filters
    macs += side * side * (channels + embedding_dim) * cfg.fusion_filters  # 1x1 conv after the fusion
    channels = cfg.fusion_filters
    for spec in cfg.decoder:
        if spec == UP:
            side *= 2
            continue
        macs += side * side * 9 * channels * spec
        channels = spec
    if cfg.loss == "classification":  # a 1x1 conv to the ab bins (distribution.py)
        return macs + side * side * channels * len(color.gamut_ab_bins())
    return macs + side * side * 9 * channels * 2  # the last 3x3 conv (2 filters, tanh), then the x2 upsampling


def layer_macs(model: keras.Model) -> int:
    """Forward multiply-adds per sample of the Conv2D, DepthwiseConv2D and Dense layers of a model built
    with a fixed input size (an embedder's classifier), nested models included."""
    macs = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            macs += layer_macs(layer)
            continue
        if not isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)):
            continue
        out_shape = layer.output.shape
        positions = 1
        for d in out_shape[1:-1]:
            if d is None:
                raise ValueError(f"layer {layer.name} has no fixed output size; count it another way")
            positions *= d
        kernel = layer.kernel.shape  # Conv2D (kh, kw, in/groups, out); depthwise (kh, kw, in, mult); dense (in, out)
        per_position = 1
        for d in kernel:
            per_position *= d
        macs += positions * per_position
    return macs


def training_flops(cfg: ModelConfig, size: int, embedding_dim: int) -> dict:
    """FLOPs per photo of one training step at size x size (see the module docstring)."""
    trainable = 2 * colorizer_macs(cfg, size, embedding_dim)
    return {"trainable_forward_gflop": trainable / 1e9, "flops_per_image": 3 * trainable}


def peak_tflops(device_name: str | None, precision: str = "float32") -> float | None:
    """The device's dense peak for the arithmetic `precision` runs on; None for CPUs and unknown devices."""
    if not device_name:
        return None
    upper = device_name.upper()
    for alias, key in _ALIASES:
        if alias.upper() in upper:
            return PEAK_TFLOPS[key][PRECISION_PEAK.get(precision, precision)]
    return None


def mfu(images_per_s: float, flops_per_image: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation: achieved FLOP/s over the device's peak (TFLOP/s); None without a peak."""
    if not peak:
        return None
    return images_per_s * flops_per_image / (peak * 1e12)


def accelerator_name() -> str | None:
    """The first GPU's name as its driver reports it (e.g. "NVIDIA H100 80GB HBM3"), or None on a CPU."""
    backend = keras.backend.backend()
    try:
        if backend == "tensorflow":
            import tensorflow as tf

            gpus = tf.config.list_physical_devices("GPU")
            return tf.config.experimental.get_device_details(gpus[0]).get("device_name") if gpus else None
        if backend == "jax":
            import jax

            gpus = [d for d in jax.devices() if d.platform == "gpu"]
            return gpus[0].device_kind if gpus else None
        if backend == "torch":
            import torch

            return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001 - a missing name only costs the MFU figure
        return None
    return None
