"""Speed work (issue 6): the benchmark commands, the cost model, and that every fast path computes what the
slow one did: fast Lab, smaller padding, prepared shards, device preprocessing, the reference rebuild."""

import json
import time

import keras
import numpy as np
import pytest
from PIL import Image

from conftest import synthetic_photo
from test_cli import event_tags

from koalarization import color, data, flops, images, reference_pipeline
from koalarization.cli import main
from koalarization.config import AugmentConfig, ModelConfig
from koalarization.prepare import PreparedPhotos, open_prepared, prepare

TINY_TRAIN = ["--image-size", "32", "--embedder", "tiny_random", "--batch-size", "2", "--steps", "2", "--warmup", "1"]


def last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------ same numbers, faster
def test_fast_lab_matches_color_py_and_scikit_image():
    from skimage.color import rgb2lab

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (3, 40, 40, 3), dtype=np.uint8)
    rgb[0, :4] = 0  # black and near-black use the linear branch of the Lab non-linearity
    rgb[0, 4, :4] = np.arange(12, dtype=np.uint8).reshape(4, 3)
    rgb[1] = np.arange(0, 240, 6, dtype=np.uint8)[:, None, None]  # grays
    lightness, ab = data.rgb_to_network(rgb)
    slow_l, slow_ab = color.rgb_uint8_to_network(rgb)
    assert lightness.dtype == ab.dtype == np.float32
    np.testing.assert_allclose(lightness, slow_l, atol=2e-6)
    np.testing.assert_allclose(ab, slow_ab, atol=2e-6)
    lab = rgb2lab(rgb / 255.0)
    np.testing.assert_allclose(lightness, lab[..., :1] / 50 - 1, atol=2e-6)
    np.testing.assert_allclose(ab, lab[..., 1:] / 128, atol=2e-6)


def _warp_with_pad(rgb, matrix, pad):
    """data.apply_affine as it was: a fixed, generous edge padding."""
    size = rgb.shape[0]
    padded = Image.fromarray(np.pad(rgb, ((pad, pad), (pad, pad), (0, 0)), mode="edge"))
    (a, b), (d, e) = matrix
    c = size / 2 + pad - (a + b) * size / 2
    f = size / 2 + pad - (d + e) * size / 2
    return np.asarray(padded.transform((size, size), Image.Transform.AFFINE, (a, b, c, d, e, f), Image.Resampling.BILINEAR))


def test_minimal_padding_warps_exactly_like_generous_padding():
    rng = np.random.default_rng(3)
    rgb = synthetic_photo(4, (48, 48))
    np.testing.assert_array_equal(data._pad_edge(rgb, 5), np.pad(rgb, ((5, 5), (5, 5), (0, 0)), mode="edge"))
    for aug in (AugmentConfig(), AugmentConfig(rotation=45, zoom=0.5, shear=30)):
        for _ in range(40):
            matrix = data.random_affine(rng, aug)
            np.testing.assert_array_equal(data.apply_affine(rgb, matrix), _warp_with_pad(rgb, matrix, 96))
    assert data._pad_for(np.eye(2), 256) == 2  # the identity reads no pixel outside


# -------------------------------------------------------------------------------------- reference rebuild
def test_reference_warp_is_keras_image_data_generator():
    legacy = pytest.importorskip("keras.src.legacy.preprocessing.image")
    x = np.random.default_rng(0).random((30, 24, 3))
    expected = legacy.apply_affine_transform(x, theta=13, shear=5, zx=0.9, zy=1.15, row_axis=0, col_axis=1,
                                             channel_axis=2, fill_mode="nearest", order=1)
    np.testing.assert_allclose(reference_pipeline.apply_transform(x, 13, 5, 0.9, 1.15, False), expected)
    np.testing.assert_allclose(reference_pipeline.apply_transform(x, 0, 0, 1, 1, True), x[:, ::-1])


