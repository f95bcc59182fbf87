"""Hostile and broken ``.pth`` files (spectral_jax.models.weights.torch_pickle): each is refused (or
read cheaply) in seconds and well under 1 GB, with an error naming the file.

The hostile files are written here with pickle/zipfile/struct (torch is not needed). Each
load runs in a subprocess limited to 2 GB of address space, which reports the outcome,
the time taken and its peak RSS growth, so a reader that allocates what a file declares
fails with MemoryError instead of taking this machine down.
"""

from __future__ import annotations

import collections
import json
import pickle
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from spectral_jax.models.weights import checkpoints as ckpt
from spectral_jax.models.weights import torch_pickle
from spectral_jax.models.weights.checkpoints import CheckpointError
from tests.test_checkpoints import LEGACY_PTH, ZIP_PTH, Storage, Tensor, write_torch_zip

ROOT = Path(__file__).resolve().parents[1]
MAX_SECONDS = 5.0
MAX_RSS_GROWTH_KB = 1 << 20  # 1 GiB

_ISOLATED = """
import json, resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
from spectral_jax.models.weights import checkpoints
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
try:
  sd = checkpoints.read_state_dict(sys.argv[1])
  outcome, message = "ok", json.dumps({k: [list(v.shape), float(v.sum())] for k, v in sd.items()})
except Exception as e:
  outcome, message = type(e).__name__, str(e)
print(json.dumps({
    "outcome": outcome,
    "message": message[:4000],
    "seconds": time.perf_counter() - start,
    "rss_growth_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before,
}))
"""


def isolated_read(path: Path) -> dict:
  """``read_state_dict(path)`` in a 2 GB-limited subprocess: outcome, message, seconds, RSS."""
  proc = subprocess.run(
    [sys.executable, '-c', _ISOLATED, str(path)],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=60,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  print(path.name, {k: v for k, v in result.items() if k != 'message'})  # the measurements
  return result


def assert_refused_cheaply(path: Path, *fragments: str) -> str:
  result = isolated_read(path)
  assert result['outcome'] == 'CheckpointError', result
  assert str(path) in result['message']
  for fragment in fragments:
    assert fragment in result['message'], result['message']
  assert result['seconds'] < MAX_SECONDS and result['rss_growth_kb'] < MAX_RSS_GROWTH_KB, result
  return result['message']


# --------------------------------------------------------------------------
# Hand-written pickles
# --------------------------------------------------------------------------


def _unicode(text: str) -> bytes:
  data = text.encode()
  return pickle.BINUNICODE + struct.pack('<I', len(data)) + data


def _global(module: str, name: str) -> bytes:
  return pickle.GLOBAL + f'{module}\n{name}\n'.encode()


def _put(i: int) -> bytes:
  return pickle.BINPUT + bytes([i])


def _get(i: int) -> bytes:
  return pickle.BINGET + bytes([i])


def billion_laughs(depth: int = 20, width: int = 10) -> bytes:
  """{'w': l_depth} with l_0 = [] and l_i = [l_{i-1}] * width: width**depth leaves."""
  ops = pickle.PROTO + b'\x02' + pickle.EMPTY_LIST + _put(0) + pickle.POP
  for i in range(1, depth + 1):
    ops += pickle.EMPTY_LIST + _put(i) + pickle.MARK + _get(i - 1) * width + pickle.APPENDS
    ops += pickle.POP
  ops += pickle.EMPTY_DICT + _unicode('w') + _get(depth) + pickle.SETITEM
  return ops + pickle.STOP


def deeply_nested(depth: int) -> bytes:
  """[[[...]]] ``depth`` lists deep, built on the unpickler's stack (no recursion)."""
  ops = pickle.PROTO + b'\x02' + pickle.EMPTY_DICT + _unicode('w')
  ops += pickle.EMPTY_LIST * depth + pickle.APPEND * (depth - 1) + pickle.SETITEM
  return ops + pickle.STOP


def write_zip_raw(path: Path, members: list[tuple[str, int, int, bytes, int]]) -> Path:
  """A zip built by hand: (name, method, crc, stored bytes, inflated size) per member, so a
  member may claim and inflate to sizes that zipfile would take minutes to produce."""
  out, central = bytearray(), bytearray()
  for name, method, crc, data, size in members:
    fields = struct.pack('<HHHHHIII', 20, 0, method, 0, 0, crc, len(data), size)
    encoded = name.encode()
    central += (
      b'PK\x01\x02'
      + struct.pack('<H', 20)
      + fields
      + struct.pack('<HHHHHII', len(encoded), 0, 0, 0, 0, 0, len(out))
      + encoded
    )
    out += b'PK\x03\x04' + fields + struct.pack('<HH', len(encoded), 0) + encoded + data
  end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, len(members), len(members),
                    len(central), len(out), 0)  # fmt: skip
  path.write_bytes(bytes(out + central + end))
  return path


