"""Tests for spectral_jax.models.weights.checkpoints (torch-free checkpoint loading).

Everything is local: checkpoints come from tests/data/parity or are written
here by small independent writers, and downloads go to a 127.0.0.1 server.
"""

from __future__ import annotations

import collections
import functools
import io
import json
import os
import pickle
import shutil
import struct
import sys
import types
import zipfile
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

from spectral_jax.models.weights import checkpoints as ckpt
from spectral_jax.models.weights import cache
from spectral_jax.models.weights.checkpoints import CheckpointError

DATA = Path(__file__).parent / 'data' / 'parity'
ZIP_PTH = DATA / 'checkpoint.pth'
LEGACY_PTH = DATA / 'checkpoint_legacy.pth'

D, P, DEPTH, NPOS = 384, 16, 2, 196  # NPOS: patch positions, CLS excluded


def vit_shapes(dim: int, patch: int, depth: int, num_pos: int) -> dict:
  """Flax parameter shapes of our ViT (layout from spectral_jax/models/vit.py)."""
  ln = {'scale': (dim,), 'bias': (dim,)}
  dense = lambda i, o: {'kernel': (i, o), 'bias': (o,)}  # noqa: E731
  block = {
    'norm1': ln,
    'attn': {'qkv': dense(dim, 3 * dim), 'proj': dense(dim, dim)},
    'norm2': ln,
    'mlp': {'fc1': dense(dim, 4 * dim), 'fc2': dense(4 * dim, dim)},
  }
  return {
    'cls_token': (1, 1, dim),
    'pos_embed': (1, 1 + num_pos, dim),
    'patch_embed': {'kernel': (patch, patch, 3, dim), 'bias': (dim,)},
    **{f'blocks_{i}': block for i in range(depth)},
    'norm': ln,
  }


def leaves(tree: dict, prefix: str = '') -> dict:
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(leaves(v, f'{prefix}{k}/'))
    else:
      out[prefix + k] = v
  return out


@pytest.fixture(scope='module')
def state_dict() -> dict:
  return ckpt.read_state_dict(ZIP_PTH)


# --------------------------------------------------------------------------
# Minimal writers, following torch's documented serialization format
# --------------------------------------------------------------------------


class _FakeStorageType:
  """Pickled as the global torch.<name>; never instantiated."""


def _fake_torch_modules() -> dict:
  """Stub ``torch``/``torch._utils`` modules so pickle can emit their globals."""
  torch = types.ModuleType('torch')
  utils = types.ModuleType('torch._utils')
  for name in ('FloatStorage', 'BFloat16Storage', 'LongStorage'):
    cls = type(name, (_FakeStorageType,), {'__module__': 'torch'})
    setattr(torch, name, cls)

  def _rebuild_tensor_v2(*args):  # pragma: no cover - never called
    raise AssertionError

  _rebuild_tensor_v2.__module__ = 'torch._utils'
  _rebuild_tensor_v2.__qualname__ = '_rebuild_tensor_v2'
  utils._rebuild_tensor_v2 = _rebuild_tensor_v2
  torch._utils = utils
  return {'torch': torch, 'torch._utils': utils}


class Storage:
  def __init__(self, key: str, data: np.ndarray, type_name: str):
    self.key, self.data, self.type_name = key, data, type_name


class Tensor:
  """A view into a Storage, pickled the way torch pickles tensors."""

  def __init__(self, storage: Storage, offset: int, size: tuple, stride: tuple):
    self.args = (storage, offset, size, stride)

  def __reduce__(self):
    rebuild = sys.modules['torch._utils']._rebuild_tensor_v2
    return rebuild, (*self.args, False, collections.OrderedDict())


