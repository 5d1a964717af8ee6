"""Finding photos, the cache, the split, and the batch source: determinism across threads, coverage, memory."""

import json
import os
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from koalarization import color
from koalarization.config import AugmentConfig
from koalarization.data import cache, images, sources, squash
from koalarization.data.batches import BatchSource
from koalarization.data.split import Split, make_split
from koalarization.errors import KoalarizationError

from conftest import synthetic_photo


def build_cache(folder_or_files, out, size=32, **kw):
    files = folder_or_files if isinstance(folder_or_files, list) else sources.photo_paths([folder_or_files])
    return cache.build(files, out, size, "tiny_random", progress=False, **kw)


# ---------------------------------------------------------------------------------------- finding photos
def test_find_images_is_recursive_and_case_insensitive(photo_dir):
    (photo_dir / "notes.txt").write_text("not a photo")
    found = images.find_images(photo_dir)
    assert len(found) == 8
    assert {p.suffix for p in found} == {".jpg", ".PNG", ".jpeg", ".png"}
    assert found == sorted(found)


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(KoalarizationError, match="no such folder"):
        images.find_images(tmp_path / "nope")


def test_folders_lists_and_drop_lists(photo_dir, tmp_path, monkeypatch):
    other = tmp_path / "other" / "set"
    other.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(synthetic_photo(20 + i)).save(other / f"x{i}.png")
    listing = tmp_path / "lists" / "more.txt"
    listing.parent.mkdir()
    # relative entries are read from the list's folder; comments and blank lines are ignored
    listing.write_text(f"# extra photos\n\n../other/set/x0.png\n{other / 'x1.png'}\n")
    drop = tmp_path / "drop.txt"
    drop.write_text("sub/photo1.PNG\nset/x1.png\n")  # path suffixes, as a data set's drop list is written
    monkeypatch.chdir(tmp_path)
    found = sources.photo_paths([photo_dir, "other"], [listing], [drop])
    names = [p.name for p in found]
    assert "photo1.PNG" not in names and "x1.png" not in names
    assert names.count("x0.png") == 1  # listed twice (folder and list): once
    assert len(found) == 8 - 1 + 3 - 1 and all(p.is_absolute() for p in found) and found == sorted(found)
    with pytest.raises(KoalarizationError, match="cannot read the list"):
        sources.photo_paths([], [tmp_path / "nope.txt"])


# ------------------------------------------------------------------------------------------------- cache
def test_cache_holds_each_photo_and_its_embedding_from_the_full_photo(photo_dir, tmp_path):
    store = build_cache(photo_dir, tmp_path / "c")
    files = sources.photo_paths([photo_dir])
    assert store.usable == files and not store.skipped
    path = files[3]
    row = store.row_of(path)
    rgb = images.load_rgb(path)
    np.testing.assert_array_equal(store.photo(row), squash.resize_rgb(rgb, 32))
    # the embedder saw the full photo's gray at its own resolution (tiny_random: 32 px), not the S x S photo
    from koalarization.model.embedders import build_embedder

    seen = color.network_lightness(squash.resize_rgb(rgb, 32))[None]
    expected = build_embedder("tiny_random").predict_on_batch(seen)[0]
    np.testing.assert_allclose(store.embedding(row), expected, atol=1e-6)
    assert store.embedding(row).shape == (store.embedding_dim,) == (1000,)


def test_a_truncated_cache_shard_is_a_one_line_error_naming_it(photo_dir, tmp_path):
    store = build_cache(photo_dir, tmp_path / "c")
    shard = tmp_path / "c" / cache.PHOTOS.format(0)
    assert np.load(shard).shape == (len(store.photos), 32, 32, 3)  # a .npy file NumPy reads as it is
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size - 100)
    with pytest.raises(KoalarizationError, match=rf"{shard.name}: truncated .*delete the cache") as err:
        cache.Cache(tmp_path / "c").photo(0)
    assert "\n" not in str(err.value)


