"""artifacts.py: atomic writes and JSON-lines that survive a killed writer."""

import json
import os

import numpy as np
import pytest

from spectral_jax import artifacts


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
  class Boom(Exception):
    pass

  def explode(_):
    raise Boom

  with pytest.raises(Boom):
    artifacts._atomic_write(tmp_path / 'x.bin', explode)  # pylint: disable=protected-access
  assert os.listdir(tmp_path) == []


def test_npz_png_json_round_trip(tmp_path):
  artifacts.save_npz(tmp_path / 'a' / 'x.npz', k=np.arange(6, dtype=np.float32).reshape(2, 3))
  with np.load(tmp_path / 'a' / 'x.npz') as f:
    np.testing.assert_array_equal(f['k'], np.arange(6).reshape(2, 3))
  artifacts.save_json(tmp_path / 'm.json', {'b': 1, 'a': [1, 2]})
  assert json.loads((tmp_path / 'm.json').read_text()) == {'a': [1, 2], 'b': 1}
  path = artifacts.save_png(tmp_path / 'm.png', np.full((3, 4), 255, np.uint8))
  assert oct(path.stat().st_mode & 0o777) == oct(0o644)


def test_jsonl_torn_line_is_dropped_and_closed(tmp_path):
  path = tmp_path / 'p.jsonl'
  artifacts.append_jsonl(path, [{'id': 'a'}, {'id': 'b'}])
  with open(path, 'a') as f:
    f.write('{"id": "c", "bo')  # a writer killed mid-line
  assert [r['id'] for r in artifacts.read_jsonl(path)] == ['a', 'b']
  artifacts.append_jsonl(path, [{'id': 'd'}])
  assert [r['id'] for r in artifacts.read_jsonl(path)] == ['a', 'b', 'd']
  artifacts.save_jsonl(path, [{'id': 'z'}])
  assert artifacts.read_jsonl(path) == [{'id': 'z'}]
  assert artifacts.read_jsonl(tmp_path / 'missing.jsonl') == []
