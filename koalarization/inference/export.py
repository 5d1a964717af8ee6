"""Export a trained model for serving without this package: TensorFlow SavedModel or ONNX.

Both hold everything `colorize` does (photo_model.build_photo_model: squash, L, the network with its
embedder, upsampling, the join with the photo's own L and the gamut fit):

    input  "image"   (B, H, W, 3) uint8 RGB, any H and W (one photo: B = 1; a batch: photos of one size)
    output           (B, H, W, 3) uint8 RGB, the colorized photo with the input's own lightness

at the run's defaults (its ab gain and temperature; saturation 1). The outputs match `colorize`'s to within
1 level (tests/test_export.py; docs/colorize.md, "Export").

SavedModel: Keras 3's `model.export(format="tf_saved_model")`; load with
`tf.saved_model.load(path).serve(image)`.
ONNX: Keras 3's `model.export(format="onnx")`, which converts through tf2onnx on the TensorFlow backend
(pip install tf2onnx onnx; onnxruntime to run it).
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import numpy as np

from koalarization.config import EXPORT_FORMATS, EXPORT_OUT
from koalarization.errors import KoalarizationError
from koalarization.files import atomic_path, first_line

FORMATS = dict(zip(EXPORT_FORMATS, ("tf_saved_model", "onnx")))  # our names -> Keras' export formats


def default_out(fmt: str) -> Path:
    """Where `export` writes `fmt` when no out is given (in the working folder)."""
    if fmt not in FORMATS:
        raise KoalarizationError(f"format {fmt}: choose one of {', '.join(FORMATS)}")
    return Path(EXPORT_OUT[fmt])


def _check_onnx_tools() -> None:
    missing = [name for name in ("tf2onnx", "onnx") if _missing(name)]
    if missing:
        raise KoalarizationError(
            f"format onnx needs {' and '.join(missing)}: pip install tf2onnx onnx (onnxruntime to run it)"
        )


@contextlib.contextmanager
def _quiet_logger(name: str):
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _missing(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is None


def export(run, fmt: str, out: str | Path, embedder_weights: str | None = None) -> Path:
    """Write the model of `run` (a TrainedRun or its weights file) to `out` as `fmt` ("savedmodel" | "onnx").

    `out` is a folder for SavedModel and a file for ONNX. It is written under a temporary name first and
    then renamed, so an interrupted export never leaves something that looks finished.
    """
    if fmt not in FORMATS:
        raise KoalarizationError(f"format {fmt}: choose one of {', '.join(FORMATS)}")
    if fmt == "onnx":
        _check_onnx_tools()
    out = Path(out)
    if out.parent and not out.parent.exists():
        if out.parent == default_out(fmt).parent:  # the default's own folder is created
            out.parent.mkdir(parents=True, exist_ok=True)
        else:
            raise KoalarizationError(f"out {out}: folder {out.parent} does not exist")
    from koalarization.inference.colorize import Colorizer

    model = Colorizer(run, embedder_weights=embedder_weights).photo_model()
    model(np.zeros((1, 8, 8, 3), np.uint8))  # Keras' ONNX export refuses a model never called
    try:
        # Keras prints the whole signature while exporting; the CLI prints one line instead.
        with atomic_path(out) as tmp, contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(), \
                _quiet_logger("tensorflow"):  # "Assets written to: .export.NNN.tmp/assets" names the temporary folder
            # Keras' tf2onnx shim probes `np.object`, which NumPy 2 answers with a FutureWarning: harmless.
            warnings.filterwarnings("ignore", message=".*np.object.*", category=FutureWarning)
            model.export(str(tmp), format=FORMATS[fmt], verbose=False)
    except KoalarizationError:
        raise
    except Exception as err:  # noqa: BLE001 - TF, tf2onnx and OS errors all mean "the export failed"
        raise KoalarizationError(f"format {fmt}: export to {out} failed ({first_line(err)})") from None
    return out