def contiguous(key: str, arr: np.ndarray, type_name: str = 'FloatStorage') -> Tensor:
  strides = tuple(s // arr.itemsize for s in np.ascontiguousarray(arr).strides)
  return Tensor(Storage(key, np.ascontiguousarray(arr).ravel(), type_name), 0, arr.shape, strides)


class _TorchPickler(pickle.Pickler):
  def persistent_id(self, obj):
    if isinstance(obj, Storage):
      stype = getattr(sys.modules['torch'], obj.type_name)
      return ('storage', stype, obj.key, 'cpu', obj.data.size)
    return None


def write_torch_zip(
  path: Path, obj, storages: list[Storage] | None = None, raw_pickle: bytes | None = None
) -> Path:
  """Zip format: <archive>/data.pkl + <archive>/data/<key> + <archive>/byteorder."""
  if raw_pickle is None:
    buf = io.BytesIO()
    with mock.patch.dict(sys.modules, _fake_torch_modules()):
      _TorchPickler(buf, protocol=2).dump(obj)
    raw_pickle = buf.getvalue()
  with zipfile.ZipFile(path, 'w') as zf:
    zf.writestr('archive/data.pkl', raw_pickle)
    zf.writestr('archive/byteorder', 'little')
    for s in storages or []:
      zf.writestr(f'archive/data/{s.key}', s.data.astype(s.data.dtype.newbyteorder('<')).tobytes())
  return path


class _LegacyPickler(pickle.Pickler):
  """Legacy persistent ids: (..., numel, view_metadata); views are (Storage, offset, numel)."""

  def persistent_id(self, obj):
    if isinstance(obj, tuple) and len(obj) == 3 and isinstance(obj[0], Storage):
      root, offset, numel = obj
      return (
        'storage',
        getattr(sys.modules['torch'], root.type_name),
        root.key,
        'cpu',
        root.data.size,
        (f'{root.key}_view', offset, numel),
      )
    if isinstance(obj, Storage):
      stype = getattr(sys.modules['torch'], obj.type_name)
      return ('storage', stype, obj.key, 'cpu', obj.data.size, None)
    return None


def write_torch_legacy(path: Path, obj, storages: list[Storage]) -> Path:
  """Legacy format: magic, protocol, sys_info, object, key list, then (int64 numel, bytes)*."""
  buf = io.BytesIO()
  for header in (0x1950A86A20F9469CFC6C, 1001, {'protocol_version': 1001, 'little_endian': True}):
    pickle.dump(header, buf, protocol=2)
  with mock.patch.dict(sys.modules, _fake_torch_modules()):
    _LegacyPickler(buf, protocol=2).dump(obj)
  pickle.dump([s.key for s in storages], buf, protocol=2)
  for s in storages:
    buf.write(
      struct.pack('<q', s.data.size) + s.data.astype(s.data.dtype.newbyteorder('<')).tobytes()
    )
  path.write_bytes(buf.getvalue())
  return path


def write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> Path:
  codes = {np.dtype('float32'): 'F32', np.dtype('float16'): 'F16', np.dtype('int64'): 'I64'}
  header, blobs, offset = {'__metadata__': {'format': 'pt'}}, [], 0
  for name, arr in tensors.items():
    blob = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder('<')).tobytes()
    header[name] = {
      'dtype': codes[arr.dtype],
      'shape': list(arr.shape),
      'data_offsets': [offset, offset + len(blob)],
    }
    blobs.append(blob)
    offset += len(blob)
  head = json.dumps(header).encode()
  path.write_bytes(struct.pack('<Q', len(head)) + head + b''.join(blobs))
  return path


# --------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------


def test_zip_and_legacy_formats_are_identical(state_dict):
  legacy = ckpt.read_state_dict(LEGACY_PTH)
  assert sorted(state_dict) == sorted(legacy)
  assert len(state_dict) == 4 + 12 * DEPTH + 2
  for name, arr in state_dict.items():
    assert arr.dtype == np.float32, name
    assert arr.tobytes() == legacy[name].tobytes(), name
  assert state_dict['pos_embed'].shape == (1, 1 + NPOS, D)
  assert state_dict['cls_token'].shape == (1, 1, D)
  assert state_dict['patch_embed.proj.weight'].shape == (D, 3, P, P)
  assert state_dict['blocks.1.attn.qkv.weight'].shape == (3 * D, D)
  assert state_dict['blocks.1.mlp.fc2.weight'].shape == (D, 4 * D)
  assert np.std(state_dict['blocks.0.attn.qkv.weight']) > 0  # real data, not zeros


def test_infer_arch(state_dict):
  assert ckpt.infer_arch(state_dict) == {
    'patch_size': 16,
    'embed_dim': 384,
    'num_heads': 6,
    'depth': 2,
    'num_pos': 196,
  }


