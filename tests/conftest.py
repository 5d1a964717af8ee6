"""Shared fixtures: tiny synthetic photos and a tiny network config, so the suite runs on 2 CPU cores."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The tests' tiny embedder (tests/tiny_embedder.py), for this process and the CLI processes tests start.
TESTS = str(Path(__file__).resolve().parent)
os.environ["KOALARIZATION_EMBEDDERS"] = "tiny_embedder"
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [TESTS, os.environ.get("PYTHONPATH")]))

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SHARED_DATA = SHARED / "data"


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Training caches and converted weights go to a folder of this test session, not the user's."""
    previous = os.environ.get("KOALARIZATION_CACHE")
    os.environ["KOALARIZATION_CACHE"] = str(tmp_path_factory.mktemp("koalarization-cache"))
    yield
    if previous is None:
        os.environ.pop("KOALARIZATION_CACHE", None)
    else:
        os.environ["KOALARIZATION_CACHE"] = previous


def pytest_configure(config):
    config.addinivalue_line("markers", "large: slow or needs ../shared data; run with -m large")


def synthetic_photo(seed: int, size=(48, 40)) -> np.ndarray:
    """A colourful uint8 RGB image (H, W, 3): smooth gradients plus blobs, different for every seed."""
    rng = np.random.default_rng(seed)
    height, width = size
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    channels = []
    for _ in range(3):
        fx, fy, phase = rng.uniform(1, 4, 3)
        channels.append(0.5 + 0.5 * np.sin(2 * np.pi * (fx * x + fy * y) + phase * 3))
    return (np.stack(channels, -1) * 255).astype(np.uint8)


@pytest.fixture
def photo_dir(tmp_path) -> Path:
    """Eight small colour JPEG/PNG photos in nested folders, with mixed-case extensions."""
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    for i in range(8):
        folder = root / "sub" if i % 2 else root
        suffix = [".jpg", ".PNG", ".jpeg", ".png"][i % 4]
        Image.fromarray(synthetic_photo(i)).save(folder / f"photo{i}{suffix}", quality=95)
    return root


TINY_SIZE = 32  # the working size tiny runs train at


def tiny_inputs(batch: int, size: int = TINY_SIZE, seed: int = 0) -> dict:
    """Random inputs of model.build_model with the tiny_random embedder (32 px)."""
    rng = np.random.default_rng(seed)
    return {"L": rng.uniform(-1, 1, (batch, size, size, 1)).astype("float32"),
            "L_embedder": rng.uniform(-1, 1, (batch, 32, 32, 1)).astype("float32")}


@pytest.fixture
def tiny_model_config():
    from koalarization.config import UP, ModelConfig

    return ModelConfig(
        encoder=((8, 2), (8, 1), (16, 2), (16, 1), (16, 2), (16, 1), (16, 1), (8, 1)),
        fusion_filters=8,
        decoder=(16, UP, 8, UP, 8, 8),
        embedder="tiny_random",
    )
