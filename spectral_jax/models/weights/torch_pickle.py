"""A torch-free reader of PyTorch ``.pth`` files (zip and legacy formats) that assumes hostility.

PyTorch files are pickles, and unpickling untrusted data can run arbitrary code. The
reader uses a restricted unpickler that resolves only the handful of globals a tensor
record needs, mapped to local stand-ins that a pickle cannot modify (its BUILD opcode
would otherwise let one file change what ``torch.FloatStorage`` means for every later
load). torch itself is never imported.

Every size a file declares is checked before anything is allocated: storages must be
backed by enough bytes (and only that many are read, so a zip member that inflates to
gigabytes costs nothing), a tensor must lie inside its storage and may not expand it
(stride-0 broadcasts), and the pickled object is walked once per distinct container, so
shared nested lists ("billion laughs") cost what their pickle costs.
"""

from __future__ import annotations

import collections
import io
import math
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Mapping, NamedTuple

import numpy as np

from spectral_jax.models.weights.errors import CheckpointError

__all__ = ['read_pth', 'LEGACY_MAGIC', 'LEGACY_PROTOCOL']

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER
LEGACY_PROTOCOL = 1001

# Far above any real checkpoint, far below what hurts a machine.
MAX_PICKLE_BYTES = 64 << 20  # DINO's data.pkl is ~100 kB
MAX_NESTING = 64  # containers inside containers
MAX_ITEMS = 10_000_000  # container items visited, each distinct container once
MAX_NDIM = 32
SMALL_BROADCAST = 1 << 16  # elements a tensor may hold beyond its storage (tiny expand()s)
SHARING_FACTOR = 4  # all tensors together: at most this many times their storages' elements
_MAX_DIM = 1 << 62  # any size or stride beyond this is garbage


# --------------------------------------------------------------------------
# Stand-ins for the allow-listed globals. All are immutable: tuples without a
# __dict__, a callable wrapper refusing setattr, a class whose metaclass refuses it.
# --------------------------------------------------------------------------


class _StorageType(NamedTuple):
  """Stand-in for a ``torch.*Storage`` class: only carries the element dtype."""

  name: str
  dtype: np.dtype
  bfloat16: bool  # numpy has no bfloat16: read as uint16, widen later


_STORAGE_TYPES: Mapping[str, _StorageType] = {
  name: _StorageType(name, np.dtype(code), name == 'BFloat16Storage')
  for name, code in {
    'FloatStorage': 'f4',
    'DoubleStorage': 'f8',
    'HalfStorage': 'f2',
    'BFloat16Storage': 'u2',
    'LongStorage': 'i8',
    'IntStorage': 'i4',
    'ShortStorage': 'i2',
    'CharStorage': 'i1',
    'ByteStorage': 'u1',
    'BoolStorage': '?',
    'UntypedStorage': 'u1',  # raw bytes
  }.items()
}


class _Storage(NamedTuple):
  """A storage (or, in the legacy format, a view of one) referenced by the pickle."""

  key: str
  stype: _StorageType
  numel: int  # elements visible through this record
  offset: int = 0  # legacy storage views: element offset into the root storage


class _TensorRef(NamedTuple):
  """What ``_rebuild_tensor_v2`` returns; materialised once storages are read."""

  storage: _Storage
  offset: int
  size: tuple[int, ...]
  stride: tuple[int, ...]


class _ReadOnly:
  """An allow-listed function as the pickle sees it: no ``__dict__``, nothing settable."""

  __slots__ = ('_fn',)

  def __init__(self, fn: Callable[..., Any]) -> None:
    object.__setattr__(self, '_fn', fn)

  def __setattr__(self, name: str, value: Any) -> None:
    raise AttributeError(f'pickle globals are read-only (tried to set {name!r})')

  def __call__(self, *args: Any) -> Any:
    return self._fn(*args)


class _ReadOnlyType(type):
  def __setattr__(cls, name: str, value: Any) -> None:
    raise AttributeError(f'pickle globals are read-only (tried to set {name!r})')


class _Opaque(metaclass=_ReadOnlyType):
  """Inert stand-in for harmless non-tensor objects (e.g. DINO's argparse args)."""

  def __init__(self, *args: Any, **kwargs: Any) -> None:
    pass

  def __setstate__(self, state: Any) -> None:
    pass


