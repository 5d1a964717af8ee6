"""A trained run: its folder, weights, config and split, saved and loaded together.

    TrainedRun.at(weights or None)   the run whose weights file is `weights`; None: the weights that ship
                                     with koalarization (docs/model_card.md)
    run.load() -> (model.network.build_model's model with the weights, RunConfig)

A run's folder holds `colorize.weights.h5` (the trainable colorizer only; the frozen embedder is rebuilt
from its own pretrained source) and `config.json` (the RunConfig used). The weights file also carries the
ModelConfig it was trained with (HDF5 attribute STAMP), so weights copied next to another run's config.json
(another image size, another embedder, another network) are refused with one line instead of loading into
a network they were never trained for. Keras itself loads a file holding *more* layers than the network
without a word (3.15), so the loader also compares the weight shapes in the file with the network's.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import warnings
from pathlib import Path

import keras
import numpy as np

from koalarization.config import ModelConfig, RunConfig
from koalarization.errors import KoalarizationError
from koalarization.files import atomic_path, first_line

log = logging.getLogger(__name__)

# A run folder's files: `train` writes them, everything reads them by these names (one owner).
WEIGHTS_FILE = "colorize.weights.h5"  # the best weights, stamped with their ModelConfig
CONFIG_FILE = "config.json"  # the RunConfig, every setting of the run
SPLIT_FILE = "split.json"  # the train / val / test photo lists (data.split)
PRIOR_FILE = "ab_prior.json"  # the classification head's bins, ab prior and class weights (model.distribution)
LOG_FILE = "log.csv"  # Keras' CSVLogger: a row per epoch
CURVES_FILE = "curves.png"  # log.csv drawn
CURVE_FILE = "curve.csv"  # the validation loss every --validate-every-steps steps
BACKUP_DIR = "backup"  # an unfinished run's state (training.backup); removed when the run completes
LOGS_DIR = "logs"  # TensorBoard's
STAMP = "koalarization_model"  # HDF5 attribute: the ModelConfig as JSON
# The weights that ship inside the package (setup.py package_data), with their config.json beside them.
SHIPPED_WEIGHTS = Path(__file__).with_name("weights") / WEIGHTS_FILE


def _beside_weights(name: str) -> property:
    """A file of the run folder, read as an attribute: run.config_file is the folder's CONFIG_FILE."""
    return property(lambda run: run.folder / name, doc=f"the run's {name}")


@dataclasses.dataclass(frozen=True)
class TrainedRun:
    """A run folder, named by its weights file (config.json and split.json lie beside it)."""

    weights: Path

    @classmethod
    def at(cls, weights: "str | Path | TrainedRun | None" = None) -> "TrainedRun":
        if isinstance(weights, TrainedRun):
            return weights
        return cls(Path(weights) if weights is not None else SHIPPED_WEIGHTS)

    @classmethod
    def named(cls, name: "str | Path") -> "TrainedRun":
        """A run as a person names it: "shipped", a run folder, or its weights file (train --init-from)."""
        if str(name) == "shipped":
            return cls.at(None)
        path = Path(name)
        return cls(path / WEIGHTS_FILE if path.is_dir() else path)

    @property
    def folder(self) -> Path:
        return self.weights.parent

    config_file = _beside_weights(CONFIG_FILE)
    split_file = _beside_weights(SPLIT_FILE)
    prior_file = _beside_weights(PRIOR_FILE)

    @property
    def shipped(self) -> bool:
        return self.weights.resolve() == SHIPPED_WEIGHTS.resolve()

    @property
    def name(self) -> str:
        """'shipped' for the packaged weights, else the run folder's name."""
        return "shipped" if self.shipped else self.folder.resolve().name

    def split(self):
        """The run's data.split.Split, or None when there is no split.json (the shipped weights)."""
        from koalarization.data.split import Split

        return Split.load(self.split_file) if self.split_file.is_file() else None

    def load(self, embedder_weights: str | None = None) -> tuple[keras.Model, RunConfig]:
        return load_trained(self.weights, embedder_weights)


def all_finite(model: keras.Model) -> bool:
    """False when any trainable weight is NaN or infinite (a diverged run): such weights are never saved.
    (The frozen embedder cannot diverge, and is skipped: it can be most of the model.)"""
    return all(np.isfinite(keras.ops.convert_to_numpy(v)).all() for v in model.trainable_weights)


