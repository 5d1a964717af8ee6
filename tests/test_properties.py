"""Properties that hold for any input: Lab conversion and scaling of any uint8 image, and well-formed batches
from any mix of good and broken files (tests/corpus.py). Hypothesis draws the inputs; few examples, so the
file runs in seconds."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from corpus import deny_reads, make_corpus, reads_denied

from koalarization import color
from koalarization.config import AugmentConfig
from koalarization.data import BatchSource
from koalarization.fast_lab import rgb_to_network

FEW = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
# The scaled ab of any sRGB colour: |a|, |b| <= 0.843 (measured over all 16.7 M colours: the extreme is
# b = -107.9 of pure blue, / AB_SCALE 128), so "about [-1, 1]" is strictly inside [-1, 1].
AB_BOUND = 0.85

images_uint8 = st.tuples(st.integers(1, 3), st.integers(1, 9), st.integers(1, 9)).flatmap(
    lambda shape: arrays(np.uint8, (*shape, 3))
)


@FEW
@given(images_uint8)
def test_lab_scaling_stays_in_range_and_round_trips_exactly(rgb):
    """Measured over all 16.7 M sRGB colours: float64 and both float32 paths (color.rgb_uint8_to_network,
    fast_lab.rgb_to_network) come back to the same uint8 colour, error 0. float32 gets 1 level of slack
    for other CPUs' rounding of exp/log; the float64 path must be exact."""
    lab = color.rgb_to_lab(rgb / 255.0)
    assert np.array_equal(color.to_uint8(color.lab_to_rgb(lab)), rgb)
    for lightness, ab in (color.rgb_uint8_to_network(rgb), rgb_to_network(rgb)):
        assert lightness.dtype == ab.dtype == np.float32
        assert lightness.shape == (*rgb.shape[:-1], 1) and ab.shape == (*rgb.shape[:-1], 2)
        assert np.isfinite(lightness).all() and np.isfinite(ab).all()
        assert lightness.min() >= -1.0 and lightness.max() <= 1.0
        assert np.abs(ab).max() <= AB_BOUND
        back = color.to_uint8(color.network_to_rgb(lightness, ab))
        assert np.abs(back.astype(int) - rgb).max() <= 1
    # The two float32 paths agree with each other (fast_lab is the batch source's).
    slow, fast = color.rgb_uint8_to_network(rgb), rgb_to_network(rgb)
    assert np.abs(slow[0] - fast[0]).max() < 1e-4 and np.abs(slow[1] - fast[1]).max() < 1e-4


@FEW
@given(arrays(np.float32, st.tuples(st.integers(1, 6), st.just(3)),
              elements=st.floats(-1, 1, width=32, allow_nan=False)))
def test_any_network_output_becomes_a_valid_colour(values):
    """Whatever the network predicts in [-1, 1] (even out of gamut) converts to finite sRGB in [0, 1]."""
    rgb = color.network_to_rgb(values[:, :1], values[:, 1:])
    assert rgb.shape == (len(values), 3) and np.isfinite(rgb).all()
    assert rgb.min() >= 0.0 and rgb.max() <= 1.0
    gray = color.gray_rgb_from_l(values[:, :1])
    assert np.isfinite(gray).all() and gray.min() >= 0.0 and gray.max() <= 1.0


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("properties") / "corpus")


@FEW
@given(data=st.data(), batch_size=st.integers(1, 4), size=st.sampled_from([8, 16]), augment=st.booleans(),
       seed=st.integers(0, 3))
def test_batches_are_well_formed_for_any_mix_of_files(corpus, data, batch_size, size, augment, seed, caplog):
    names = data.draw(st.lists(st.sampled_from(sorted(corpus)), min_size=1, max_size=8, unique=True), label="files")
    files = [corpus[n].path for n in names]
    source = BatchSource(files, batch_size, size, seed=seed, augment=AugmentConfig(enabled=augment))
    weights = []
    with pytest.MonkeyPatch.context() as mp, caplog.at_level(logging.WARNING, "koalarization"):
        caplog.clear()
        if not reads_denied(corpus["unreadable"].path):  # root reads a chmod 000 file: simulate it
            deny_reads(mp, corpus["unreadable"].path)
        assert len(source) == -(-len(files) // batch_size)
        for i in range(len(source)):
            lightness, ab, weight = source[i]
            n = min(batch_size, len(files) - i * batch_size)
            assert lightness.shape == (n, size, size, 1) and ab.shape == (n, size, size, 2)
            assert weight.shape == (n, 1, 1)
            assert lightness.dtype == ab.dtype == weight.dtype == np.float32
            assert np.isfinite(lightness).all() and np.isfinite(ab).all()
            assert lightness.min() >= -1.0 and lightness.max() <= 1.0 and np.abs(ab).max() <= AB_BOUND
            weights.extend(weight.ravel().tolist())
    # Every photo once; a broken file has weight 0 (no gradient) and one warning naming it, a good one weight 1.
    order = source._order(0)
    expected = [0.0 if corpus[names[k]].kind == "skip" else 1.0 for k in order]
    assert weights == expected
    bad = sorted(corpus[n].path for n in names if corpus[n].kind == "skip")
    assert source.failed_files == bad
    for path in bad:
        assert sum(str(path) in r.getMessage() for r in caplog.records) == 1
