"""Every awkward or broken photo of tests/corpus.py through `train`, `test` and `colorize` (docs/robustness.md).

Each case ends in the outcome its Case names: processed (an output of the right size), skipped (exactly one
warning line naming the file and the reason, the run goes on, the count is printed at the end), or one
error line and exit status 1. Never a traceback, a hang or a half-written output. Then what the corpus
cannot show case by case: truncated JPEGs at every decoding scale, float TIFF scaling, thousands of broken
files summarised, per-photo results that survive a failure at the end, and what `test` prints.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import re
import shutil
import stat
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from koalarization.cli import main
from koalarization.data import images, outputs
from koalarization.errors import KoalarizationError
from koalarization.inference import evaluate

from corpus import (
    colour_pixels,
    deny_reads,
    float_values,
    make_corpus,
    make_empty_folder,
    png_chunk,
    reads_denied,
    write_non_utf8_photo,
)

TINY = ["--image-size", "32", "--embedder", "tiny_random", "--batch-size", "2", "--workers", "2"]
BAD = (
    "zero_byte", "truncated_jpeg", "truncated_png", "text_as_jpg", "html_as_png", "bomb", "symlink_loop",
    "unreadable", "big_iccp", "big_ztxt", "fifo", "device_link", "gray_filled_jpeg", "zero_padded_jpeg",
    "cut_progressive_jpeg",
)
GOOD = (
    "cmyk_jpeg", "rgba_png", "palette_png", "png16", "gray_jpeg", "one_by_one", "seven_by_three",
    "exif_rotated", "name_with_spaces", "non_ascii_name", "twin_png", "twin_tif",
    "float_nan_inf", "float_signed",
)
NAMES = BAD + GOOD
# A run that does not end in this time is a hang (a FIFO opened, a device read): fail instead of waiting.
HANG_SECONDS = 900


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


def run(argv: list[str], unreadable: Path | None = None, skip_lines: int | None = 10_000,
        seconds: float = HANG_SECONDS) -> tuple[int, str, str, list[str]]:
    """main(argv) in this process -> (exit status, stdout, stderr, warning lines); fails after `seconds`.

    skip_lines: images.SKIP_LINES for the run, by default high enough that every skipped case has its own
    warning line to check; None keeps the real one."""
    records, out, err = Records(), io.StringIO(), io.StringIO()
    outcome: list = []

    def target():
        try:
            with pytest.MonkeyPatch.context() as mp:
                if skip_lines is not None:
                    mp.setattr(images, "SKIP_LINES", skip_lines)
                guard = unreadable_file(unreadable) if unreadable else contextlib.nullcontext()
                with guard, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                    outcome.append(main(argv))
        except BaseException as exc:  # noqa: BLE001 - raised again in the test's own thread
            outcome.append(exc)

    logger = logging.getLogger("koalarization")
    logger.addHandler(records)
    try:
        thread = threading.Thread(target=target, daemon=True)  # daemon: a hung run cannot keep pytest alive
        thread.start()
        thread.join(seconds)
        assert not thread.is_alive(), f"koalarization {' '.join(argv)} still running after {seconds} s: a hang"
    finally:
        logger.removeHandler(records)
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0], out.getvalue(), err.getvalue(), records.lines


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
    assert all(cases[name].path.stat().st_size < 10_000 for name in ("big_iccp", "big_ztxt"))
    assert stat.S_ISFIFO(cases["fifo"].path.lstat().st_mode) and stat.S_ISCHR(cases["device_link"].path.stat().st_mode)
    # The silent truncations: Pillow alone decodes them without a word (libjpeg fills in the missing part).
    for name in ("gray_filled_jpeg", "zero_padded_jpeg", "cut_progressive_jpeg"):
        with Image.open(cases[name].path) as image:
            image.load()


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
    for name, case in corpus.items():
        if case.kind == "skip" and name not in ("symlink_loop", "unreadable", "fifo", "device_link"):  # copyable
            shutil.copy(case.path, bad_only / case.path.name)
    shutil.copy(corpus["gray_jpeg"].path, bad_only)  # gray photos teach no colour either
    empty = make_empty_folder(tmp_path)
    for data, fragment in [(empty, "no photos found"), (bad_only, "no usable colour photos"),
                           (tmp_path / "missing", "no such folder"),
                           (corpus["fifo"].path, "not a regular file: a FIFO"),
                           (corpus["device_link"].path, "not a regular file: a character device")]:
        status, _, err, _ = run(["train", "--data", str(data), "--output", str(tmp_path / "run"), *TINY])
        assert_one_error_line(status, err, re.escape(str(data)), fragment)


# ---------------------------------------------------------------------------------------------------- test
@pytest.mark.parametrize("name", NAMES)
def test_test(tested, corpus, name):
    status, stdout, warnings, out = tested
    assert status == 0
    case = corpus[name]
    outputs = [out / folder / case.output_name for folder in ("predicted", "bw", "actual")]
    if case.test == "ok":
        # `test` scores what `colorize` writes: every panel at the photo's own size (orientation applied).
        photo = images.load_rgb(case.path)
        for output in outputs:
            with Image.open(output) as result:
                assert result.size == (photo.shape[1], photo.shape[0]) and result.mode == "RGB"
        # Its own photo, not another one of the same name: actual/ is the photo as `test` read it.
        assert np.array_equal(np.asarray(Image.open(outputs[2])), photo)
        assert not naming(warnings, case.path)
    else:
        assert not any(o.exists() for o in outputs)
        lines = naming(warnings, case.path)
        assert len(lines) == 1 and re.search(case.reason, lines[0]), lines
        skipped = expected_skips(corpus, "test")
        assert json.loads((out / "summary.json").read_text())["skipped"] == skipped
        assert f"{skipped} file(s) skipped" in stdout.splitlines()[0], stdout
    assert_no_temp_files(out)


def test_test_metrics_csv_names_each_photo_and_its_output(tested, corpus):
    with open(tested[3] / "metrics.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert {r["file"]: r["output"] for r in rows} == {
        str(case.path): case.output_name for case in corpus.values() if case.test == "ok"
    }


def test_test_prints_a_table_for_people(tested, corpus):
    status, stdout, _, out = tested
    summary = json.loads((out / "summary.json").read_text())
    lines = stdout.splitlines()
    assert lines[0] == (f"means over {summary['n_images']} photo(s); {summary['n_gray_truth']} gray photo(s) left "
                        f"out of the means; {expected_skips(corpus, 'test')} file(s) skipped")
    assert summary["n_images"] + summary["n_gray_truth"] == sum(case.test == "ok" for case in corpus.values())
    assert lines[1].split() == ["ours", "gray", "baseline", "ours", "vs", "gray"]
    rows = {line[:15].strip(): line[15:].split() for line in lines[2:6]}
    for label, key, digits in (("PSNR (dB)", "psnr", 2), ("SSIM", "ssim", 3), ("ab accuracy", "auc", 3)):
        ours, gray = summary[key], summary[f"gray_{key}"]
        assert rows[label][:3] == [f"{ours:.{digits}f}", f"{gray:.{digits}f}", "better" if ours > gray else "worse"]
    with open(out / "metrics.csv", newline="") as f:  # the count beside the mean PSNR, from the per-photo rows
        colour = [r for r in csv.DictReader(f) if r["gray_truth"] == "False"]
    above = sum(float(r["psnr"]) > float(r["gray_psnr"]) for r in colour)
    assert summary["n_better_than_gray"] == above
    assert rows["PSNR (dB)"][3:] == [f"({above}", "of", f"{len(colour)}", "photos", "above", "gray)"]
    assert rows["SSIM"][3:] == [] and rows["ab accuracy"][3:] == []
    ours, photos = summary["colorfulness"], summary["gt_colorfulness"]
    assert rows["colourfulness"][:2] == [f"{ours:.1f}", "0.0"]
    assert rows["colourfulness"][2] == ("better" if abs(ours - photos) < photos else "worse")
    assert lines[6] == (f"outputs in {out}: predicted/, bw/, actual/, metrics.csv (per photo), summary.json, "
                        "grid.png")
    assert len(lines) == 7 and "{" not in stdout


@pytest.mark.parametrize("ours, verdicts", [
    ((24.0, 0.80, 0.95, 30.0), ["better", "worse", "better", "better"]),
    ((20.0, 0.90, 0.80, 45.0), ["worse", "better", "worse", "worse"]),
    ((22.5, 0.85, 0.90, 40.0), ["same", "same", "same", "same"]),
])
def test_the_printed_verdicts(ours, verdicts):
    """Higher PSNR/SSIM/ab accuracy is better; for colourfulness, nearer the photos' (20 here) than the gray
    baseline's 0."""
    summary = {"n_images": 3, "n_gray_truth": 0, "skipped": 0, "psnr": ours[0], "ssim": ours[1], "auc": ours[2],
               "colorfulness": ours[3], "gray_psnr": 22.5, "gray_ssim": 0.85, "gray_auc": 0.90,
               "gt_colorfulness": 20.0}
    lines = evaluate.format_summary(summary, "out").splitlines()
    assert lines[0] == "means over 3 photo(s)"
    assert [line[15:].split()[2] for line in lines[2:6]] == verdicts


