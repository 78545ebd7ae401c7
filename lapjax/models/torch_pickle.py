"""PyTorch checkpoints read without torch and without running their code.

``torch.save`` writes a pickle; unpickling one with :mod:`pickle` runs any
callable the file names, so a downloaded ``.pth`` can execute arbitrary code.
``load_torch_pickle`` reads the same files with a restricted unpickler whose
``find_class`` resolves only the handful of globals a state dict needs --
``torch._utils._rebuild_tensor_v2`` and its relatives, the ``torch.*Storage``
types, ``torch`` dtypes and ``collections.OrderedDict`` -- to NumPy stand-ins,
and refuses every other global by name. Tensors come back as NumPy arrays
(``bfloat16`` as ``ml_dtypes.bfloat16``), strides and storage offsets
applied, each copied out of its storage.

Both of torch's formats are read:

* the zip format (torch >= 1.6): ``<archive>/data.pkl`` holds the pickle,
  ``<archive>/data/<key>`` the raw bytes of each storage, ``<archive>/
  byteorder`` their byte order;
* the legacy format (``_use_new_zipfile_serialization=False``): a magic
  number, the protocol version and system information pickled one after the
  other, then the object, the list of storage keys, and each storage as an
  int64 element count followed by its bytes.

A file holding a whole pickled ``nn.Module`` (``torch.save(model)``) names
the model's class as a global; it is refused with a message saying to save
``model.state_dict()`` instead.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import os
import pickle
import struct
import zipfile
from typing import Any

import ml_dtypes
import numpy as np

# The storage classes torch pickles (``torch.FloatStorage`` ...) and the
# element type of each.
_STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32,
    "HalfStorage": np.float16, "BFloat16Storage": ml_dtypes.bfloat16,
    "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8,
    "ByteStorage": np.uint8, "BoolStorage": np.bool_,
    "ComplexFloatStorage": np.complex64,
    "ComplexDoubleStorage": np.complex128, "UntypedStorage": np.uint8,
}

# ``torch.<name>`` dtype objects (the explicit dtype of ``_rebuild_tensor_v3``).
_TORCH_DTYPES = {
    "float64": np.float64, "double": np.float64, "float32": np.float32,
    "float": np.float32, "float16": np.float16, "half": np.float16,
    "bfloat16": ml_dtypes.bfloat16, "int64": np.int64, "long": np.int64,
    "int32": np.int32, "int": np.int32, "int16": np.int16,
    "short": np.int16, "int8": np.int8, "uint8": np.uint8,
    "uint16": np.uint16, "uint32": np.uint32, "uint64": np.uint64,
    "bool": np.bool_, "complex64": np.complex64, "complex128": np.complex128,
}

_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c

# Packages whose classes appear first when a whole model was pickled.
_MODEL_PACKAGES = ("torch", "torchvision", "timm", "transformers", "__main__")


class UnsafePickleError(ValueError):
  """The checkpoint names a global that a state dict never needs."""


@dataclasses.dataclass(frozen=True)
class _StorageType:
  """Stands in for ``torch.FloatStorage`` & co.: only its element type."""
  dtype: Any


@dataclasses.dataclass(frozen=True)
class _DType:
  """Stands in for a ``torch`` dtype object (``torch.float16``)."""
  dtype: Any


@dataclasses.dataclass(frozen=True)
class _TypeMarker:
  """Stands in for ``torch.Tensor`` / ``torch.nn.Parameter`` as a type."""
  name: str


@dataclasses.dataclass
class _Storage:
  """A storage named by the pickle; its bytes are attached after reading."""
  key: str
  dtype: Any
  numel: int
  data: np.ndarray | None = None


@dataclasses.dataclass
class _LazyTensor:
  """A tensor whose storage may not be read yet (legacy format)."""
  storage: _Storage
  offset: int
  size: tuple[int, ...]
  stride: tuple[int, ...]
  dtype: Any


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
  del unused                    # requires_grad, backward_hooks, metadata
  if not isinstance(storage, _Storage):
    raise UnsafePickleError("a tensor's storage is not a storage record")
  return _LazyTensor(storage, int(storage_offset), tuple(size), tuple(stride),
                     storage.dtype)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad,
                       backward_hooks, dtype, metadata=None):
  del requires_grad, backward_hooks, metadata
  tensor = _rebuild_tensor(storage, storage_offset, size, stride)
  if not isinstance(dtype, _DType):
    raise UnsafePickleError("_rebuild_tensor_v3 without a torch dtype")
  return dataclasses.replace(tensor, dtype=dtype.dtype)


def _rebuild_parameter(data, requires_grad, backward_hooks, state=None):
  del requires_grad, backward_hooks, state
  return data


def _rebuild_from_type_v2(func, new_type, args, state):
  del state
  if func not in (_rebuild_tensor, _rebuild_tensor_v3) or not isinstance(
      new_type, _TypeMarker):
    raise UnsafePickleError("_rebuild_from_type_v2 of something other than "
                            "a tensor")
  return func(*args)


def _size(dims=()):
  return tuple(int(d) for d in dims)


def _codecs_encode(text, encoding="utf-8"):
  # Protocol-2 pickles spell ``bytes`` as ``_codecs.encode(str, 'latin1')``.
  if encoding != "latin1" or not isinstance(text, str):
    raise UnsafePickleError(f"refused _codecs.encode(..., {encoding!r})")
  return text.encode("latin1")


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch", "Tensor"): _TypeMarker("Tensor"),
    ("torch.nn.parameter", "Parameter"): _TypeMarker("Parameter"),
    ("torch", "Size"): _size,
    ("_codecs", "encode"): _codecs_encode,
    **{("torch", name): _StorageType(np.dtype(dt))
       for name, dt in _STORAGE_DTYPES.items()},
    **{("torch", name): _DType(np.dtype(dt))
       for name, dt in _TORCH_DTYPES.items()},
}


def _refusal(module: str, name: str) -> UnsafePickleError:
  qualified = f"{module}.{name}"
  if module.split(".")[0] in _MODEL_PACKAGES:
    return UnsafePickleError(
        f"the checkpoint holds a pickled Python object of class {qualified}, "
        "not a state dict of tensors: it looks like a whole model saved with "
        "torch.save(model). lapjax reads tensors only (it never runs a "
        "pickle's code); in PyTorch, save the weights with "
        "torch.save(model.state_dict(), path) and load that file")
  return UnsafePickleError(
      f"refused to load global {qualified!r}: a checkpoint may hold only "
      "tensors, storages, OrderedDict and plain containers, and unpickling "
      "this global could run code")


class _Unpickler(pickle.Unpickler):
  """Resolves only ``_ALLOWED`` globals; storages through ``storages``."""

  def __init__(self, file, storages: dict[str, _Storage] | None = None):
    super().__init__(file)
    self._storages = storages

  def find_class(self, module: str, name: str) -> Any:
    try:
      return _ALLOWED[(module, name)]
    except KeyError:
      raise _refusal(module, name) from None

  def persistent_load(self, pid: Any) -> Any:
    if self._storages is None:
      raise UnsafePickleError("unexpected persistent id outside a torch file")
    if not isinstance(pid, tuple) or not pid:
      raise UnsafePickleError(f"malformed persistent id {pid!r}")
    if pid[0] == "module":
      raise UnsafePickleError(
          "the checkpoint holds a whole pickled model (with its source), not "
          "a state dict: save model.state_dict() instead")
    if pid[0] != "storage" or len(pid) < 5:
      raise UnsafePickleError(f"unknown persistent id {pid[0]!r}")
    storage_type, key, _, numel = pid[1:5]
    view = pid[5] if len(pid) > 5 else None
    if not isinstance(storage_type, _StorageType):
      raise UnsafePickleError("a storage record without a storage type")
    if view is not None:
      raise UnsafePickleError("storage views of the pre-1.0 legacy format "
                              "are not supported; re-save the checkpoint")
    key = str(key)
    if key not in self._storages:
      self._storages[key] = _Storage(key, storage_type.dtype, int(numel))
    return self._storages[key]


def _materialise(obj: Any) -> Any:
  """Replaces every ``_LazyTensor`` in ``obj`` by a NumPy array (a copy)."""
  if isinstance(obj, _LazyTensor):
    return _tensor_to_numpy(obj)
  if isinstance(obj, dict):
    out = type(obj)() if isinstance(obj, collections.OrderedDict) else {}
    for k, v in obj.items():
      out[k] = _materialise(v)
    return out
  if isinstance(obj, (list, tuple)):
    return type(obj)(_materialise(v) for v in obj)
  if isinstance(obj, _Storage):
    raise UnsafePickleError("bare storages outside tensors are not supported")
  return obj


def _tensor_to_numpy(t: _LazyTensor) -> np.ndarray:
  data = t.storage.data
  if data is None:
    raise UnsafePickleError(f"storage {t.storage.key!r} has no data")
  flat = data.view(np.uint8).view(t.dtype) if data.dtype != t.dtype else data
  if any(s < 0 for s in t.stride) or t.offset < 0 or len(t.size) != len(
      t.stride) or any(d < 0 for d in t.size):
    raise UnsafePickleError(f"bad tensor geometry size={t.size} "
                            f"stride={t.stride} offset={t.offset}")
  if 0 in t.size:
    return np.zeros(t.size, t.dtype)
  last = t.offset + sum((d - 1) * s for d, s in zip(t.size, t.stride))
  if last >= flat.size:
    raise UnsafePickleError(
        f"tensor of size {t.size} (stride {t.stride}, offset {t.offset}) "
        f"reads past its storage of {flat.size} elements")
  item = flat.dtype.itemsize
  view = np.lib.stride_tricks.as_strided(
      flat[t.offset:], shape=t.size, strides=[s * item for s in t.stride],
      writeable=False)
  return np.array(view, copy=True)


def _read_storage(raw: bytes, storage: _Storage, big_endian: bool
                  ) -> np.ndarray:
  dtype = np.dtype(storage.dtype)
  if len(raw) < storage.numel * dtype.itemsize:
    raise UnsafePickleError(
        f"storage {storage.key!r} holds {len(raw)} bytes, fewer than its "
        f"{storage.numel} elements of {dtype}")
  raw = raw[:storage.numel * dtype.itemsize]
  if big_endian and dtype.itemsize > 1:
    return np.frombuffer(raw, dtype.newbyteorder(">")).astype(dtype)
  return np.frombuffer(raw, dtype)


def _load_zip(path: str | os.PathLike) -> Any:
  with zipfile.ZipFile(path) as archive:
    names = archive.namelist()
    pickles = sorted((n for n in names if n.endswith("data.pkl")
                      and n.count("/") == 1), key=len)
    if not pickles:
      raise ValueError(f"{path}: a zip file without data.pkl is not a "
                       "PyTorch checkpoint")
    prefix = pickles[0][:-len("data.pkl")]
    big_endian = False
    if f"{prefix}byteorder" in names:
      big_endian = archive.read(f"{prefix}byteorder").strip() == b"big"
    storages: dict[str, _Storage] = {}
    obj = _Unpickler(io.BytesIO(archive.read(pickles[0])), storages).load()
    for key, storage in storages.items():
      name = f"{prefix}data/{key}"
      if name not in names:
        raise ValueError(f"{path}: storage {key!r} is missing ({name})")
      storage.data = _read_storage(archive.read(name), storage, big_endian)
  return _materialise(obj)


def _load_legacy(path: str | os.PathLike) -> Any:
  with open(path, "rb") as f:
    magic = _Unpickler(f).load()
    if magic != _LEGACY_MAGIC:
      raise ValueError(f"{path}: not a PyTorch checkpoint (neither a zip "
                       "archive nor torch's legacy pickle format)")
    _Unpickler(f).load()                          # protocol version
    sys_info = _Unpickler(f).load()
    big_endian = isinstance(sys_info, dict) and not sys_info.get(
        "little_endian", True)
    storages: dict[str, _Storage] = {}
    obj = _Unpickler(f, storages).load()
    keys = _Unpickler(f).load()
    for key in keys:
      storage = storages.get(str(key))
      if storage is None:
        raise ValueError(f"{path}: storage {key!r} is not used by the pickle")
      (count,) = struct.unpack("<q", f.read(8))
      itemsize = np.dtype(storage.dtype).itemsize
      storage.numel = count
      storage.data = _read_storage(f.read(count * itemsize), storage,
                                   big_endian)
  return _materialise(obj)


def load_torch_pickle(path: str | os.PathLike) -> Any:
  """Reads a ``torch.save`` file as NumPy arrays, running none of its code.

  Args:
    path: a ``.pth`` / ``.pt`` / ``.bin`` file in torch's zip or legacy
      format.

  Returns:
    The pickled object with every tensor a NumPy array (a state dict is an
    ``OrderedDict`` of them; nested dicts and lists are kept).

  Raises:
    UnsafePickleError: the file names a global other than tensors,
      storages, dtypes and ``OrderedDict`` (the message names it; for a
      whole pickled model it says to save ``state_dict()`` instead), or its
      tensors do not fit their storages.
    ValueError: the file is not a PyTorch checkpoint.
  """
  if zipfile.is_zipfile(path):
    return _load_zip(path)
  return _load_legacy(path)