def test_reference_batches_are_lab_scaled_like_ours(photo_dir):
    files = images.find_images(photo_dir)[:4]
    photos = reference_pipeline.load_set(files, 32)
    assert photos.shape == (4, 32, 32, 3) and photos.dtype == np.float64
    lightness, ab = reference_pipeline.ReferenceBatches(photos, 3, augment=None)[0]
    assert lightness.shape == (3, 32, 32, 1) and ab.shape == (3, 32, 32, 2)
    ours_l, ours_ab = data.rgb_to_network(color.to_uint8(photos))
    order = reference_pipeline.ReferenceBatches(photos, 3).order[:3]
    np.testing.assert_allclose(lightness, ours_l[order], atol=0.01)  # up to our uint8 rounding
    np.testing.assert_allclose(ab, ours_ab[order], atol=0.02)


# ---------------------------------------------------------------------------------------------- cost model
def _tf_profiler_flops(model, inputs) -> int:
    import tensorflow as tf

    concrete = tf.function(lambda *x: model(list(x) if len(x) > 1 else x[0])).get_concrete_function(
        *[tf.TensorSpec(i.shape, i.dtype) for i in inputs])
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    return tf.compat.v1.profiler.profile(concrete.graph, options=options).total_float_ops


def test_flop_counts_match_the_reference_and_tensorflow_profiler():
    import tensorflow as tf

    from koalarization.embedding import build_embedder
    from koalarization.model import build_colorizer

    # REFERENCE.md: "~10 GMAC forward per 256 px image"
    assert 9.5e9 < flops.colorizer_macs(ModelConfig()) < 10.5e9
    cfg = ModelConfig(image_size=64)
    counted = 2 * flops.colorizer_macs(cfg)
    profiled = _tf_profiler_flops(build_colorizer(cfg), [tf.zeros((1, 64, 64, 1)), tf.zeros((1, 1000))])
    assert counted <= profiled < counted * 1.02  # the profiler adds bias adds and activations
    embedder = build_embedder("tiny_random")
    classifier = embedder.get_layer("tiny_random")
    counted = 2 * flops.layer_macs(classifier)
    assert counted <= _tf_profiler_flops(classifier, [tf.zeros((1, 32, 32, 3))]) < counted * 1.1
    cost = flops.training_flops(ModelConfig(), embedder)
    assert cost["flops_per_image"] == 3 * 2 * flops.colorizer_macs(ModelConfig()) + counted


def test_mfu_arithmetic_and_device_table():
    assert flops.peak_tflops("NVIDIA H100 80GB HBM3", "mixed_bfloat16") == 989.0
    assert flops.peak_tflops("NVIDIA H100 PCIe", "mixed_float16") == 756.0
    assert flops.peak_tflops("NVIDIA H200", "float32") == 494.7  # float32 runs on TF32 tensor cores
    assert flops.peak_tflops("NVIDIA A100-SXM4-40GB", "mixed_bfloat16") == 312.0
    assert flops.peak_tflops(None, "float32") is None and flops.peak_tflops("Some new GPU") is None
    # 1,000 photos/s at 73 GFLOP each on a 989 TFLOP/s device: 7.4 %
    assert flops.mfu(1000, 73e9, 989.0) == pytest.approx(73e12 / 989e12)
    assert flops.mfu(1000, 73e9, None) is None


# ---------------------------------------------------------------------------------------- benchmark CLI
def test_benchmark_pipeline_prints_rates_memory_and_reference_ratio(photo_dir, capsys):
    assert main(["benchmark", "pipeline", "--data", str(photo_dir), "--batch-size", "3", "--image-size", "32",
                 "--workers", "2", "--reference"]) == 0
    result = last_json(capsys.readouterr().out)
    assert result["images"] == 8 and result["steps"] == 3 and result["photos"] == 8
    assert result["images_per_s"] > 0 and result["peak_rss_mb"] > 50
    reference = result["reference"]
    assert reference["images"] == 8 and reference["array_mb"] == pytest.approx(8 * 32 * 32 * 3 * 8 / 2**20)
    assert reference["first_epoch_images_per_s"] < reference["images_per_s"]
    assert result["speedup"] == pytest.approx(result["images_per_s"] / reference["images_per_s"])