@pytest.mark.parametrize("name", ["zero_byte", "truncated_png", "bomb", "unreadable", "big_iccp", "fifo",
                                  "device_link", "gray_filled_jpeg"])
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
    output = out / case.output_name
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


@pytest.mark.parametrize("name", BAD)
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


# ------------------------------------------------------------------------------ what the corpus cannot show
@pytest.mark.parametrize("name", ["gray_filled_jpeg", "zero_padded_jpeg", "cut_progressive_jpeg"])
def test_silently_truncated_jpegs_are_refused_at_every_decoding_scale(corpus, name):
    """Training decodes at 1/8 scale (the scan), at the network size (batches); colorize at full size."""
    case = corpus[name]
    for max_side in (None, 1, 8, 16, 32, 256):
        with pytest.raises(images.ImageError, match=case.reason):
            images.load_rgb(case.path, max_side)
    with pytest.raises(images.ImageError, match=case.reason):
        images.load_rgb_bytes(case.path.read_bytes(), case.path.name)


@pytest.mark.parametrize("keep", [0.1, 0.3, 0.5, 0.7, 0.9])
def test_a_real_jpeg_cut_anywhere_is_never_decoded_silently(keep):
    """data/coffee.jpg cut, cut and closed by an end marker, cut and padded with zeros to its length."""
    data = (Path(__file__).resolve().parents[1] / "data" / "coffee.jpg").read_bytes()
    cut = data[: int(len(data) * keep)]
    for broken in (cut, cut + b"\xff\xd9", cut + bytes(len(data) - len(cut))):
        with pytest.raises(images.ImageError, match="truncated"):
            images.load_rgb_bytes(broken, "coffee.jpg")


