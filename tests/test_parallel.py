"""parallel.py: 4 simulated devices and 2 real processes give the single-process results."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

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
  _, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err[-3000:]
  return err


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

  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  procs = [
      run(
          localize_cmd(
              tmp_path / 'two',
              tmp_path / f'c2{i}',
              boxes,
              '--config.distributed.enabled=True',
              f'--config.distributed.coordinator_address=127.0.0.1:{port}',
              '--config.distributed.num_processes=2',
              f'--config.distributed.process_id={i}',
          )
      )
      for i in range(2)
  ]
  logs = [finish(proc) for proc in procs]
  assert 'JAX process 1/2' in logs[1]

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


def test_pad_to_multiple():
  batch = np.arange(5)[:, None]
  np.testing.assert_array_equal(parallel.pad_to_multiple(batch, 4)[:, 0], [0, 1, 2, 3, 4, 4, 4, 4])
  assert parallel.pad_to_multiple(batch, 5) is batch
