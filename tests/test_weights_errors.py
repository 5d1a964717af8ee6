"""Broken or mismatched weights: one clear error line from `test`, `colorize` and `serve`, never a traceback.

The weights a run writes carry the ModelConfig they were trained with (checkpoint.STAMP); the loader
compares it with the config.json beside them, and compares the weight shapes with the network's (Keras
3.15 loads a file with extra layers without a word).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from koalarization.cli import main
from koalarization.config import UP, ModelConfig, RunConfig, TrainConfig
from koalarization.run import STAMP, load_trained, save_weights_atomic

from conftest import REPO, synthetic_photo

TINY = ModelConfig(
    encoder=((8, 2), (8, 1), (16, 2), (16, 1), (16, 2), (16, 1), (16, 1), (8, 1)),
    fusion_filters=8, decoder=(16, UP, 8, UP, 8, 8), embedder="tiny_random",
)
OTHER_ENCODER = dataclasses.replace(TINY, encoder=TINY.encoder[:-1] + ((16, 1),))  # same layers, one other shape
DEEPER = dataclasses.replace(TINY, encoder=TINY.encoder + ((8, 1),))  # one layer more
# What each command line needs besides --weights.
COMMANDS = {
    "test": lambda w, tmp: ["test", "--data", str(tmp / "photos"), "--weights", str(w), "--output", str(tmp / "t")],
    "colorize": lambda w, tmp: ["colorize", "--weights", str(w), "--out", str(tmp / "c"), str(tmp / "photos")],
    "serve": lambda w, tmp: ["serve", "--weights", str(w), "--port", "0"],
}


def write_run(folder: Path, trained: ModelConfig, configured: ModelConfig | None = None, stamp=True) -> Path:
    """Weights of a `trained` network (stamped as train writes them, or bare as Keras writes them) beside
    a config.json that says `configured`."""
    from koalarization.model.embedders import build_embedder
    from koalarization.model.network import build_model, colorizer_of

    folder.mkdir(parents=True, exist_ok=True)
    colorizer = colorizer_of(build_model(trained, build_embedder(trained.embedder)))
    weights = folder / "colorize.weights.h5"
    if stamp:
        save_weights_atomic(colorizer, weights, stamp=trained)
    else:
        colorizer.save_weights(weights)
    (folder / "config.json").write_text(RunConfig(configured or trained, TrainConfig(image_size=32)).to_json())
    return weights


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """name -> (weights file, a regular expression its one error line must match)."""
    root = tmp_path_factory.mktemp("runs")
    good = write_run(root / "good", TINY)
    runs = {}

    truncated = root / "truncated" / "colorize.weights.h5"
    truncated.parent.mkdir()
    shutil.copy(good.parent / "config.json", truncated.parent)
    data = good.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    runs["truncated"] = truncated, "cannot load it: the file is truncated"

    garbage = root / "garbage" / "colorize.weights.h5"
    garbage.parent.mkdir()
    shutil.copy(good.parent / "config.json", garbage.parent)
    garbage.write_bytes(b"<html>404 not found</html>" * 10)
    runs["not_hdf5"] = garbage, "cannot load it: not an HDF5 weights file"

    runs["missing"] = root / "nowhere" / "colorize.weights.h5", "nowhere/colorize.weights.h5: file not found"
    no_config = root / "no_config" / "colorize.weights.h5"
    no_config.parent.mkdir()
    shutil.copy(good, no_config)
    runs["config_missing"] = no_config, r"no_config/config.json: missing; the weights need the config.json"

    runs["other_encoder"] = (write_run(root / "other_encoder", OTHER_ENCODER, TINY),
                             r"trained with another network than .*config.json describes \(encoder differ\)")
    runs["deeper_unstamped"] = (write_run(root / "deeper", DEEPER, TINY, stamp=False),
                                r"weights of another network than .*config.json describes \(30 arrays in the "
                                r"file, 28 in the network")
    runs["other_encoder_unstamped"] = (write_run(root / "other_unstamped", OTHER_ENCODER, TINY, stamp=False),
                                       r"weights of another network than .*config.json describes")
    # Checked before the embedder is built: no EfficientNet weights are needed to see the mismatch.
    runs["other_embedder"] = (write_run(root / "embedder", TINY, dataclasses.replace(TINY, embedder="efficientnet_lite0")),
                              r"trained with embedder tiny_random, but .*embedder/config.json says "
                              r"efficientnet_lite0; use the config.json written beside these weights")
    return runs


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("work")
    (tmp / "photos").mkdir()
    Image.fromarray(synthetic_photo(0)).save(tmp / "photos" / "a.png")
    return tmp


def test_good_stamped_weights_load(tmp_path):
    weights = write_run(tmp_path / "good", TINY)
    import h5py

    with h5py.File(weights) as f:
        assert '"fusion_filters": 8' in f.attrs[STAMP]
    model, cfg = load_trained(weights)
    assert cfg.model == TINY and cfg.train.image_size == 32


def test_weights_of_older_versions_load(tmp_path):
    """Older versions stamped the working size into the weights and wrote it into config.json's model
    section; the weights fit any size, so such a run loads, at its size."""
    import h5py

    weights = write_run(tmp_path / "old", TINY)
    with h5py.File(weights, "a") as f:
        stamp = json.loads(f.attrs[STAMP])
        f.attrs[STAMP] = json.dumps({**stamp, "image_size": 48})
    config = json.loads((tmp_path / "old" / "config.json").read_text())
    config["model"]["image_size"] = config["train"].pop("image_size") + 16
    (tmp_path / "old" / "config.json").write_text(json.dumps(config))
    model, cfg = load_trained(weights)
    assert cfg.model == TINY and cfg.train.image_size == 48


CASES = ["truncated", "not_hdf5", "missing", "config_missing", "other_encoder", "deeper_unstamped",
         "other_encoder_unstamped", "other_embedder"]


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("case", CASES)
def test_bad_weights_are_one_error_line(runs, workdir, case, command, capsys):
    weights, expected = runs[case]
    assert main(COMMANDS[command](weights, workdir)) == 1
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.count("\n") == 0, err
    assert err.startswith(f"koalarization {command}: error: ") and "Traceback" not in captured.out + err
    assert re.search(expected, err), err


# TensorFlow's C++ start-up lines (absl logging) are printed before any of our code runs.
TF_NOISE = re.compile(r"^(WARNING: All log messages before absl|[IWE]\d{4} \d\d:\d\d:\d\d)")


@pytest.mark.parametrize("command", ["colorize", pytest.param("test", marks=pytest.mark.large),
                                     pytest.param("serve", marks=pytest.mark.large)])  # ~12 s each
def test_bad_weights_in_a_real_process_print_no_traceback(runs, workdir, command):
    """The same through `python -m koalarization`: Keras' and h5py's own warnings stay out of stderr too."""
    weights, expected = runs["truncated" if command != "serve" else "other_embedder"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONWARNINGS="default")
    done = subprocess.run([sys.executable, "-m", "koalarization", *COMMANDS[command](weights, workdir)],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.strip() and not TF_NOISE.match(line)]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith(f"koalarization {command}: error: ") and re.search(expected, lines[0])