def test_benchmark_pipeline_counts_device_preprocessing_batches(photo_dir, capsys):
    assert main(["benchmark", "pipeline", "--data", str(photo_dir), "--batch-size", "3", "--image-size", "32",
                 "--device-preprocessing", "--steps", "4"]) == 0  # 4 steps: into the second epoch
    result = last_json(capsys.readouterr().out)
    assert result["images"] == 3 + 3 + 2 + 3 and result["device_preprocessing"] is True


def test_peak_rss_sampler_sees_a_short_lived_allocation():
    from koalarization.benchmark import PeakRSS

    with PeakRSS(interval=0.001) as memory:
        block = np.ones(200 * 2**20 // 8)  # 200 MB, touched
        time.sleep(0.05)
        del block
    assert memory.peak - memory.start > 180


@pytest.mark.large  # six fresh processes
def test_benchmark_pipeline_memory_check_runs_fresh_processes(photo_dir, capsys):
    assert main(["benchmark", "pipeline", "--data", str(photo_dir), "--batch-size", "4", "--image-size", "32",
                 "--memory-check", "10", "--prepared", str(_prepared(photo_dir))]) == 0
    check = last_json(capsys.readouterr().out)["memory_check"]
    assert [r["photos_listed"] for r in check["runs"]] == [8, 8, 8, 80, 80, 80]
    assert check["steps"] == 4  # 1.5 epochs of 2 batches, rounded up
    assert 0.9 < check["peak_ratio"] < 1.1


@pytest.mark.parametrize("extra", [[], ["--colorizer-only", "--jit-compile"],
                                   ["--device-preprocessing", "--precision", "mixed_bfloat16"]])
def test_benchmark_train_prints_rate_flops_and_no_mfu_on_cpu(extra, capsys):
    assert main(["benchmark", "train", *TINY_TRAIN, *extra]) == 0
    result = last_json(capsys.readouterr().out)
    assert result["images_per_s"] > 0 and len(result["step_s_all"]) == 2 and np.isfinite(result["loss"])
    trainable = 2 * flops.colorizer_macs(ModelConfig(image_size=32))
    assert result["trainable_forward_gflop"] == pytest.approx(trainable / 1e9)
    assert result["flops_per_image"] >= 3 * trainable
    assert result["device"] == "cpu" and result["mfu"] is None
    assert keras.config.dtype_policy().name == "float32"  # the policy is restored afterwards


# ------------------------------------------------------------------------------------------ prepared shards
def _prepared(photo_dir, size=32, **kw):
    out = photo_dir.parent / f"prepared{size}"
    if not (out / "index.json").exists():
        prepare(photo_dir, out, size, workers=2, **kw)
    return out


def test_prepared_shards_give_the_same_batches_as_decoding(photo_dir):
    broken = photo_dir / "broken.jpg"  # its header reads, its pixels do not: the scan decodes and skips it
    whole = (photo_dir / "photo0.jpg").read_bytes()
    broken.write_bytes(whole[: len(whole) // 2])
    out = _prepared(photo_dir, shard_size=3)  # several shards, the last one short
    assert sorted(p.name for p in out.iterdir()) == ["index.json"] + [f"shard-0000{k}.npy" for k in range(3)]
    files, _ = data.scan_photos(photo_dir)  # what train splits
    store = open_prepared(out, 32, files)
    assert broken not in files
    assert len(store) == 8 and not store.failed
    for kw in ({"augment": AugmentConfig()}, {"augment": None, "shuffle": False}):
        decoded = data.BatchSource(files, 4, 32, seed=2, **kw)
        read = data.BatchSource(files, 4, 32, seed=2, store=store, **kw)
        for epoch in (0, 1):
            decoded.set_epoch(epoch)
            read.set_epoch(epoch)
            for i in range(len(decoded)):
                for a, b in zip(decoded[i], read[i]):
                    np.testing.assert_array_equal(a, b)
    assert read.failed_files == []


def test_prepared_folder_errors_name_the_fix(photo_dir, tmp_path):
    from koalarization.errors import KoalarizationError

    out = _prepared(photo_dir)
    with pytest.raises(KoalarizationError, match="--image-size 64"):
        PreparedPhotos(out, 64)
    with pytest.raises(KoalarizationError, match="rerun prepare"):
        open_prepared(out, 32, [tmp_path / "elsewhere.jpg"])
    with pytest.raises(KoalarizationError, match="not a prepared folder"):
        PreparedPhotos(tmp_path, 32)


# ------------------------------------------------------------------------------------- device preprocessing
def test_device_preprocessing_matches_the_host_pipeline(photo_dir):
    from koalarization.device_preprocessing import DevicePreprocess, warp

    files = images.find_images(photo_dir)
    aug = AugmentConfig(rotation=30, zoom=0.3, shear=10)
    host = data.BatchSource(files, 4, 32, seed=1, augment=aug)
    device = data.BatchSource(files, 4, 32, seed=1, augment=aug, device_preprocessing=True)
    (batch,) = device[1]
    assert batch["rgb"].dtype == np.uint8 and batch["affine"].shape == (4, 2, 2)
    np.testing.assert_array_equal(batch["weight"], host[1][2])
    warped = np.asarray(warp(batch["rgb"], batch["affine"]))
    expected = np.stack([data.apply_affine(rgb, m) for rgb, m in zip(batch["rgb"], batch["affine"])])
    difference = warped - expected  # Pillow truncates its bilinear result to uint8; the device does not round
    assert difference.min() > -1e-3 and difference.max() < 1 + 1e-3 and 0.3 < difference.mean() < 0.7
    identity = np.tile(np.eye(2, dtype=np.float32), (4, 1, 1))
    np.testing.assert_allclose(np.asarray(warp(batch["rgb"], identity)), batch["rgb"], atol=1e-3)
    lightness, ab = (np.asarray(t) for t in DevicePreprocess()(batch["rgb"], batch["affine"]))
    lab = color.rgb_to_lab(warped.astype(np.float64) / 255)
    np.testing.assert_allclose(lightness, color.scale_l(lab[..., :1]), atol=1e-4)
    np.testing.assert_allclose(ab, color.scale_ab(lab[..., 1:]), atol=1e-4)


def test_device_model_loss_equals_the_host_models(photo_dir, tiny_model_config):
    from koalarization.device_preprocessing import build_device_model
    from koalarization.embedding import build_embedder
    from koalarization.model import build_model, colorizer_of

    files = images.find_images(photo_dir)[:3] + [photo_dir / "missing.jpg"]  # weight 0
    embedder = build_embedder("tiny_random")
    host_model, device_model = build_model(tiny_model_config, embedder), build_device_model(tiny_model_config, embedder)
    colorizer_of(device_model).set_weights(colorizer_of(host_model).get_weights())
    host_model.compile(loss="mse")
    device_model.compile(loss=None)
    lightness, ab, weight = data.BatchSource(files, 4, 32, augment=None, shuffle=False)[0]
    (batch,) = data.BatchSource(files, 4, 32, augment=None, shuffle=False, device_preprocessing=True)[0]
    assert weight.ravel().tolist() == [1, 1, 1, 0]
    expected = host_model.evaluate(lightness, ab, sample_weight=weight, verbose=0)
    assert device_model.evaluate(batch, verbose=0) == pytest.approx(expected, rel=1e-4)


def test_train_with_prepared_photos_and_device_preprocessing(photo_dir, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--data", str(photo_dir), "--output", str(out), "--epochs", "1", "--image-size", "32",
            "--embedder", "tiny_random", "--batch-size", "2", "--workers", "2",
            "--prepared", str(_prepared(photo_dir)), "--device-preprocessing"]
    assert main(args) == 0
    assert "trained 1 epoch" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())["train"]
    assert config["device_preprocessing"] is True and config["prepared"].endswith("prepared32")
    assert (out / "colorize.weights.h5").stat().st_size > 0
    assert "validation/bw|predicted|actual" in event_tags(out / "logs")  # predicted from L by a shared view
