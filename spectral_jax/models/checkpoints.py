"""Loading DINO ViT checkpoints into Flax parameter trees, without torch.

The pipeline is ``resolve_checkpoint`` (local path, URL or registry name ->
local file) -> ``read_state_dict`` (PyTorch zip / legacy / safetensors file ->
``{name: np.ndarray}``) -> ``state_dict_to_params`` (torch names and layouts ->
the nested dict used by ``spectral_jax.models.vit``). ``load_params`` runs the
whole pipeline once and caches the converted tree (an ``.npz``), so later runs
need neither the ``.pth`` file nor the conversion.

PyTorch files are pickles, and unpickling untrusted data can run arbitrary
code. The reader therefore uses a restricted unpickler that resolves only the
handful of globals a tensor record needs, mapped to local stand-ins; torch
itself is never imported.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import http.client
import io
import json
import os
import pickle
import re
import shutil
import struct
import uuid
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, Mapping

import numpy as np

from spectral_jax import io as spectral_io

__all__ = [
    "CheckpointError",
    "WEIGHTS",
    "default_cache_dir",
    "download",
    "resolve_checkpoint",
    "read_state_dict",
    "unwrap_state_dict",
    "infer_arch",
    "state_dict_to_params",
    "save_params",
    "restore_params",
    "load_params",
]

_DINO_URL = "https://dl.fbaipublicfiles.com/dino/"
WEIGHTS: dict[str, str] = {
    "dino_vits16": _DINO_URL + "dino_deitsmall16_pretrain/dino_deitsmall16_pretrain.pth",
    "dino_vits8": _DINO_URL + "dino_deitsmall8_pretrain/dino_deitsmall8_pretrain.pth",
    "dino_vitb16": _DINO_URL + "dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth",
    "dino_vitb8": _DINO_URL + "dino_vitbase8_pretrain/dino_vitbase8_pretrain.pth",
}

_HINT = "--config.model.checkpoint=/path/to/file.pth"
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER
_LEGACY_PROTOCOL = 1001


class CheckpointError(RuntimeError):
  """A checkpoint could not be obtained, parsed or matched to the model."""


def _missing_file(path: Path) -> FileNotFoundError:
  return FileNotFoundError(
      f"Checkpoint file not found: {path}. Pass an existing checkpoint with {_HINT}"
  )


# --------------------------------------------------------------------------
# Restricted unpickling of torch tensor records
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _StorageType:
  """Stand-in for a ``torch.*Storage`` class: only carries the element dtype."""

  name: str
  dtype: np.dtype
  bfloat16: bool = False  # numpy has no bfloat16: read as uint16, widen later


def _storage_types() -> dict[str, _StorageType]:
  table = {
      "FloatStorage": "f4",
      "DoubleStorage": "f8",
      "HalfStorage": "f2",
      "BFloat16Storage": "u2",
      "LongStorage": "i8",
      "IntStorage": "i4",
      "ShortStorage": "i2",
      "CharStorage": "i1",
      "ByteStorage": "u1",
      "BoolStorage": "?",
      "UntypedStorage": "u1",  # raw bytes
  }
  return {
      name: _StorageType(name, np.dtype(code), bfloat16=name == "BFloat16Storage")
      for name, code in table.items()
  }


_STORAGE_TYPES = _storage_types()


@dataclasses.dataclass
class _Storage:
  """A storage referenced by the pickle; ``data`` is filled in afterwards."""

  key: str
  stype: _StorageType
  numel: int
  view_offset: int = 0  # legacy format: storage views into a root storage
  data: np.ndarray | None = None


@dataclasses.dataclass
class _TensorRef:
  """What ``_rebuild_tensor_v2`` returns; materialised once storages are read."""

  storage: _Storage
  offset: int
  size: tuple[int, ...]
  stride: tuple[int, ...]


class _Opaque:
  """Inert stand-in for harmless non-tensor objects (e.g. DINO's argparse args)."""

  def __init__(self, *args: Any, **kwargs: Any) -> None:
    pass

  def __setstate__(self, state: Any) -> None:
    pass


def _int_tuple(value: Any, what: str) -> tuple[int, ...]:
  if not isinstance(value, (tuple, list)) or not all(
      isinstance(v, int) and not isinstance(v, bool) for v in value
  ):
    raise ValueError(f"malformed tensor record: {what}={value!r}")
  return tuple(value)


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *_: Any) -> _TensorRef:
  # Signature of torch._utils._rebuild_tensor_v2(storage, storage_offset, size,
  # stride, requires_grad, backward_hooks, metadata=None); extras are ignored.
  # Errors raised here are turned into CheckpointError (naming the file) by _unpickle.
  if not isinstance(storage, _Storage) or not isinstance(offset, int):
    raise ValueError(f"malformed tensor record: storage={storage!r}, offset={offset!r}")
  return _TensorRef(storage, offset, _int_tuple(size, "size"), _int_tuple(stride, "stride"))


