"""The frozen embedder run by ONNX Runtime instead of Keras, for building training caches faster.

    onnx_runner(embedder) -> (inputs (B, R, R, 1) float32 -> outputs (B, D) float32 NumPy) or None

Optional (`pip install -e ".[fast]"`: onnxruntime, tf2onnx, onnx; TensorFlow backend only). The embedder is
converted once per process through Keras' own ONNX export into a temporary folder and run on every core.
Measured on a 2-core CPU (docs/performance.md): about 4x the photos per second of Keras' predict_on_batch
for EfficientNet-Lite0 at 224 px, the same features to within 1.3e-5. The cache build (cache.build) checks
the first batch against Keras and falls back to Keras, with a warning, when the two differ by more than
TOLERANCE, so the optional runtime can never change what a cache holds beyond float rounding.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import tempfile
import warnings
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

TOLERANCE = 1e-4  # largest |ONNX - Keras| accepted on the first batch of a cache build
MODULES = ("onnxruntime", "tf2onnx", "onnx")


def available() -> bool:
    """True when the optional packages are installed and Keras runs on TensorFlow (tf2onnx converts TF)."""
    import keras

    return keras.backend.backend() == "tensorflow" and all(importlib.util.find_spec(m) for m in MODULES)


def onnx_runner(embedder):
    """`embedder` (embedders.build_embedder's) as an ONNX Runtime function, or None when the optional
    packages are missing or the conversion fails (logged; the caller keeps Keras)."""
    if not available():
        return None
    import onnxruntime

    resolution = embedder.input.shape[1:]
    try:
        with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()), \
                warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)  # tf2onnx probes np.object
            path = Path(tmp) / "embedder.onnx"
            embedder(np.zeros((1, *(d or 224 for d in resolution)), np.float32))  # Keras exports called models
            embedder.export(str(path), format="onnx", verbose=False)
            options = onnxruntime.SessionOptions()
            options.log_severity_level = 3  # its start-up warnings are about unused initialisers
            session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001 - tf2onnx and onnxruntime raise many kinds; Keras still works
        log.warning("ONNX Runtime embedder unavailable (%s); computing embeddings with Keras", err)
        return None
    name = session.get_inputs()[0].name

    def run(batch: np.ndarray) -> np.ndarray:
        return session.run(None, {name: np.ascontiguousarray(batch, np.float32)})[0]

    return run


def checked(fast, reference):
    """A runner that uses `fast` after its first batch agrees with `reference` to within TOLERANCE, and
    `reference` from then on otherwise."""
    state = {"chosen": None}

    def run(batch: np.ndarray) -> np.ndarray:
        if state["chosen"] is None:
            expected = np.asarray(reference(batch), np.float32)
            got = np.asarray(fast(batch), np.float32)
            difference = float(np.max(np.abs(got - expected))) if expected.size else 0.0
            if difference <= TOLERANCE:
                log.info("embeddings by ONNX Runtime (first batch within %.1e of Keras)", difference)
                state["chosen"] = fast
            else:
                log.warning("ONNX Runtime's embeddings differ from Keras' by %.1e; computing them with Keras",
                            difference)
                state["chosen"] = reference
            return expected
        return state["chosen"](batch)

    return run
