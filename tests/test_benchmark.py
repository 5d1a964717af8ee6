"""The benchmark commands, the cost model, and the reference pipeline's rebuild."""

import json
import os
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from koalarization import color
from koalarization.bench import flops, reference_pipeline
from koalarization.cli import main
from koalarization.config import ModelConfig
from koalarization.data import images

TINY_TRAIN = ["--image-size", "32", "--embedder", "tiny_random", "--batch-size", "2", "--steps", "2", "--warmup", "1"]
TINY_PIPELINE = ["--image-size", "32", "--embedder", "tiny_random"]


def last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


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
    ours_l, ours_ab = color.network_lightness(color.to_uint8(photos)), color.network_ab(color.to_uint8(photos))
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

    from koalarization.model.embedders import build_embedder
    from koalarization.model.network import build_colorizer

    # docs/reference.md: "about 10 GMAC forward per 256 px image"
    assert 9.5e9 < flops.colorizer_macs(ModelConfig(), 256) < 10.5e9
    counted = 2 * flops.colorizer_macs(ModelConfig(), 64)
    profiled = _tf_profiler_flops(build_colorizer(ModelConfig()), [tf.zeros((1, 64, 64, 1)), tf.zeros((1, 1000))])
    assert counted <= profiled < counted * 1.02  # the profiler adds bias adds and activations
    embedder = build_embedder("tiny_random")
    classifier = embedder.get_layer("tiny_random")
    counted = 2 * flops.layer_macs(classifier)
    assert counted <= _tf_profiler_flops(classifier, [tf.zeros((1, 32, 32, 3))]) < counted * 1.1
    # the classification head: a 1x1 conv to the ab bins at half size instead of the 3x3 conv to ab
    binned = ModelConfig(loss="classification")
    counted = 2 * flops.colorizer_macs(binned, 64)
    profiled = _tf_profiler_flops(build_colorizer(binned), [tf.zeros((1, 64, 64, 1)), tf.zeros((1, 1000))])
    assert counted <= profiled < counted * 1.02
    # training never runs the embedder: its outputs are cached
    cost = flops.training_flops(ModelConfig(), 256, 1000)
    assert cost["flops_per_image"] == 3 * 2 * flops.colorizer_macs(ModelConfig(), 256)


def test_mfu_arithmetic_and_device_table():
    assert flops.peak_tflops("NVIDIA H100 80GB HBM3", "mixed_bfloat16") == 989.0
    assert flops.peak_tflops("NVIDIA H100 PCIe", "mixed_float16") == 756.0
    assert flops.peak_tflops("NVIDIA H200", "float32") == 494.7  # float32 runs on TF32 tensor cores
    assert flops.peak_tflops("NVIDIA A100-SXM4-40GB", "mixed_bfloat16") == 312.0
    assert flops.peak_tflops(None, "float32") is None and flops.peak_tflops("Some new GPU") is None
    # 1,000 photos/s at 73 GFLOP each on a 989 TFLOP/s device: 7.38 % (worked out by hand; a slip of the TFLOP
    # unit would give 7380 or 7.4e-6)
    assert flops.mfu(1000, 73e9, 989.0) == pytest.approx(0.0738, abs=5e-5)
    assert flops.mfu(1000, 73e9, None) is None


# ---------------------------------------------------------------------------------------- benchmark CLI
def test_benchmark_pipeline_prints_rates_memory_and_reference_ratio(photo_dir, capsys):
    assert main(["benchmark", "pipeline", "--data", str(photo_dir), "--batch-size", "3", *TINY_PIPELINE,
                 "--workers", "2", "--reference"]) == 0
    result = last_json(capsys.readouterr().out)
    assert result["images"] == 8 and result["steps"] == 3 and result["photos"] == 8
    assert result["images_per_s"] > 0 and result["peak_rss_mb"] > 50 and result["cache_s"] > 0
    assert result["preprocess_images_per_s"] > 0 and result["preprocess_xla_images_per_s"] > 0
    reference = result["reference"]
    assert reference["images"] == 8 and reference["array_mb"] == pytest.approx(8 * 32 * 32 * 3 * 8 / 2**20)
    assert reference["first_epoch_images_per_s"] < reference["images_per_s"]
    assert result["speedup"] == pytest.approx(result["images_per_s"] / reference["images_per_s"])
    # a second run reads the same cache: no decoding
    assert main(["benchmark", "pipeline", "--data", str(photo_dir), "--batch-size", "3", *TINY_PIPELINE,
                 "--steps", "4"]) == 0  # 4 steps: into the second epoch
    again = last_json(capsys.readouterr().out)
    assert again["cache"] == result["cache"] and again["images"] == 3 + 3 + 2 + 3


