"""Frozen configuration: one owner for every default and its help text.

The CLI generates `train`'s flags from these dataclasses (a field `learning_rate` is `--learning-rate`, its
help is the field's `metadata["help"]`), so every field is reachable from the command line, and a run's
`config.json` (`RunConfig.to_json()`, saved beside its weights) reruns it with `train --config`.
Library errors name the fields (`learning_rate`); the CLI shows them as flags.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import numbers
import operator
from dataclasses import dataclass, field
from pathlib import Path

from koalarization.errors import KoalarizationError

UP = "up"  # decoder token: UpSampling2D x2
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")  # TrainConfig.precision: Keras dtype policies
OPTIMIZERS = ("rmsprop", "adam")  # TrainConfig.optimizer: keras.optimizers by name
FILLS = ("nearest", "reflect")  # AugmentConfig.fill
LOSSES = ("mse", "classification")  # ModelConfig.loss: the paper's MSE on ab, or Zhang et al.'s ab bins
SCHEDULES = ("plateau", "cosine")  # TrainConfig.lr_schedule
MAX_TEMPERATURE = 10.0  # ModelConfig.temperature: above it the annealed mean is the plain mean anyway
EXPORT_FORMATS = ("savedmodel", "onnx")  # `export --format`: a TensorFlow SavedModel folder, or an .onnx file
COLORIZE_OUT = "colorized"  # `colorize` without --out writes here, in the working folder
# `export` without --out writes here, in the working folder
EXPORT_OUT = {"savedmodel": "exported/koalarization-savedmodel", "onnx": "exported/koalarization.onnx"}
# Pillow shrinks by more than this many times in two steps (a box reduction, then bilinear): as good as one
# bilinear pass to the eye and ~3x faster on a 12 MP photo. data/squash.py (Pillow) and model/resize.py (the
# same arithmetic in the graph) both squash with it.
REDUCING_GAP = 3.0
MAX_SATURATION = 4.0  # colorize's saturation: 0 gray, 1 as predicted; the CLI, API and page take 0..4
# The other commands' defaults: their functions and their flags both read these.
TEST_OUT = "model_output/test"  # `test` without --output writes here
TEST_BATCH, COLORIZE_BATCH = 16, 8  # photos per network call in `test` and in `colorize`
GRID_ROWS = 8  # photos in test's grid.png
SERVE_HOST, SERVE_PORT = "127.0.0.1", 8000  # `serve`: this machine only
EMBEDDER_CHECK_LIMIT = 250  # `check-embedder`: the first N photos by file name
LATENCY_RUNS, LATENCY_MEGAPIXELS = 5, (1.0, 12.0)  # `benchmark-colorize`: timed runs per size, photo sizes

# docs/reference.md, "The network": encoder 64 s2 . 128 . 128 s2 . 256 . 256 s2 . 512 . 512 . 256
REFERENCE_ENCODER = ((64, 2), (128, 1), (128, 2), (256, 1), (256, 2), (512, 1), (512, 1), (256, 1))
# Keras reproduction's decoder: 128 . up . 64 . up . 32 . 16 . Conv 2 tanh . up (the last two are fixed).
REFERENCE_DECODER = (128, UP, 64, UP, 32, 16)


def option(default, help: str, *, at_least=None, above=None, at_most=None, below=None, **kwargs):  # noqa: A002
    """A dataclass field with its help text (the CLI's flag help; `help` is the argparse word). The bounds
    and `choices` are checked by check_options when the config is made (from flags, code or a config.json);
    None, where it is the default, is always allowed."""
    if isinstance(default, (list, dict, set)):
        raise TypeError("mutable default")
    return field(default=default, metadata={"help": help, "bounds": _given(at_least, above, at_most, below), **kwargs})


_IN_BOUNDS = {"at_least": operator.ge, "above": operator.gt, "at_most": operator.le, "below": operator.lt}


def _given(at_least, above, at_most, below) -> dict:
    """The bounds that are set, by their keyword."""
    return {k: b for k, b in zip(_IN_BOUNDS, (at_least, above, at_most, below)) if b is not None}


def in_range(name: str, value, *, at_least=None, above=None, at_most=None, below=None):
    """`value` if it is a number within the bounds given, else a one-line error naming `name` (a config field
    or a function's keyword; the CLI shows it as its flag): "batch_size 0: must be at least 1"."""
    bounds = _given(at_least, above, at_most, below)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):  # NumPy's numbers too
        raise KoalarizationError(f"{name} {value!r}: must be a number")
    if not all(_IN_BOUNDS[k](value, b) for k, b in bounds.items()):  # NaN fails them all
        wanted = " and ".join(f"{k.replace('_', ' ')} {b:g}" for k, b in bounds.items())
        raise KoalarizationError(f"{name} {value:g}: must be {wanted}")
    return value


def check_options(config) -> None:
    """Raise a one-line error naming the first field of the dataclass `config` that is outside its declared
    `choices` or bounds (option())."""
    for f in dataclasses.fields(config):
        value, bounds = getattr(config, f.name), f.metadata.get("bounds", {})
        if value is None and f.default is None:
            continue
        choices = f.metadata.get("choices")
        if choices is not None and value not in choices:
            raise KoalarizationError(f"{f.name} {value}: choose one of {', '.join(choices)}")
        if bounds:
            in_range(f.name, value, **bounds)


def check_temperature(temperature) -> float:
    """`temperature` as a float if the annealed mean can use it (0 < T <= MAX_TEMPERATURE), else an error."""
    temperature = float(temperature)
    if not 0.0 < temperature <= MAX_TEMPERATURE:  # also refuses NaN
        raise KoalarizationError(f"temperature {temperature}: must be above 0 and at most {MAX_TEMPERATURE:g} "
                                 "(1 = the mean colour, smaller = more vivid)")
    return temperature


@dataclass(frozen=True)
class ModelConfig:
    """The network. Its inputs have any size that is a multiple of `downsampling`:
    L (B, H, W, 1) in [-1, 1] and the embedding (B, D) -> ab (B, H, W, 2) in [-1, 1] (loss "mse"), or
    logits over the ab bins (B, H/2, W/2, Q) (loss "classification", model/distribution.py)."""

    encoder: tuple = option(REFERENCE_ENCODER, "(filters, stride) of each 3x3 ReLU encoder conv", flag=False)
    fusion_filters: int = option(256, "filters of the 1x1 conv after the fusion", at_least=1)
    decoder: tuple = option(REFERENCE_DECODER, "filters of the 3x3 decoder convs, or 'up'", flag=False)
    embedder: str = option("inception_resnet_v2", "global feature extractor (embedders.EMBEDDERS)")
    # Zhang et al.'s colorizer has BatchNorm after every conv; the reference does not.
    batch_norm: bool = option(False, "BatchNormalization after every hidden conv")
    # With one photo per class the near-one-hot class vector lets the network memorise each photo's colours.
    embedding_dropout: float = option(0.0, "dropout on the global embedding while training", at_least=0, below=1)
    # Weightless, set after training (docs/model_card.md): MSE shrinks uncertain colours toward the mean, and a
    # gain chosen on held-out photos trades PSNR for colourfulness. network.ABGain.
    ab_gain: float = option(1.0, "gain on how the predicted ab varies within each photo (1 = as trained)",
                             above=0, at_most=4)
    # Weightless: the convolutions pad with zeros, so the outer cells of the encoder grid see a gray frame
    # that the inside never sees, and predict different colours (a visible colour frame). Predicting on the
    # photo extended by its own mirror image and cropping moves that border outside the photo.
    border_context: int = option(0, "pixels of mirrored photo added on each side at inference, then cropped",
                                  at_least=0)
    # The paper's MSE predicts the mean of the plausible colours (brown-gray when unsure); Zhang et al.'s
    # head predicts a distribution over ab bins instead: only the last layer differs (distribution.py).
    loss: str = option("mse", "mse: the paper's 2 tanh channels; classification: a distribution over ab bins",
                       choices=LOSSES)
    # Weightless: the annealed mean's temperature for the classification head (colorize --temperature).
    temperature: float = option(0.38, "classification head: annealed-mean temperature, 1 = the mean colour "
                                      "(pale), smaller = nearer the most likely colour (vivid)")

    def __post_init__(self):
        # JSON gives lists; keep the dataclass hashable and comparable.
        object.__setattr__(self, "encoder", tuple(tuple(int(v) for v in e) for e in self.encoder))
        object.__setattr__(self, "decoder", tuple(d if d == UP else int(d) for d in self.decoder))
        check_options(self)
        check_temperature(self.temperature)
        if self.border_context % self.downsampling:
            raise KoalarizationError(f"border_context {self.border_context}: must be a multiple of "
                                     f"{self.downsampling} (the encoder's downsampling), 0 or more")
        if self.downsampling != 2 * 2 ** self.decoder.count(UP):
            raise KoalarizationError(
                f"decoder upsamples by {2 * 2 ** self.decoder.count(UP)} but the encoder downsamples "
                f"by {self.downsampling}: the output would not match the input size"
            )

    @property
    def downsampling(self) -> int:
        factor = 1
        for _, stride in self.encoder:
            factor *= stride
        return factor

    def check_size(self, size: int, name: str = "image_size") -> int:
        """`size` if the network can work at it (a positive multiple of the downsampling), else an error."""
        if size <= 0 or size % self.downsampling:
            raise KoalarizationError(f"{name} {size}: must be a positive multiple of {self.downsampling} "
                                     f"(the encoder downsamples by {self.downsampling})")
        return size


@dataclass(frozen=True)
class AugmentConfig:
    """Random affine augmentation (docs/reference.md, Keras reproduction: ImageDataGenerator semantics).

    shear is an angle in degrees, as in Keras' ImageDataGenerator (so the reference's 0.2 is 0.2 degrees);
    zoom z draws independent x/y scales in [1 - z, 1 + z]; rotation is in degrees.
    """

    enabled: bool = option(True, "augment the training photos")
    shear: float = option(0.2, "shear angle range, degrees", at_least=0, below=90)
    zoom: float = option(0.2, "zoom range: x and y scales in [1 - zoom, 1 + zoom]", at_least=0, below=1)
    rotation: float = option(20.0, "rotation range, degrees", at_least=0, at_most=180)
    flip: bool = option(True, "random horizontal flips")
    # The reference repeats the nearest edge pixel: streaks along the borders of rotated photos.
    fill: str = option("nearest", "what fills pixels from outside the photo: nearest (edge) or reflect",
                       choices=FILLS)

    def __post_init__(self):
        check_options(self)


@dataclass(frozen=True)
class TrainConfig:
    """How to train. Defaults: the reference Keras recipe (docs/reference.md, "Training recipes")."""

    data: tuple = option((), "folders of photos (searched recursively)", nargs="+", metavar="DIR")
    data_list: tuple = option((), "files listing photos or folders, one per line", nargs="+", metavar="FILE")
    exclude_list: tuple = option((), "files listing photos to leave out (path suffixes), one per line",
                                 nargs="+", metavar="FILE")
    output: str = option("model_output", "run folder: weights, config.json, split.json, logs")
    image_size: int = option(256, "working size S: photos are squashed to S x S (a multiple of 8)")
    epochs: int = option(100, "maximum epochs (EarlyStopping usually ends the run first)", at_least=1)
    batch_size: int = option(32, "photos per step (global over all GPUs); the reference used 100 over 4 GPUs",
                             at_least=1)
    learning_rate: float = option(1e-3, "learning rate", above=0)
    optimizer: str = option("rmsprop", "optimizer", choices=OPTIMIZERS)
    seed: int = option(0, "split, shuffle and augmentation seed", at_least=0)
    val_fraction: float = option(0.1275, "share of the photos kept for validation", above=0, below=1)
    test_fraction: float = option(0.15, "share of the photos kept for `test`", above=0, below=1)
    workers: int = option(4, "threads reading photos", at_least=1)
    gpus: int = option(0, ">1: train on that many GPUs (TF_CONFIG: several machines; docs/distributed.md)",
                        at_least=0)
    embedder_weights: str | None = option(None, "local weights file of the embedder", metavar="PATH")
    early_stopping_patience: int = option(15, "epochs without improvement before stopping", at_least=0)
    early_stopping_min_delta: float = option(1e-5, "smallest val_loss change that counts as improvement",
                                             at_least=0)
    reduce_lr_factor: float = option(0.1, "learning rate factor on a plateau", above=0, below=1)
    reduce_lr_patience: int = option(5, "epochs without improvement before reducing the learning rate",
                                     at_least=0)
    min_learning_rate: float = option(1e-8, "floor of the learning rate", at_least=0)
    backup_every_steps: int | None = option(None, "also back up every N steps, not only every epoch",
                                            metavar="N", at_least=1)
    validate_every_steps: int | None = option(None, "also measure val_loss every N steps, into curve.csv "
                                                    "(an epoch of a large data set is hours)",
                                              metavar="N", at_least=1)
    cache: str | None = option(None, "cache folder of decoded photos and embeddings (default: automatic, "
                                     "under ~/.cache/koalarization)", metavar="DIR")
    precision: str = option("float32", "Keras dtype policy", choices=PRECISIONS)
    jit_compile: bool = option(False, "compile the train step with XLA")
    lr_schedule: str = option("plateau", "plateau: ReduceLROnPlateau on val_loss (the reference); cosine: "
                                         "decay from learning_rate to min_learning_rate over all the epochs' steps",
                              choices=SCHEDULES)
    init_from: str | None = option(None, "start from a run's weights (its colorize.weights.h5 or folder, or "
                                         "'shipped'): every layer whose name and shape match", metavar="RUN")
    # Zhang et al. eq. 4: without it the cross-entropy, like MSE, favours the common desaturated colours.
    rebalance: bool = option(True, "classification loss: weight rare colours up (Zhang et al., lambda 0.5)")
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self):
        for name in ("data", "data_list", "exclude_list"):  # a single path (older configs) -> a tuple
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(value or ()))
        check_options(self)
        if self.val_fraction + self.test_fraction >= 1:
            raise KoalarizationError(f"val_fraction {self.val_fraction} and test_fraction {self.test_fraction}: "
                                     "their sum must be below 1")
        if self.min_learning_rate > self.learning_rate:
            raise KoalarizationError(f"min_learning_rate {self.min_learning_rate:g}: must be at most "
                                     f"learning_rate {self.learning_rate:g}")


