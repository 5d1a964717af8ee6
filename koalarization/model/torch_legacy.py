"""Read PyTorch's *legacy* (non-zip) ``.pth`` state dicts with numpy only, no torch.

The legacy format (``torch.save(..., _use_new_zipfile_serialization=False)``, the default before
PyTorch 1.6) is five consecutive pickles followed by raw storage bytes:

1. the magic number ``0x1950a86a20f9469cfc6c``;
2. the protocol version ``1001``;
3. a sys-info dict (``little_endian``, ``type_sizes``...);
4. the state dict; each tensor is ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride,
   ...)`` and each storage a *persistent id* ``('storage', torch.FloatStorage, key, location,
   numel, view_metadata)``;
5. the list of storage keys, in the order their data follows;

then, for each key, an int64 element count and ``count * itemsize`` little-endian bytes.

A tensor is a view on its storage: ``offset``, ``size`` and ``stride`` (in elements) must all be
honoured; in the EfficientNet-Lite files the conv kernels are views whose memory is in TensorFlow's
HWIO order, e.g. ``_conv_stem.weight`` has size (32, 3, 3, 3) and stride (1, 32, 288, 96).

Unpickling runs code named by the file, so ``_RestrictedUnpickler`` resolves only the handful of
globals a state dict needs, each to a harmless stand-in defined here.
"""

from __future__ import annotations

import collections
import io
import math
import os
import pickle
from dataclasses import dataclass

import numpy as np

from koalarization.errors import KoalarizationError

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001

# torch storage class name -> numpy dtype of its elements (always little-endian on disk here).
_STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


@dataclass(frozen=True)
class _StorageType:
    """Stand-in for ``torch.FloatStorage`` etc.: only remembers the element dtype."""

    name: str
    dtype: np.dtype


@dataclass
class _StorageRef:
    """A persistent id: storage ``key`` holding ``numel`` elements of ``dtype``."""

    key: str
    dtype: np.dtype
    numel: int


@dataclass
class _TensorRef:
    """What ``_rebuild_tensor_v2`` returns: a strided view, resolved once the bytes are read."""

    storage: _StorageRef
    offset: int
    size: tuple
    stride: tuple


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    """Stand-in for ``torch._utils._rebuild_tensor_v2``; autograd fields are irrelevant here."""
    if not isinstance(storage, _StorageRef):
        raise pickle.UnpicklingError("tensor without a storage persistent id")
    return _TensorRef(storage, int(storage_offset), tuple(map(int, size)), tuple(map(int, stride)))


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals of a plain state dict; anything else is refused, not imported."""

    def __init__(self, file, storages: dict[str, _StorageRef]):
        super().__init__(file)
        self._storages = storages

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name, _STORAGE_DTYPES[name])
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r:.80}")
        _, storage_type, key, _location, numel, view_metadata = pid
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"unexpected storage type {storage_type!r:.80}")
        if view_metadata is not None:
            # Pre-1.0 files could store storage views; no file we ship needs them.
            raise pickle.UnpicklingError("storage views (view_metadata) are not supported")
        ref = self._storages.setdefault(str(key), _StorageRef(str(key), storage_type.dtype, int(numel)))
        if ref.dtype != storage_type.dtype or ref.numel != int(numel):
            raise pickle.UnpicklingError(f"storage {key} declared twice with different types")
        return ref


class _PlainUnpickler(pickle.Unpickler):
    """For the header pickles and the key list, which hold only builtins."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")


def _materialize(ref: _TensorRef, data: np.ndarray, key: str) -> np.ndarray:
    """Copy the strided view ``ref`` out of its storage ``data`` into a C-contiguous array."""
    size, stride = ref.size, ref.stride
    if len(size) != len(stride) or any(s < 0 for s in size) or any(s < 0 for s in stride):
        raise ValueError(f"tensor {key}: bad size {size} / stride {stride}")
    if 0 in size:
        return np.zeros(size, dtype=data.dtype)
    if math.prod(size) > data.size:  # e.g. stride-0 broadcasts: refuse to allocate without bound
        raise ValueError(f"tensor {key}: {math.prod(size)} elements, more than its storage holds")
    # Bounds check before as_strided, which would otherwise read outside the buffer.
    last = ref.offset + sum((n - 1) * s for n, s in zip(size, stride))
    if ref.offset < 0 or last >= data.size:
        raise ValueError(f"tensor {key}: view (offset {ref.offset}, size {size}, stride {stride}) "
                         f"runs past its storage of {data.size} elements")
    item = data.itemsize
    view = np.lib.stride_tricks.as_strided(
        data[ref.offset:], shape=size, strides=tuple(s * item for s in stride), writeable=False)
    return np.array(view, order="C")  # a copy; ascontiguousarray would turn 0-d into 1-d