def test_peak_rss_sampler_sees_a_short_lived_allocation():
    from koalarization.bench.pipeline import PeakRSS

    with PeakRSS(interval=0.001) as memory:
        block = np.ones(200 * 2**20 // 8)  # 200 MB, touched
        time.sleep(0.05)
        del block
    assert memory.peak - memory.start > 180


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="Linux: ru_maxrss is inherited at exec")
def test_peak_rss_of_a_child_process_is_its_own():
    """The memory check's runs are fresh processes: their peak must not be this bigger process's."""
    block = np.ones(300 * 2**20 // 8)  # 300 MB, touched
    code = "from koalarization.bench.memory import peak_rss_mb; print(peak_rss_mb())"
    child = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    del block
    assert child < 100


@pytest.mark.large  # six fresh processes
def test_benchmark_pipeline_memory_check_runs_fresh_processes(photo_dir, capsys):
    assert main(["benchmark", "pipeline", "--data", str(photo_dir), "--batch-size", "4", *TINY_PIPELINE,
                 "--memory-check", "10"]) == 0
    check = last_json(capsys.readouterr().out)["memory_check"]
    assert [r["photos_listed"] for r in check["runs"]] == [8, 8, 8, 80, 80, 80]
    assert check["steps"] == 4  # 1.5 epochs of 2 batches, rounded up
    assert 0.9 < check["peak_ratio"] < 1.1


@pytest.mark.parametrize("extra", [[], ["--jit-compile"], ["--precision", "mixed_bfloat16"]])
def test_benchmark_train_prints_rate_flops_and_no_mfu_on_cpu(extra, capsys):
    assert main(["benchmark", "train", *TINY_TRAIN, *extra]) == 0
    result = last_json(capsys.readouterr().out)
    assert result["images_per_s"] > 0 and len(result["step_s_all"]) == 2 and np.isfinite(result["loss"])
    trainable = 2 * flops.colorizer_macs(ModelConfig(), 32)
    assert result["trainable_forward_gflop"] == pytest.approx(trainable / 1e9)
    assert result["flops_per_image"] == 3 * trainable
    assert result["device"] == "cpu" and result["mfu"] is None
    assert keras.config.dtype_policy().name == "float32"  # the policy is restored afterwards


def test_benchmark_train_builds_what_train_builds(tmp_path, capsys):
    """A run's config.json: the same optimizer, learning rate, size and precision as its training."""
    from koalarization.config import RunConfig, TrainConfig

    cfg = RunConfig(ModelConfig(embedder="efficientnet_lite0_pooled"),
                    TrainConfig(image_size=16, batch_size=2, optimizer="adam", learning_rate=3e-4))
    (tmp_path / "config.json").write_text(cfg.to_json())
    assert main(["benchmark", "train", "--config", str(tmp_path / "config.json"), "--steps", "1", "--warmup", "1"]) == 0
    result = last_json(capsys.readouterr().out)
    assert (result["optimizer"], result["image_size"], result["batch_size"]) == ("adam", 16, 2)
    assert result["embedder"] == "efficientnet_lite0_pooled"
    assert result["trainable_forward_gflop"] == pytest.approx(2 * flops.colorizer_macs(ModelConfig(), 16, 1280) / 1e9)


# ------------------------------------------------------------------------------ docs/scripts/gpu_benchmark.py
def _gpu_script():
    import importlib.util

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("gpu_benchmark", REPO / "docs" / "scripts" / "gpu_benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_benchmark_script_runs_every_command_tiny_on_a_cpu(photo_dir, tmp_path):
    """--tiny: the GPU script's commands at 32 px in this Python (no install): both precisions with XLA, the
    pipeline, one JSON line each in results.jsonl, and the table."""
    from conftest import REPO

    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(REPO / "docs" / "scripts" / "gpu_benchmark.py"), "--tiny",
                           "--photos", str(photo_dir), "--out", str(out), "--backend", keras.backend.backend(),
                           "--embedder", "tiny_random"], capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["benchmark"], r.get("precision"), r.get("jit_compile")) for r in results] == [
        ("train", "float32", True), ("train", "mixed_bfloat16", True), ("pipeline", None, None)]
    assert all(r["image_size"] == 32 and r["images_per_s"] > 0 and r["command"][0] == "-m" for r in results)
    assert "| train | 32 | mixed_bfloat16 | 2 |" in done.stdout and "pipeline / fastest 32 px step:" in done.stdout
    assert sorted(p.name for p in (out / "logs").iterdir()) == [
        "pipeline.log", "train-32px-float32-b2.log", "train-32px-mixed_bfloat16-b2.log"]


def test_gpu_benchmark_script_halves_the_batch_only_while_out_of_memory(tmp_path):
    import argparse

    script = _gpu_script()
    tried = []

    def fake_run(python, args, name, out, env, timeout, error="RESOURCE_EXHAUSTED: Out of memory"):
        tried.append(int(args[args.index("--batch-size") + 1]))
        return (None, error) if tried[-1] > 128 else ({"images_per_s": 1.0}, "")

    options = argparse.Namespace(tiny=False, embedder="efficientnet_lite0", steps=1, warmup=1, timeout=1)
    script.run = fake_run
    assert script.bench_train("python", 256, "float32", 512, options, tmp_path, {}) == {"images_per_s": 1.0}
    assert tried == [512, 256, 128]
    tried.clear()
    script.run = lambda *a: fake_run(*a, error="ValueError: something else")
    assert script.bench_train("python", 256, "float32", 512, options, tmp_path, {}) is None
    assert tried == [512]  # not out of memory: not retried