def gray_cornered_photo() -> np.ndarray:
    """uint8 RGB (96, 128, 3) whose bottom-right quarter is exactly mid-gray: what libjpeg's fill looks like."""
    rgb = colour_pixels(96, 128)
    rgb[48:, 64:] = 128
    return rgb


def test_complete_jpegs_of_every_kind_are_accepted(tmp_path):
    """No false alarm, at every decoding scale: baseline, progressive, gray, CMYK, 4:4:4, and a camera's MPO
    (a JPEG with a second picture after its end), all with a flat gray corner."""
    rgb = gray_cornered_photo()
    second = [Image.fromarray(rgb[::-1].copy())]
    for name, image, options in [("baseline", Image.fromarray(rgb), {}),
                                 ("progressive", Image.fromarray(rgb), {"progressive": True}),
                                 ("gray", Image.fromarray(rgb).convert("L"), {}),
                                 ("cmyk", Image.fromarray(rgb).convert("CMYK"), {}),
                                 ("444", Image.fromarray(rgb), {"subsampling": 0}),
                                 ("mpo", Image.fromarray(rgb), {"format": "MPO", "save_all": True,
                                                                "append_images": second})]:
        path = tmp_path / f"{name}.jpg"
        image.save(path, quality=90, **options)
        for max_side in (None, 1, 16, 64):
            assert images.load_rgb(path, max_side).shape[2] == 3


