"""The frozen config: JSON round trip, validation, and loading configs of other versions."""

import json

import numpy as np
import pytest

from koalarization.config import AugmentConfig, ModelConfig, RunConfig, TrainConfig
from koalarization.errors import KoalarizationError


def test_json_round_trip(tmp_path):
    cfg = RunConfig(ModelConfig(embedder="tiny_random", border_context=16),
                    TrainConfig(data=("a", "b"), image_size=64, epochs=3, augment=AugmentConfig(enabled=False)))
    path = tmp_path / "config.json"
    path.write_text(cfg.to_json())
    assert RunConfig.load(path) == cfg


def test_unknown_training_fields_are_dropped_but_unknown_model_fields_are_errors(tmp_path):
    raw = json.loads(RunConfig().to_json())
    raw["train"]["option_from_a_newer_version"] = True
    raw["train"]["augment"]["another"] = 1
    assert RunConfig.from_dict(raw) == RunConfig()
    raw["model"]["new_layer"] = 3
    path = tmp_path / "config.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(KoalarizationError, match="not a koalarization config"):
        RunConfig.load(path)


def test_missing_and_broken_config_files(tmp_path):
    with pytest.raises(KoalarizationError, match="not found"):
        RunConfig.load(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(KoalarizationError, match="bad.json"):
        RunConfig.load(tmp_path / "bad.json")


def test_configs_of_older_versions_load(tmp_path):
    """Older runs kept the working size in the model section, named one data folder as a string, and had
    pipeline switches that no longer exist; their config.json still loads into the same recipe."""
    raw = json.loads(RunConfig().to_json())
    raw["model"]["image_size"] = 64
    del raw["train"]["image_size"]
    raw["train"].update(data="photos", prepared="runs/prep64", device_preprocessing=True)
    cfg = RunConfig.from_dict(raw)
    assert cfg.train.image_size == 64 and cfg.train.data == ("photos",)
    assert cfg == RunConfig(train=TrainConfig(data=("photos",), image_size=64))


def test_config_errors_name_the_field():
    with pytest.raises(KoalarizationError, match="^val_fraction 0.6 and test_fraction 0.5"):
        TrainConfig(val_fraction=0.6, test_fraction=0.5)
    with pytest.raises(KoalarizationError, match="^fill wrap"):
        TrainConfig(augment=AugmentConfig(fill="wrap"))


@pytest.mark.parametrize("section, field, value, message", [
    ("train", "batch_size", 0, "batch_size 0: must be at least 1"),  # was a ZeroDivisionError in the batch source
    ("train", "epochs", 0, "epochs 0: must be at least 1"),
    ("train", "learning_rate", -1e-3, "learning_rate -0.001: must be above 0"),  # trained uphill
    ("train", "learning_rate", float("nan"), "learning_rate nan: must be above 0"),
    ("train", "reduce_lr_factor", 2.0, "reduce_lr_factor 2: must be above 0 and below 1"),  # a Keras ValueError
    ("train", "workers", 0, "workers 0: must be at least 1"),
    ("train", "seed", -1, "seed -1: must be at least 0"),
    ("train", "backup_every_steps", 0, "backup_every_steps 0: must be at least 1"),
    ("train", "batch_size", "32", "batch_size '32': must be a number"),
    ("train", "optimizer", "sgd", "optimizer sgd: choose one of rmsprop, adam"),
    ("augment", "zoom", 1.0, "zoom 1: must be at least 0 and below 1"),  # a scale of 0 collapses the photo
    ("augment", "rotation", -5.0, "rotation -5: must be at least 0 and at most 180"),
    ("model", "fusion_filters", 0, "fusion_filters 0: must be at least 1"),
    ("model", "embedding_dropout", 1.0, "embedding_dropout 1: must be at least 0 and below 1"),
    ("model", "loss", "l1", "loss l1: choose one of mse, classification"),
])
def test_out_of_range_options_are_refused_with_the_field_and_its_range(section, field, value, message):
    make = {"train": TrainConfig, "model": ModelConfig, "augment": lambda **kw: TrainConfig(augment=AugmentConfig(**kw))}
    with pytest.raises(KoalarizationError) as err:
        make[section](**{field: value})
    assert str(err.value) == message


def test_the_bounds_admit_their_edges_and_optional_fields_stay_optional():
    cfg = TrainConfig(gpus=0, early_stopping_patience=0, min_learning_rate=0.0, learning_rate=1e-8,
                      augment=AugmentConfig(zoom=0.0, rotation=180.0, shear=0.0))
    assert cfg.backup_every_steps is None and cfg.validate_every_steps is None
    assert TrainConfig(batch_size=np.int64(8), learning_rate=np.float32(1e-3)).batch_size == 8  # NumPy numbers
    with pytest.raises(KoalarizationError, match="^min_learning_rate 1e-07: must be at most learning_rate 1e-08$"):
        TrainConfig(learning_rate=1e-8, min_learning_rate=1e-7)


def test_a_config_file_out_of_range_names_the_file_and_the_field(tmp_path):
    raw = json.loads(RunConfig().to_json())
    raw["train"]["augment"]["zoom"] = 1.5
    path = tmp_path / "config.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(KoalarizationError, match=r"config\.json: zoom 1\.5: must be at least 0 and below 1$"):
        RunConfig.load(path)