def _parse(buf: bytes) -> dict[str, np.ndarray]:
    f = io.BytesIO(buf)
    if buf[:2] == b"PK":
        raise ValueError("it is a zip-format (PyTorch >= 1.6) checkpoint, not a legacy .pth")
    try:
        magic = _PlainUnpickler(f).load()
    except Exception:
        raise ValueError("not a legacy PyTorch .pth (no pickled magic number)") from None
    if magic != MAGIC_NUMBER:
        raise ValueError("not a legacy PyTorch .pth (wrong magic number)")
    protocol = _PlainUnpickler(f).load()
    if protocol != PROTOCOL_VERSION:
        raise ValueError(f"unsupported legacy protocol version {protocol!r}")
    sys_info = _PlainUnpickler(f).load()
    if not (isinstance(sys_info, dict) and sys_info.get("little_endian", False)):
        raise ValueError("only little-endian legacy files are supported")
    storages: dict[str, _StorageRef] = {}
    state = _RestrictedUnpickler(f, storages).load()
    keys = _PlainUnpickler(f).load()
    if not isinstance(state, dict) or not isinstance(keys, list):
        raise ValueError("the pickle is not a state dict (a mapping of names to tensors)")

    data: dict[str, np.ndarray] = {}
    for key in keys:
        ref = storages.get(str(key))
        if ref is None:
            raise ValueError(f"storage {key} is listed but no tensor uses it")
        header = f.read(8)
        if len(header) < 8:
            raise ValueError(f"file is truncated (storage {key} missing)")
        count = int(np.frombuffer(header, "<i8")[0])
        if count != ref.numel:
            raise ValueError(f"storage {key}: {count} elements on disk, {ref.numel} declared")
        nbytes = count * ref.dtype.itemsize
        raw = f.read(nbytes)
        if len(raw) < nbytes:
            raise ValueError(f"file is truncated (storage {key} has {len(raw)} of {nbytes} bytes)")
        data[str(key)] = np.frombuffer(raw, ref.dtype)
    if f.read(1):
        raise ValueError("unexpected bytes after the last storage")

    tensors = {}
    for name, value in state.items():
        if not isinstance(value, _TensorRef):
            raise ValueError(f"entry {name!r} is not a tensor")
        if value.storage.key not in data:
            raise ValueError(f"tensor {name}: storage {value.storage.key} has no data")
        tensors[str(name)] = _materialize(value, data[value.storage.key], name)
    return tensors


def load_legacy_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a legacy ``.pth`` state dict into ``{name: C-contiguous array}`` (PyTorch's logical layout).

    Float tensors come back as float32 etc. with the dtype of their storage; ``num_batches_tracked``
    buffers as int64. Any problem raises ``KoalarizationError`` naming the file.
    """
    try:
        with open(path, "rb") as fh:
            buf = fh.read()
    except OSError as e:
        raise KoalarizationError(f"cannot read PyTorch weights {path}: {e.strerror}") from None
    try:
        return _parse(buf)
    except ValueError as e:
        what = str(e)
    except (EOFError, pickle.UnpicklingError) as e:
        what = "file is truncated" if "truncated" in str(e) or isinstance(e, EOFError) else str(e)
    except Exception as e:  # a corrupt pickle can fail in many ways (KeyError, struct.error...)
        what = f"corrupt file ({type(e).__name__}: {e})"
    what = " ".join(what.split())[:200]  # keep the message on one line
    raise KoalarizationError(f"cannot read PyTorch weights {path}: {what}")