def _int_tuple(value: Any, what: str) -> tuple[int, ...]:
  if type(value) not in (tuple, list) or not all(type(v) is int for v in value):
    raise ValueError(f'malformed tensor record: {what}={value!r}'[:200])
  return tuple(value)


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *_: Any) -> _TensorRef:
  # Signature of torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride,
  # requires_grad, backward_hooks, metadata=None); extras are ignored. Errors raised
  # here become CheckpointErrors naming the file in _unpickle.
  if type(storage) is not _Storage or type(offset) is not int:
    raise ValueError(f'malformed tensor record: storage={storage!r}, offset={offset!r}'[:200])
  return _TensorRef(storage, offset, _int_tuple(size, 'size'), _int_tuple(stride, 'stride'))


def _rebuild_parameter(data: Any, *_: Any) -> Any:
  # nn.Parameter(data, requires_grad, hooks[, state]) -> just the data.
  return data


_SAFE_GLOBALS: Mapping[tuple[str, str], Any] = {
  ('collections', 'OrderedDict'): collections.OrderedDict,  # a C type: immutable
  ('torch._utils', '_rebuild_tensor'): _ReadOnly(_rebuild_tensor),
  ('torch._utils', '_rebuild_tensor_v2'): _ReadOnly(_rebuild_tensor),
  ('torch._utils', '_rebuild_parameter'): _ReadOnly(_rebuild_parameter),
  ('torch._utils', '_rebuild_parameter_with_state'): _ReadOnly(_rebuild_parameter),
  ('torch.storage', 'UntypedStorage'): _STORAGE_TYPES['UntypedStorage'],
  ('argparse', 'Namespace'): _Opaque,  # "args" entry of DINO full checkpoints
  **{('torch', name): stype for name, stype in _STORAGE_TYPES.items()},
}


# --------------------------------------------------------------------------
# Unpickling
# --------------------------------------------------------------------------


class _RestrictedUnpickler(pickle.Unpickler):
  """Unpickler that resolves only tensor-record globals and records storages.

  ``legacy`` selects the persistent-id layout: the zip format uses
  ``('storage', type, key, location, numel)``, the legacy format appends
  ``view_metadata`` = ``(view_key, offset, numel)`` or None.
  """

  def __init__(
    self, file: BinaryIO, source: Path, legacy: bool, storages: dict[str, _Storage]
  ) -> None:
    super().__init__(file)
    self.source = source
    self.legacy = legacy
    self.storages = storages

  def find_class(self, module: str, name: str) -> Any:
    try:
      return _SAFE_GLOBALS[(module, name)]
    except KeyError:
      raise CheckpointError(
        f"{self.source}: refusing to unpickle global '{module}.{name}' "
        '(only tensor records are allowed; the file may be malicious or not a '
        'plain state dict)'
      ) from None

  def _malformed(self, what: str, value: Any) -> CheckpointError:
    return CheckpointError(f'{self.source}: malformed {what} {value!r}'[:300])

  def persistent_load(self, pid: Any) -> _Storage:
    expected_len = 6 if self.legacy else 5
    if not (type(pid) is tuple and len(pid) == expected_len and pid[0] == 'storage'):
      raise self._malformed('persistent id', pid)
    _, stype, key, _location, numel = pid[:5]
    if (
      not any(stype is t for t in _STORAGE_TYPES.values())
      or type(key) not in (str, int)
      or type(numel) is not int
      or not 0 <= numel < _MAX_DIM
    ):
      raise self._malformed('storage record', pid)
    key = str(key)
    root = self.storages.setdefault(key, _Storage(key, stype, numel))
    if root.stype is not stype or root.numel != numel:
      raise CheckpointError(f'{self.source}: storage {key} is declared twice, differently')
    view = pid[5] if self.legacy else None
    if view is None:
      return root
    if not (type(view) is tuple and len(view) == 3 and all(type(v) is int for v in view[1:])):
      raise self._malformed('storage view', view)
    _, offset, view_numel = view
    if offset < 0 or view_numel < 0 or offset + view_numel > numel:
      raise CheckpointError(
        f'{self.source}: storage view {offset}..{offset + view_numel} lies outside '
        f'storage {key} ({numel} elements)'
      )
    return _Storage(key, stype, view_numel, offset)


def _unpickle(data: BinaryIO, source: Path, legacy: bool, storages: dict[str, _Storage]) -> Any:
  try:
    return _RestrictedUnpickler(data, source, legacy, storages).load()
  except CheckpointError:
    raise
  except Exception as e:  # truncated / corrupt / hostile pickles raise all sorts of things
    raise CheckpointError(
      f'{source}: cannot unpickle checkpoint ({type(e).__name__}: {e})'[:500]
    ) from e


def _decode(raw: bytes, storage: _Storage, little_endian: bool) -> np.ndarray:
  # Read-only view of `raw`, no copy: tensors are copied out of it when materialised.
  dtype = storage.stype.dtype.newbyteorder('<' if little_endian else '>')
  arr = np.frombuffer(raw, dtype=dtype, count=storage.numel)
  return arr if dtype.isnative else arr.astype(dtype.newbyteorder('='))


