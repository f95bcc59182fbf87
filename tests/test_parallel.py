"""parallel.py: 4 simulated devices and 2 real processes give the single-process results
(localize; semantic → train → evaluate)."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from spectral_jax import parallel
from tests.conftest import PARITY

ROOT = Path(__file__).parent.parent


def localize_cmd(workdir, cache, *extra):
  return [
    sys.executable,
    'main.py',
    '--config=configs/folder.py',
    '--mode=localize',
    f'--workdir={workdir}',
    f'--config.data.root={PARITY / "images"}',
    f'--config.model.checkpoint={PARITY / "checkpoint.pth"}',
    f'--config.model.cache_dir={cache}',
    '--config.data.batch_size=4',
    '--config.output.num_panels=0',
    *extra,
  ]


def run(cmd, devices=1, **kw):
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
  return subprocess.Popen(
    cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw
  )


def finish(proc):
  """The process's output, stdout (summaries) then stderr (logs), once it succeeded."""
  out, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err[-3000:]
  return out + err


def predictions(workdir):
  lines = (Path(workdir) / 'predictions.jsonl').read_text().splitlines()
  return {r['id']: r for r in map(json.loads, lines)}


def test_four_devices_and_two_processes_match_one(tmp_path, manifest):
  xml = tmp_path / 'xml'
  xml.mkdir()
  for image_id, info in manifest['images'].items():  # boxes so that CorLoc is reduced too
    x0, y0, x1, y1 = info['loc_box_xyxy']
    (xml / f'{image_id}.xml').write_text(
      f'<annotation><object><name>a</name><bndbox><xmin>{x0 + 1}</xmin><ymin>{y0 + 1}</ymin>'
      f'<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object></annotation>'
    )
  boxes = f'--config.data.boxes={xml}'
  finish(run(localize_cmd(tmp_path / 'one', tmp_path / 'c1', boxes)))
  log = finish(run(localize_cmd(tmp_path / 'four', tmp_path / 'c4', boxes), devices=4))
  assert 'CpuDevice(id=3)' in log  # the batch really was sharded over 4 devices

  run_two_processes([localize_cmd(tmp_path / 'two', tmp_path / f'c2{i}', boxes) for i in range(2)])

  one = predictions(tmp_path / 'one')
  assert len(one) == 3
  for other in ('four', 'two'):
    assert predictions(tmp_path / other) == one
    metrics = json.loads((tmp_path / other / 'metrics.json').read_text())
    assert metrics == json.loads((tmp_path / 'one' / 'metrics.json').read_text())
    assert metrics['corloc'] == 100.0 and metrics['num_scored'] == 3
  # Each process wrote its own shard: 2 + 1 images.
  shards = [
    len((tmp_path / 'two' / f'predictions.process{i}.jsonl').read_text().splitlines())
    for i in range(2)
  ]
  assert sorted(shards) == [1, 2]


def test_training_mesh_uses_the_devices_that_split_the_batch():
  code = """
import jax
from spectral_jax.training import loop as train
assert jax.device_count() == 3
assert train.data_mesh(batch_size=6).size == 3
assert train.data_mesh(batch_size=4).size == 2
assert train.data_mesh(batch_size=5).size == 1
"""
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=3')
  subprocess.run([sys.executable, '-c', code], check=True, env=env, cwd=ROOT)


def test_pad_to_multiple():
  batch = np.arange(5)[:, None]
  np.testing.assert_array_equal(parallel.pad_to_multiple(batch, 4)[:, 0], [0, 1, 2, 3, 4, 4, 4, 4])
  assert parallel.pad_to_multiple(batch, 5) is batch


def semantic_cmds(root, workdir, cache):
  """--mode=semantic → train → evaluate on a VOC-like folder (parity ViT-S/16, 2 blocks)."""
  common = [
    sys.executable,
    'main.py',
    '--config=configs/voc_semantic.py',
    f'--workdir={workdir}',
    f'--config.data.root={root / "JPEGImages"}',
    f'--config.model.checkpoint={PARITY / "checkpoint.pth"}',
    f'--config.model.cache_dir={cache}',
    '--config.output.num_panels=0',
    '--config.semantic.n_segments=3',
    '--config.semantic.num_dilate=1',
    '--config.semantic.num_clusters=3',
    '--config.train.steps=4',
    '--config.train.batch_size=2',
    '--config.train.crop_size=32',
    '--config.train.eval_every=2',
    '--config.train.checkpoint_every=2',
    '--config.train.log_every=1',
    '--config.train.num_workers=2',
    '--config.segmenter.channels=16',
    '--config.segmenter.low_level_channels=8',
  ]
  return [
    common + ['--mode=semantic'],
    common + ['--mode=train'],
    common + ['--mode=evaluate', f'--config.checkpoint={workdir}', f'--workdir={workdir}/eval'],
  ]