def test_safetensors_roundtrip(tmp_path):
  rng = np.random.default_rng(0)
  tensors = {
    'cls_token': rng.standard_normal((1, 1, 8)).astype(np.float32),
    'blocks.0.attn.qkv.weight': rng.standard_normal((24, 8)).astype(np.float32),
    'half': rng.standard_normal((3, 5)).astype(np.float16),
    'steps': np.array([1, -2, 3], np.int64),
  }
  got = ckpt.read_state_dict(write_safetensors(tmp_path / 'w.safetensors', tensors))
  assert sorted(got) == sorted(tensors)
  for name in ('cls_token', 'blocks.0.attn.qkv.weight'):
    assert got[name].dtype == np.float32 and np.array_equal(got[name], tensors[name])
  assert got['half'].dtype == np.float32
  np.testing.assert_array_equal(got['half'], tensors['half'].astype(np.float32))
  assert got['steps'].dtype == np.int64 and got['steps'].tolist() == [1, -2, 3]


def test_full_checkpoint_unwrapping_and_strided_tensors(tmp_path):
  rng = np.random.default_rng(1)
  w = rng.standard_normal((6, 4)).astype(np.float32)
  teacher_w = Storage('0', w.ravel(), 'FloatStorage')
  shared = Storage('1', np.arange(10, dtype=np.float32), 'FloatStorage')
  bf16_vals = np.array([1.0, -2.5, 3.140625], np.float32)
  bf16 = Storage('2', (bf16_vals.view(np.uint32) >> 16).astype(np.uint16), 'BFloat16Storage')
  student = Storage('3', np.zeros(24, np.float32), 'FloatStorage')
  teacher = collections.OrderedDict(
    [
      ('module.backbone.blocks.0.attn.qkv.weight', Tensor(teacher_w, 0, (6, 4), (4, 1))),
      # transposed (non-contiguous) view of the same storage
      ('module.backbone.blocks.0.attn.proj.weight', Tensor(teacher_w, 0, (4, 6), (1, 4))),
      # offset view into a shared storage
      ('backbone.norm.bias', Tensor(shared, 3, (4,), (1,))),
      ('module.backbone.norm.weight', Tensor(bf16, 0, (3,), (1,))),
      ('module.head.mlp.0.weight', Tensor(shared, 0, (2, 2), (2, 1))),
    ]
  )
  full = {
    'student': {'module.backbone.blocks.0.attn.qkv.weight': Tensor(student, 0, (6, 4), (4, 1))},
    'teacher': teacher,
    'epoch': 100,
  }
  path = write_torch_zip(tmp_path / 'full.pth', full, [teacher_w, shared, bf16, student])
  sd = ckpt.read_state_dict(path)
  assert sorted(sd) == [
    'blocks.0.attn.proj.weight',
    'blocks.0.attn.qkv.weight',
    'norm.bias',
    'norm.weight',
  ]
  np.testing.assert_array_equal(sd['blocks.0.attn.qkv.weight'], w)  # teacher, not student
  np.testing.assert_array_equal(sd['blocks.0.attn.proj.weight'], w.T)
  assert sd['blocks.0.attn.proj.weight'].flags.c_contiguous
  np.testing.assert_array_equal(sd['norm.bias'], [3, 4, 5, 6])
  assert sd['norm.weight'].dtype == np.float32
  np.testing.assert_array_equal(sd['norm.weight'], bf16_vals)


def test_legacy_writer_with_storage_views(tmp_path):
  root = Storage('140', np.arange(12, dtype=np.float32), 'FloatStorage')
  ints = Storage('141', np.array([7, -8], np.int64), 'LongStorage')
  obj = {
    'state_dict': collections.OrderedDict(
      [
        ('module.pos_embed', Tensor(root, 0, (1, 3, 4), (12, 4, 1))),
        # a legacy storage view starting at element 5 of the root, then offset 1 into it
        ('module.cls_token', Tensor((root, 5, 4), 1, (1, 1, 3), (3, 3, 1))),
        ('steps', Tensor(ints, 0, (2,), (1,))),
      ]
    )
  }
  sd = ckpt.read_state_dict(write_torch_legacy(tmp_path / 'legacy.pth', obj, [root, ints]))
  np.testing.assert_array_equal(sd['pos_embed'], np.arange(12).reshape(1, 3, 4))
  np.testing.assert_array_equal(sd['cls_token'], [[[6, 7, 8]]])
  assert sd['steps'].dtype == np.int64 and sd['steps'].tolist() == [7, -8]


