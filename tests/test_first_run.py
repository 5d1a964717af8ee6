"""What a newcomer meets first: commands that work without flags, outputs that are never colorized twice,
multi-frame files said so, helpful last lines, help for every flag, and no TensorFlow C++ lines."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from koalarization.cli import NATIVE_LINE, build_parser, main

from conftest import REPO, synthetic_photo
from test_cli import train_args
from test_colorize import make_weights


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    return make_weights(tmp_path_factory.mktemp("run"))


def photos(folder, count=2):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(synthetic_photo(i)).save(folder / f"photo{i}.jpg")
    return folder


def test_colorize_without_out_writes_colorized_in_the_working_folder(tiny_weights, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    source = photos(tmp_path / "in")
    assert main(["colorize", str(source), "--weights", str(tiny_weights)]) == 0
    said = capsys.readouterr().out
    assert "into colorized" in said and "replaced" not in said
    assert sorted(p.name for p in (tmp_path / "colorized").iterdir()) == ["photo0.png", "photo1.png"]
    # again: the earlier outputs are replaced, and it says so
    assert main(["colorize", str(source), "--weights", str(tiny_weights)]) == 0
    assert "replaced 2 earlier output(s)" in capsys.readouterr().out


def test_a_second_colorize_over_its_own_outputs_leaves_them_out(tiny_weights, tmp_path, capsys):
    source = photos(tmp_path / "album")
    out = source / "colorized"  # inside the inputs
    for _ in range(2):
        assert main(["colorize", str(source), "--weights", str(tiny_weights), "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["photo0.png", "photo1.png"]  # no photo0-1.png, ...
    assert "left out 2 earlier output(s)" in said
    # wherever they were written: another output folder in the same tree
    assert main(["colorize", str(source), "--weights", str(tiny_weights), "--out", str(source / "again")]) == 0
    assert sorted(p.name for p in (source / "again").iterdir()) == ["photo0.png", "photo1.png"]
    # a file named directly is always colorized, even an output
    assert main(["colorize", str(out / "photo0.png"), "--weights", str(tiny_weights), "--out", str(tmp_path / "x")]) == 0
    assert (tmp_path / "x" / "photo0.png").is_file()


def test_export_without_flags_writes_a_savedmodel_in_the_working_folder(tiny_weights, tmp_path, monkeypatch, capsys):
    pytest.importorskip("tensorflow")
    monkeypatch.chdir(tmp_path)
    assert main(["export", "--weights", str(tiny_weights)]) == 0
    out, err = capsys.readouterr()
    assert "exported savedmodel to exported/koalarization-savedmodel" in out
    assert (tmp_path / "exported" / "koalarization-savedmodel" / "saved_model.pb").is_file()
    assert ".tmp" not in out + err  # no temporary folder's name ("Assets written to: .export.NNN.tmp")


def animated_gif(path, frames=3):
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200)][:frames]
    images = [Image.fromarray(np.full((24, 32, 3), c, np.uint8)) for c in colours]
    images[0].save(path, save_all=True, append_images=images[1:], duration=100)
    return path


def test_a_multi_frame_file_is_one_warning_naming_the_frame(tiny_weights, tmp_path, caplog):
    gif = animated_gif(tmp_path / "anim.gif")
    with caplog.at_level("WARNING"):
        assert main(["colorize", str(gif), "--weights", str(tiny_weights), "--out", str(tmp_path / "out")]) == 0
    lines = [r.getMessage() for r in caplog.records if "frame 1 of 3" in r.getMessage()]
    assert len(lines) == 1 and "anim.gif" in lines[0]


def test_the_api_says_which_frame_of_a_multi_frame_upload_it_colorized(tiny_weights, tmp_path):
    from fastapi.testclient import TestClient

    from koalarization.inference.web.server import FRAME_HEADER, create_app

    client = TestClient(create_app([str(tiny_weights)]))
    data = animated_gif(tmp_path / "anim.gif").read_bytes()
    answer = client.post("/api/colorize", files={"image": ("anim.gif", data, "image/gif")})
    assert answer.status_code == 200 and answer.headers[FRAME_HEADER] == "frame 1 of 3"
    single = client.post("/api/colorize", files={"image": ("one.png", _png(synthetic_photo(1)), "image/png")})
    assert single.status_code == 200 and FRAME_HEADER not in single.headers


def _png(rgb) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def test_the_api_refuses_a_temperature_for_mse_weights_in_one_line(tiny_weights):
    from fastapi.testclient import TestClient

    from koalarization.inference.web.server import create_app

    client = TestClient(create_app([str(tiny_weights)]))
    answer = client.post("/api/colorize", params={"temperature": 0.3},
                         files={"image": ("a.png", _png(synthetic_photo(2)), "image/png")})
    assert answer.status_code == 422 and "MSE" in answer.json()["detail"]
    health = client.get("/api/health").json()["models"][0]
    assert health["loss"] == "mse" and health["temperature"] is None


def test_test_without_data_uses_the_runs_own_held_out_photos(photo_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_args(photo_dir, out)) == 0
    capsys.readouterr()
    assert main(["test", "--weights", str(out / "colorize.weights.h5"), "--output", str(tmp_path / "t")]) == 0
    said = capsys.readouterr().out
    held_out = json.loads((out / "split.json").read_text())["test"]
    assert json.loads((tmp_path / "t" / "summary.json").read_text())["n_images"] == len(held_out)
    if "worse than gray" in said:  # a run of 6 photos for one epoch: the hint points at the shipped weights
        assert "no --weights" in said
    # the shipped weights record no photos: one line asks for a folder
    assert main(["test", "--output", str(tmp_path / "t2")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--data" in err


def test_every_flag_has_help_text():
    import argparse

    parser = build_parser()
    missing = []

    def walk(p, path):
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{path} {name}")
            elif action.help in (None, "") and action.dest != "help":
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")

    walk(parser, "koalarization")
    assert not missing, missing


def test_no_tensorflow_cxx_line_on_stderr_without_verbose(tmp_path):
    """A real process, oneDNN on (TensorFlow then logs even at level 3): `benchmark pipeline` builds a cache,
    runs the in-graph preprocessing and prints its numbers; stderr holds no TensorFlow C++ line, and with
    --verbose they come back."""
    photos(tmp_path / "photos", 4)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "TF_ENABLE_ONEDNN_OPTS": "1", "TF_CPP_MIN_LOG_LEVEL": "0", "KOALARIZATION_CACHE": str(tmp_path / "c")}

    def run(*flags):
        command = [sys.executable, "-m", "koalarization", *flags, "benchmark", "pipeline", "--data",
                   str(tmp_path / "photos"), "--image-size", "32", "--batch-size", "2", "--embedder", "tiny_random",
                   "--steps", "2"]
        return subprocess.run(command, env=env, capture_output=True, timeout=600)

    loud = run("--verbose")
    assert loud.returncode == 0, loud.stderr.decode()[-2000:]
    if not any(NATIVE_LINE.match(line) for line in loud.stderr.splitlines()):
        pytest.skip("this TensorFlow build writes no C++ lines here, so there is nothing to hide")
    quiet = run()
    assert quiet.returncode == 0, quiet.stderr.decode()[-2000:]
    assert json.loads(quiet.stdout.decode().strip().splitlines()[-1])  # its numbers
    native = [line for line in quiet.stderr.splitlines() if NATIVE_LINE.match(line)]
    assert native == [], native[:3]
