"""Every awkward or broken photo of tests/corpus.py through `train`, `test` and `colorize` (docs/robustness.md).

Each case ends in the outcome its Case names: processed (an output of the right size), skipped (exactly one
warning line naming the file and the reason, the run goes on, the count is printed at the end), or one
error line and exit status 1. Never a traceback, a hang or a half-written output.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from PIL import Image

from corpus import deny_reads, make_corpus, make_empty_folder, reads_denied

from koalarization import images
from koalarization.cli import main

TINY = ["--image-size", "32", "--embedder", "tiny_random", "--batch-size", "2", "--workers", "2"]
NAMES = (
    "zero_byte", "truncated_jpeg", "truncated_png", "text_as_jpg", "html_as_png", "bomb", "symlink_loop",
    "unreadable", "cmyk_jpeg", "rgba_png", "palette_png", "png16", "gray_jpeg", "one_by_one", "seven_by_three",
    "exif_rotated", "name_with_spaces", "non_ascii_name",
)


class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@contextlib.contextmanager
def unreadable_file(path: Path):
    """chmod 000 stops reads for a normal user; as root it does not, so the PermissionError is simulated."""
    with pytest.MonkeyPatch.context() as mp:
        if not reads_denied(path):
            deny_reads(mp, path)
        yield


def run(argv: list[str], unreadable: Path | None = None) -> tuple[int, str, str, list[str]]:
    """main(argv) in this process -> (exit status, stdout, stderr, warning lines)."""
    records, out, err = Records(), io.StringIO(), io.StringIO()
    logger = logging.getLogger("koalarization")
    logger.addHandler(records)
    try:
        guard = unreadable_file(unreadable) if unreadable else contextlib.nullcontext()
        with guard, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = main(argv)
    finally:
        logger.removeHandler(records)
    return status, out.getvalue(), err.getvalue(), records.lines


def naming(lines: list[str], path: Path) -> list[str]:
    return [line for line in lines if str(path) in line]


def assert_no_temp_files(folder: Path) -> None:
    leftovers = [p for p in folder.rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers, leftovers


def assert_one_error_line(status: int, err: str, *fragments: str) -> None:
    assert status == 1
    # stderr also carries progress bars and the skip warnings (\r-separated lines in a terminal)
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("koalarization "), lines[0]
    for fragment in fragments:
        assert re.search(fragment, lines[0]), (fragment, lines[0])


# ------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("bad") / "corpus")


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    """One tiny training run on the whole corpus: (status, stdout, warnings, run folder)."""
    out = tmp_path_factory.mktemp("train") / "run"
    status, stdout, _, warnings = run(
        ["train", "--data", str(corpus["cmyk_jpeg"].path.parent), "--output", str(out), "--epochs", "1", *TINY],
        unreadable=corpus["unreadable"].path,
    )
    return status, stdout, warnings, out


@pytest.fixture(scope="module")
def weights(trained, tmp_path_factory):
    """The trained weights, in a folder without split.json: `test` then tests on every photo of --data."""
    folder = tmp_path_factory.mktemp("weights")
    for name in ("colorize.weights.h5", "config.json"):
        shutil.copy(trained[3] / name, folder / name)
    return folder / "colorize.weights.h5"


@pytest.fixture(scope="module")
def tested(corpus, weights, tmp_path_factory):
    out = tmp_path_factory.mktemp("test") / "out"
    data = corpus["cmyk_jpeg"].path.parent
    status, stdout, _, warnings = run(["test", "--data", str(data), "--weights", str(weights), "--output", str(out),
                                       "--batch-size", "4"], unreadable=corpus["unreadable"].path)
    return status, stdout, warnings, out


@pytest.fixture(scope="module")
def colorized(corpus, weights, tmp_path_factory):
    out = tmp_path_factory.mktemp("colorize") / "out"
    data = corpus["cmyk_jpeg"].path.parent
    status, stdout, _, warnings = run(["colorize", str(data), "--weights", str(weights), "--out", str(out),
                                       "--batch-size", "4"], unreadable=corpus["unreadable"].path)
    return status, stdout, warnings, out


def expected_skips(corpus, command: str) -> int:
    return sum(getattr(case, command) == "skip" for case in corpus.values())


# -------------------------------------------------------------------------------------------------- corpus
def test_corpus_is_complete_and_cheap(tmp_path):
    import time

    tic = time.perf_counter()
    cases = make_corpus(tmp_path / "c")
    assert time.perf_counter() - tic < 5
    assert tuple(cases) == NAMES
    assert cases["bomb"].path.stat().st_size < 200_000
    with pytest.raises(images.ImageError, match="pixels"):
        images.load_rgb(cases["bomb"].path)
    with Image.open(cases["exif_rotated"].path) as raw:
        assert raw.size == (64, 48) and cases["exif_rotated"].size == (48, 64)  # rotation changes the size
    with Image.open(cases["png16"].path) as deep:
        assert deep.mode.startswith("I;16")


def test_a_symlink_loop_does_not_make_the_walk_hang(corpus):
    found: list[Path] = []
    walker = threading.Thread(target=lambda: found.extend(images.find_images(corpus["symlink_loop"].path.parent)),
                              daemon=True)
    walker.start()
    walker.join(timeout=30)
    assert not walker.is_alive(), "find_images followed the folder loop"
    assert len(found) == len(NAMES) and not any("loopdir" in p.parts for p in found)


# --------------------------------------------------------------------------------------------------- train
@pytest.mark.parametrize("name", NAMES)
def test_train(trained, corpus, name):
    status, stdout, warnings, out = trained
    assert status == 0
    case = corpus[name]
    split = json.loads((out / "split.json").read_text())
    in_split = {Path(f).name for key in ("train", "val", "test") for f in split[key]}
    if case.train == "ok":
        assert case.path.name in in_split and not naming(warnings, case.path)
    else:
        assert case.path.name not in in_split
        lines = naming(warnings, case.path)
        assert len(lines) == 1 and re.search(case.reason, lines[0]), lines
        assert f"skipped {expected_skips(corpus, 'train')} file(s)" in stdout, stdout


def test_train_on_bad_folders_is_one_error_line(corpus, tmp_path):
    bad_only = tmp_path / "bad_only"
    bad_only.mkdir()
    for case in corpus.values():
        if case.kind == "skip" and case.path.name not in ("loop.jpg", "unreadable.jpg"):
            shutil.copy(case.path, bad_only / case.path.name)
    shutil.copy(corpus["gray_jpeg"].path, bad_only)  # gray photos teach no colour either
    empty = make_empty_folder(tmp_path)
    for data, fragment in [(empty, "no usable colour photos"), (bad_only, "no usable colour photos"),
                           (tmp_path / "missing", "no such folder")]:
        status, _, err, _ = run(["train", "--data", str(data), "--output", str(tmp_path / "run"), *TINY])
        assert_one_error_line(status, err, re.escape(str(data)), fragment)


# ---------------------------------------------------------------------------------------------------- test
@pytest.mark.parametrize("name", NAMES)
def test_test(tested, corpus, name):
    status, stdout, warnings, out = tested
    assert status == 0
    case = corpus[name]
    outputs = [out / folder / f"{case.path.stem}.png" for folder in ("predicted", "bw", "actual")]
    if case.test == "ok":
        for output in outputs:
            with Image.open(output) as result:
                assert result.size == (32, 32) and result.mode == "RGB"  # `test` works at the network size
        assert not naming(warnings, case.path)
    else:
        assert not any(o.exists() for o in outputs)
        lines = naming(warnings, case.path)
        assert len(lines) == 1 and re.search(case.reason, lines[0]), lines
        assert json.loads(stdout)["skipped"] == expected_skips(corpus, "test")
    assert_no_temp_files(out)


@pytest.mark.parametrize("name", ["zero_byte", "truncated_png", "bomb", "unreadable"])
def test_test_on_one_bad_file_is_one_error_line(corpus, weights, tmp_path, name):
    case = corpus[name]
    status, _, err, _ = run(["test", "--data", str(case.path), "--weights", str(weights), "--output",
                             str(tmp_path / "out")], unreadable=corpus["unreadable"].path)
    assert_one_error_line(status, err, re.escape(str(case.path)), case.reason)


def test_test_on_bad_folders_is_one_error_line(corpus, weights, tmp_path):
    bad_only = tmp_path / "bad_only"
    bad_only.mkdir()
    for name in ("zero_byte", "truncated_jpeg", "bomb"):
        shutil.copy(corpus[name].path, bad_only)
    empty = make_empty_folder(tmp_path)
    for data, fragment in [(empty, "no photos"), (bad_only, "none of the 3 photos could be read"),
                           (tmp_path / "missing", "no such folder")]:
        status, _, err, _ = run(["test", "--data", str(data), "--weights", str(weights), "--output",
                                 str(tmp_path / "out")])
        assert_one_error_line(status, err, re.escape(str(data)), fragment)


# ------------------------------------------------------------------------------------------------ colorize
@pytest.mark.parametrize("name", NAMES)
def test_colorize(colorized, corpus, name):
    status, stdout, warnings, out = colorized
    assert status == 0
    case = corpus[name]
    output = out / f"{case.path.stem}.png"
    if case.colorize == "ok":
        with Image.open(output) as result:
            assert result.size == case.size and result.mode == "RGB"  # the upright photo's own size
        assert not naming(warnings, case.path)
    else:
        assert not output.exists()
        lines = naming(warnings, case.path)
        assert len(lines) == 1 and re.search(case.reason, lines[0]), lines
        assert f"skipped {expected_skips(corpus, 'colorize')} unreadable" in stdout, stdout
    assert_no_temp_files(out)


@pytest.mark.parametrize("name", [n for n in NAMES if n not in ("cmyk_jpeg", "rgba_png", "palette_png", "png16",
                                                                "one_by_one", "seven_by_three", "name_with_spaces",
                                                                "non_ascii_name", "exif_rotated", "gray_jpeg")])
def test_colorize_one_bad_file_is_one_error_line(corpus, weights, tmp_path, name):
    case = corpus[name]
    status, _, err, _ = run(["colorize", str(case.path), "--weights", str(weights), "--out", str(tmp_path / "out")],
                            unreadable=corpus["unreadable"].path)
    assert_one_error_line(status, err, re.escape(str(case.path)), case.reason)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_colorize_on_bad_folders_is_one_error_line(corpus, weights, tmp_path):
    bad_only = tmp_path / "bad_only"
    bad_only.mkdir()
    for name in ("text_as_jpg", "truncated_jpeg"):
        shutil.copy(corpus[name].path, bad_only)
    empty = make_empty_folder(tmp_path)
    for data, fragment in [(empty, "no photos found"), (bad_only, "none of the 2 photos could be read"),
                           (tmp_path / "missing", "no such file or folder")]:
        status, _, err, _ = run(["colorize", str(data), "--weights", str(weights), "--out", str(tmp_path / "out")])
        assert_one_error_line(status, err, re.escape(str(data)), fragment)


def test_a_real_process_exits_1_with_one_line_and_no_traceback(corpus, weights, tmp_path):
    """What a user sees in a terminal: the whole program, stderr included, with a timeout against hangs."""
    case = corpus["bomb"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-m", "koalarization", "colorize", str(case.path), "--weights",
                           str(weights), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("koalarization colorize: error: ")]
    assert len(errors) == 1 and str(case.path) in errors[0] and "pixels" in errors[0], proc.stderr