def _rebuild_parameter(data: Any, *_: Any) -> Any:
  # nn.Parameter(data, requires_grad, hooks[, state]) -> just the data.
  return data


_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "UntypedStorage"): _STORAGE_TYPES["UntypedStorage"],
    ("argparse", "Namespace"): _Opaque,  # "args" entry of DINO full checkpoints
    **{("torch", name): stype for name, stype in _STORAGE_TYPES.items()},
}


class _RestrictedUnpickler(pickle.Unpickler):
  """Unpickler that resolves only tensor-record globals and tracks storages.

  ``legacy`` selects the persistent-id layout: the zip format uses
  ``('storage', type, key, location, numel)``, the legacy format appends
  ``view_metadata``.
  """

  def __init__(self, file: BinaryIO, source: Path, legacy: bool) -> None:
    super().__init__(file)
    self.source = source
    self.legacy = legacy
    self.storages: dict[str, _Storage] = {}

  def find_class(self, module: str, name: str) -> Any:
    try:
      return _SAFE_GLOBALS[(module, name)]
    except KeyError:
      raise CheckpointError(
          f"{self.source}: refusing to unpickle global '{module}.{name}' "
          "(only tensor records are allowed; the file may be malicious or not a "
          "plain state dict)"
      ) from None

  def persistent_load(self, pid: Any) -> _Storage:
    expected_len = 6 if self.legacy else 5
    if not (isinstance(pid, tuple) and len(pid) == expected_len and pid[0] == "storage"):
      raise CheckpointError(f"{self.source}: unsupported persistent id {pid!r}")
    _, stype, key, _location, numel = pid[:5]
    if not isinstance(stype, _StorageType) or not isinstance(numel, int) or numel < 0:
      raise CheckpointError(f"{self.source}: malformed storage record {pid!r}")
    key = str(key)
    root = self.storages.setdefault(key, _Storage(key, stype, numel))
    view = pid[5] if self.legacy else None
    if view is None:
      return root
    # Legacy storage view: (view_key, offset, view_size), offset in elements.
    _view_key, view_offset, view_numel = view
    return _Storage(key, stype, int(view_numel), view_offset=int(view_offset))


def _unpickle(data: BinaryIO, source: Path, legacy: bool) -> tuple[Any, dict[str, _Storage]]:
  unpickler = _RestrictedUnpickler(data, source, legacy)
  try:
    obj = unpickler.load()
  except CheckpointError:
    raise
  except Exception as e:  # truncated / corrupt pickles raise all sorts of things
    raise CheckpointError(f"{source}: cannot unpickle checkpoint ({type(e).__name__}: {e})") from e
  return obj, unpickler.storages


def _decode_storage(
    raw: bytes, stype: _StorageType, numel: int, little_endian: bool, source: Path, key: str
) -> np.ndarray:
  nbytes = numel * stype.dtype.itemsize
  if len(raw) < nbytes:
    raise CheckpointError(
        f"{source}: storage {key} has {len(raw)} bytes, expected {nbytes} (truncated file?)"
    )
  dtype = stype.dtype.newbyteorder("<" if little_endian else ">")
  return np.frombuffer(raw, dtype=dtype, count=numel).astype(stype.dtype.newbyteorder("="))