def test_tensor_exceeding_storage_is_rejected(tmp_path):
  s = Storage('0', np.zeros(4, np.float32), 'FloatStorage')
  path = write_torch_zip(tmp_path / 'oob.pth', {'w': Tensor(s, 2, (4, 4), (4, 1))}, [s])
  with pytest.raises(CheckpointError, match='exceeds its storage') as e:
    ckpt.read_state_dict(path)
  assert str(path) in str(e.value)


class _Evil:
  def __init__(self, target: Path, fn=os.system, cmd: str | None = None):
    self.target, self.fn, self.cmd = target, fn, cmd

  def __reduce__(self):
    if self.fn is os.system:
      return os.system, (f'touch {self.target}',)
    return self.fn, (self.cmd,)


@pytest.mark.parametrize('kind', ['os.system', 'builtins.eval'])
def test_malicious_zip_pickle_is_refused(tmp_path, kind):
  marker = tmp_path / 'pwned'
  evil = (
    _Evil(marker)
    if kind == 'os.system'
    else _Evil(marker, eval, f"open({str(marker)!r}, 'w').close()")
  )
  payload = pickle.dumps(collections.OrderedDict(w=evil), protocol=2)
  path = write_torch_zip(tmp_path / 'evil.pth', None, raw_pickle=payload)
  with pytest.raises(CheckpointError) as e:
    ckpt.read_state_dict(path)
  msg = str(e.value)
  assert str(path) in msg and 'refusing' in msg
  assert ('system' if kind == 'os.system' else 'eval') in msg
  assert not marker.exists()


def test_malicious_legacy_pickle_is_refused(tmp_path):
  marker = tmp_path / 'pwned'
  path = tmp_path / 'evil_legacy.pth'
  with open(path, 'wb') as f:
    for header in (0x1950A86A20F9469CFC6C, 1001, {'little_endian': True}):
      pickle.dump(header, f, protocol=2)
    pickle.dump({'w': _Evil(marker)}, f, protocol=2)
  with pytest.raises(CheckpointError, match='refusing'):
    ckpt.read_state_dict(path)
  assert not marker.exists()