def save_weights_atomic(model: keras.Model, path: str | Path, stamp: ModelConfig | None = None,
                        attrs: dict | None = None) -> None:
    """model.save_weights through io.atomic_path: a kill mid-write leaves the old file. stamp: the
    ModelConfig to record in the file (what `load_trained` checks config.json against); attrs: more HDF5
    attributes to record (backups store their position)."""
    import h5py

    attrs = {**({STAMP: json.dumps(dataclasses.asdict(stamp))} if stamp is not None else {}), **(attrs or {})}
    with atomic_path(path, suffix=".weights.h5") as tmp:  # Keras chooses the format by the name's end
        model.save_weights(tmp, overwrite=True)
        if attrs:
            with h5py.File(tmp, "a") as f:
                f.attrs.update(attrs)


class AtomicWeightsSaver:
    """Stands in for a model towards callbacks that only call `save_weights` (ModelCheckpoint).
    Non-finite weights are never written: the file keeps the last good ones."""

    def __init__(self, model: keras.Model, stamp: ModelConfig | None = None):
        self._model, self._stamp = model, stamp

    def save_weights(self, filepath, overwrite=True):
        if not all_finite(self._model):
            log.warning("not saving %s: the weights are NaN or infinite; it keeps the last good ones", filepath)
            return
        save_weights_atomic(self._model, filepath, self._stamp)

    def __getattr__(self, name):
        return getattr(self._model, name)


class ColorizerCheckpoint(keras.callbacks.ModelCheckpoint):
    """Keras' ModelCheckpoint (best only, weights only) that saves the colorizer, atomically, stamped with
    its ModelConfig."""

    def __init__(self, colorizer: keras.Model, filepath, stamp: ModelConfig | None = None, **kwargs):
        super().__init__(filepath, save_weights_only=True, **kwargs)
        self._saver = AtomicWeightsSaver(colorizer, stamp)

    def set_model(self, model):
        super().set_model(self._saver)


# ModelConfig fields that change no weight: a config may set them otherwise than the run that trained.
WEIGHTLESS_FIELDS = ("ab_gain", "embedding_dropout", "border_context", "temperature")


def _weighted(model_cfg: ModelConfig) -> ModelConfig:
    return dataclasses.replace(model_cfg, **{f: getattr(ModelConfig, f) for f in WEIGHTLESS_FIELDS})


def _read_weights_file(weights: Path) -> tuple[list[tuple], ModelConfig | None]:
    """-> (sorted weight shapes, the stamped ModelConfig or None); problems as one-line errors."""
    import h5py

    try:
        with h5py.File(weights, "r") as f:
            shapes = []
            f.visititems(lambda _, obj: shapes.append(tuple(obj.shape)) if isinstance(obj, h5py.Dataset) else None)
            raw = f.attrs.get(STAMP)
    except OSError as err:
        if "truncated" in str(err):
            why = "the file is truncated (an interrupted copy or download?)"
        elif "signature" in str(err) or "not an HDF5" in str(err):
            why = "not an HDF5 weights file"
        else:
            why = f"unreadable ({first_line(err)})"
        raise KoalarizationError(f"weights {weights}: cannot load it: {why}; use a complete {WEIGHTS_FILE}") from None
    if not shapes:
        raise KoalarizationError(f"weights {weights}: holds no weights; use the colorize.weights.h5 of a run")
    stamp = None
    if raw is not None:
        raw = raw.decode() if isinstance(raw, bytes) else str(raw)
        try:
            fields = json.loads(raw)
            fields.pop("image_size", None)  # older versions stamped the working size too; weights fit any size
            stamp = ModelConfig(**fields)
        except (ValueError, TypeError, KoalarizationError):  # another version's fields: shapes still checked
            log.warning("%s: unreadable network description %r; checking the weight shapes only", weights, raw[:80])
    return sorted(shapes), stamp


def _describe_mismatch(weights: Path, config_file: Path, trained: ModelConfig, configured: ModelConfig) -> str:
    if trained.embedder != configured.embedder:
        return (f"weights {weights}: trained with embedder {trained.embedder}, but {config_file} says "
                f"{configured.embedder}; use the config.json written beside these weights by their run")
    fields = [f.name for f in dataclasses.fields(ModelConfig)
              if getattr(trained, f.name) != getattr(configured, f.name)]
    return (f"weights {weights}: trained with another network than {config_file} describes "
            f"({', '.join(fields)} differ); use the config.json written beside these weights by their run")


