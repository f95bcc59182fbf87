"""Broken and hostile .safetensors headers are refused before allocation, naming file and tensor."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from spectral_jax.models.weights import checkpoints as ckpt
from spectral_jax.models.weights import safetensors_reader
from spectral_jax.models.weights.checkpoints import CheckpointError
from tests.test_checkpoints import write_safetensors
from tests.test_torch_pickle import assert_refused_cheaply


def write_header(path: Path, header: dict, data: bytes = b'') -> Path:
  head = json.dumps(header).encode()
  path.write_bytes(struct.pack('<Q', len(head)) + head + data)
  return path


@pytest.mark.parametrize(
  'shape,offsets',
  [
    ([1 << 32, 1 << 32], [0, 0]),  # 2**64 elements: wraps to 0 in int64
    ([1 << 31, 1 << 33, 2], [0, 0]),
    ([1 << 62], [0, 16]),
  ],
)
def test_overflowing_shape_is_refused(tmp_path, shape, offsets):
  path = write_header(
    tmp_path / 'overflow.safetensors',
    {'pos_embed': {'dtype': 'F32', 'shape': shape, 'data_offsets': offsets}},
    bytes(16),
  )
  message = assert_refused_cheaply(path, "'pos_embed'")
  assert str(shape) in message


def test_shape_disagreeing_with_data_is_refused(tmp_path):
  for name, info in {
    'short': {'dtype': 'F32', 'shape': [10], 'data_offsets': [0, 8]},
    'beyond_file': {'dtype': 'F32', 'shape': [10], 'data_offsets': [0, 40]},
    'bad_shape': {'dtype': 'F32', 'shape': [-1], 'data_offsets': [0, 4]},
    'bad_dtype': {'dtype': 'C64', 'shape': [1], 'data_offsets': [0, 8]},
  }.items():
    path = write_header(tmp_path / f'{name}.safetensors', {name: info}, bytes(8))
    with pytest.raises(CheckpointError) as e:
      ckpt.read_state_dict(path)
    assert str(path) in str(e.value) and repr(name) in str(e.value)


def test_header_longer_than_file_is_refused(tmp_path):
  path = tmp_path / 'liar.safetensors'
  path.write_bytes(struct.pack('<Q', 1 << 40) + b'{}')
  with pytest.raises(CheckpointError, match='does not fit the file') as e:
    safetensors_reader.read_safetensors(path)
  assert str(path) in str(e.value)


def test_bfloat16_and_integers(tmp_path):
  values = np.array([[1.0, -2.5], [3.140625, 0.0]], np.float32)
  bits = (values.view(np.uint32) >> 16).astype('<u2').tobytes()
  path = write_header(
    tmp_path / 'bf16.safetensors',
    {
      'norm.weight': {'dtype': 'BF16', 'shape': [2, 2], 'data_offsets': [0, 8]},
      'steps': {'dtype': 'I32', 'shape': [2], 'data_offsets': [8, 16]},
    },
    bits + np.array([5, -6], '<i4').tobytes(),
  )
  got = ckpt.read_state_dict(path)
  assert got['norm.weight'].dtype == np.float32
  np.testing.assert_array_equal(got['norm.weight'], values)
  assert got['steps'].dtype == np.int32 and got['steps'].tolist() == [5, -6]


def test_library_roundtrip(tmp_path):
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel

  tensors = {'cls_token': np.arange(8, dtype=np.float16).reshape(1, 1, 8)}
  save_file(tensors, str(tmp_path / 'lib.safetensors'))
  got = ckpt.read_state_dict(tmp_path / 'lib.safetensors')
  assert got['cls_token'].dtype == np.float32
  np.testing.assert_array_equal(got['cls_token'], tensors['cls_token'])
  ours = ckpt.read_state_dict(write_safetensors(tmp_path / 'ours.safetensors', tensors))
  np.testing.assert_array_equal(ours['cls_token'], got['cls_token'])