def _bfloat16_to_float32(bits: np.ndarray) -> np.ndarray:
  # bfloat16 is the upper half of a float32.
  return (bits.astype(np.uint32) << 16).view(np.float32)


def _materialize(ref: _TensorRef, source: Path) -> np.ndarray:
  storage = ref.storage
  if storage.data is None:
    raise CheckpointError(f"{source}: storage {storage.key} has no data")
  flat = storage.data
  base = storage.view_offset + ref.offset
  if len(ref.size) != len(ref.stride) or any(s < 0 for s in ref.size + ref.stride):
    raise CheckpointError(f"{source}: bad tensor geometry size={ref.size} stride={ref.stride}")
  if 0 in ref.size:
    out = np.zeros(ref.size, flat.dtype)
  else:
    # Bounds check before as_strided, which would otherwise read arbitrary memory.
    last = base + sum((n - 1) * s for n, s in zip(ref.size, ref.stride))
    if base < 0 or last >= flat.size:
      raise CheckpointError(
          f"{source}: tensor of size {ref.size} at offset {base} exceeds its storage "
          f"({flat.size} elements)"
      )
    view = np.lib.stride_tricks.as_strided(
        flat[base:],
        shape=ref.size,
        strides=tuple(s * flat.itemsize for s in ref.stride),
        writeable=False,
    )
    out = np.array(view, order="C")  # C-contiguous copy, also of non-contiguous views
  if storage.stype.bfloat16:
    return _bfloat16_to_float32(out)
  if np.issubdtype(out.dtype, np.floating):
    return out.astype(np.float32, copy=False)
  return out


