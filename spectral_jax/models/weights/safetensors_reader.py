"""Reading ``.safetensors`` files with the ``safetensors`` library, after checking the header.

The header is validated here first so that a hostile or broken file is refused with
the file and tensor named, before anything is allocated: every tensor's byte count
(shape product x item size, in exact integers, so [2**32, 2**32] cannot wrap around)
must equal its data span, and the span must lie inside the file.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open

from spectral_jax.models.weights.errors import CheckpointError

__all__ = ['read_safetensors', 'checked_header']

MAX_HEADER_BYTES = 100 << 20  # the library's own limit
_DTYPES = {
  'F64': 'f8',
  'F32': 'f4',
  'F16': 'f2',
  'BF16': 'u2',  # numpy has no bfloat16: read the bits, widen to float32
  'I64': 'i8',
  'I32': 'i4',
  'I16': 'i2',
  'I8': 'i1',
  'U8': 'u1',
  'BOOL': '?',
}


def checked_header(path: Path) -> tuple[dict[str, dict[str, Any]], int]:
  """(tensor entries of the header, file offset of the data section); raises CheckpointError."""
  size = path.stat().st_size
  with open(path, 'rb') as f:
    head = f.read(8)
    if len(head) < 8:
      raise CheckpointError(f'{path}: truncated safetensors file')
    (header_len,) = struct.unpack('<Q', head)
    if header_len > min(MAX_HEADER_BYTES, size - 8):
      raise CheckpointError(
        f'{path}: safetensors header of {header_len} bytes does not fit the file '
        f'({size} bytes; truncated?)'
      )
    text = f.read(header_len)
  try:
    header = json.loads(text)
  except ValueError as e:
    raise CheckpointError(f'{path}: bad safetensors header ({e})') from e
  if type(header) is not dict:
    raise CheckpointError(f'{path}: bad safetensors header (not a JSON object)')
  data_len = size - 8 - header_len
  tensors = {}
  for name, info in header.items():
    if name == '__metadata__':
      continue
    where = f'{path}: tensor {name!r}'
    if type(info) is not dict:
      raise CheckpointError(f'{where}: malformed header entry')
    code = _DTYPES.get(info.get('dtype'))
    if code is None:
      raise CheckpointError(f'{where}: unsupported dtype {info.get("dtype")!r}')
    shape, offsets = info.get('shape'), info.get('data_offsets')
    if type(shape) is not list or not all(type(d) is int and d >= 0 for d in shape):
      raise CheckpointError(f'{where}: malformed shape {shape!r}'[:300])
    if type(offsets) is not list or len(offsets) != 2 or not all(type(o) is int for o in offsets):
      raise CheckpointError(f'{where}: malformed data offsets {offsets!r}'[:300])
    nbytes = math.prod(shape) * np.dtype(code).itemsize  # exact: Python ints do not overflow
    if nbytes >= 1 << 63:
      raise CheckpointError(f'{where}: shape {shape} overflows ({nbytes} bytes)')
    begin, end = offsets
    if not 0 <= begin <= end <= data_len or end - begin != nbytes:
      raise CheckpointError(
        f'{where}: shape {shape} of {info["dtype"]} needs {nbytes} bytes, but its data '
        f'offsets {begin}..{end} (file has {data_len} data bytes) disagree'
      )
    tensors[name] = info
  return tensors, 8 + header_len


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
  """``{name: array}``; floating tensors become float32 (BF16/F16 widened), integers keep
  their dtype. Raises CheckpointError naming ``path``."""
  tensors, data_start = checked_header(path)
  out: dict[str, np.ndarray] = {}
  try:
    with safe_open(str(path), framework='numpy') as f:
      for name, info in tensors.items():
        if info['dtype'] == 'BF16':  # the library's numpy side cannot express bfloat16
          bits = np.fromfile(
            path,
            dtype='<u2',
            count=math.prod(info['shape']),
            offset=data_start + info['data_offsets'][0],
          )
          arr = (bits.astype(np.uint32) << 16).view(np.float32).reshape(info['shape'])
        else:
          arr = f.get_tensor(name)
        if arr.dtype.byteorder == '>':
          arr = arr.astype(arr.dtype.newbyteorder('='))
        if np.issubdtype(arr.dtype, np.floating):
          arr = arr.astype(np.float32, copy=False)
        out[name] = arr
  except CheckpointError:
    raise
  except Exception as e:  # the library's own validation, I/O errors
    raise CheckpointError(f'{path}: cannot read safetensors file ({type(e).__name__}: {e})') from e
  return out
