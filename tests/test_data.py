"""Finding photos, the split, and the batch source: determinism across threads, coverage, memory."""

import json
import logging
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from koalarization import images
from koalarization.config import AugmentConfig
from koalarization.data import BatchSource, Split, apply_affine, make_split, scan_photos
from koalarization.errors import KoalarizationError
from conftest import synthetic_photo


def test_find_images_is_recursive_and_case_insensitive(photo_dir):
    (photo_dir / "notes.txt").write_text("not a photo")
    found = images.find_images(photo_dir)
    assert len(found) == 8
    assert {p.suffix for p in found} == {".jpg", ".PNG", ".jpeg", ".png"}
    assert found == sorted(found)


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(KoalarizationError, match="no such folder"):
        images.find_images(tmp_path / "nope")


def test_scan_skips_grayscale_and_broken_files(photo_dir):
    Image.fromarray(synthetic_photo(99)[..., 0]).save(photo_dir / "gray.png")
    (photo_dir / "text.jpg").write_text("hello")
    usable, skipped = scan_photos(photo_dir)
    assert len(usable) == 8
    reasons = {p.name: r for p, r in skipped}
    assert reasons["gray.png"] == "grayscale"
    assert "not an image" in reasons["text.jpg"]


def test_split_is_deterministic_disjoint_and_has_reference_fractions(tmp_path):
    files = [tmp_path / f"{i:03d}.jpg" for i in range(200)]
    a = make_split(tmp_path, files, 0.1275, 0.15, seed=3)
    b = make_split(tmp_path, list(reversed(files)), 0.1275, 0.15, seed=3)
    assert a == b
    assert set(a.train) | set(a.val) | set(a.test) == set(files)
    assert len(set(a.train) & set(a.test)) == len(set(a.val) & set(a.test)) == 0
    assert len(a.test) == 30 and abs(len(a.val) - 0.1275 * 200) <= 1
    a.save(tmp_path / "split.json")
    assert Split.load(tmp_path / "split.json") == a
    assert all(not Path(p).is_absolute() for p in json.loads((tmp_path / "split.json").read_text())["train"])


def test_too_few_photos_for_a_split(tmp_path):
    with pytest.raises(KoalarizationError, match="at least 3"):
        make_split(tmp_path, [tmp_path / "a.jpg"], 0.1275, 0.15, seed=0)


def _source(files, workers=1, augment=AugmentConfig(), **kw):
    return BatchSource(files, 3, 32, seed=5, augment=augment, workers=workers, **kw)


def test_batches_are_a_pure_function_of_seed_epoch_index(photo_dir):
    files = images.find_images(photo_dir)
    one = _source(files)
    four = _source(files, workers=4)
    for epoch in (0, 1):
        one.set_epoch(epoch)
        four.set_epoch(epoch)
        expected = [one[i] for i in range(len(one))]
        # Four threads hammering one shared instance, in scrambled order.
        order = [2, 0, 1, 2, 1, 0] * 2
        with ThreadPoolExecutor(4) as pool:
            got = list(pool.map(lambda i: (i, four[i]), order))
        for i, batch in got:
            for a, b in zip(expected[i], batch):
                np.testing.assert_array_equal(a, b)
    one.set_epoch(0)
    epoch0 = one[0][0]
    one.set_epoch(1)
    assert not np.array_equal(epoch0, one[0][0])  # shuffled and augmented anew each epoch


def test_keras_worker_threads_give_the_same_batches(photo_dir):
    """Through Keras' own enqueuer (what fit uses) with 4 threads, versus direct indexing."""
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter

    files = images.find_images(photo_dir)
    threaded = _source(files, workers=4)
    direct = _source(files)
    adapter = PyDatasetAdapter(threaded, shuffle=False)
    adapter.on_epoch_begin()
    batches = list(adapter.get_numpy_iterator())
    adapter.on_epoch_end()
    assert len(batches) == len(direct) == 3
    for i, batch in enumerate(batches):
        for a, b in zip(direct[i], batch):
            np.testing.assert_array_equal(a, b)


def test_every_photo_once_per_epoch(tmp_path):
    # Photos of distinct uniform lightness; without augmentation each batch entry identifies its photo.
    files = []
    for i in range(10):
        path = tmp_path / f"{i}.png"
        Image.fromarray(np.full((20, 30, 3), (10 + 20 * i, 90, 200 - 15 * i), np.uint8)).save(path)
        files.append(path)
    source = _source(files, augment=AugmentConfig(enabled=False))
    for epoch in range(3):
        source.set_epoch(epoch)
        seen = np.concatenate([source[i][0][:, 0, 0, 0] for i in range(len(source))])
        assert len(seen) == 10
        assert len(np.unique(np.round(seen, 4))) == 10


def _peak_bytes(files, batches=4):
    source = _source(files, workers=1)
    tracemalloc.start()
    for i in range(batches):
        source[i]
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def test_peak_memory_does_not_grow_with_the_number_of_files(photo_dir):
    files = images.find_images(photo_dir)
    small = _peak_bytes(files * 2)
    large = _peak_bytes(files * 200)  # 100x more photos listed
    # Only the file list and one epoch order grow (a few bytes a photo); the photos themselves never pile up.
    assert large < small * 1.25 + 200 * len(files) * 16


def test_broken_photo_gets_zero_weight_and_one_warning(photo_dir, caplog):
    files = images.find_images(photo_dir)[:2]
    broken = photo_dir / "broken.jpg"
    broken.write_bytes((photo_dir / "photo0.jpg").read_bytes()[:200])  # truncated JPEG
    source = BatchSource(files + [broken], 3, 32, augment=None, shuffle=False)
    with caplog.at_level(logging.WARNING):
        lightness, ab, weight = source[0]
        source[0]
    assert weight.ravel().tolist() == [1.0, 1.0, 0.0]
    assert lightness.shape == (3, 32, 32, 1) and ab.shape == (3, 32, 32, 2)
    assert sum("broken.jpg" in r.message for r in caplog.records) == 1
    assert source.failed_files == [broken]


def test_augmentation_keeps_content_and_fills_edges():
    rgb = synthetic_photo(1, (64, 64))
    identity = apply_affine(rgb, np.eye(2))
    assert np.abs(identity.astype(int) - rgb.astype(int)).mean() < 2
    rotated = apply_affine(rgb, np.array([[np.cos(0.35), -np.sin(0.35)], [np.sin(0.35), np.cos(0.35)]]) * 1.2)
    # nearest-edge fill: no black corners after a 20 degree rotation zoomed out by 1.2
    assert rotated[:3, :3].mean() > 20 and rotated[-3:, -3:].mean() > 20
    flipped = apply_affine(rgb, np.diag([-1.0, 1.0]))
    assert np.abs(flipped.astype(int) - rgb[:, ::-1].astype(int)).mean() < 3


def test_split_recognises_its_folder_however_it_is_spelled(tmp_path, monkeypatch):
    (tmp_path / "photos").mkdir()
    (tmp_path / "other").mkdir()
    split = make_split(tmp_path / "photos", [tmp_path / "photos" / f"{i}.jpg" for i in range(5)], 0.2, 0.2, 0)
    monkeypatch.chdir(tmp_path / "other")
    assert split.belongs_to("../photos") and split.belongs_to(tmp_path / "photos")
    assert not split.belongs_to(".")