def test_a_cut_mpo_is_refused():
    """The first picture of an MPO cut and closed by an end marker; the second picture still follows."""
    buffer = io.BytesIO()
    Image.fromarray(gray_cornered_photo()).save(buffer, format="MPO", save_all=True, quality=90,
                                                 append_images=[Image.fromarray(colour_pixels(96, 128, seed=1))])
    data = buffer.getvalue()
    end = data.index(b"\xff\xd9", data.index(b"\xff\xda"))  # the first picture's end marker
    with pytest.raises(images.ImageError, match="truncated JPEG"):
        images.load_rgb_bytes(data[: end // 2] + data[end:], "camera.jpg")


def test_float_tiffs_scale_on_their_finite_values(corpus):
    gray = images.load_rgb(corpus["float_nan_inf"].path)
    assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 0], gray[..., 2])
    gray = gray[..., 0].astype(int)
    assert list(gray[0, :3]) == [0, 255, 0]  # NaN -> the lowest value, +inf -> the highest, -inf -> the lowest
    ramp = gray.ravel()[3:]  # the finite values: a ramp over the whole 0..255 range, in order
    assert ramp[0] == 0 and ramp[-1] == 255 and (np.diff(ramp) >= 0).all()
    # A signed range keeps its negative half: -1 -> 0, 0 -> mid-gray, +1 -> 255.
    values = float_values(-1.0, 1.0, bad=False)
    signed = images.load_rgb(corpus["float_signed"].path)[..., 0].astype(int)
    assert signed[0, 0] == 0 and signed[-1, -1] == 255
    assert abs(signed.flat[np.abs(values).argmin()] - 127.5) <= 1
    assert (signed[values < 0] < 128).all() and (signed[values > 0] >= 127).all()


def test_float_tiffs_without_a_range(tmp_path):
    """One flat value: mid-gray (no range to stretch). No finite value at all: not a photo."""
    flat, empty = tmp_path / "flat.tif", tmp_path / "nan.tif"
    Image.fromarray(np.full((6, 8), 3.5, np.float32), "F").save(flat)
    Image.fromarray(np.full((6, 8), np.nan, np.float32), "F").save(empty)
    assert (images.load_rgb(flat) == 128).all()
    with pytest.raises(images.ImageError, match=r"nan\.tif: cannot decode \(every pixel is NaN or infinite\)"):
        images.load_rgb(empty)


@pytest.mark.parametrize("name", ["big_iccp", "big_ztxt"])
def test_a_metadata_bomb_in_an_upload_is_one_plain_reason(corpus, name):
    with pytest.raises(images.ImageError) as caught:
        images.load_rgb_bytes(corpus[name].path.read_bytes(), "upload.png")
    assert str(caught.value) == "upload.png: metadata chunk too large (over 1 MB when decompressed)"


def test_metadata_chunks_too_large_together_are_one_plain_reason():
    """Each under Pillow's 1 MB per chunk, 65 MB together: over its 64 MB for all text chunks."""
    buffer = io.BytesIO()
    Image.fromarray(colour_pixels(4, 4)).save(buffer, format="PNG")
    png, text = buffer.getvalue(), png_chunk(b"zTXt", b"Comment\0\0" + zlib.compress(bytes(1_000_000), 9))
    with pytest.raises(images.ImageError) as caught:
        images.load_rgb_bytes(png[:33] + text * 68 + png[33:], "notes.png")
    assert str(caught.value) == "notes.png: metadata chunks too large (over 64 MB in all when decompressed)"


@pytest.fixture(scope="module")
def many_broken(tmp_path_factory):
    """1,010 broken files (zero bytes, named .jpg): fast to make and to refuse."""
    folder = tmp_path_factory.mktemp("many") / "broken"
    folder.mkdir()
    for i in range(1010):
        (folder / f"broken_{i:04d}.jpg").write_bytes(b"")
    return folder


def assert_summarised(warnings: list[str], folder: Path, what: str) -> None:
    """The first images.SKIP_LINES files by name, then one line counting the rest."""
    assert len(warnings) == 6, warnings[:10]
    for i, line in enumerate(warnings[:5]):
        assert line.startswith(f"skipped {folder / f'broken_{i:04d}.jpg'}: not an image"), line
    assert warnings[5] == f"... and 1,005 more {what} skipped"


@pytest.mark.parametrize("command", ["colorize", "test"])
def test_many_unreadable_files_are_summarised(many_broken, weights, tmp_path, command):
    argv = {"colorize": ["colorize", str(many_broken), "--out", str(tmp_path / "out")],
            "test": ["test", "--data", str(many_broken), "--output", str(tmp_path / "out")]}[command]
    status, _, err, warnings = run([*argv, "--weights", str(weights)], skip_lines=None)
    assert_one_error_line(status, err, "none of the 1010 photos could be read")
    assert_summarised(warnings, many_broken, "unreadable files")


