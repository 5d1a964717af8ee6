"""Properties that hold for any input: Lab conversion and scaling of any uint8 image, and well-formed batches
from any mix of the photos a cache of good and broken files kept (tests/corpus.py). Hypothesis draws the
inputs; few examples, so the file runs in seconds."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from koalarization import color
from koalarization.config import AugmentConfig
from koalarization.data import cache
from koalarization.data.batches import BatchSource

from corpus import deny_reads, make_corpus, reads_denied
from test_pipeline import preprocess

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
    """Measured over all 16.7 M sRGB colours: float64 and the float32 path (color.network_lightness and
    network_ab) come back to the same uint8 colour, error 0. float32 gets 1 level of slack for other CPUs'
    rounding of powers; the float64 path must be exact."""
    lab = color.rgb_to_lab(rgb / 255.0)
    assert np.array_equal(color.to_uint8(color.lab_to_rgb(lab)), rgb)
    for lightness, ab in ((color.network_lightness(rgb), color.network_ab(rgb)),):
        assert lightness.dtype == ab.dtype == np.float32
        assert lightness.shape == (*rgb.shape[:-1], 1) and ab.shape == (*rgb.shape[:-1], 2)
        assert np.isfinite(lightness).all() and np.isfinite(ab).all()
        assert lightness.min() >= -1.0 and lightness.max() <= 1.0
        assert np.abs(ab).max() <= AB_BOUND
        back = color.to_uint8(color.network_to_rgb(lightness, ab))
        assert np.abs(back.astype(int) - rgb).max() <= 1
        np.testing.assert_allclose(lightness, color.scale_l(lab[..., :1]), atol=1e-5)  # float32 vs float64


@FEW
@given(arrays(np.float32, st.tuples(st.integers(1, 6), st.just(3)),
              elements=st.floats(-1, 1, width=32, allow_nan=False)))
def test_any_network_output_becomes_a_valid_colour(values):
    """Whatever the network predicts in [-1, 1] (even out of gamut) converts to finite sRGB, and where no
    channel had to be clipped the colour is exactly the predicted one: back to Lab it gives the same L and ab."""
    rgb = color.network_to_rgb(values[:, :1], values[:, 1:])
    assert rgb.shape == (len(values), 3) and np.isfinite(rgb).all()
    inside = np.all((rgb > 1e-3) & (rgb < 1 - 1e-3), axis=-1)  # in gamut: lab_to_rgb's clip did nothing
    lab = color.rgb_to_lab(rgb[inside].astype(np.float64))
    np.testing.assert_allclose(color.scale_l(lab[:, :1]), values[inside, :1], atol=1e-3)
    np.testing.assert_allclose(color.scale_ab(lab[:, 1:]), values[inside, 1:], atol=2e-3)
    gray = color.gray_rgb_from_l(values[:, :1])  # a = b = 0 is inside the gamut at every L: never clipped
    np.testing.assert_allclose(gray[:, 0], gray[:, 1], atol=2e-5)  # float32 arithmetic
    np.testing.assert_allclose(color.scale_l(color.rgb_to_lab(gray.astype(np.float64))[:, :1]), values[:, :1], atol=1e-3)


@pytest.fixture(scope="module")
def corpus_cache(tmp_path_factory):
    """The corpus and its cache at 16 px: what `train` would keep of it, and why it left the rest out."""
    corpus = make_corpus(tmp_path_factory.mktemp("properties") / "corpus")
    files = [case.path for case in corpus.values()]
    with pytest.MonkeyPatch.context() as mp:
        if not reads_denied(corpus["unreadable"].path):  # root reads a chmod 000 file: simulate it
            deny_reads(mp, corpus["unreadable"].path)
        store = cache.build(files, tmp_path_factory.mktemp("cache"), 16, "tiny_random", progress=False)
    return corpus, store


def test_the_cache_keeps_exactly_the_photos_train_takes(corpus_cache):
    corpus, store = corpus_cache
    kept = {case.path for case in corpus.values() if case.train == "ok"}
    assert set(store.usable) == {p.absolute() for p in kept}
    assert set(store.skipped) == {case.path.absolute() for case in corpus.values() if case.train != "ok"}


@FEW
@given(data=st.data(), batch_size=st.integers(1, 4), augment=st.booleans(), fill=st.sampled_from(["nearest", "reflect"]),
       seed=st.integers(0, 3))
def test_batches_are_well_formed_for_any_mix_of_photos(corpus_cache, data, batch_size, augment, fill, seed):
    corpus, store = corpus_cache
    files = data.draw(st.lists(st.sampled_from(store.usable), min_size=1, max_size=8, unique=True), label="files")
    source = BatchSource(store, files, batch_size, seed=seed, augment=AugmentConfig(enabled=augment))
    assert len(source) == -(-len(files) // batch_size)
    seen = []
    for i in range(len(source)):
        (batch,) = source[i]
        n = min(batch_size, len(files) - i * batch_size)
        assert batch["rgb"].shape == (n, 16, 16, 3) and batch["rgb"].dtype == np.uint8
        assert batch["embedding"].shape == (n, 1000) and np.isfinite(batch["embedding"]).all()
        assert batch["weight"].ravel().tolist() == [1.0] * n
        lightness, ab = preprocess(batch["rgb"], batch["affine"], fill)
        assert np.isfinite(lightness).all() and np.isfinite(ab).all()
        assert lightness.min() >= -1.0 - 1e-6 and lightness.max() <= 1.0 + 1e-6 and np.abs(ab).max() <= AB_BOUND
        seen.extend(batch["rgb"][:, 0, 0].tolist())
    expected = [store.photo(store.row_of(files[k]))[0, 0].tolist() for k in source._order(0)]
    assert seen == expected  # every photo once, in the epoch's order