@dataclass(frozen=True)
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        self.model.check_size(self.train.image_size)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_dict(cls, raw: dict) -> "RunConfig":
        """Unknown model fields are an error (the network would differ); unknown training fields, from
        another version of koalarization, are dropped with a warning so old and new runs still load."""
        model, train = dict(raw.get("model", {})), dict(raw.get("train", {}))
        if "image_size" in model:  # older versions kept the working size with the network
            train.setdefault("image_size", model.pop("image_size"))
        for switch in ("device_preprocessing", "prepared"):  # older versions' pipeline options: one pipeline now
            train.pop(switch, None)
        train = _known_fields(TrainConfig, train)
        augment = AugmentConfig(**_known_fields(AugmentConfig, dict(train.pop("augment", {}))))
        return cls(model=ModelConfig(**model), train=TrainConfig(**train, augment=augment))

    @classmethod
    def load(cls, path: str | Path) -> "RunConfig":
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except FileNotFoundError:
            raise KoalarizationError(f"{path}: config file not found") from None
        except KoalarizationError as err:
            raise KoalarizationError(f"{path}: {err}") from None
        except (json.JSONDecodeError, TypeError, ValueError) as err:
            raise KoalarizationError(f"{path}: not a koalarization config ({err})") from None


def _known_fields(cls, raw: dict) -> dict:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        logging.getLogger(__name__).warning("ignoring unknown %s fields in config: %s", cls.__name__, unknown)
    return {k: v for k, v in raw.items() if k in known}
