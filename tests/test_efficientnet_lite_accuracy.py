"""The ported EfficientNet-Lite0 classifies real ImageNet photos (needs ../shared/data/imagenet-sample).

A wrong transpose, padding or normalisation still yields valid-looking probabilities; only accuracy
on real photos shows the port is right. REFERENCE.md: top-1 ~0.90 on the first 250 photos.
"""

from pathlib import Path

import pytest

from koalarization.bench.embedder_check import imagenet_top1

IMAGENET_SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-sample"


@pytest.mark.large
@pytest.mark.skipif(not IMAGENET_SAMPLE.is_dir(), reason=f"{IMAGENET_SAMPLE} not present")
def test_lite0_top1_on_first_250_imagenet_photos(tmp_path, monkeypatch):
    monkeypatch.setenv("KOALARIZATION_CACHE", str(tmp_path))  # exercise the conversion too
    result = imagenet_top1("efficientnet_lite0", IMAGENET_SAMPLE, limit=250)
    assert result["n_images"] == 250
    assert result["top1"] >= 0.85, result
    assert result["top5"] >= result["top1"]