def deflated_zeros(gib: int) -> bytes:
  """A raw deflate stream of ``gib`` GiB of zeros, made by repeating one flushed block."""
  comp = zlib.compressobj(9, zlib.DEFLATED, -15)
  block = comp.compress(bytes(1 << 24)) + comp.flush(zlib.Z_FULL_FLUSH)  # 16 MiB, no history
  return block * (gib * 64) + zlib.compressobj(9, zlib.DEFLATED, -15).flush()


def tensor_pickle(numel: int, size: tuple, stride: tuple, name: str = 'blocks.0.norm1.bias'):
  """(storage, writer of a .pth holding {name: tensor(size, stride)} over FloatStorage '0'
  declared with ``numel`` elements, whose data member holds min(numel, 16) elements)."""
  storage = Storage('0', np.zeros(min(numel, 16), np.float32), 'FloatStorage')
  storage.data = np.lib.stride_tricks.as_strided(storage.data, (numel,), (0,))  # only .size used

  def dump(path: Path) -> Path:
    write_torch_zip(path, {name: Tensor(storage, 0, size, stride)}, [])
    with zipfile.ZipFile(path, 'a') as zf:
      zf.writestr('archive/data/0', np.zeros(min(numel, 16), '<f4').tobytes())
    return path

  return storage, dump


# --------------------------------------------------------------------------
# 1. broadcast views
# --------------------------------------------------------------------------


def test_stride_zero_broadcast_is_refused(tmp_path):
  """1.5 kB declaring a 50000x50000 stride-0 view of one float: the old reader made 9.3 GiB."""
  _, dump = tensor_pickle(1, (50000, 50000), (0, 0))
  path = dump(tmp_path / 'broadcast.pth')
  assert path.stat().st_size < 2000
  assert_refused_cheaply(path, 'blocks.0.norm1.bias', 'broadcast')


def test_small_broadcast_and_transposed_views_still_load(tmp_path):
  s = Storage('0', np.arange(6, dtype=np.float32), 'FloatStorage')
  obj = {'a': Tensor(s, 2, (4,), (0,)), 'b': Tensor(s, 0, (3, 2), (1, 3))}
  sd = ckpt.read_state_dict(write_torch_zip(tmp_path / 'ok.pth', obj, [s]))
  np.testing.assert_array_equal(sd['a'], [2, 2, 2, 2])
  np.testing.assert_array_equal(sd['b'], np.arange(6).reshape(2, 3).T)


def test_many_views_of_one_storage_are_bounded(tmp_path):
  """Each view fits its storage, but together they would expand it 1000-fold."""
  s = Storage('0', np.zeros(100_000, np.float32), 'FloatStorage')
  obj = {f't{i}': Tensor(s, 0, (100_000,), (1,)) for i in range(1000)}
  path = write_torch_zip(tmp_path / 'views.pth', obj, [s])
  with pytest.raises(CheckpointError, match='4x the elements') as e:
    ckpt.read_state_dict(path)
  assert str(path) in str(e.value)


# --------------------------------------------------------------------------
# 2. zip members: only what the pickle declares is read
# --------------------------------------------------------------------------


