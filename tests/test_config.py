"""The frozen config: JSON round trip, validation, and loading configs of other versions."""

import json

import pytest

from koalarization.config import AugmentConfig, ModelConfig, RunConfig, TrainConfig
from koalarization.errors import KoalarizationError


def test_json_round_trip(tmp_path):
    cfg = RunConfig(ModelConfig(image_size=64, embedder="tiny_random"),
                    TrainConfig(epochs=3, augment=AugmentConfig(enabled=False)))
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