def test_train_summarises_many_unreadable_files(many_broken, tmp_path):
    status, _, err, warnings = run(["train", "--data", str(many_broken), "--output", str(tmp_path / "run"), *TINY],
                                   skip_lines=None)
    assert_one_error_line(status, err, "no usable colour photos")
    assert_summarised(warnings, many_broken, "files (gray or unreadable)")


@pytest.fixture(scope="module")
def odd_name(tmp_path_factory):
    """A folder of two photos and one whose file name is not UTF-8 -> (folder, that photo)."""
    folder = tmp_path_factory.mktemp("odd") / "photos"
    folder.mkdir()
    for seed in range(2):
        Image.fromarray(colour_pixels(24, 32, seed)).save(folder / f"p{seed}.png")
    return folder, write_non_utf8_photo(folder)


def test_test_writes_a_name_that_is_not_utf8(odd_name, weights, tmp_path):
    folder, photo = odd_name
    out = tmp_path / "out"
    status, _, _, warnings = run(["test", "--data", str(folder), "--weights", str(weights), "--output", str(out)])
    assert status == 0 and not warnings
    assert all((out / kind / f"{photo.stem}.png").is_file() for kind in ("predicted", "bw", "actual"))
    text = (out / "metrics.csv").read_bytes().decode("utf-8")  # strict: valid UTF-8, any CSV reader opens it
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    # The name's bytes as Python shows bytes.
    assert [row["file"] for row in rows] == [str(folder / n) for n in ("bytes_\\xff\\xfe.jpg", "p0.png", "p1.png")]
    assert [row["output"] for row in rows] == ["bytes_\\xff\\xfe.png", "p0.png", "p1.png"]


def test_colorize_writes_a_name_that_is_not_utf8(odd_name, weights, tmp_path):
    folder, photo = odd_name
    status, stdout, _, warnings = run(["colorize", str(photo), "--weights", str(weights), "--out", str(tmp_path)])
    assert status == 0 and not warnings and stdout.startswith("colorized 1 photo(s)")
    with Image.open(tmp_path / f"{photo.stem}.png") as result:
        assert result.size == (44, 30)


def test_train_takes_a_name_that_is_not_utf8(odd_name, tmp_path):
    folder, photo = odd_name
    status, _, _, _ = run(["train", "--data", str(folder), "--output", str(tmp_path / "run"), "--epochs", "1", *TINY])
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert status == 0 and photo.name in split["train"] + split["val"] + split["test"]


@pytest.fixture
def three_photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for seed in range(3):
        Image.fromarray(colour_pixels(24, 32, seed)).save(folder / f"p{seed}.png")
    return folder


def test_a_failure_at_the_end_of_test_keeps_every_photos_results(three_photos, weights, tmp_path, monkeypatch):
    def full_disk(*_):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(evaluate, "plot_grid", full_disk)  # the last thing `test` writes
    out = tmp_path / "out"
    with pytest.raises(OSError, match="No space"):
        run(["test", "--data", str(three_photos), "--weights", str(weights), "--output", str(out),
             "--batch-size", "2"])
    with open(out / "metrics.csv", newline="", encoding="utf-8") as f:
        assert [row["output"] for row in csv.DictReader(f)] == ["p0.png", "p1.png", "p2.png"]
    assert json.loads((out / "summary.json").read_text())["n_images"] == 3


def test_a_failure_in_mid_run_keeps_the_rows_of_the_batches_done(three_photos, weights, tmp_path, monkeypatch):
    save = outputs.save_png_atomic

    def full_disk_at_p2(rgb, path, **kwargs):
        if path.name == "p2.png":
            raise KoalarizationError(f"{path.parent}: cannot write {path.name} (No space left)")
        save(rgb, path, **kwargs)

    monkeypatch.setattr(outputs, "save_png_atomic", full_disk_at_p2)
    status, _, err, _ = run(["test", "--data", str(three_photos), "--weights", str(weights), "--output",
                             str(tmp_path / "out"), "--batch-size", "2"])
    assert_one_error_line(status, err, "cannot write p2.png")
    with open(tmp_path / "out" / "metrics.csv", newline="", encoding="utf-8") as f:
        assert [row["output"] for row in csv.DictReader(f)] == ["p0.png", "p1.png"]  # the first batch