def _layers_with_weights(model: keras.Model) -> dict[str, keras.layers.Layer]:
    """Every layer holding weights inside `model`, nested models opened, by name (names are unique in the
    colorizer: encoder_conv0, fusion_conv, decoder_ab, ...)."""
    found = {}
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found.update(_layers_with_weights(layer))
        elif layer.weights:
            found[layer.name] = layer
    return found


def load_matching(colorizer: keras.Model, source: TrainedRun) -> tuple[list[str], list[str]]:
    """Copy into `colorizer` the weights of every layer of `source`'s colorizer with the same name and
    shapes (a warm start: the whole trunk, and the head when it is the same head). Returns (the layers
    copied, the layers of `colorizer` left as they were)."""
    from koalarization.model.embedders import get_spec
    from koalarization.model.network import build_colorizer

    if not source.weights.is_file():
        raise KoalarizationError(f"init_from {source.weights}: file not found")
    if not source.config_file.is_file():
        raise KoalarizationError(f"init_from {source.config_file}: missing; the weights need the config.json "
                                 "written beside them")
    cfg = RunConfig.load(source.config_file)
    _read_weights_file(source.weights)  # truncated, empty or not HDF5: one line
    trained = build_colorizer(cfg.model, get_spec(cfg.model.embedder).dim)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trained.load_weights(source.weights)
    except Exception as err:  # noqa: BLE001 - h5py, Keras and OS errors all mean "wrong or broken file"
        raise KoalarizationError(f"init_from {source.weights}: cannot load it with {source.config_file} "
                                 f"({first_line(err)})") from None
    theirs, copied, left = _layers_with_weights(trained), [], []
    for name, layer in _layers_with_weights(colorizer).items():
        other = theirs.get(name)
        if other is not None and [tuple(w.shape) for w in other.weights] == [tuple(w.shape) for w in layer.weights]:
            layer.set_weights(other.get_weights())
            copied.append(name)
        else:
            left.append(name)
    if not copied:
        raise KoalarizationError(f"init_from {source.weights}: no layer matches this network (another "
                                 "embedder or encoder?)")
    return copied, left


def load_trained(weights: str | Path, embedder_weights: str | None = None) -> tuple[keras.Model, RunConfig]:
    """The inference model (network.build_model) with trained weights, and the RunConfig it was trained with.
    Every problem with the file (missing, truncated, another network, size or embedder) is one
    KoalarizationError naming the file."""
    from koalarization.model.embedders import build_embedder
    from koalarization.model.network import build_model, colorizer_of

    weights = Path(weights)
    if not weights.is_file():
        raise KoalarizationError(f"weights {weights}: file not found")
    config_file = TrainedRun(weights).config_file
    if not config_file.is_file():
        raise KoalarizationError(f"{config_file}: missing; the weights need the config.json written beside them")
    cfg = RunConfig.load(config_file)
    shapes, stamp = _read_weights_file(weights)
    if stamp is not None and _weighted(stamp) != _weighted(cfg.model):  # before building: the embedder may be a large download
        raise KoalarizationError(_describe_mismatch(weights, config_file, stamp, cfg.model))
    embedder = build_embedder(cfg.model.embedder, embedder_weights)
    model = build_model(cfg.model, embedder)
    colorizer = colorizer_of(model)
    expected = sorted(tuple(v.shape) for v in colorizer.weights)
    if shapes != expected:  # Keras would skip extra layers silently, or fail deep inside its loader
        raise KoalarizationError(
            f"weights {weights}: weights of another network than {config_file} describes ({len(shapes)} "
            f"arrays in the file, {len(expected)} in the network, or other shapes); use the config.json "
            f"written beside these weights by their run"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Keras' per-layer warnings; the error below says it in one line
            colorizer.load_weights(weights)
    except Exception as err:  # noqa: BLE001 - h5py, Keras and OS errors all mean "wrong or broken file"
        raise KoalarizationError(
            f"weights {weights}: cannot load into the network of {config_file} ({first_line(err)})"
        ) from None
    if cfg.model.loss == "classification":
        from koalarization.model import distribution

        prior = TrainedRun(weights).prior_file
        if prior.is_file():  # the bins the head was trained on; read_prior refuses other ones
            distribution.read_prior(prior)
    return model, cfg
