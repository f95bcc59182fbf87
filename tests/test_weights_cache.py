"""The converted-weights cache (spectral_jax.models.weights.cache): corrupt entries are rebuilt
from their source with a warning (or refused with the fix when the source is gone), and
temporaries of killed runs are removed."""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from spectral_jax.models.weights import checkpoints as ckpt
from spectral_jax.models.weights import cache as weights_cache
from spectral_jax.models.weights.checkpoints import CheckpointError
from tests.test_checkpoints import ZIP_PTH, leaves


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  return ckpt.load_params('unused', ZIP_PTH, cache_dir=tmp_path_factory.mktemp('reference'))


def same_params(a: dict, b: dict) -> bool:
  la, lb = leaves(a), leaves(b)
  return sorted(la) == sorted(lb) and all(la[k].tobytes() == lb[k].tobytes() for k in la)


def _truncate(path: Path) -> None:
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2])


def _garbage(path: Path) -> None:
  path.write_bytes(np.random.default_rng(0).bytes(path.stat().st_size))


def _flip_middle(path: Path) -> None:
  # Zip structure intact, array bytes changed: caught by the member's CRC.
  data = bytearray(path.read_bytes())
  data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)
  path.write_bytes(bytes(data))


def _bad_arch(path: Path) -> None:
  path.with_name('arch.json').write_text('{"arch": {"depth": "two"}')


@pytest.mark.parametrize('damage', [_truncate, _garbage, _flip_middle, _bad_arch])
def test_corrupt_entry_is_rebuilt_with_a_warning(tmp_path, reference, damage, caplog):
  pth = tmp_path / 'model.pth'
  shutil.copyfile(ZIP_PTH, pth)
  cache = tmp_path / 'cache'
  params, arch = ckpt.load_params('unused', pth, cache_dir=cache)
  assert same_params(params, reference[0]) and arch == reference[1]
  (entry,) = (cache / 'params').iterdir()
  damage(entry / 'params.npz')
  with caplog.at_level(logging.WARNING):
    params2, arch2 = ckpt.load_params('unused', pth, cache_dir=cache)
  assert same_params(params2, reference[0]) and arch2 == reference[1]
  warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
  assert any(str(entry) in w and 'rebuilding' in w for w in warnings), warnings
  assert [p.name for p in (cache / 'params').iterdir()] == [entry.name]
  assert same_params(weights_cache.read_entry(entry)[0], reference[0])  # readable again


def test_corrupt_entry_without_source_names_the_fix(tmp_path):
  pth = tmp_path / 'model.pth'
  shutil.copyfile(ZIP_PTH, pth)
  cache = tmp_path / 'cache'
  ckpt.load_params('unused', pth, cache_dir=cache)
  (entry,) = (cache / 'params').iterdir()
  pth.unlink()
  ckpt.load_params('unused', pth, cache_dir=cache)  # intact: the source is not needed
  _truncate(entry / 'params.npz')
  with pytest.raises(CheckpointError) as e:
    ckpt.load_params('unused', pth, cache_dir=cache)
  message = str(e.value)
  assert str(entry) in message and f'delete {entry}' in message and str(pth) in message


def test_stale_temporaries_are_removed_and_live_ones_kept(tmp_path):
  cache = tmp_path / 'cache'
  params_dir = cache / 'params'
  params_dir.mkdir(parents=True)
  old = time.time() - 3600
  stale = [
    params_dir / 'model-0123.tmp-4242-deadbeef',  # a killed conversion (old name format)
    params_dir / f'model-0123.tmp-{weights_cache._HOST}-999999999-cafe0123',
    params_dir / '.params.npz.x1y2.tmp',  # spectral_jax.artifacts atomic file
    cache / 'dino_deitsmall16_pretrain.pth.part',  # a killed download
  ]
  for path in stale[:2]:
    path.mkdir()
    (path / 'params.npz').write_bytes(b'PK half')
  for path in stale[2:]:
    path.write_bytes(b'half')
  for path in stale:
    for p in [path, *path.glob('*')]:
      os.utime(p, (old, old))
  live = [
    params_dir / 'model-4567.tmp-777-beef',  # written just now by another run
    cache / 'other.pth.part',
  ]
  live[0].mkdir()
  live[1].write_bytes(b'downloading')
  kept = [params_dir / 'model-89ab', cache / 'weights.pth']  # not temporaries at all
  kept[0].mkdir()
  kept[1].write_bytes(b'w')
  for path in kept:
    os.utime(path, (old, old))

  pth = tmp_path / 'model.pth'
  shutil.copyfile(ZIP_PTH, pth)
  ckpt.load_params('unused', pth, cache_dir=cache)
  assert not any(p.exists() for p in stale)
  assert all(p.exists() for p in live + kept)


def test_dead_writer_of_this_host_is_stale_without_waiting(tmp_path, monkeypatch):
  monkeypatch.setattr(weights_cache, '_RUN_START', time.time() + 10)
  dead = tmp_path / 'params' / f'm-1.tmp-{weights_cache._HOST}-999999999-ab12'
  mine = tmp_path / 'params' / f'm-1.tmp-{weights_cache._HOST}-{os.getpid()}-ab12'
  dead.mkdir(parents=True)
  mine.mkdir()
  # Downloads are private to their process too (two runs fetching one file never mix bytes).
  dead_download = tmp_path / f'w.pth.{weights_cache._HOST}-999999999.part'
  dead_download.write_bytes(b'half')
  removed = weights_cache.remove_stale_temporaries(tmp_path)
  assert sorted(removed) == sorted([dead, dead_download])
  assert mine.exists()