def free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def run_two_processes(cmds):
  """Runs cmds[i] as process i of a 2-process JAX distributed run; returns their logs."""
  port = free_port()
  procs = [
    run(
      cmd
      + [
        '--config.distributed.enabled=True',
        f'--config.distributed.coordinator_address=127.0.0.1:{port}',
        '--config.distributed.num_processes=2',
        f'--config.distributed.process_id={i}',
      ]
    )
    for i, cmd in enumerate(cmds)
  ]
  logs = [finish(proc) for proc in procs]
  assert 'JAX process 1/2' in logs[1]
  return logs


@pytest.mark.slow  # ~1–4 min: two processes through semantic, train and evaluate
def test_semantic_train_evaluate_on_two_processes_match_one(tmp_path):
  """Pseudo-labels, self-training and evaluation: two processes with one device each (a
  global batch over 2 devices) write what one process writes."""
  from tests.test_train import write_voc_like  # pylint: disable=import-outside-toplevel
  from PIL import Image  # pylint: disable=import-outside-toplevel

  root = write_voc_like(tmp_path / 'VOC2012')
  for cmd in semantic_cmds(root, tmp_path / 'one', tmp_path / 'c1'):
    finish(run(cmd))
  for cmds in zip(*(semantic_cmds(root, tmp_path / 'two', tmp_path / f'c2{i}') for i in range(2))):
    run_two_processes(list(cmds))

  one, two = tmp_path / 'one', tmp_path / 'two'
  stems = sorted(p.stem for p in (one / 'semantic').glob('*.png'))
  assert len(stems) == 8
  for s in stems:
    a = np.array(Image.open(one / 'semantic' / f'{s}.png'))
    np.testing.assert_array_equal(np.array(Image.open(two / 'semantic' / f'{s}.png')), a)
  assert json.loads((two / 'metrics.json').read_text()) == json.loads(
    (one / 'metrics.json').read_text()
  )
  logs = [
    [r for r in map(json.loads, (w / 'train_log.jsonl').read_text().splitlines())]
    for w in (one, two)
  ]
  assert [r['step'] for r in logs[0]] == [r['step'] for r in logs[1]] and len(logs[0]) >= 4
  for a, b in zip(*logs):
    for key in ('loss', 'accuracy', 'val_miou'):
      if key in a:
        # One device vs two: same maths, different reduction order (a near-tie pixel of
        # the barely trained model may flip, hence the absolute mIoU tolerance).
        np.testing.assert_allclose(b[key], a[key], rtol=1e-5, atol=1e-5)
  summaries = [json.loads((w / 'train_metrics.json').read_text()) for w in (one, two)]
  assert summaries[0]['step'] == summaries[1]['step'] == 4
  np.testing.assert_allclose(
    summaries[1]['best_val_miou'], summaries[0]['best_val_miou'], rtol=0, atol=1e-5
  )
  scores = [json.loads((w / 'eval' / 'evaluate_metrics.json').read_text()) for w in (one, two)]
  assert scores[0]['num_annotated'] == scores[1]['num_annotated'] == 2
  np.testing.assert_allclose(scores[1]['miou'], scores[0]['miou'], rtol=0, atol=1e-5)
  for score, summary in zip(scores, summaries):  # evaluate scores the best validated step
    np.testing.assert_allclose(score['miou'], summary['best_val_miou'], rtol=1e-6)


@pytest.mark.slow  # ~1 min: edit on two processes
def test_edit_on_two_processes_matches_one(tmp_path):
  """--mode=edit: each process cuts out its own share; the files equal a one-process run."""
  from PIL import Image  # pylint: disable=import-outside-toplevel

  def cmd(workdir, cache):
    return [
      sys.executable,
      'main.py',
      '--config=configs/edit.py',
      '--mode=edit',
      f'--workdir={workdir}',
      f'--config.data.root={PARITY / "images"}',
      f'--config.model.checkpoint={PARITY / "checkpoint.pth"}',
      f'--config.model.cache_dir={cache}',
      '--config.edit.background=#00ff00',
      '--config.output.num_panels=0',
    ]

  finish(run(cmd(tmp_path / 'one', tmp_path / 'c1')))
  logs = run_two_processes([cmd(tmp_path / 'two', tmp_path / f'c2{i}') for i in range(2)])
  assert 'edit: 2 images' in logs[0] and 'edit: 1 image\n' in logs[1]  # strided shares
  for sub in ('cutout', 'composite'):
    names = sorted(p.name for p in (tmp_path / 'one' / sub).glob('*.png'))
    assert len(names) == 3
    assert sorted(p.name for p in (tmp_path / 'two' / sub).glob('*.png')) == names
    for name in names:
      np.testing.assert_array_equal(
        np.asarray(Image.open(tmp_path / 'two' / sub / name)),
        np.asarray(Image.open(tmp_path / 'one' / sub / name)),
      )
