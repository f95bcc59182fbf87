"""main.py and configs/: the CLI as users run it (subprocess, a generated checkpoint)."""

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PARITY

ROOT = Path(__file__).parent.parent


def run_main(*args, cwd=ROOT):
  return subprocess.run(
      [sys.executable, 'main.py', *args], cwd=cwd, capture_output=True, text=True, timeout=600
  )


def test_demo_command_runs(tmp_path):
  """The README demo, with the parity checkpoint instead of the downloaded weights."""
  out = tmp_path / 'demo'
  proc = run_main(
      '--config=configs/demo.py',
      '--mode=localize',
      f'--workdir={out}',
      f'--config.model.checkpoint={PARITY / "checkpoint.pth"}',
      f'--config.model.cache_dir={tmp_path / "cache"}',
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = (out / 'predictions.jsonl').read_text().splitlines()
  assert len(lines) == 5
  for line in lines:
    record = json.loads(line)
    h, w = record['image_size']
    x0, y0, x1, y1 = record['box_xyxy']
    assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
  assert len(list((out / 'panels').glob('*.png'))) == 5
  assert 'images/s' in proc.stdout
  # The compiled shapes are kept for the next run.
  assert list((tmp_path / 'cache' / 'xla').iterdir())


def test_unreachable_weights_give_the_fix(tmp_path):
  proc = run_main(
      '--config=configs/demo.py',
      '--mode=localize',
      f'--workdir={tmp_path}',
      '--config.model.checkpoint=http://127.0.0.1:9/dino.pth',
      f'--config.model.cache_dir={tmp_path / "cache"}',
  )
  assert proc.returncode != 0
  assert '--config.model.checkpoint' in proc.stderr


def test_bad_config_value_is_named(tmp_path):
  proc = run_main(
      '--config=configs/demo.py',
      '--mode=localize',
      f'--workdir={tmp_path}',
      '--config.spectral.which_matrix=banana',
      f'--config.model.checkpoint={PARITY / "checkpoint.pth"}',
      f'--config.model.cache_dir={tmp_path / "cache"}',
  )
  assert proc.returncode != 0
  assert 'which_matrix' in proc.stderr


@pytest.mark.parametrize('name', ['base', 'folder', 'demo', 'voc', 'coco20k', 'object_seg'])
def test_configs_load_and_document_their_command(name):
  module = importlib.import_module(f'configs.{name}')
  config = module.get_config()
  assert config.model.name == 'dino_vits16'
  if name != 'base':
    assert 'python main.py --config=configs/' in module.__doc__


def test_unprepared_tfds_dataset_prints_the_prepare_command(tmp_path):
  proc = run_main(
      '--config=configs/voc.py',
      '--mode=localize',
      f'--workdir={tmp_path}',
      f'--config.data.tfds_dir={tmp_path / "tfds"}',
  )
  assert proc.returncode != 0
  assert 'voc/2012' in proc.stderr and 'download_and_prepare' in proc.stderr
  assert 'tensorflow' in proc.stderr.lower()