@pytest.mark.parametrize('source', [ZIP_PTH, LEGACY_PTH])
def test_truncated_file(tmp_path, source):
  path = tmp_path / f'truncated_{source.name}'
  data = source.read_bytes()
  path.write_bytes(data[: len(data) // 2])
  with pytest.raises(CheckpointError) as e:
    ckpt.read_state_dict(path)
  assert str(path) in str(e.value)


def test_not_a_checkpoint(tmp_path):
  path = tmp_path / 'notes.pth'
  path.write_text('hello, I am not a checkpoint')
  with pytest.raises(CheckpointError, match='notes.pth'):
    ckpt.read_state_dict(path)


def test_missing_file(tmp_path):
  path = tmp_path / 'nope.pth'
  for fn in (ckpt.read_state_dict, functools.partial(ckpt.resolve_checkpoint, 'dino_vits16')):
    with pytest.raises(FileNotFoundError) as e:
      fn(path)
    assert str(path) in str(e.value)
    assert e.value.setting == 'model.checkpoint' and e.value.file_name == 'nope.pth'


# --------------------------------------------------------------------------
# Conversion
# --------------------------------------------------------------------------


def test_conversion_layout_and_values(state_dict):
  expected = vit_shapes(D, P, DEPTH, NPOS)
  params = ckpt.state_dict_to_params(state_dict, expected_shapes=expected)
  got = leaves(params)
  assert {k: v.shape for k, v in got.items()} == leaves(expected)
  assert all(v.dtype == np.float32 for v in got.values())

  qkv = state_dict['blocks.1.attn.qkv.weight']
  np.testing.assert_array_equal(params['blocks_1']['attn']['qkv']['kernel'], qkv.T)
  np.testing.assert_array_equal(params['norm']['scale'], state_dict['norm.weight'])

  # Linear: torch y = x W^T + b must equal flax y = x K + b.
  x = np.random.default_rng(0).standard_normal((2, D)).astype(np.float32)
  fc1 = params['blocks_0']['mlp']['fc1']
  torch_y = x @ state_dict['blocks.0.mlp.fc1.weight'].T + state_dict['blocks.0.mlp.fc1.bias']
  np.testing.assert_allclose(x @ fc1['kernel'] + fc1['bias'], torch_y, rtol=1e-5, atol=1e-5)

  # Patch embedding: torch conv on an NCHW patch == flax conv on the NHWC patch.
  patch = np.random.default_rng(1).standard_normal((3, P, P)).astype(np.float32)
  torch_out = np.einsum('dcij,cij->d', state_dict['patch_embed.proj.weight'], patch)
  flax_out = np.einsum('ijcd,ijc->d', params['patch_embed']['kernel'], patch.transpose(1, 2, 0))
  np.testing.assert_allclose(flax_out, torch_out, rtol=1e-4, atol=1e-4)


def test_params_fit_the_flax_vit(state_dict):
  vit = pytest.importorskip('spectral_jax.models.vit')
  arch = vit.ViTArch(**ckpt.infer_arch(state_dict))
  ckpt.state_dict_to_params(state_dict, expected_shapes=vit.abstract_params(arch))


def test_shape_mismatch_message(state_dict):
  with pytest.raises(CheckpointError) as e:
    ckpt.state_dict_to_params(state_dict, expected_shapes=vit_shapes(768, 16, DEPTH, NPOS))
  msg = str(e.value)
  assert 'blocks.0.attn.qkv.weight: checkpoint has (1152, 384), model expects (2304, 768)' in msg
  assert (
    'patch_embed.proj.weight: checkpoint has (384, 3, 16, 16), model expects (768, 3, 16, 16)'
    in msg
  )


def test_missing_and_unexpected_keys(state_dict):
  with pytest.raises(CheckpointError, match=r'blocks\.1\.attn\.qkv\.weight: unexpected'):
    ckpt.state_dict_to_params(state_dict, expected_shapes=vit_shapes(D, P, 1, NPOS))
  with pytest.raises(CheckpointError, match=r'blocks\.2\.norm1\.weight: missing'):
    ckpt.state_dict_to_params(state_dict, expected_shapes=vit_shapes(D, P, 3, NPOS))
  with pytest.raises(CheckpointError, match='fc_norm.weight'):
    ckpt.state_dict_to_params({**state_dict, 'fc_norm.weight': np.ones(D, np.float32)})
  # The DINO projection head is ignored, not an error.
  ckpt.state_dict_to_params(
    {**state_dict, 'head.last_layer.weight': np.ones((4, D), np.float32)},
    expected_shapes=vit_shapes(D, P, DEPTH, NPOS),
  )


# --------------------------------------------------------------------------
# cache of converted parameters
# --------------------------------------------------------------------------


def test_params_cache_roundtrip(tmp_path, state_dict):
  params = ckpt.state_dict_to_params(state_dict)
  ckpt.save_params(params, tmp_path / 'params.npz')
  restored = ckpt.restore_params(tmp_path / 'params.npz')
  a, b = leaves(params), leaves(restored)
  assert sorted(a) == sorted(b)
  for k in a:
    assert isinstance(b[k], np.ndarray) and b[k].dtype == a[k].dtype
    assert a[k].tobytes() == b[k].tobytes(), k


def test_load_params_uses_cache_without_the_pth(tmp_path, state_dict):
  pth = tmp_path / 'model.pth'
  shutil.copyfile(ZIP_PTH, pth)
  cache = tmp_path / 'cache'
  params, arch = ckpt.load_params('dino_vits16', checkpoint=pth, cache_dir=cache)
  assert arch == ckpt.infer_arch(state_dict)
  assert list((cache / 'params').glob('*/arch.json'))

  pth.rename(tmp_path / 'moved.pth')  # neither the file nor a conversion is needed now
  with mock.patch.object(ckpt, 'read_state_dict', side_effect=AssertionError('not cached')):
    params2, arch2 = ckpt.load_params('dino_vits16', checkpoint=pth, cache_dir=cache)
  assert arch2 == arch
  a, b = leaves(params), leaves(params2)
  assert sorted(a) == sorted(b) and all(a[k].tobytes() == b[k].tobytes() for k in a)


def test_cache_entry_is_written_once_and_half_written_ones_are_replaced(tmp_path, state_dict):
  """Processes sharing a cache directory: a finished entry is never clobbered, an
  interrupted one (no arch.json) is replaced, and no staging directory is left behind."""
  params, arch = ckpt.state_dict_to_params(state_dict), ckpt.infer_arch(state_dict)
  entry = tmp_path / 'params' / 'model-0123'
  entry.mkdir(parents=True)  # an interrupted write
  (entry / 'params.npz').write_bytes(b'PK')
  cache.write_entry(entry, params, arch, 'first', ZIP_PTH)
  assert json.loads((entry / 'arch.json').read_text())['source'] == 'first'
  cache.write_entry(entry, params, arch, 'second', ZIP_PTH)  # another process, same entry
  assert json.loads((entry / 'arch.json').read_text())['source'] == 'first'
  assert [p.name for p in entry.parent.iterdir()] == ['model-0123']
  restored = leaves(ckpt.restore_params(entry / 'params.npz'))
  assert all(restored[k].tobytes() == v.tobytes() for k, v in leaves(params).items())


def test_load_params_url_cache_needs_no_download(tmp_path):
  url = tmp_path / 'src' / 'model.pth'
  url.parent.mkdir()
  shutil.copyfile(LEGACY_PTH, url)
  cache = tmp_path / 'cache'
  _, arch = ckpt.load_params('unused', checkpoint=url.as_uri(), cache_dir=cache)
  assert (cache / 'model.pth').is_file()  # the download itself
  (cache / 'model.pth').unlink()
  url.unlink()
  _, arch2 = ckpt.load_params('unused', checkpoint=url.as_uri(), cache_dir=cache)
  assert (
    arch2
    == arch
    == {'patch_size': 16, 'embed_dim': 384, 'num_heads': 6, 'depth': 2, 'num_pos': 196}
  )


def test_an_unwritable_cache_only_costs_the_conversion_next_time(tmp_path, state_dict):
  not_a_folder = tmp_path / 'cache'
  not_a_folder.write_text('a file where the cache folder should be')
  with mock.patch.object(ckpt.logging, 'warning') as warning:
    params, arch = ckpt.load_params('dino_vits16', checkpoint=ZIP_PTH, cache_dir=not_a_folder)
  assert arch == ckpt.infer_arch(state_dict) and 'pos_embed' in params
  assert 'could not keep the converted weights' in warning.call_args.args[0]


def test_a_replaced_copy_in_the_cache_folder_is_converted_again(tmp_path, state_dict):
  """Conversions of a registry file are keyed on its URL; a copy put in the cache folder by
  hand and later replaced (by the official file, say) must not keep its old conversion."""
  cache_dir = tmp_path / 'cache'
  cache_dir.mkdir()
  copy = cache_dir / 'dino_deitsmall16_pretrain.pth'
  shutil.copyfile(ZIP_PTH, copy)  # not the published file: used as given, with a warning
  params, _ = ckpt.load_params('dino_vits16', cache_dir=cache_dir)
  with mock.patch.object(ckpt, 'read_state_dict', side_effect=AssertionError('not cached')):
    ckpt.load_params('dino_vits16', cache_dir=cache_dir)  # unchanged copy: the entry serves
  tensors = {
    k: contiguous(str(i), v * 2 if k == 'pos_embed' else v)
    for i, (k, v) in enumerate(state_dict.items())
  }
  write_torch_zip(copy, collections.OrderedDict(tensors), [t.args[0] for t in tensors.values()])
  params2, _ = ckpt.load_params('dino_vits16', cache_dir=cache_dir)
  np.testing.assert_array_equal(params2['pos_embed'], 2 * np.asarray(params['pos_embed']))
  moved = tmp_path / 'moved_cache'  # compared by content: a moved cache keeps its entries
  shutil.copytree(cache_dir, moved)
  with mock.patch.object(ckpt, 'read_state_dict', side_effect=AssertionError('not cached')):
    ckpt.load_params('dino_vits16', cache_dir=moved)
  copy.unlink()  # once converted the file is not needed: the entry serves on its own
  with mock.patch.object(ckpt, 'read_state_dict', side_effect=AssertionError('not cached')):
    params3, _ = ckpt.load_params('dino_vits16', cache_dir=cache_dir)
  np.testing.assert_array_equal(params3['pos_embed'], params2['pos_embed'])