def test_cache_skips_gray_photos_by_mode_and_by_content_and_broken_files(photo_dir, tmp_path):
    Image.fromarray(synthetic_photo(99)[..., 0]).save(photo_dir / "gray_mode.png")
    gray_rgb = np.repeat(synthetic_photo(98)[..., :1] // 2, 3, axis=-1)
    gray_rgb[::7, ::7, 0] += 3  # a little noise, as a JPEG of a gray photo has
    Image.fromarray(gray_rgb).save(photo_dir / "gray_content.png")
    faint = synthetic_photo(97)
    faint = (faint.astype(int) // 6 + 100).astype(np.uint8)  # faint, but colour: channels differ by up to 42
    Image.fromarray(faint).save(photo_dir / "faint.png")
    (photo_dir / "text.jpg").write_text("hello")
    store = build_cache(photo_dir, tmp_path / "c")
    reasons = {p.name: r for p, r in store.skipped.items()}
    assert reasons["gray_mode.png"] == reasons["gray_content.png"] == cache.GRAY
    assert "not an image" in reasons["text.jpg"]
    assert len(store.usable) == 9 and "faint.png" in {p.name for p in store.usable}
    with pytest.raises(KoalarizationError, match="not in the cache"):
        store.row_of(photo_dir / "gray_mode.png")


def test_is_gray_threshold():
    rgb = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=-1).repeat(4, axis=0)  # (4, 256, 3)
    assert color.is_gray(rgb)
    specks = rgb.copy()
    specks[0, :6, 0] = 255  # 6 of 1024 pixels (0.6 %) far apart: more than the 0.5 % allowed ...
    assert color.is_gray(specks)  # ... but a mean chroma of 0.6: a gray photo with a few coloured specks
    specks[:, :60, 0] = 255  # 6 % of the pixels red: mean chroma 23
    assert not color.is_gray(specks)
    tint = rgb.copy()
    tint[..., 0] = np.minimum(tint[..., 0].astype(int) + 8, 255)  # every pixel 8 levels redder: faint (chroma 3), but colour
    assert not color.is_gray(tint)
    tint[..., 0] = np.minimum(rgb[..., 0].astype(int) + 4, 255)  # 4 levels: within the JPEG-noise tolerance
    assert color.is_gray(tint)


def test_an_interrupted_cache_build_resumes_at_its_first_unfinished_shard(photo_dir, tmp_path, monkeypatch):
    folder = tmp_path / "c"
    files = sources.photo_paths([photo_dir])
    real = cache.decode_for_cache

    def stop_at_the_sixth_photo(path, *args):
        if path == files[5]:
            raise KeyboardInterrupt
        return real(path, *args)

    monkeypatch.setattr(cache, "decode_for_cache", stop_at_the_sixth_photo)
    with pytest.raises(KeyboardInterrupt):
        build_cache(files, folder, shard_size=3)
    assert sorted(p.name for p in folder.glob("shard-*.json")) == ["shard-00000.json"]
    assert not list(folder.glob(".*tmp*"))
    decoded = []
    monkeypatch.setattr(cache, "decode_for_cache", lambda path, *args: decoded.append(path) or real(path, *args))
    store = build_cache(files, folder, shard_size=3)
    assert sorted(decoded) == files[3:]  # the finished shard was not decoded again
    assert store.usable == files
    np.testing.assert_array_equal(store.photo(7), squash.resize_rgb(images.load_rgb(files[7]), 32))
    with pytest.raises(KoalarizationError, match="holds the cache of other photos or settings"):
        build_cache(files, folder, size=40, shard_size=3)


def test_default_cache_folder_follows_the_photos_and_settings(photo_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("KOALARIZATION_CACHE", str(tmp_path / "home"))
    files = sources.photo_paths([photo_dir])
    a = cache.default_folder(files, 32, "tiny_random")
    assert a.parent == tmp_path / "home" / "prepared"
    assert a == cache.default_folder(list(files), 32, "tiny_random")
    assert a != cache.default_folder(files, 64, "tiny_random") != cache.default_folder(files[1:], 32, "tiny_random")
    os.utime(files[0], ns=(1, 1))  # a changed photo is another cache
    assert a != cache.default_folder(files, 32, "tiny_random")


# ------------------------------------------------------------------------------------------------- split
def test_split_is_deterministic_disjoint_and_has_reference_fractions(tmp_path):
    files = [tmp_path / f"{i:03d}.jpg" for i in range(200)]
    a = make_split(files, 0.1275, 0.15, seed=3, sources=[tmp_path])
    b = make_split(list(reversed(files)), 0.1275, 0.15, seed=3, sources=[tmp_path])
    assert a == b and a.root == tmp_path
    assert set(a.train) | set(a.val) | set(a.test) == set(files)
    assert len(set(a.train) & set(a.test)) == len(set(a.val) & set(a.test)) == 0
    assert len(a.test) == 30 and abs(len(a.val) - 0.1275 * 200) <= 1
    a.save(tmp_path / "split.json")
    assert Split.load(tmp_path / "split.json") == a
    assert all(not Path(p).is_absolute() for p in json.loads((tmp_path / "split.json").read_text())["train"])


def test_too_few_photos_for_a_split(tmp_path):
    with pytest.raises(KoalarizationError, match="at least 3"):
        make_split([tmp_path / "a.jpg"], 0.1275, 0.15, seed=0)


def test_split_recognises_its_folders_however_they_are_spelled(tmp_path, monkeypatch):
    for name in ("photos", "more", "other"):
        (tmp_path / name).mkdir()
    files = [tmp_path / "photos" / f"{i}.jpg" for i in range(5)] + [tmp_path / "more" / "m.jpg"]
    split = make_split(files, 0.2, 0.2, 0, sources=[tmp_path / "photos", tmp_path / "more"])
    monkeypatch.chdir(tmp_path / "other")
    assert split.belongs_to("../photos") and split.belongs_to(tmp_path / "more") and split.belongs_to("..")
    assert not split.belongs_to(".")


# ------------------------------------------------------------------------------------------------ batches
@pytest.fixture
def store(photo_dir, tmp_path):
    return build_cache(photo_dir, tmp_path / "cache")


def _source(store, files=None, workers=1, augment=AugmentConfig(), **kw):
    return BatchSource(store, files or store.usable, 3, seed=5, augment=augment, workers=workers, **kw)


def _assert_same(a, b):
    for key in a[0]:
        np.testing.assert_array_equal(a[0][key], b[0][key])


def test_batches_are_a_pure_function_of_seed_epoch_index(store):
    one = _source(store)
    four = _source(store, workers=4)
    for epoch in (0, 1):
        one.set_epoch(epoch)
        four.set_epoch(epoch)
        expected = [one[i] for i in range(len(one))]
        # Four threads hammering one shared instance, in scrambled order.
        order = [2, 0, 1, 2, 1, 0] * 2
        with ThreadPoolExecutor(4) as pool:
            got = list(pool.map(lambda i: (i, four[i]), order))
        for i, batch in got:
            _assert_same(expected[i], batch)
    one.set_epoch(0)
    epoch0 = one[0][0]
    one.set_epoch(1)
    assert not np.array_equal(epoch0["rgb"], one[0][0]["rgb"])  # shuffled anew each epoch
    assert not np.array_equal(epoch0["affine"], one[0][0]["affine"])  # and augmented anew
    batch = epoch0
    assert batch["rgb"].dtype == np.uint8 and batch["rgb"].shape == (3, 32, 32, 3)
    assert batch["embedding"].shape == (3, 1000) and batch["weight"].ravel().tolist() == [1.0] * 3


def test_keras_worker_threads_give_the_same_batches(store):
    """Through Keras' own enqueuer (what fit uses) with 4 threads, versus direct indexing."""
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter

    threaded = _source(store, workers=4)
    direct = _source(store)
    adapter = PyDatasetAdapter(threaded, shuffle=False)
    adapter.on_epoch_begin()
    batches = list(adapter.get_numpy_iterator())
    adapter.on_epoch_end()
    assert len(batches) == len(direct) == 3
    for i, batch in enumerate(batches):
        _assert_same(direct[i], batch)


def test_every_photo_once_per_epoch(tmp_path):
    # Photos of distinct colours; each batch entry identifies its photo.
    files = []
    for i in range(10):
        path = tmp_path / f"{i}.png"
        Image.fromarray(np.full((20, 30, 3), (10 + 20 * i, 90, 200 - 15 * i), np.uint8)).save(path)
        files.append(path)
    source = _source(build_cache(files, tmp_path / "c"), augment=AugmentConfig(enabled=False))
    for epoch in range(3):
        source.set_epoch(epoch)
        seen = np.concatenate([source[i][0]["rgb"][:, 0, 0, 0] for i in range(len(source))])
        assert sorted(seen.tolist()) == [10 + 20 * i for i in range(10)]


def _peak_bytes(store, files, batches=4):
    source = _source(store, files, workers=1)
    tracemalloc.start()
    for i in range(batches):
        source[i]
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def test_peak_memory_does_not_grow_with_the_number_of_files(store):
    small = _peak_bytes(store, store.usable * 2)
    large = _peak_bytes(store, store.usable * 200)  # 100x more photos listed
    # Only the file list and one epoch order grow (a few bytes a photo); the photos themselves never pile up.
    assert large < small * 1.25 + 200 * len(store.usable) * 16


def test_padded_views_split_each_batch_over_replicas(store):
    source = BatchSource(store, store.usable[:5], 4, augment=None, shuffle=False)
    halves = [source.view(shard=(k, 2)) for k in range(2)]
    last = [h.batch(1, 0)[0] for h in halves]  # photo 4, then padding
    assert [b["weight"].ravel().tolist() for b in last] == [[1.0, 0.0], [0.0, 0.0]]
    np.testing.assert_array_equal(last[0]["rgb"][0], store.photo(store.row_of(store.usable[4])))
    with pytest.raises(KoalarizationError, match="batch_size 4 must be a multiple of the 3 replicas"):
        source.view(shard=(0, 3))
