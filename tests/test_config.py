"""The frozen config: JSON round trip, validation, and loading configs of other versions."""

import json

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