def _read_zip(path: Path) -> tuple[Any, dict[str, _Storage], dict[str, np.ndarray]]:
  try:
    with zipfile.ZipFile(path) as zf:
      infos = {info.filename: info for info in zf.infolist()}
      pkls = [n for n in infos if n.endswith('data.pkl') and n.count('/') == 1]
      if len(pkls) != 1:
        raise CheckpointError(f'{path}: zip file is not a PyTorch checkpoint (no data.pkl)')
      prefix = pkls[0][: -len('data.pkl')]  # archive name varies ("archive/", ...)
      with zf.open(infos[pkls[0]]) as f:
        raw = f.read(MAX_PICKLE_BYTES + 1)  # bounded even if the member inflates forever
      if len(raw) > MAX_PICKLE_BYTES:
        raise CheckpointError(f'{path}: data.pkl is larger than {MAX_PICKLE_BYTES} bytes')
      storages: dict[str, _Storage] = {}
      obj = _unpickle(io.BytesIO(raw), path, False, storages)
      little = True
      if prefix + 'byteorder' in infos:
        with zf.open(infos[prefix + 'byteorder']) as f:
          little = f.read(16).decode(errors='replace').strip() != 'big'
      data = {}
      for key, storage in storages.items():
        info = infos.get(f'{prefix}data/{key}')
        if info is None:
          raise CheckpointError(f'{path}: missing storage record {prefix}data/{key}')
        nbytes = storage.numel * storage.stype.dtype.itemsize
        if info.file_size < nbytes:
          raise CheckpointError(
            f'{path}: storage {key} has {info.file_size} bytes, needs {nbytes} (truncated file?)'
          )
        with zf.open(info) as f:
          raw = f.read(nbytes)  # only what the pickle declares, however large the member
        if len(raw) < nbytes:
          raise CheckpointError(
            f'{path}: storage {key} has {len(raw)} bytes, needs {nbytes} (truncated file?)'
          )
        data[key] = _decode(raw, storage, little)
  except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
    raise CheckpointError(f'{path}: corrupt PyTorch zip checkpoint ({e})') from e
  return obj, storages, data


def _read_legacy(path: Path) -> tuple[Any, dict[str, _Storage], dict[str, np.ndarray]]:
  file_size = path.stat().st_size
  with open(path, 'rb') as f:
    header = [_unpickle(f, path, True, {}) for _ in range(3)]
    magic, protocol, sys_info = header
    if magic != LEGACY_MAGIC or protocol != LEGACY_PROTOCOL or type(sys_info) is not dict:
      raise CheckpointError(f'{path}: not a PyTorch checkpoint (bad legacy header)')
    storages: dict[str, _Storage] = {}
    obj = _unpickle(f, path, True, storages)
    keys = _unpickle(f, path, True, {})
    if type(keys) is not list or not all(type(k) in (str, int) for k in keys):
      raise CheckpointError(f'{path}: malformed storage key list')
    little = bool(sys_info.get('little_endian', True))
    # Storage records follow in the order of `keys`: int64 element count + raw bytes.
    data = {}
    for key in map(str, keys):
      storage = storages.get(key)
      if storage is None:
        raise CheckpointError(f'{path}: storage {key} listed but never referenced')
      count_bytes = f.read(8)
      if len(count_bytes) != 8:
        raise CheckpointError(f'{path}: truncated before storage {key}')
      (count,) = struct.unpack('<q' if little else '>q', count_bytes)
      if count != storage.numel:
        raise CheckpointError(
          f'{path}: storage {key} has {count} elements, pickle says {storage.numel}'
        )
      nbytes = count * storage.stype.dtype.itemsize
      if nbytes > file_size - f.tell():  # checked before reading (allocating) anything
        raise CheckpointError(
          f'{path}: storage {key} needs {nbytes} bytes, the file has '
          f'{file_size - f.tell()} left (truncated file?)'
        )
      data[key] = _decode(f.read(nbytes), storage, little)
    if storages.keys() - data.keys():
      raise CheckpointError(f'{path}: some storages have no data records')
  return obj, storages, data


# --------------------------------------------------------------------------
# Materialisation
# --------------------------------------------------------------------------


def _bfloat16_to_float32(bits: np.ndarray) -> np.ndarray:
  # bfloat16 is the upper half of a float32.
  return (bits.astype(np.uint32) << 16).view(np.float32)


def _path_name(path: tuple[Any, ...]) -> str:
  parts = [k if type(k) in (str, int) else type(k).__name__ for k in path]
  return '/'.join(map(str, parts)) or '<top level>'