def _bomb_zip(path: Path, member: bytes, member_size: int, numel: int, method: int = 8) -> Path:
  _, dump = tensor_pickle(numel, (numel,), (1,))
  with zipfile.ZipFile(dump(path.with_suffix('.staged'))) as zf:
    data_pkl = zf.read('archive/data.pkl')
  return write_zip_raw(
    path,
    [
      ('archive/data.pkl', 0, zlib.crc32(data_pkl), data_pkl, len(data_pkl)),
      ('archive/byteorder', 0, zlib.crc32(b'little'), b'little', 6),
      # CRC of the stored bytes; 0 for the bomb (computing it would take seconds)
      ('archive/data/0', method, zlib.crc32(member) if method == 0 else 0, member, member_size),
    ],
  )


def test_inflating_storage_member_reads_only_what_is_declared(tmp_path):
  """A 3 GiB-inflating member behind a one-element storage: 4 bytes are read."""
  path = _bomb_zip(tmp_path / 'bomb.pth', deflated_zeros(3), 3 << 30, numel=1)
  assert path.stat().st_size < 8 << 20
  result = isolated_read(path)
  assert result['outcome'] == 'ok', result
  assert json.loads(result['message']) == {'blocks.0.norm1.bias': [[1], 0.0]}
  assert result['seconds'] < MAX_SECONDS and result['rss_growth_kb'] < MAX_RSS_GROWTH_KB


def test_short_storage_member_is_refused(tmp_path):
  data = np.ones(3, '<f4').tobytes()
  # Honest header (3 elements) and a lying one (claims 4 GB, holds 12 bytes).
  for size in (len(data), (1 << 32) - 1):
    path = _bomb_zip(tmp_path / f'short{size}.pth', data, size, numel=1000, method=0)
    with pytest.raises(CheckpointError, match='storage 0 has') as e:
      ckpt.read_state_dict(path)
    assert str(path) in str(e.value)


def test_huge_declared_storage_is_refused_before_reading(tmp_path):
  path = _bomb_zip(tmp_path / 'huge.pth', bytes(4), 4, numel=1 << 40, method=0)
  assert_refused_cheaply(path, 'storage 0 has 4 bytes, needs')


# --------------------------------------------------------------------------
# 3. shared and deep containers
# --------------------------------------------------------------------------


def test_billion_laughs_pickle_is_cheap(tmp_path):
  raw = billion_laughs()
  assert len(raw) < 600
  path = write_torch_zip(tmp_path / 'laughs.pth', None, raw_pickle=raw)
  result = isolated_read(path)
  assert result['outcome'] == 'ok' and json.loads(result['message']) == {}, result
  assert result['seconds'] < MAX_SECONDS and result['rss_growth_kb'] < MAX_RSS_GROWTH_KB
  # Shared containers stay shared: one object per pickled list.
  tree = torch_pickle.read_pth(path, legacy=False)
  assert tree['w'][0] is tree['w'][9] and len(tree['w'][0][0]) == 10


def test_cyclic_list_is_fine(tmp_path):
  ops = pickle.PROTO + b'\x02' + pickle.EMPTY_DICT + _unicode('w') + pickle.EMPTY_LIST + _put(0)
  ops += _get(0) + pickle.APPEND + pickle.SETITEM + pickle.STOP
  tree = torch_pickle.read_pth(write_torch_zip(tmp_path / 'cycle.pth', None, raw_pickle=ops), False)
  assert tree['w'][0] is tree['w']


def test_deep_nesting_is_refused(tmp_path):
  path = write_torch_zip(tmp_path / 'deep.pth', None, raw_pickle=deeply_nested(100_000))
  assert_refused_cheaply(path, 'nested deeper than')


# --------------------------------------------------------------------------
# 4. sizes whose product overflows
# --------------------------------------------------------------------------


@pytest.mark.parametrize('stride', [(0, 0), (1 << 32, 1)])
def test_overflowing_tensor_size_is_refused(tmp_path, stride):
  _, dump = tensor_pickle(4, (1 << 32, 1 << 32), stride, name='pos_embed')
  path = dump(tmp_path / 'overflow.pth')
  assert_refused_cheaply(path, 'pos_embed', str(1 << 32))


def test_overflowing_size_in_a_legacy_file_is_refused(tmp_path):
  from tests.test_checkpoints import write_torch_legacy  # pylint: disable=import-outside-toplevel

  s = Storage('7', np.zeros(4, np.float32), 'FloatStorage')
  obj = {'cls_token': Tensor(s, 0, (1 << 32, 1 << 32), (0, 0))}
  path = write_torch_legacy(tmp_path / 'overflow_legacy.pth', obj, [s])
  assert_refused_cheaply(path, 'cls_token')