def _materialize_tree(obj: Any, source: Path) -> Any:
  if isinstance(obj, _TensorRef):
    return _materialize(obj, source)
  if isinstance(obj, Mapping):
    return {k: _materialize_tree(v, source) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return type(obj)(_materialize_tree(v, source) for v in obj)
  return obj


def _read_torch_zip(path: Path) -> Any:
  try:
    with zipfile.ZipFile(path) as zf:
      names = zf.namelist()
      pkls = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
      if len(pkls) != 1:
        raise CheckpointError(f"{path}: zip file is not a PyTorch checkpoint (no data.pkl)")
      prefix = pkls[0][: -len("data.pkl")]  # archive name varies ("archive/", ...)
      obj, storages = _unpickle(io.BytesIO(zf.read(pkls[0])), path, legacy=False)
      little = True
      if prefix + "byteorder" in names:
        little = zf.read(prefix + "byteorder").decode().strip() != "big"
      for key, storage in storages.items():
        member = f"{prefix}data/{key}"
        if member not in names:
          raise CheckpointError(f"{path}: missing storage record {member}")
        storage.data = _decode_storage(
            zf.read(member), storage.stype, storage.numel, little, path, key
        )
  except (zipfile.BadZipFile, EOFError, OSError) as e:
    raise CheckpointError(f"{path}: corrupt PyTorch zip checkpoint ({e})") from e
  return obj


def _read_torch_legacy(path: Path) -> Any:
  with open(path, "rb") as f:
    header = [_unpickle(f, path, legacy=True)[0] for _ in range(3)]
    magic, protocol, sys_info = header
    if magic != _LEGACY_MAGIC or protocol != _LEGACY_PROTOCOL or not isinstance(sys_info, dict):
      raise CheckpointError(f"{path}: not a PyTorch checkpoint (bad legacy header)")
    obj, storages = _unpickle(f, path, legacy=True)
    keys, _ = _unpickle(f, path, legacy=True)
    little = bool(sys_info.get("little_endian", True))
    # Storage records follow in the order of `keys`: int64 element count + raw bytes.
    for key in keys:
      storage = storages.get(str(key))
      if storage is None:
        raise CheckpointError(f"{path}: storage {key} listed but never referenced")
      count_bytes = f.read(8)
      if len(count_bytes) != 8:
        raise CheckpointError(f"{path}: truncated before storage {key}")
      (count,) = struct.unpack("<q" if little else ">q", count_bytes)
      if count != storage.numel:
        raise CheckpointError(
            f"{path}: storage {key} has {count} elements, pickle says {storage.numel}"
        )
      raw = f.read(count * storage.stype.dtype.itemsize)
      storage.data = _decode_storage(raw, storage.stype, count, little, path, str(key))
    if any(s.data is None for s in storages.values()):
      raise CheckpointError(f"{path}: some storages have no data records")
  # Views share their root's data.
  return _attach_views(obj, storages)


def _attach_views(obj: Any, roots: dict[str, _Storage]) -> Any:
  if isinstance(obj, _TensorRef) and obj.storage.data is None:
    obj.storage.data = roots[obj.storage.key].data
  elif isinstance(obj, Mapping):
    for v in obj.values():
      _attach_views(v, roots)
  elif isinstance(obj, (list, tuple)):
    for v in obj:
      _attach_views(v, roots)
  return obj


_SAFETENSORS_DTYPES = {
    "F64": "f8",
    "F32": "f4",
    "F16": "f2",
    "BF16": "u2",
    "I64": "i8",
    "I32": "i4",
    "I16": "i2",
    "I8": "i1",
    "U8": "u1",
    "BOOL": "?",
}


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
  data = path.read_bytes()
  if len(data) < 8:
    raise CheckpointError(f"{path}: truncated safetensors file")
  (header_len,) = struct.unpack("<Q", data[:8])
  if 8 + header_len > len(data):
    raise CheckpointError(f"{path}: truncated safetensors header")
  try:
    header = json.loads(data[8 : 8 + header_len])
  except ValueError as e:
    raise CheckpointError(f"{path}: bad safetensors header ({e})") from e
  body = memoryview(data)[8 + header_len :]
  out: dict[str, np.ndarray] = {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    code = _SAFETENSORS_DTYPES.get(info.get("dtype"))
    if code is None:
      raise CheckpointError(f"{path}: {name}: unsupported dtype {info.get('dtype')!r}")
    dtype = np.dtype(code).newbyteorder("<")
    shape = tuple(info["shape"])
    begin, end = info["data_offsets"]
    if not 0 <= begin <= end <= len(body) or end - begin != dtype.itemsize * int(np.prod(shape)):
      raise CheckpointError(f"{path}: {name}: data offsets {begin}..{end} invalid")
    arr = np.frombuffer(body[begin:end], dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))
    if info["dtype"] == "BF16":
      arr = _bfloat16_to_float32(arr)
    elif np.issubdtype(arr.dtype, np.floating):
      arr = arr.astype(np.float32)
    out[name] = arr
  return out


def _sniff_format(path: Path) -> str:
  if zipfile.is_zipfile(path):
    return "zip"
  with open(path, "rb") as f:
    head = f.read(9)
  if (
      len(head) == 9
      and head[8:9] == b"{"
      and struct.unpack("<Q", head[:8])[0] < path.stat().st_size
  ):
    return "safetensors"
  if head[:1] == b"\x80":  # pickle PROTO opcode starting the legacy magic number
    return "legacy"
  raise CheckpointError(
      f"{path}: not a PyTorch (.pth) or safetensors checkpoint (unknown format or truncated file)"
  )


_WRAPPER_KEYS = ("teacher", "student", "state_dict", "model")
_PREFIXES = ("module.", "backbone.")


def unwrap_state_dict(obj: Any, source: str | os.PathLike = "checkpoint") -> dict[str, np.ndarray]:
  """Reduce a loaded checkpoint object to a flat ViT backbone state dict.

  Takes ``teacher`` (preferred, as DINO evaluates the teacher), ``student``,
  ``state_dict`` or ``model`` from full training checkpoints, strips the
  ``module.`` (DDP) and ``backbone.`` (MultiCropWrapper) prefixes and drops
  the DINO projection head and any non-tensor entries.
  """
  if not isinstance(obj, Mapping):
    raise CheckpointError(f"{source}: holds a {type(obj).__name__}, not a state dict")
  for key in _WRAPPER_KEYS:
    if isinstance(obj.get(key), Mapping):
      obj = obj[key]
      break
  out: dict[str, np.ndarray] = {}
  for name, value in obj.items():
    if not isinstance(value, np.ndarray):
      continue
    name = str(name)
    while name.startswith(_PREFIXES):
      name = name.split(".", 1)[1]
    if name.startswith("head."):
      continue
    out[name] = value
  return out


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Read a torch ``.pth`` (zip or legacy) or safetensors file into numpy arrays.

  Floating tensors become float32 (bfloat16/float16 are widened); integer
  tensors keep their dtype. Full DINO checkpoints are unwrapped, see
  ``unwrap_state_dict``. Nothing in the file is ever executed.
  """
  path = Path(path).expanduser()
  if not path.is_file():
    raise _missing_file(path)
  fmt = _sniff_format(path)
  if fmt == "safetensors":
    return unwrap_state_dict(_read_safetensors(path), path)
  obj = _read_torch_zip(path) if fmt == "zip" else _read_torch_legacy(path)
  return unwrap_state_dict(_materialize_tree(obj, path), path)


# --------------------------------------------------------------------------
# Download and resolution
# --------------------------------------------------------------------------


def default_cache_dir() -> Path:
  """``$SPECTRAL_JAX_CACHE`` or ``~/.cache/spectral_jax``."""
  env = os.environ.get("SPECTRAL_JAX_CACHE")
  return Path(env).expanduser() if env else Path.home() / ".cache" / "spectral_jax"


def _sha256_file(path: Path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def _verify(path: Path, sha256: str | None, size: int | None) -> str | None:
  """Return a description of the mismatch, or None if the file is as expected."""
  actual_size = path.stat().st_size
  if size is not None and actual_size != size:
    return f"size {actual_size} != expected {size}"
  if sha256 is not None:
    actual = _sha256_file(path)
    if actual.lower() != sha256.lower():
      return f"sha256 {actual} != expected {sha256}"
  return None


def _url_filename(url: str) -> str:
  name = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name
  if not name:
    raise CheckpointError(f"cannot derive a file name from URL {url!r}")
  return name


def _unreachable(url: str, reason: object) -> CheckpointError:
  name = _url_filename(url)
  return CheckpointError(
      f"Could not download {url}: the URL is unreachable ({reason}). If this machine has "
      f"no internet access, download {name} on another machine, copy it here and pass it "
      f"with --config.model.checkpoint=/path/to/{name}"
  )


def download(
    url: str,
    cache_dir: str | os.PathLike | None = None,
    sha256: str | None = None,
    size: int | None = None,
    timeout: float = 30.0,
) -> Path:
  """Download ``url`` into ``cache_dir`` (reusing a cached copy) and return its path.

  Streams into ``<name>.part`` and renames atomically only after the size and
  sha256 (when given) check out, so the cache never holds a partial file.
  """
  from tqdm import tqdm  # only needed when actually downloading

  cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
  dest = cache_dir.absolute() / _url_filename(url)
  if dest.is_file():
    if _verify(dest, sha256, size) is None:
      return dest
    dest.unlink()  # stale or corrupt cached copy: fetch again
  dest.parent.mkdir(parents=True, exist_ok=True)
  part = dest.with_name(dest.name + ".part")
  try:
    with urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as out:
      total = response.headers.get("Content-Length")
      with tqdm(
          total=int(total) if total else None,
          unit="B",
          unit_scale=True,
          unit_divisor=1024,
          desc=dest.name,
      ) as bar:
        for chunk in iter(lambda: response.read(1 << 20), b""):
          out.write(chunk)
          bar.update(len(chunk))
  except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError) as e:
    part.unlink(missing_ok=True)
    raise _unreachable(url, getattr(e, "reason", e)) from e
  except BaseException:
    part.unlink(missing_ok=True)
    raise
  problem = _verify(part, sha256, size)
  if problem is not None:
    part.unlink()
    raise CheckpointError(f"Downloaded {url} is corrupt: {problem}")
  os.replace(part, dest)
  return dest


def _is_url(value: str) -> bool:
  return re.match(r"^(https?|file)://", value) is not None


def resolve_checkpoint(
    model_name: str,
    checkpoint: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
  """Local file for a model: explicit path > explicit URL > registry URL."""
  if checkpoint is not None and str(checkpoint):
    if _is_url(str(checkpoint)):
      return download(str(checkpoint), cache_dir)
    path = Path(checkpoint).expanduser()
    if not path.is_file():
      raise _missing_file(path)
    return path.absolute()
  if model_name not in WEIGHTS:
    raise CheckpointError(
        f"Unknown model {model_name!r}; known models: {', '.join(sorted(WEIGHTS))}. "
        f"Or pass a checkpoint with {_HINT}"
    )
  return download(WEIGHTS[model_name], cache_dir)


# --------------------------------------------------------------------------
# torch state dict -> Flax parameter tree
# --------------------------------------------------------------------------

_LINEARS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
_NORMS = ("norm1", "norm2")
_CONV_PERM = (2, 3, 1, 0)  # torch (D, 3, P, P) -> flax (P, P, 3, D)


def _torch_to_flax(
    name: str, shape: tuple[int, ...]
) -> tuple[tuple[str, ...], tuple[int, ...]] | None:
  """Map a torch parameter name to (flax path, axis permutation), or None if unknown."""
  ident = tuple(range(len(shape)))
  if name in ("cls_token", "pos_embed"):
    return (name,), ident
  if name == "patch_embed.proj.weight":
    return ("patch_embed", "kernel"), _CONV_PERM
  if name == "patch_embed.proj.bias":
    return ("patch_embed", "bias"), ident
  if name in ("norm.weight", "norm.bias"):
    return ("norm", "scale" if name.endswith("weight") else "bias"), ident
  m = re.fullmatch(r"blocks\.(\d+)\.(.+)\.(weight|bias)", name)
  if m is None:
    return None
  block, module, kind = f"blocks_{m.group(1)}", m.group(2), m.group(3)
  if module in _NORMS:
    return (block, module, "scale" if kind == "weight" else "bias"), ident
  if module in _LINEARS:
    path = (block, *module.split("."), "kernel" if kind == "weight" else "bias")
    return path, (1, 0) if kind == "weight" else ident
  return None


def _flax_to_torch_name(path: tuple[str, ...]) -> str:
  """Inverse of ``_torch_to_flax`` for error messages."""
  name = ".".join(path)
  name = re.sub(r"^blocks_(\d+)", r"blocks.\1", name)
  name = re.sub(r"^patch_embed\.", "patch_embed.proj.", name)
  return re.sub(r"\.(kernel|scale)$", ".weight", name)


def _torch_shape(flax_shape: tuple[int, ...], perm: tuple[int, ...]) -> tuple[int, ...]:
  # flax_shape[i] == torch_shape[perm[i]]
  out = [0] * len(perm)
  for i, p in enumerate(perm):
    out[p] = flax_shape[i]
  return tuple(out)


def _flatten(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
  flat: dict[tuple[str, ...], Any] = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      flat.update(_flatten(value, prefix + (key,)))
    else:
      flat[prefix + (key,)] = value
  return flat


def _unflatten(flat: Mapping[tuple[str, ...], Any]) -> dict[str, Any]:
  tree: dict[str, Any] = {}
  for path, value in flat.items():
    node = tree
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = value
  return tree


def state_dict_to_params(
    state_dict: Mapping[str, np.ndarray], expected_shapes: Mapping[str, Any] | None = None
) -> dict[str, Any]:
  """Convert a DINO ViT torch state dict to the nested Flax parameter dict.

  With ``expected_shapes`` (same nesting as the params, leaves = shape tuples
  or anything with a ``.shape``, e.g. the output of ``jax.eval_shape``)
  every expected leaf must be present with that shape and nothing else may be
  left over; errors name the torch tensor and both shapes in torch layout.
  """
  flat: dict[tuple[str, ...], np.ndarray] = {}
  perms: dict[tuple[str, ...], tuple[int, ...]] = {}
  unknown = []
  for name, value in state_dict.items():
    if name.startswith("head."):
      continue
    value = np.asarray(value)
    mapped = _torch_to_flax(name, value.shape)
    if mapped is None or len(mapped[1]) != value.ndim:
      unknown.append(f"{name} {tuple(value.shape)}")
      continue
    path, perm = mapped
    flat[path] = np.ascontiguousarray(np.transpose(value, perm).astype(np.float32))
    perms[path] = perm
  if unknown:
    raise CheckpointError(
        f"checkpoint has tensors that do not belong to a DINO ViT: {', '.join(unknown)}"
    )
  if expected_shapes is not None:
    _check_shapes(flat, perms, _flatten(expected_shapes))
  return _unflatten(flat)


def _check_shapes(
    flat: Mapping[tuple[str, ...], np.ndarray],
    perms: Mapping[tuple[str, ...], tuple[int, ...]],
    expected: Mapping[tuple[str, ...], Any],
) -> None:
  problems = []
  for path, shape in expected.items():
    shape = tuple(getattr(shape, "shape", shape))  # also accept jax.ShapeDtypeStruct leaves
    name = _flax_to_torch_name(path)
    if path not in flat:
      problems.append(f"{name}: missing from checkpoint, model expects {shape}")
    elif flat[path].shape != shape:
      perm = perms[path]
      problems.append(
          f"{name}: checkpoint has {_torch_shape(flat[path].shape, perm)}, "
          f"model expects {_torch_shape(shape, perm)}"
      )
  for path in flat.keys() - expected.keys():
    problems.append(
        f"{_flax_to_torch_name(path)}: unexpected in checkpoint (model has no such parameter)"
    )
  if problems:
    raise CheckpointError("checkpoint does not match the model:\n  " + "\n  ".join(problems))


def check_params(params: Mapping[str, Any], expected_shapes: Mapping[str, Any]) -> None:
  """Checks converted (or cached) params against a model; errors use torch names and layout."""
  flat = _flatten(params)
  perms = {}
  for path, value in flat.items():
    mapped = _torch_to_flax(_flax_to_torch_name(path), np.shape(value))
    perms[path] = mapped[1] if mapped else tuple(range(np.ndim(value)))
  _check_shapes(flat, perms, _flatten(expected_shapes))


def infer_arch(state_dict: Mapping[str, np.ndarray]) -> dict[str, int]:
  """ViT hyper-parameters implied by a DINO state dict (head dim is always 64 in DINO).

  The keys match ``spectral_jax.models.vit.ViTArch``; ``num_pos`` counts the
  pretrained patch positions, excluding the CLS position.
  """
  try:
    patch_weight = state_dict["patch_embed.proj.weight"]
    embed_dim = int(state_dict["cls_token"].shape[-1])
    num_pos = int(state_dict["pos_embed"].shape[1]) - 1
  except (KeyError, IndexError) as e:
    raise CheckpointError(f"not a DINO ViT state dict: missing or malformed {e}") from e
  blocks = {int(m.group(1)) for k in state_dict if (m := re.match(r"blocks\.(\d+)\.", k))}
  return {
      "patch_size": int(patch_weight.shape[-1]),
      "embed_dim": embed_dim,
      "num_heads": embed_dim // 64,
      "depth": len(blocks),
      "num_pos": num_pos,
  }


# --------------------------------------------------------------------------
# cache of converted parameters
# --------------------------------------------------------------------------


def save_params(params: Mapping[str, Any], path: str | os.PathLike) -> Path:
  """Saves a parameter tree as one ``.npz`` (keys ``'blocks_0/attn/qkv/kernel'``), atomically.

  A plain file rather than an orbax checkpoint: every process of a multi-host run reads
  it on its own, with no cross-process coordination to deadlock on.
  """
  flat = {"/".join(key): np.asarray(value) for key, value in _flatten(params).items()}
  return spectral_io.save_npz(Path(path).expanduser().absolute(), **flat)


def restore_params(path: str | os.PathLike) -> dict[str, Any]:
  """The tree saved by ``save_params``, as nested dicts of numpy arrays."""
  path = Path(path).expanduser().absolute()
  if not path.is_file():
    raise _missing_file(path)
  with np.load(path) as data:
    return _unflatten({tuple(key.split("/")): data[key] for key in data.files})


def _cache_entry(source: str, label: str, cache_root: Path) -> Path:
  digest = hashlib.sha256(source.encode()).hexdigest()[:16]
  return cache_root / f"{Path(label).stem}-{digest}"


def _local_source(path: Path) -> str:
  st = path.stat()
  return f"file:{path.absolute()}:{st.st_size}:{st.st_mtime_ns}"


def _find_cached_local(path: Path, cache_root: Path) -> Path | None:
  """Newest cache entry converted from ``path`` (used when the file is gone)."""
  hits = []
  for meta in cache_root.glob(f"{path.stem}-*/arch.json"):
    try:
      if json.loads(meta.read_text()).get("path") == str(path.absolute()):
        hits.append(meta.parent)
    except (OSError, ValueError):
      continue
  return max(hits, key=lambda p: (p / "arch.json").stat().st_mtime, default=None)


def _cache_lookup(
    model_name: str, checkpoint: str | os.PathLike | None, cache_root: Path
) -> tuple[Path | None, str | None]:
  """Cache entry directory for a request (None if unknowable) and its source id."""
  if checkpoint is None or not str(checkpoint):
    if model_name not in WEIGHTS:
      return None, None
    checkpoint = WEIGHTS[model_name]
  text = str(checkpoint)
  if _is_url(text):
    # A URL names immutable release weights: key on the URL alone, so a
    # later run needs no network and no downloaded file.
    return _cache_entry(f"url:{text}", _url_filename(text), cache_root), f"url:{text}"
  path = Path(text).expanduser()
  if path.is_file():
    source = _local_source(path)
    return _cache_entry(source, path.name, cache_root), source
  return _find_cached_local(path, cache_root), None


def load_params(
    model_name: str,
    checkpoint: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> tuple[dict[str, Any], dict[str, int]]:
  """Flax params and arch for a DINO ViT, converting once and caching the result.

  The cache lives in ``<cache_dir>/params/<name>-<hash>/`` (``params.npz`` +
  ``arch.json``; an entry with both is complete). It is keyed on the URL for
  downloads and on path, size and mtime for local files.
  """
  cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
  cache_root = cache_dir.absolute() / "params"
  entry, source = _cache_lookup(model_name, checkpoint, cache_root)
  if entry is not None and _complete(entry):
    meta = json.loads((entry / "arch.json").read_text())
    return restore_params(entry / "params.npz"), meta["arch"]

  path = resolve_checkpoint(model_name, checkpoint, cache_dir)
  state_dict = read_state_dict(path)
  arch = infer_arch(state_dict)
  params = state_dict_to_params(state_dict)
  if source is None:
    source = _local_source(path)
    entry = _cache_entry(source, path.name, cache_root)
  assert entry is not None
  _write_cache(entry, params, arch, source, path)
  return params, arch


def _complete(entry: Path) -> bool:
  return (entry / "arch.json").is_file() and (entry / "params.npz").is_file()


def _write_cache(
    entry: Path, params: Mapping[str, Any], arch: Mapping[str, int], source: str, path: Path
) -> None:
  """Writes the entry under a private name and renames it into place, so processes that
  share a cache directory never see (or clobber) each other's half-written entries."""
  staging = entry.with_name(f"{entry.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
  save_params(params, staging / "params.npz")
  meta = {
      "arch": dict(arch),
      "source": source,
      "path": str(path.absolute()),
      "created": time.time(),
  }
  (staging / "arch.json").write_text(json.dumps(meta, indent=1))
  if not _complete(entry):  # absent, half-written, or from an older version
    shutil.rmtree(entry, ignore_errors=True)
  try:
    os.rename(staging, entry)
  except OSError:  # another process finished the same entry first
    shutil.rmtree(staging, ignore_errors=True)
