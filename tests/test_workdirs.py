"""workdirs.py and the task runners' use of it: one run per workdir, honest reruns."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from spectral_jax import workdirs
from spectral_jax import artifacts
from spectral_jax.tasks import common, edit, extract, localize
from tests.conftest import PARITY

ROOT = Path(__file__).resolve().parents[1]


def cli(workdir, *flags, mode='localize', config='configs/folder.py', timeout=600):
  """main.py in a subprocess (the real entry point: flags, lock, exit code)."""
  cmd = [sys.executable, 'main.py', f'--config={config}', f'--mode={mode}', f'--workdir={workdir}']
  return subprocess.run(
    cmd + list(flags),
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=timeout,
    env={**os.environ, 'JAX_PLATFORMS': 'cpu'},
  )


def parity_flags(tmp_path):
  return [
    f'--config.data.root={PARITY / "images"}',
    f'--config.model.checkpoint={PARITY / "checkpoint.pth"}',
    f'--config.model.cache_dir={tmp_path / "cache"}',
    '--config.output.num_panels=0',
  ]


def dead_pid() -> int:
  proc = subprocess.Popen([sys.executable, '-c', 'pass'])
  proc.wait()
  return proc.pid


# ----------------------------------------------------------------------------- the lock


def test_lock_refuses_a_second_holder_and_takes_over_a_dead_one(tmp_path):
  workdirs.prepare(tmp_path)
  with workdirs.locked(tmp_path):
    with pytest.raises(workdirs.WorkdirError, match=f'in use by PID {os.getpid()}'):
      with workdirs.locked(tmp_path):
        pass
  assert not (tmp_path / '.spectral_jax' / 'lock').exists()  # released
  lock = tmp_path / '.spectral_jax' / 'lock'
  import socket  # pylint: disable=import-outside-toplevel

  lock.write_text(json.dumps({'host': socket.gethostname(), 'pid': dead_pid()}))
  with workdirs.locked(tmp_path):  # stale: taken over
    assert json.loads(lock.read_text())['pid'] == os.getpid()


def test_cli_on_a_locked_workdir_exits_with_the_holder(tmp_path):
  out = tmp_path / 'out'
  workdirs.prepare(out)
  import socket  # pylint: disable=import-outside-toplevel

  holder = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])
  try:
    (out / '.spectral_jax' / 'lock').write_text(
      json.dumps({'host': socket.gethostname(), 'pid': holder.pid, 'command': 'other run'})
    )
    proc = cli(out, *parity_flags(tmp_path))
    assert proc.returncode != 0
    assert f'in use by PID {holder.pid}' in proc.stderr
    assert not (out / 'predictions.jsonl').exists()
  finally:
    holder.kill()
    holder.wait()
  proc = cli(out, *parity_flags(tmp_path))  # the holder is gone: its lock is stale
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert 'stale lock' in proc.stderr
  assert len(artifacts.read_jsonl(out / 'predictions.jsonl')) == 3


def test_two_concurrent_runs_write_each_image_once(tmp_path):
  out = tmp_path / 'out'
  cmd = lambda: subprocess.Popen(  # noqa: E731
    [
      sys.executable,
      'main.py',
      '--config=configs/folder.py',
      '--mode=localize',
      f'--workdir={out}',
      *parity_flags(tmp_path),
    ],
    cwd=ROOT,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    env={**os.environ, 'JAX_PLATFORMS': 'cpu'},
  )
  procs = [cmd(), cmd()]
  results = [p.communicate(timeout=600) + (p.returncode,) for p in procs]
  codes = sorted(r[2] for r in results)
  assert codes[0] == 0
  ids = [r['id'] for r in artifacts.read_jsonl(out / 'predictions.jsonl')]
  assert sorted(ids) == ['astronaut', 'chelsea', 'coffee']  # each once
  if codes[1] != 0:  # the loser names the lock (else the two ran one after the other)
    assert any('in use by PID' in r[1] for r in results)


# ----------------------------------------------------------------------------- settings


def test_workdir_that_is_a_file_or_unwritable_is_refused(tmp_path):
  target = tmp_path / 'file'
  target.write_text('x')
  with pytest.raises(workdirs.WorkdirError, match='is a file'):
    workdirs.prepare(target)
  proc = cli(target, *parity_flags(tmp_path))
  assert proc.returncode != 0 and 'is a file' in proc.stderr
  assert 'compiling' not in proc.stderr  # refused before the model loads


def test_differences_name_each_changed_key():
  old = {'spectral': {'K': 5, 'color_lambda': 0.0}, 'model': {'name': 'dino_vits16'}}
  new = {'spectral': {'K': 8, 'color_lambda': 0.0}, 'model': {'name': 'dino_vits8'}}
  assert workdirs.differences(old, new) == [
    "model.name: 'dino_vits16' → 'dino_vits8'",
    'spectral.K: 5 → 8',
  ]
  assert workdirs.differences(old, old) == []


@pytest.fixture(scope='module')
def localized(tmp_path_factory):
  from configs import folder  # pylint: disable=import-outside-toplevel

  workdir = tmp_path_factory.mktemp('rerun')
  config = folder.get_config()
  config.data.root = str(PARITY / 'images')
  config.model.checkpoint = str(PARITY / 'checkpoint.pth')
  config.model.cache_dir = str(workdir / 'cache')
  config.output.num_panels = 0
  localize.run(config, workdir / 'out')
  return config, workdir / 'out'


@pytest.mark.parametrize(
  'key,value',
  [
    ('spectral.which_matrix', 'affinity'),
    ('spectral.color_lambda', 10.0),
    ('spectral.K', 8),
    ('model.name', 'dino_vits8'),
    ('model.checkpoint', 'LEGACY'),
    ('data.root', 'COPY'),
  ],
)
def test_rerun_with_other_settings_stops_naming_the_key(localized, tmp_path, key, value):
  config, out = localized
  config = config.copy_and_resolve_references()
  section, name = key.split('.')
  if value == 'LEGACY':  # same tensors, another file: another sha256
    value = str(PARITY / 'checkpoint_legacy.pth')
  if value == 'COPY':
    (tmp_path / 'images').mkdir()
    for p in (PARITY / 'images').iterdir():
      (tmp_path / 'images' / p.name).write_bytes(p.read_bytes())
    value = str(tmp_path / 'images')
  config[section][name] = value
  before = (out / 'predictions.jsonl').read_bytes()
  with pytest.raises(workdirs.WorkdirError, match=rf'{key}(\.|:).*\n.*overwrite=True'):
    localize.run(config, out)
  assert (out / 'predictions.jsonl').read_bytes() == before


def test_overwrite_recomputes_with_the_new_settings(localized, tmp_path):
  config, out = localized
  work = tmp_path / 'out'
  work.mkdir()
  for p in out.rglob('*'):
    if p.is_file():
      (work / p.relative_to(out)).parent.mkdir(parents=True, exist_ok=True)
      (work / p.relative_to(out)).write_bytes(p.read_bytes())
  config = config.copy_and_resolve_references()
  config.spectral.which_matrix = 'affinity'
  config.overwrite = True
  localize.run(config, work)
  fresh = tmp_path / 'fresh'
  config.overwrite = False
  localize.run(config, fresh)
  by_id = lambda d: {r['id']: r['box_xyxy'] for r in artifacts.read_jsonl(d / 'predictions.jsonl')}  # noqa
  assert by_id(work) == by_id(fresh)
  assert workdirs.read_record(work, 'localize')['spectral']['which_matrix'] == 'affinity'


def test_outputs_without_a_record_are_not_trusted(tmp_path):
  from configs import folder  # pylint: disable=import-outside-toplevel

  config = folder.get_config()
  config.data.root = str(PARITY / 'images')
  config.model.checkpoint = str(PARITY / 'checkpoint.pth')
  (tmp_path / 'eigs').mkdir()
  np.savez(tmp_path / 'eigs' / 'astronaut.npz', eigenvalues=np.zeros(5))
  with pytest.raises(workdirs.WorkdirError, match='without a settings record'):
    extract.run(config, tmp_path)


def test_edit_never_reuses_eigenvectors_of_other_settings(tmp_path):
  from configs import edit as edit_config  # pylint: disable=import-outside-toplevel
  from configs import folder  # pylint: disable=import-outside-toplevel

  config = folder.get_config()
  config.data.root = str(PARITY / 'images' / 'coffee.png')
  config.model.checkpoint = str(PARITY / 'checkpoint.pth')
  config.model.cache_dir = str(tmp_path / 'cache')
  extract.run(config, tmp_path / 'out')  # K = 5, no colour term
  cfg = edit_config.get_config()
  cfg.data.root = config.data.root
  cfg.model.checkpoint = config.model.checkpoint
  cfg.model.cache_dir = config.model.cache_dir
  cfg.spectral.color_lambda = 10.0
  with pytest.raises(workdirs.WorkdirError, match='spectral.color_lambda'):
    edit.run(cfg, tmp_path / 'out')
  cfg.spectral.color_lambda = 0.0
  edit.run(cfg, tmp_path / 'out')  # the same settings: the eigenvectors are reused
  assert (tmp_path / 'out' / 'cutout' / 'coffee.png').exists()
  cfg.edit.background = 'white'
  with pytest.raises(workdirs.WorkdirError, match='edit.background'):
    edit.run(cfg, tmp_path / 'out')


def test_stage_settings_hold_the_checkpoint_hash(tmp_path):
  from configs import folder  # pylint: disable=import-outside-toplevel

  config = folder.get_config()
  config.model.checkpoint = str(PARITY / 'checkpoint.pth')
  import hashlib  # pylint: disable=import-outside-toplevel

  digest = hashlib.sha256((PARITY / 'checkpoint.pth').read_bytes()).hexdigest()
  settings = common.stage_settings(config, 'localize')
  assert settings['model']['checkpoint']['sha256'] == digest
  config.model.checkpoint = ''
  assert common.stage_settings(config, 'localize')['model']['checkpoint']['url'].endswith(
    'dino_deitsmall16_pretrain.pth'
  )


def test_stale_temporaries_are_removed(tmp_path):
  (tmp_path / 'masks').mkdir()
  (tmp_path / 'masks' / '.tmp-abc123').write_bytes(b'half')
  (tmp_path / 'masks' / 'kept.png').write_bytes(b'x')
  assert artifacts.clean_stale_temporaries(tmp_path) == 1
  assert sorted(p.name for p in (tmp_path / 'masks').iterdir()) == ['kept.png']


def test_a_run_that_failed_before_any_output_never_blocks_the_next(tmp_path):
  """The README's first command offline: the weights are unreachable, the run fails having
  written only its record; the next command, with a local checkpoint, just runs."""
  from configs import folder  # pylint: disable=import-outside-toplevel

  config = folder.get_config()
  config.data.root = str(PARITY / 'images')
  config.model.cache_dir = str(tmp_path / 'cache')
  config.model.checkpoint = 'http://127.0.0.1:9/dino_deitsmall16_pretrain.pth'  # nothing listens
  config.output.num_panels = 0
  with pytest.raises(Exception):  # pylint: disable=broad-except  # the download's own error
    localize.run(config, tmp_path / 'out')
  assert workdirs.read_record(tmp_path / 'out', 'localize') is not None  # what used to block
  config.model.checkpoint = str(PARITY / 'checkpoint.pth')
  localize.run(config, tmp_path / 'out')
  assert len(artifacts.read_jsonl(tmp_path / 'out' / 'predictions.jsonl')) == 3
  record = workdirs.read_record(tmp_path / 'out', 'localize')
  assert 'sha256' in record['model']['checkpoint']  # the new settings replaced the old record
