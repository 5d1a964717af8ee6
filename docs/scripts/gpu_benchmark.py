"""The GPU measurements of docs/performance.md in one command, for a GPU machine with no network.

On a machine with network, put every wheel the benchmark needs in one folder (from the repository root):

    KOALARIZATION_BACKEND=jax pip download --dest WHEELS . "jax[cuda12]" setuptools wheel

Carry WHEELS, this repository and a folder of photos to the GPU machine, then (Python 3.10+, stdlib only):

    python3 docs/scripts/gpu_benchmark.py --wheels WHEELS --photos PHOTOS --out OUT

It makes the virtual environment OUT/venv from WHEELS alone (pip install --no-index --find-links; the
venv sees the system's packages, so a JAX already installed there is used), checks that JAX sees a GPU, and
runs on the JAX backend:

    benchmark train     64, 128 and 256 px, float32 and mixed_bfloat16, --jit-compile; each starts at a
                        batch that should fill a 141 GB H200 and is halved while XLA reports out of memory
    benchmark pipeline  PHOTOS at 256 px, batch 256, 16 threads, 40 batches (the cache is built first, once;
                        its time is cache_s, apart from the photos/s)

Each command's JSON line, with the command added, goes to OUT/results.jsonl and its stderr to OUT/logs/;
a table of photos/s and MFU ends the run. Targets: MFU >= 30 % at 256 px in mixed_bfloat16, and a pipeline
that makes more photos a second than that step consumes.

--tiny runs every command at 32 px, batch 2, one step, in the current Python with nothing installed: the
tests run it on a CPU (tests/test_benchmark.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SIZES = (64, 128, 256)
PRECISIONS = ("float32", "mixed_bfloat16")
# First batch tried per size. A jit-compiled training step holds about 7 MB a photo at 64 px in float32 (peak
# RSS of JAX on a CPU, batch 32 against batch 8), so about 0.11 GB at 256 px: these batches take about 60 GB
# of a 141 GB H200 in float32 (half in bfloat16); a batch that does not fit is halved.
BATCH = {64: 8192, 128: 2048, 256: 512}
MIN_BATCH = 16
OUT_OF_MEMORY = ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory", "OOM")


def install(wheels: Path, out: Path) -> str:
    """OUT/venv with koalarization (this repository, JAX variant) and JAX for CUDA 12, from `wheels` only."""
    folder = out / "venv"
    if not (folder / "bin" / "python").exists():
        venv.create(folder, with_pip=True, system_site_packages=True)
    python = str(folder / "bin" / "python")
    subprocess.run([python, "-m", "pip", "install", "--no-index", "--find-links", str(wheels), "--quiet",
                    str(REPO), "jax[cuda12]"], check=True, env={**os.environ, "KOALARIZATION_BACKEND": "jax"})
    return python


def gpu_name(python: str, env: dict) -> str | None:
    probe = "import jax; g = [d for d in jax.devices() if d.platform == 'gpu']; print(g[0].device_kind if g else '')"
    found = subprocess.run([python, "-c", probe], env=env, capture_output=True, text=True, check=True)
    return found.stdout.strip() or None


def run(python: str, args: list[str], name: str, out: Path, env: dict, timeout: int) -> tuple[dict | None, str]:
    """One `python -m koalarization ARGS`: (its JSON line, or None if it failed; its stderr)."""
    command = [python, "-m", "koalarization", *args]
    print("$ " + " ".join(command[1:]), flush=True)
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, check=False)
        stdout, stderr, code = done.stdout, done.stderr, done.returncode
    except subprocess.TimeoutExpired as err:
        stdout, stderr, code = "", f"{err.stderr or ''}\ntimed out after {timeout} s", -1
    (out / "logs" / f"{name}.log").write_text(stderr)
    if code != 0:
        print(f"  failed ({code}): {(stderr.strip().splitlines() or [''])[-1][:200]}", flush=True)
        return None, stderr
    result = json.loads(stdout.strip().splitlines()[-1])
    result["command"] = command[1:]
    with open(out / "results.jsonl", "a") as f:
        f.write(json.dumps(result) + "\n")
    return result, stderr


def bench_train(python, size, precision, batch, args, out, env) -> dict | None:
    """benchmark train, halving the batch while it runs out of memory."""
    while batch >= (1 if args.tiny else MIN_BATCH):
        result, stderr = run(python, ["benchmark", "train", "--image-size", str(size), "--batch-size", str(batch),
                                      "--precision", precision, "--jit-compile", "--embedder", args.embedder,
                                      "--steps", str(args.steps), "--warmup", str(args.warmup)],
                             f"train-{size}px-{precision}-b{batch}", out, env, args.timeout)
        if result is not None or not any(word in stderr for word in OUT_OF_MEMORY):
            return result
        batch //= 2
    return None


def table(results: list[dict]) -> str:
    rows = ["| benchmark | px | precision | batch | photos/s | TFLOP/s | MFU |", "|---|---:|---|---:|---:|---:|---:|"]
    for r in results:
        mfu = f"{100 * r['mfu']:.1f} %" if r.get("mfu") is not None else "n/a"
        tflops = f"{r['achieved_tflops']:.1f}" if "achieved_tflops" in r else ""
        rows.append(f"| {r['benchmark']} | {r['image_size']} | {r.get('precision', '')} | {r['batch_size']} "
                    f"| {r['images_per_s']:.0f} | {tflops} | {mfu} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheels", type=Path, help="folder of wheels to install from (no network); "
                                                    "without it, the current Python runs the benchmarks")
    parser.add_argument("--photos", type=Path, required=True, help="folder of photos for benchmark pipeline")
    parser.add_argument("--out", type=Path, required=True, help="folder for results.jsonl, logs/ and the venv")
    parser.add_argument("--backend", default="jax", help="Keras backend (default: jax)")
    parser.add_argument("--embedder", default="efficientnet_lite0_pooled",
                        help="the embedder (its size sets the embedding's; default: the shipped weights')")
    parser.add_argument("--tiny", action="store_true", help="32 px, batch 2, one step: a check on a CPU")
    parser.add_argument("--timeout", type=int, default=900, help="seconds allowed for one command")
    args = parser.parse_args(argv)
    args.steps, args.warmup = (1, 1) if args.tiny else (10, 3)
    sizes, batches = ((32,), {32: 2}) if args.tiny else (SIZES, BATCH)

    (args.out / "logs").mkdir(parents=True, exist_ok=True)
    (args.out / "results.jsonl").unlink(missing_ok=True)
    python = install(args.wheels, args.out) if args.wheels else sys.executable
    env = {**os.environ, "KERAS_BACKEND": args.backend, "KOALARIZATION_CACHE": str(args.out / "cache")}
    if not args.tiny:
        device = gpu_name(python, env)
        if device is None:
            print("no GPU visible to JAX: nothing to measure (is jax[cuda12] in the wheels?)", file=sys.stderr)
            return 1
        print(f"GPU: {device}", flush=True)

    results = []
    for size in sizes:
        for precision in PRECISIONS:
            results.append(bench_train(python, size, precision, batches[size], args, args.out, env))
    pipeline = ["benchmark", "pipeline", "--data", str(args.photos), "--embedder", args.embedder]
    pipeline += (["--image-size", "32", "--batch-size", "2", "--workers", "2", "--steps", "2"] if args.tiny else
                 ["--image-size", "256", "--batch-size", "256", "--workers", "16", "--steps", "40"])
    results.append(run(python, pipeline, "pipeline", args.out, env, args.timeout)[0])

    done = [r for r in results if r is not None]
    print(table(done))
    step = max((r for r in done if r["benchmark"] == "train" and r["image_size"] == max(sizes)),
               key=lambda r: r["images_per_s"], default=None)
    if step and done[-1]["benchmark"] == "pipeline":
        print(f"pipeline / fastest {max(sizes)} px step: {done[-1]['images_per_s'] / step['images_per_s']:.2f}")
    print(f"results: {args.out / 'results.jsonl'}")
    return 0 if len(done) == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
