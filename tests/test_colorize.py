"""Colorizing photos at full resolution: sizes, orientation, the photo's own L, saturation, files, CLI."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps
from skimage import color as skcolor

from koalarization.bench.latency import STAGES
from koalarization.cli import main
from koalarization.data import images, outputs
from koalarization.errors import KoalarizationError
from koalarization.inference import join
from koalarization.inference.colorize import Colorizer, colorize_files, expand_inputs
from koalarization.inference.join import UpsampledAB, join_lightness

from conftest import synthetic_photo


def make_weights(folder: Path, ab_bias=(0.4, -0.3)) -> Path:
    """A tiny trained-looking run (weights + config.json) whose output layer's bias pushes ab to a clearly
    visible colour (about a = +49, b = -37 for the default), so a colour result is never near-gray by chance."""
    from koalarization.config import UP, ModelConfig, RunConfig, TrainConfig
    from koalarization.model.embedders import build_embedder
    from koalarization.model.network import build_model, colorizer_of

    cfg = ModelConfig(
        encoder=((8, 2), (8, 1), (16, 2), (16, 1), (16, 2), (16, 1), (16, 1), (8, 1)),
        fusion_filters=8, decoder=(16, UP, 8, UP, 8, 8), embedder="tiny_random",
    )
    colorizer = colorizer_of(build_model(cfg, build_embedder("tiny_random")))
    out_layer = colorizer.get_layer("decoder").get_layer("decoder_ab")
    out_layer.set_weights([out_layer.get_weights()[0], np.asarray(ab_bias, np.float32)])
    folder.mkdir(parents=True, exist_ok=True)
    colorizer.save_weights(folder / "colorize.weights.h5")
    (folder / "config.json").write_text(RunConfig(model=cfg, train=TrainConfig(image_size=32)).to_json())
    return folder / "colorize.weights.h5"


@pytest.fixture(scope="session")
def weights(tmp_path_factory) -> Path:
    return make_weights(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="session")
def colorizer(weights) -> Colorizer:
    return Colorizer(weights)


def lightness(rgb: np.ndarray) -> np.ndarray:
    return skcolor.rgb2lab(rgb)[..., 0]


def chroma(rgb: np.ndarray) -> np.ndarray:
    lab = skcolor.rgb2lab(rgb)
    return np.hypot(lab[..., 1], lab[..., 2])


def test_output_has_the_photos_size_and_its_own_lightness(colorizer):
    photo = synthetic_photo(1, size=(333, 517))
    out = colorizer.colorize(photo)
    assert out.shape == photo.shape and out.dtype == np.uint8
    assert np.abs(lightness(out) - lightness(photo)).max() < 1.0
    assert chroma(out).mean() > 20  # coloured, not the gray photo handed back


def test_a_colour_photo_is_colorized_from_its_lightness_only(colorizer):
    photo = synthetic_photo(2, size=(120, 90))
    no_colour = np.dstack([lightness(photo), np.zeros(photo.shape[:2] + (2,))])
    own_gray = np.rint(skcolor.lab2rgb(no_colour) * 255).astype(np.uint8)  # same L, a = b = 0
    other_gray = np.repeat(photo[..., 1:2], 3, -1)  # a different L
    from_colour = colorizer.colorize(photo).astype(int)
    assert np.abs(colorizer.colorize(own_gray) - from_colour).mean() < 1.0  # same L -> same result
    assert np.abs(colorizer.colorize(other_gray) - from_colour).mean() > 1.0  # other L -> other result


def test_join_puts_the_upsampled_ab_on_the_full_resolution_lightness():
    photo = np.repeat(np.linspace(60, 200, 101 * 77).reshape(101, 77, 1), 3, -1).astype(np.uint8)
    ab = np.zeros((8, 8, 2), np.float32)
    ab[..., 0], ab[:, :4, 1], ab[:, 4:, 1] = 0.2, 0.1, -0.1  # a = 25.6 everywhere, b = +-12.8 left/right
    lab = skcolor.rgb2lab(join_lightness(photo, ab))
    assert np.abs(lab[..., 0] - lightness(photo)).max() < 1.0
    assert np.abs(lab[..., 1] - 25.6).max() < 1.5
    assert np.abs(lab[:, :30, 2] - 12.8).max() < 1.5 and np.abs(lab[:, -30:, 2] + 12.8).max() < 1.5
    middle = lab[:, 36:41, 2]  # bilinear: b crosses zero smoothly at the boundary, no hard step
    assert middle.min() < 0 < middle.max() and np.abs(np.diff(lab[50, :, 2])).max() < 4


def test_saturation_zero_is_gray_and_saturation_scales_chroma(colorizer):
    photo = synthetic_photo(3, size=(64, 80))
    gray = colorizer.colorize(photo, saturation=0)
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    assert np.abs(lightness(gray) - lightness(photo)).max() < 1.0
    full, half = chroma(colorizer.colorize(photo)), chroma(colorizer.colorize(photo, saturation=0.5))
    assert 0.45 < np.median(half / np.maximum(full, 1e-6)) < 0.55


def test_out_of_gamut_colours_keep_the_lightness(colorizer):
    """Saturation 4 pushes most colours out of sRGB; clipping would move L, chroma reduction must not."""
    photo = synthetic_photo(4, size=(70, 50))
    photo[:10] = 250  # near-white and near-black rows are where clipping hurts most
    photo[-10:] = 6
    strong = colorizer.colorize(photo, saturation=4.0)
    assert np.abs(lightness(strong) - lightness(photo)).max() < 1.0
    assert chroma(strong).mean() > chroma(colorizer.colorize(photo)).mean()
    with pytest.raises(KoalarizationError, match="saturation"):
        colorizer.colorize(photo, saturation=-1)


def test_working_size_option_reuses_the_weights(weights, colorizer):
    photo = synthetic_photo(5, size=(90, 130))
    bigger = Colorizer(weights, size=64)
    assert bigger.predict_ab([photo]).shape == (1, 64, 64, 2)
    out = bigger.colorize(photo)
    assert out.shape == photo.shape and np.abs(lightness(out) - lightness(photo)).max() < 1.0
    with pytest.raises(KoalarizationError, match="size 30"):
        Colorizer(weights, size=30)


def test_batched_and_concurrent_colorizing_agree_with_one_by_one(colorizer):
    photos = [synthetic_photo(10 + i, size=(40 + 7 * i, 60 - 3 * i)) for i in range(4)]
    alone = [colorizer.colorize(p) for p in photos]
    for a, b in zip(alone, colorizer.colorize_many(photos)):
        assert np.array_equal(a, b)
    results = [None] * 8

    def work(i):
        results[i] = colorizer.colorize(photos[i % 4])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, result in enumerate(results):
        assert np.array_equal(result, alone[i % 4])


def write_inputs(root: Path) -> dict[str, Path]:
    """Photos of every awkward kind, in nested folders, with a name clash and one broken file."""
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    rgb = synthetic_photo(6, size=(333, 517))
    files = {"exif": root / "a" / "rotated.jpg", "gray": root / "a" / "gray.png", "rgba": root / "b" / "rgba.png",
             "cmyk": root / "b" / "cmyk.jpg", "deep": root / "b" / "deep.png", "clash": root / "b" / "gray.jpg"}
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to show
    Image.fromarray(rgb).save(files["exif"], quality=95, exif=exif)
    Image.fromarray(rgb[..., 1]).save(files["gray"])
    Image.fromarray(np.dstack([rgb, np.linspace(0, 255, 517, dtype=np.uint8)[None].repeat(333, 0)])).save(files["rgba"])
    Image.fromarray(rgb[:101, :57]).convert("CMYK").save(files["cmyk"], quality=95)
    Image.fromarray((rgb[:45, :61, 0].astype(np.uint16) * 257)).save(files["deep"])  # 16-bit gray
    Image.fromarray(rgb[:50, :50]).save(files["clash"])
    (root / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return files


def test_colorize_files_keeps_sizes_orientation_and_lightness(weights, tmp_path, caplog):
    files = write_inputs(tmp_path / "in")
    with caplog.at_level(logging.WARNING):
        summary = colorize_files([str(tmp_path / "in")], weights, tmp_path / "out", batch_size=3)
    assert (summary["colorized"], summary["skipped"]) == (6, 1) and summary["seconds"] > 0
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warned) == 1 and warned[0].startswith(f"skipped {tmp_path / 'in' / 'b' / 'broken.jpg'}: ")
    outputs = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert outputs == ["cmyk.png", "deep.png", "gray-1.png", "gray.png", "rgba.png", "rotated.png"]  # no temp files
    with Image.open(files["exif"]) as stored:
        upright = ImageOps.exif_transpose(stored).size
    assert upright == (333, 517)
    # a/gray.png is found before b/gray.jpg, so the second one gets the -1
    names = {"exif": "rotated.png", "gray": "gray.png", "clash": "gray-1.png", "rgba": "rgba.png",
             "cmyk": "cmyk.png", "deep": "deep.png"}
    for kind, path in files.items():
        source = images.load_rgb(path)
        with Image.open(tmp_path / "out" / names[kind]) as result:
            assert result.format == "PNG" and result.mode == "RGB"
            out = np.asarray(result)
        assert out.shape == source.shape, kind
        assert np.abs(lightness(out) - lightness(source)).max() < 1.0, kind
        assert chroma(out).mean() > 10, kind  # every kind of input came out coloured


def test_inputs_can_be_globs_files_and_folders_without_duplicates(tmp_path):
    write_inputs(tmp_path)
    found, _ = expand_inputs([str(tmp_path / "a" / "*.png"), str(tmp_path / "a"), str(tmp_path / "**" / "*.jpg")])
    assert [p.name for p in found] == ["gray.png", "rotated.jpg", "broken.jpg", "cmyk.jpg", "gray.jpg"]
    with pytest.raises(KoalarizationError, match="inputs .*nothing"):
        expand_inputs([str(tmp_path / "nothing*.png")])
    with pytest.raises(KoalarizationError, match="no such file"):
        expand_inputs([str(tmp_path / "missing.png")])


def test_outputs_never_overwrite_an_input(weights, tmp_path):
    Image.fromarray(synthetic_photo(7)).save(tmp_path / "photo.png")
    before = (tmp_path / "photo.png").read_bytes()
    colorize_files([str(tmp_path / "photo.png")], weights, tmp_path)
    assert (tmp_path / "photo.png").read_bytes() == before and (tmp_path / "photo-1.png").is_file()


def test_colorize_command_prints_one_summary_line(weights, tmp_path, capsys):
    write_inputs(tmp_path / "in")
    assert main(["colorize", str(tmp_path / "in" / "b"), "--weights", str(weights), "--out",
                    str(tmp_path / "out"), "--saturation", "0"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("colorized 4 photo(s) into") and "skipped 1 unreadable" in lines[0]
    with Image.open(tmp_path / "out" / "rgba.png") as result:
        out = np.asarray(result)
    assert (out[..., 0] == out[..., 2]).all()  # --saturation 0 reached the colorizer


def test_benchmark_times_every_stage_file_to_file_and_ends_with_one_json_line(weights, tmp_path, capsys):
    assert main(["benchmark-colorize", "--weights", str(weights), "--megapixels", "0.01", "0.03", "--runs", "2",
                 "--saturation", "2", "--out", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[-1])
    assert [p["megapixels"] for p in result["photos"]] == [0.01, 0.03] and result["runs"] == 2
    assert result["machine"]["cpus"] >= 1 and result["saturation"] == 2.0
    for photo in result["photos"]:
        assert list(photo["stages"]) == list(STAGES)
        for timing in [*photo["stages"].values(), photo["total"]]:
            assert 0 <= timing["min"] <= timing["median"] <= timing["max"] < 30
        assert sum(s["min"] for s in photo["stages"].values()) <= photo["total"]["max"]
        assert photo["png_bytes"] > 0 and photo["jpeg_bytes"] > 0 and photo["warmup_seconds"] > 0
    for stage in (*STAGES, "total"):  # the table for people: one row per stage and size
        assert sum(line.split()[:1] == [stage] for line in lines) == 2, stage
    with Image.open(tmp_path / "synthetic-0.03mp.png") as written:  # a real PNG file was written
        assert written.size == (result["photos"][1]["width"], result["photos"][1]["height"])
    assert main(["benchmark-colorize", "--weights", str(weights), "--runs", "0"]) == 1
    assert "--runs 0: must be at least 1" in capsys.readouterr().err


@pytest.mark.parametrize("size, photo", [(32, (300, 400)), (32, (33, 517)), (32, (20, 7)), (8, (101, 1)),
                                         (32, (32, 32))])
def test_upsampled_ab_equals_pillows_bilinear_resize_band_by_band(size, photo):
    ab = np.random.default_rng(size).normal(0, 0.3, (size, size, 2)).astype(np.float32)
    up = UpsampledAB(ab, photo, saturation=1.5)
    height, width = photo
    expected = [np.asarray(Image.fromarray(ab[..., c] * 128 * 1.5, "F").resize((width, height), Image.BILINEAR))
                for c in range(2)]
    cuts = [0, 1, width - 1, width + 3, height * width // 2, height * width]  # bands starting mid-row too
    for start, stop in zip(cuts, cuts[1:]):
        if start < stop:
            for got, want in zip(up.band(start, stop), expected):
                assert got.shape == (stop - start,)
                assert np.abs(got - want.reshape(-1)[start:stop]).max() < 1e-4


def test_a_photo_of_several_chunks_matches_skimage(monkeypatch):
    """Chunks, their padding and bands that start mid-row: the result is scikit-image's Lab -> sRGB of the
    photo's L and the upsampled ab, to within rounding (the colours are in gamut)."""
    monkeypatch.setattr(join, "PIXEL_CHUNK", 1 << 12)  # 3 chunks, the last one padded
    photo = (40 + synthetic_photo(8, size=(97, 105)) * 0.6).astype(np.uint8)  # mid-tones: room for colour
    ab = np.random.default_rng(1).uniform(-0.08, 0.08, (8, 8, 2)).astype(np.float32)  # |a|, |b| <= 10
    out = join_lightness(photo, ab)
    upsampled = np.stack(UpsampledAB(ab, photo.shape[:2]).band(0, 97 * 105), -1).reshape(97, 105, 2)
    lab = np.dstack([lightness(photo), upsampled])
    expected = skcolor.lab2rgb(lab)
    assert np.abs(skcolor.rgb2lab(expected) - lab).max() < 0.01  # in gamut: nothing for the fitting to do
    assert np.abs(out - np.rint(expected * 255)).max() <= 1


def test_colorized_png_files_hold_exactly_the_colorized_pixels(colorizer, tmp_path):
    photo = synthetic_photo(9, size=(123, 77))
    out = colorizer.colorize(photo)
    outputs.save_png_atomic(out, tmp_path / "out.png")
    with Image.open(tmp_path / "out.png") as written:
        assert written.format == "PNG" and written.mode == "RGB"
        assert np.array_equal(np.asarray(written), out)
