"""``main.py --mode=extract`` (and localize) with the registry backbones: the written arrays
equal the official DINOv2 / DINOv3 / ResNet-50 outputs (tests/data/backbones)."""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from spectral_jax import artifacts
from spectral_jax.models import extractor as extractor_lib
from spectral_jax.models.weights.checkpoints import read_state_dict
from tests import backbones_data as bd
from tests.conftest import XLA_CACHE_ENV
from tests.test_backbones import _official_to_hf_dinov2

ROOT = Path(__file__).parent.parent


def _main(tmp_path, *args):
  env = {
    'SPECTRAL_JAX_CACHE': str(tmp_path / 'cache'),
    'PATH': '/usr/bin:/bin',
    'JAX_PLATFORMS': 'cpu',
    **XLA_CACHE_ENV,
  }
  cmd = [sys.executable, 'main.py', '--config=configs/folder.py', *args]
  return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _extract(tmp_path, name, checkpoint):
  root = tmp_path / 'images'
  root.mkdir(exist_ok=True)
  stem = bd.MANIFEST[name]['image']
  shutil.copy(bd.DATA / 'images' / f'{stem}.png', root)
  out = tmp_path / 'out'
  proc = _main(
    tmp_path,
    '--mode=extract',
    f'--config.model.name={name}',
    f'--config.model.checkpoint={checkpoint}',
    f'--config.data.root={root}',
    f'--workdir={out}',
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  with np.load(out / 'features' / f'{stem}.npz') as z:
    written = dict(z)
  with np.load(out / 'eigs' / f'{stem}.npz') as z:
    assert np.isfinite(z['eigenvectors']).all()
  return written


def _check(written, name):
  written['grid'] = tuple(written['patch_grid'])
  errs = bd.rel_errors(written, name)
  # Every reference array is written (k / features, and the extras).
  assert set(errs) == set(bd.reference(name)), errs
  assert max(errs.values()) <= 1e-4, errs


@pytest.mark.parametrize('name', ['dinov2_vits14_reg', 'dinov3_vits16', 'dino_resnet50'])
def test_extract_writes_the_official_arrays(tmp_path, name):
  written = _extract(tmp_path, name, bd.DATA / name / 'checkpoint.pth')
  _check(written, name)
  if name == 'dino_resnet50':  # DSM's features are layer4's
    np.testing.assert_array_equal(written['k'], written['features'])


def test_extract_from_a_hugging_face_folder(tmp_path):
  name = 'dinov2_vits14_reg'
  folder = tmp_path / 'hf'
  folder.mkdir()
  sd = read_state_dict(bd.DATA / name / 'checkpoint.pth')
  save_file(_official_to_hf_dinov2(sd), str(folder / 'model.safetensors'), {'format': 'pt'})
  shutil.copy(bd.DATA / name / 'hf_config.json', folder / 'config.json')
  _check(_extract(tmp_path, name, folder), name)


def test_gated_dinov3_without_checkpoint_says_how_to_get_it(tmp_path):
  root = tmp_path / 'images'
  root.mkdir()
  shutil.copy(bd.DATA / 'images' / 'coffee.png', root)
  proc = _main(
    tmp_path,
    '--mode=extract',
    '--config.model.name=dinov3_vits16',
    f'--config.data.root={root}',
    f'--workdir={tmp_path / "out"}',
  )
  assert proc.returncode != 0
  assert '--config.model.checkpoint' in proc.stderr and 'gated' in proc.stderr


def test_localize_with_dinov2(tmp_path):
  root = tmp_path / 'images'
  root.mkdir()
  shutil.copy(bd.DATA / 'images' / 'coffee.png', root)
  out = tmp_path / 'out'
  proc = _main(
    tmp_path,
    '--mode=localize',
    '--config.model.name=dinov2_vits14',
    f'--config.model.checkpoint={bd.DATA / "dinov2_vits14" / "checkpoint.pth"}',
    f'--config.data.root={root}',
    f'--workdir={out}',
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  (pred,) = artifacts.read_jsonl(out / 'predictions.jsonl')
  h, w = pred['image_size']
  assert (h, w) == (400, 600)
  x0, y0, x1, y1 = pred['box_xyxy']
  assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h


@pytest.mark.parametrize('mode', ['semantic', 'train', 'evaluate'])
def test_modes_on_a_vit_refuse_the_resnet(mode):
  for name in ('dino_vits16', 'dinov2_vits14_reg', 'dinov3_vits16'):
    extractor_lib.require_vit(name, mode)
  with pytest.raises(ValueError, match=f'--mode={mode} .*dino_resnet50.*needs a ViT backbone'):
    extractor_lib.require_vit('dino_resnet50', mode)


@pytest.mark.parametrize(
  'name', ['dinov2_vits14_reg', pytest.param('dinov3_vits16', marks=pytest.mark.slow)]
)
def test_edit_discover_and_semantic_run_on_newer_vits(tmp_path, name):
  """Every mode that needs only keys (and CLS tokens for semantic) runs on DINOv2/v3."""
  root = tmp_path / 'images'
  root.mkdir()
  shutil.copy(bd.DATA / 'images' / 'coffee.png', root)
  shutil.copy(ROOT / 'tests' / 'data' / 'parity' / 'images' / 'astronaut.png', root)
  ckpt = f'--config.model.checkpoint={bd.DATA / name / "checkpoint.pth"}'
  flags = [f'--config.model.name={name}', ckpt, f'--config.data.root={root}']
  proc = _main(
    tmp_path,
    '--mode=edit',
    f'--workdir={tmp_path / "edit"}',
    *flags,
    '--config.output.features=False',
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  from PIL import Image  # pylint: disable=import-outside-toplevel

  cut = np.asarray(Image.open(tmp_path / 'edit' / 'cutout' / 'coffee.png'))
  assert cut.shape == (400, 600, 4)
  proc = _main(
    tmp_path,
    '--mode=discover',
    f'--workdir={tmp_path / "disc"}',
    *flags,
    '--config.discover.crf=False',
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  import json  # pylint: disable=import-outside-toplevel

  instances = json.loads((tmp_path / 'disc' / 'instances.json').read_text())
  assert sorted(im['file_name'] for im in instances['images']) == ['astronaut.png', 'coffee.png']
  cmd = [
    sys.executable,
    'main.py',
    '--config=configs/voc_semantic.py',
    '--mode=semantic',
    f'--workdir={tmp_path / "sem"}',
    *flags,
    '--config.semantic.num_clusters=2',
    '--config.semantic.n_segments=3',
  ]
  env = {
    'SPECTRAL_JAX_CACHE': str(tmp_path / 'cache'),
    'PATH': '/usr/bin:/bin',
    'JAX_PLATFORMS': 'cpu',
    **XLA_CACHE_ENV,
  }
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  maps = sorted(p.name for p in (tmp_path / 'sem' / 'semantic').glob('*.png'))
  assert maps == ['astronaut.png', 'coffee.png']
