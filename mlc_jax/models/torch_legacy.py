"""PyTorch's legacy (pre-1.6, non-zip) `torch.save` format read without torch and without running
any code a file names.

The format is five things one after another: a pickled magic number, a pickled protocol version
(1001), a pickled sys_info dict (byte order, type sizes), the pickled object itself, a pickled
list of storage keys, then each storage's raw bytes, in that key order, each preceded by its
element count (8 bytes, little-endian). Inside the object a tensor is the call
`torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])`
and each storage a persistent id ('storage', torch.XStorage, key, location, numel[, view]).

`read(data, origin)` unpickles with an allow-list: collections.OrderedDict, _rebuild_tensor_v2
and the numeric torch.XStorage types, each mapped to a harmless stand-in here; any other global
(os.system, builtins.eval, ...) is refused with one UserError naming `origin` before anything
runs. Tensors become numpy arrays cut out of their storage by offset, size and stride (so
strided, transposed and shared-storage views come out right), copied, never aliasing the file.
"""
import collections
import io
import pickle
import struct

import numpy as np

from mlc_jax.errors import UserError

MAGIC_NUMBER = 0x1950a86a20f9469cfc6c
PROTOCOL_VERSION = 1001
STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class _StorageType:
  """Stands in for torch.XStorage: only its numpy dtype is kept."""

  def __init__(self, name):
    self.name, self.dtype = name, np.dtype(STORAGE_DTYPES[name])


class _Storage:
  """A storage the pickle refers to: its key, dtype and element count (bytes come later)."""

  def __init__(self, key, dtype, numel, view=None):
    self.key, self.dtype, self.numel, self.view = key, dtype, numel, view


class _Tensor:
  """What _rebuild_tensor_v2 returns here: a view's description, made an array once bytes are read."""

  def __init__(self, storage, offset, size, stride):
    self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
  del requires_grad, backward_hooks, metadata  # training state, not values
  return _Tensor(storage, storage_offset, size, stride)


def _refuse(origin, detail):
  return UserError(f"weights file {origin} is not a PyTorch legacy state dict ({detail}); it was "
                   "refused unread: delete it and let mlc_jax fetch it again")


class _AllowListUnpickler(pickle.Unpickler):
  """Builds containers, numbers, strings and the stand-ins above; refuses every other global."""

  def __init__(self, stream, origin, tensors):
    super().__init__(stream)
    self.origin, self.tensors = origin, tensors

  def find_class(self, module, name):
    if self.tensors and (module, name) == ("collections", "OrderedDict"):
      return collections.OrderedDict
    if self.tensors and (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
      return _rebuild_tensor_v2
    if self.tensors and module == "torch" and name in STORAGE_DTYPES:
      return _StorageType(name)
    raise _refuse(self.origin, f"it names {module}.{name}, which is not allowed")

  def persistent_load(self, pid):
    if not self.tensors:
      raise _refuse(self.origin, "a persistent id outside the tensors' pickle")
    if (not isinstance(pid, tuple) or len(pid) not in (5, 6) or pid[0] != "storage"
        or not isinstance(pid[1], _StorageType) or not isinstance(pid[2], str)
        or not isinstance(pid[4], int) or pid[4] < 0):
      raise _refuse(self.origin, f"unexpected storage id {str(pid)[:80]}")
    view = pid[5] if len(pid) == 6 else None
    if view is not None and not (isinstance(view, tuple) and len(view) == 3
                                 and all(isinstance(v, (int, str)) for v in view)):
      raise _refuse(self.origin, f"unexpected storage view {str(view)[:80]}")
    return _Storage(pid[2], pid[1].dtype, pid[4], view)


def _load(stream, origin, tensors=False):
  try:
    return _AllowListUnpickler(stream, origin, tensors).load()
  except UserError:
    raise
  except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
          KeyError, struct.error, RecursionError) as e:
    raise _refuse(origin, f"{type(e).__name__}: {e}") from None