class _Materializer:
  """Turns the unpickled tree into numpy arrays, visiting each distinct object once."""

  def __init__(self, source: Path, data: Mapping[str, np.ndarray]) -> None:
    self.source = source
    self.data = data
    self.budget = SHARING_FACTOR * sum(a.size for a in data.values()) + SMALL_BROADCAST
    self.memo: dict[int, Any] = {}
    self.items = 0

  def tree(self, obj: Any, path: tuple[Any, ...] = ()) -> Any:
    kind = type(obj)
    is_mapping = kind is not _TensorRef and isinstance(obj, Mapping)
    if kind is not _TensorRef and kind not in (list, tuple) and not is_mapping:
      return obj
    if id(obj) in self.memo:  # shared (or cyclic) container: convert once
      return self.memo[id(obj)]
    if len(path) > MAX_NESTING:
      raise CheckpointError(
        f'{self.source}: objects nested deeper than {MAX_NESTING} levels at '
        f'{_path_name(path[:8])}/...'
      )
    if kind is _TensorRef:
      out = self.tensor(obj, path)
    elif is_mapping:
      out = self.memo[id(obj)] = {}
      for key, value in obj.items():
        self._count()
        out[key] = self.tree(value, path + (key,))
    elif kind is list:
      out = self.memo[id(obj)] = []
      for i, value in enumerate(obj):
        self._count()
        out.append(self.tree(value, path + (i,)))
    else:
      self._count(len(obj))
      out = tuple(self.tree(v, path + (i,)) for i, v in enumerate(obj))
    self.memo[id(obj)] = out
    return out

  def _count(self, n: int = 1) -> None:
    self.items += n
    if self.items > MAX_ITEMS:
      raise CheckpointError(f'{self.source}: the pickled object has over {MAX_ITEMS} items')

  def tensor(self, ref: _TensorRef, path: tuple[Any, ...]) -> np.ndarray:
    storage, size, stride = ref.storage, ref.size, ref.stride
    where = f'{self.source}: tensor {_path_name(path)}'
    if (
      len(size) != len(stride)
      or len(size) > MAX_NDIM
      or not 0 <= ref.offset < _MAX_DIM
      or any(not 0 <= v < _MAX_DIM for v in size + stride)
    ):
      raise CheckpointError(f'{where}: bad geometry size={size} stride={stride}'[:300])
    numel = math.prod(size)  # exact: Python ints do not overflow
    flat = self.data.get(storage.key)
    if flat is None:
      raise CheckpointError(f'{where}: storage {storage.key} has no data')
    if numel == 0:
      out = np.zeros(size, flat.dtype)
    else:
      # Bounds check before as_strided, which would otherwise read arbitrary memory.
      last = ref.offset + sum((n - 1) * s for n, s in zip(size, stride))
      if last >= storage.numel:
        raise CheckpointError(
          f'{where}: size {size} stride {stride} at offset {ref.offset} exceeds its '
          f'storage ({storage.numel} elements)'
        )
      if numel > storage.numel and numel > SMALL_BROADCAST:
        raise CheckpointError(
          f'{where}: size {size} stride {stride} holds {numel} elements, its storage '
          f'only {storage.numel} (a broadcast view); refusing to expand it'
        )
      self.budget -= numel
      if self.budget < 0:
        raise CheckpointError(
          f"{where}: the file's tensors hold over {SHARING_FACTOR}x the elements of "
          'its storages; refusing to expand them'
        )
      view = np.lib.stride_tricks.as_strided(
        flat[storage.offset + ref.offset :],
        shape=size,
        strides=tuple(s * flat.itemsize if n > 1 else 0 for n, s in zip(size, stride)),
        writeable=False,
      )
      out = np.array(view, order='C')  # C-contiguous copy, also of non-contiguous views
    if storage.stype.bfloat16:
      return _bfloat16_to_float32(out)
    if np.issubdtype(out.dtype, np.floating):
      return out.astype(np.float32, copy=False)
    return out


def read_pth(path: Path, legacy: bool) -> Any:
  """The object saved in a ``.pth`` file, with tensors as numpy arrays.

  ``legacy`` selects the pre-1.6 format (pickles + raw records) over the zip one.
  Floating tensors become float32 (bfloat16/float16 are widened); integer tensors keep
  their dtype. Mappings become plain dicts. Raises CheckpointError naming ``path``.
  """
  obj, _, data = _read_legacy(path) if legacy else _read_zip(path)
  try:
    return _Materializer(path, data).tree(obj)
  except RecursionError as e:
    raise CheckpointError(f'{path}: objects nested too deeply') from e