# --------------------------------------------------------------------------
# 5. a file cannot change the unpickler
# --------------------------------------------------------------------------


def _build_on(module: str, name: str, state: bytes) -> bytes:
  """Pickle: GLOBAL module.name, BUILD(state), then a dict holding it."""
  ops = pickle.PROTO + b'\x02' + pickle.EMPTY_DICT + _unicode('w')
  ops += _global(module, name) + state + pickle.BUILD + pickle.SETITEM
  return ops + pickle.STOP


_TRUE_STATE = pickle.EMPTY_DICT + _unicode('bfloat16') + pickle.NEWTRUE + pickle.SETITEM
_SLOT_STATE = pickle.NONE + _TRUE_STATE + pickle.TUPLE2  # (None, {...}): setattr path
_INIT_STATE = (
  pickle.NONE
  + pickle.EMPTY_DICT
  + _unicode('__init__')
  + _global('collections', 'OrderedDict')
  + pickle.SETITEM
  + pickle.TUPLE2
)


@pytest.mark.parametrize(
  'module,name,state',
  [
    ('torch', 'FloatStorage', _TRUE_STATE),
    ('torch', 'FloatStorage', _SLOT_STATE),
    ('torch._utils', '_rebuild_tensor_v2', _TRUE_STATE),
    ('torch._utils', '_rebuild_tensor_v2', _SLOT_STATE),
    ('argparse', 'Namespace', _INIT_STATE),
    ('collections', 'OrderedDict', _SLOT_STATE),
  ],
)
def test_build_cannot_mutate_allowed_globals(tmp_path, module, name, state):
  before = ckpt.read_state_dict(ZIP_PTH)
  path = write_torch_zip(tmp_path / 'mutate.pth', None, raw_pickle=_build_on(module, name, state))
  with pytest.raises(CheckpointError) as e:
    ckpt.read_state_dict(path)
  assert str(path) in str(e.value)
  for parity in (ZIP_PTH, LEGACY_PTH):  # later loads in this process are unaffected
    after = ckpt.read_state_dict(parity)
    assert sorted(after) == sorted(before)
    for key, value in before.items():
      assert after[key].dtype == value.dtype and after[key].tobytes() == value.tobytes(), key


def test_namespace_args_still_load(tmp_path):
  """DINO full checkpoints hold argparse args (NEWOBJ + BUILD on an instance)."""
  import argparse  # pylint: disable=import-outside-toplevel

  s = Storage('0', np.arange(3, dtype=np.float32), 'FloatStorage')
  obj = collections.OrderedDict(
    teacher={'norm.bias': Tensor(s, 0, (3,), (1,))}, args=argparse.Namespace(lr=0.1)
  )
  sd = ckpt.read_state_dict(write_torch_zip(tmp_path / 'full.pth', obj, [s]))
  np.testing.assert_array_equal(sd['norm.bias'], [0, 1, 2])


def test_hostile_storage_key_and_record_are_refused(tmp_path):
  # A storage key that is a (huge, shared) list instead of a string.
  ops = pickle.PROTO + b'\x02' + pickle.EMPTY_DICT + _unicode('w')
  ops += _global('torch._utils', '_rebuild_tensor_v2') + pickle.MARK
  ops += pickle.MARK + _unicode('storage') + _global('torch', 'FloatStorage')
  ops += pickle.EMPTY_LIST + _unicode('cpu') + pickle.BININT1 + b'\x01' + pickle.TUPLE
  ops += pickle.BINPERSID + pickle.BININT1 + b'\x00' + pickle.EMPTY_TUPLE + pickle.EMPTY_TUPLE
  ops += pickle.TUPLE + pickle.REDUCE + pickle.SETITEM + pickle.STOP
  path = write_torch_zip(tmp_path / 'key.pth', None, raw_pickle=ops)
  with pytest.raises(CheckpointError, match='malformed storage record') as e:
    ckpt.read_state_dict(path)
  assert str(path) in str(e.value)