def _storages(data, start, keys, storages, origin):
  """{key: 1-D numpy array} of the storages laid out from byte `start` in `keys` order."""
  arrays, position = {}, start
  wanted = {s.key: s for s in storages}
  for key in keys:
    if len(data) < position + 8:
      raise _refuse(origin, f"truncated before storage {key}")
    (count,) = struct.unpack_from("<q", data, position)
    position += 8
    storage = wanted.get(key)
    if storage is None:
      raise _refuse(origin, f"storage {key} is listed but no tensor uses it")
    nbytes = count * storage.dtype.itemsize
    if count != storage.numel or count < 0 or len(data) < position + nbytes:
      raise _refuse(origin, f"storage {key} holds {count} elements where {storage.numel} "
                    "were announced, or is cut short")
    arrays[key] = np.frombuffer(data, storage.dtype, count, position)
    position += nbytes
  missing = sorted(set(wanted) - set(arrays))
  if missing:
    raise _refuse(origin, f"storages {missing[:3]} are used but not stored")
  return arrays


def _array(tensor, arrays, origin, name):
  """A _Tensor -> its values (a copy), bounds checked against its storage."""
  storage = tensor.storage
  base, offset = arrays[storage.key], tensor.offset
  if storage.view is not None:  # pre-1.0 files: a storage may itself be a slice of another
    _, view_offset, view_size = storage.view
    base = base[int(view_offset):int(view_offset) + int(view_size)]
  size, stride = tuple(tensor.size), tuple(tensor.stride)
  if (not isinstance(offset, int) or len(size) != len(stride)
      or any(not isinstance(v, int) or v < 0 for v in size + stride + (offset,))):
    raise _refuse(origin, f"tensor {name}: bad offset/size/stride {offset}/{size}/{stride}")
  last = offset + sum((n - 1) * s for n, s in zip(size, stride)) if all(size) else offset - 1
  if last >= len(base):
    raise _refuse(origin, f"tensor {name} reaches element {last} of a storage of {len(base)}")
  if not all(size):
    return np.zeros(size, base.dtype)
  itemsize = base.dtype.itemsize
  view = np.lib.stride_tricks.as_strided(base[offset:], size, [s * itemsize for s in stride],
                                         writeable=False)
  return np.array(view, copy=True)


def _convert(value, arrays, origin, name="object"):
  if isinstance(value, _Tensor):
    return _array(value, arrays, origin, name)
  if isinstance(value, dict):
    return type(value)((k, _convert(v, arrays, origin, f"{k}")) for k, v in value.items())
  if isinstance(value, (list, tuple)):
    return type(value)(_convert(v, arrays, origin, name) for v in value)
  return value


def _collect(value, found):
  if isinstance(value, _Tensor):
    found.append(value.storage)
  elif isinstance(value, dict):
    for v in value.values():
      _collect(v, found)
  elif isinstance(value, (list, tuple)):
    for v in value:
      _collect(v, found)
  return found


def read(data, origin):
  """Bytes of a legacy torch.save file -> the saved object with numpy arrays for tensors.

  `origin` names the file in errors. Raises one UserError (naming it) for anything else: a zip
  (torch >= 1.6) file, a big-endian one, a pickle naming a global outside the allow-list (refused
  before it runs), storages cut short, or a view reaching outside its storage.
  """
  if data[:4] == b"PK\x03\x04":
    raise _refuse(origin, "it is the zip format of torch >= 1.6, not the legacy one")
  stream = io.BytesIO(data)
  magic = _load(stream, origin)
  if magic != MAGIC_NUMBER:
    raise _refuse(origin, "no torch magic number")
  version = _load(stream, origin)
  if version != PROTOCOL_VERSION:
    raise _refuse(origin, f"protocol version {version}, expected {PROTOCOL_VERSION}")
  sys_info = _load(stream, origin)
  if not isinstance(sys_info, dict) or not sys_info.get("little_endian", False):
    raise _refuse(origin, "written on a big-endian machine")
  obj = _load(stream, origin, tensors=True)
  keys = _load(stream, origin)
  if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
    raise _refuse(origin, "no list of storage keys")
  arrays = _storages(data, stream.tell(), keys, _collect(obj, []), origin)
  return _convert(obj, arrays, origin)


def read_file(path):
  """read() of a file on disk."""
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    raise UserError(f"weights file {path} cannot be read ({e})") from None
  return read(data, str(path))
