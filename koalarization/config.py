"""Frozen configuration: one owner for every default. CLI flags map 1:1 onto these fields.

A run stores `RunConfig.to_json()` as `config.json` beside its weights, so `test`, `colorize` and a resumed
`train` rebuild exactly the network that was trained.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from koalarization.errors import KoalarizationError

UP = "up"  # decoder token: UpSampling2D x2
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")  # TrainConfig.precision: Keras dtype policies
OPTIMIZERS = ("rmsprop", "adam")  # TrainConfig.optimizer: keras.optimizers by name

# docs/reference.md, "The network": encoder 64 s2 . 128 . 128 s2 . 256 . 256 s2 . 512 . 512 . 256
REFERENCE_ENCODER = ((64, 2), (128, 1), (128, 2), (256, 1), (256, 2), (512, 1), (512, 1), (256, 1))
# Keras reproduction's decoder: 128 . up . 64 . up . 32 . 16 . Conv 2 tanh . up (the last two are fixed).
REFERENCE_DECODER = (128, UP, 64, UP, 32, 16)


@dataclass(frozen=True)
class ModelConfig:
    """The architecture. Shapes: L (B, S, S, 1) in [-1, 1] -> ab (B, S, S, 2) in [-1, 1], S = image_size."""

    image_size: int = 256
    encoder: tuple = REFERENCE_ENCODER  # (filters, stride) per 3x3 ReLU conv
    fusion_filters: int = 256  # 1x1 conv after concatenating the embedding
    decoder: tuple = REFERENCE_DECODER  # filters of 3x3 ReLU convs, or UP
    embedder: str = "inception_resnet_v2"
    # BatchNormalization after every hidden conv (Zhang et al.'s colorizer has it; the reference does not).
    # Off in the shipped weights: on 830 photos at 64 px it did no better (docs/model_card.md, run A).
    batch_norm: bool = False
    # Dropout on the global embedding while training. With one photo per class (imagenet-sample) the
    # near-one-hot embedding lets the network memorise each photo's colours instead of learning local cues.
    embedding_dropout: float = 0.0
    # A fixed gain on how the predicted ab varies within each photo (model.ABGain; the photo's mean ab is
    # kept), set after training, not trained: MSE shrinks uncertain colours toward the mean, and a gain
    # chosen on held-out photos trades PSNR for colourfulness (docs/model_card.md). It has no weights.
    ab_gain: float = 1.0

    def __post_init__(self):
        # JSON gives lists; keep the dataclass hashable and comparable.
        object.__setattr__(self, "encoder", tuple(tuple(int(v) for v in e) for e in self.encoder))
        object.__setattr__(self, "decoder", tuple(d if d == UP else int(d) for d in self.decoder))
        if not 0.0 < self.ab_gain <= 4.0:  # also refuses NaN
            raise KoalarizationError(f"ab_gain {self.ab_gain}: must be above 0 and at most 4 (1 = as trained)")
        if not 0.0 <= self.embedding_dropout < 1.0:
            raise KoalarizationError(f"embedding_dropout {self.embedding_dropout}: must be in [0, 1)")
        factor = self.downsampling
        if self.image_size <= 0 or self.image_size % factor:
            raise KoalarizationError(
                f"--image-size {self.image_size} must be a positive multiple of {factor} "
                f"(the encoder downsamples by {factor})"
            )
        if factor != 2 * 2 ** self.decoder.count(UP):
            raise KoalarizationError(
                f"decoder upsamples by {2 * 2 ** self.decoder.count(UP)} but the encoder downsamples "
                f"by {factor}: the output would not match the input size"
            )

    @property
    def downsampling(self) -> int:
        factor = 1
        for _, stride in self.encoder:
            factor *= stride
        return factor


@dataclass(frozen=True)
class AugmentConfig:
    """Random affine augmentation (docs/reference.md, Keras reproduction: ImageDataGenerator semantics).

    shear is an angle in degrees, as in Keras' ImageDataGenerator (so the reference's 0.2 is 0.2 degrees);
    zoom z draws independent x/y scales in [1 - z, 1 + z]; rotation is in degrees.
    """

    enabled: bool = True
    shear: float = 0.2
    zoom: float = 0.2
    rotation: float = 20.0
    flip: bool = True


@dataclass(frozen=True)
class TrainConfig:
    """How to train. Defaults: the reference Keras recipe (docs/reference.md, "Training recipes")."""

    data: str = "data"
    output: str = "model_output"
    epochs: int = 100  # EarlyStopping usually ends the run first
    batch_size: int = 32  # the reference used 100 over 4 GPUs; 32 fits a laptop
    learning_rate: float = 1e-3
    optimizer: str = "rmsprop"  # OPTIMIZERS: the Keras reproduction's RMSprop, or the original code's Adam
    seed: int = 0
    val_fraction: float = 0.1275
    test_fraction: float = 0.15
    workers: int = 4  # threads decoding and augmenting photos
    gpus: int = 0  # >1: tf.distribute.MirroredStrategy over that many GPUs (TF_CONFIG: several machines)
    embedder_weights: str | None = None  # local weights file for the embedder, instead of downloading
    early_stopping_patience: int = 15
    early_stopping_min_delta: float = 1e-5
    reduce_lr_factor: float = 0.1
    reduce_lr_patience: int = 5
    min_learning_rate: float = 1e-8
    backup_every_steps: int | None = None  # backup.py: also every N optimizer steps; None: every epoch only
    # Speed (docs/performance.md). prepared: a `prepare` folder, read instead of decoding the photos (same
    # batches); device_preprocessing: uint8 batches, augmentation warp, Lab and scaling in the model's graph
    # (device_preprocessing.py); precision: a Keras dtype policy, PRECISIONS; jit_compile: XLA train step.
    prepared: str | None = None
    device_preprocessing: bool = False
    precision: str = "float32"
    jit_compile: bool = False
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass(frozen=True)
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_dict(cls, raw: dict) -> "RunConfig":
        """Unknown model fields are an error (the network would differ); unknown training fields, from
        another version of koalarization, are dropped with a warning so old and new runs still load."""
        train = _known_fields(TrainConfig, dict(raw.get("train", {})))
        augment = AugmentConfig(**_known_fields(AugmentConfig, dict(train.pop("augment", {}))))
        return cls(model=ModelConfig(**raw.get("model", {})), train=TrainConfig(**train, augment=augment))

    @classmethod
    def load(cls, path: str | Path) -> "RunConfig":
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except FileNotFoundError:
            raise KoalarizationError(f"{path}: config file not found") from None
        except (json.JSONDecodeError, TypeError, ValueError) as err:
            raise KoalarizationError(f"{path}: not a koalarization config ({err})") from None


def _known_fields(cls, raw: dict) -> dict:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        logging.getLogger(__name__).warning("ignoring unknown %s fields in config: %s", cls.__name__, unknown)
    return {k: v for k, v in raw.items() if k in known}


def replace(obj, **changes):
    """dataclasses.replace that ignores None values (unset CLI flags keep the defaults)."""
    return dataclasses.replace(obj, **{k: v for k, v in changes.items() if v is not None})
