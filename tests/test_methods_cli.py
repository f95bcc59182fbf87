"""--config.method=tokencut|lost through the task runners and main.py, against the outputs of
the official TokenCut and LOST code (tests/data/methods, see its manifest)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spectral_jax import pipeline
from spectral_jax import artifacts
from spectral_jax.models import vit
from spectral_jax.spectral import lost, tokencut
from spectral_jax.tasks import localize, segment
from tests.conftest import XLA_CACHE_ENV

ROOT = Path(__file__).parent.parent
METHODS = Path(__file__).parent / 'data' / 'methods'
MANIFEST = json.loads((METHODS / 'manifest.json').read_text())
IMAGES = (METHODS / MANIFEST['images_dir']).resolve()
CHECKPOINT = (METHODS / MANIFEST['checkpoint']).resolve()
IDS = sorted(MANIFEST['images'])


@pytest.fixture
def config(tmp_path):
  from configs import folder  # pylint: disable=import-outside-toplevel

  config = folder.get_config()
  config.data.root = str(IMAGES)
  config.model.name = MANIFEST['model_name']
  config.model.checkpoint = str(CHECKPOINT)
  config.model.cache_dir = str(tmp_path / 'cache')
  config.output.num_panels = 1
  return config


def _ref(image_id):
  return np.load(METHODS / f'{image_id}.npz')


def _predictions(workdir):
  return {r['id']: r for r in artifacts.read_jsonl(Path(workdir) / 'predictions.jsonl')}


@pytest.mark.parametrize('method', ['tokencut', 'lost'])
def test_localize_boxes_equal_official(config, tmp_path, method):
  config.method = method
  localize.run(config, tmp_path / 'out')
  preds = _predictions(tmp_path / 'out')
  assert sorted(preds) == IDS
  for image_id in IDS:
    info = MANIFEST['images'][image_id]
    assert preds[image_id]['box_xyxy'] == info[f'{method}_box_xyxy'], image_id
    prefix = 'tc' if method == 'tokencut' else 'lost'
    assert preds[image_id]['box_xyxy'] == _ref(image_id)[f'{prefix}_box_xyxy'].tolist()
    assert preds[image_id]['image_size'] == [info['height'], info['width']]
  assert (tmp_path / 'out' / 'panels' / f'{IDS[0]}.png').exists()


def _agreement(workdir, image_id, key):
  ours = np.asarray(Image.open(Path(workdir) / 'masks' / f'{image_id}.png'))
  ref = _ref(image_id)[key]
  assert ours.shape == ref.shape and ours.dtype == np.uint8
  assert set(np.unique(ours)) <= {0, 255}
  return float(np.mean((ours > 127) == (ref > 127)))


@pytest.mark.parametrize('refine, key', [('none', 'sal_mask'), ('bilateral', 'bs_mask')])
def test_tokencut_saliency_masks_equal_official(config, tmp_path, refine, key):
  config.method = 'tokencut'
  config.segment.refine = refine
  segment.run(config, tmp_path / 'out')
  for image_id in IDS:
    assert _agreement(tmp_path / 'out', image_id, key) >= 0.999, image_id


def test_main_localize_tokencut(tmp_path):
  out = tmp_path / 'out'
  cmd = [
    sys.executable,
    'main.py',
    '--config=configs/folder.py',
    '--mode=localize',
    '--config.method=tokencut',
    f'--config.data.root={IMAGES}',
    '--config.model.name=dino_vits16',
    f'--config.model.checkpoint={CHECKPOINT}',
    f'--workdir={out}',
  ]
  env = {
    'SPECTRAL_JAX_CACHE': str(tmp_path / 'cache'),
    'PATH': '/usr/bin:/bin',
    'JAX_PLATFORMS': 'cpu',
    **XLA_CACHE_ENV,
  }
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  preds = _predictions(out)
  for image_id in IDS:
    info = MANIFEST['images'][image_id]
    assert preds[image_id] == {
      'id': image_id,
      'box_xyxy': info['tokencut_box_xyxy'],
      'image_size': [info['height'], info['width']],
    }


def _oracle_box(extractor, image, method, max_tokens):
  """The method run by hand on the downscaled image (spectral/*.discover on the keys of the
  whole padded input through the ViT's image path, not the pipeline's patch sequences), its
  box scaled to the original frame."""
  small = pipeline.fit_tokens(image, 16, max_tokens)
  x = tokencut.padded_input(small, 16)
  keys = vit.VisionTransformer(extractor.arch).apply(extractor.variables, x[None])['k']
  grids = [(x.shape[0] // 16, x.shape[1] // 16)]
  hw = [small.shape[:2]]
  if method == 'tokencut':
    box = tokencut.discover(keys, grids, hw, 16, solver='dense')['box'][0]
  else:
    box = lost.discover(keys, grids, hw, 16)['box'][0]
  return pipeline.scale_box(box, small.shape[:2], image.shape[:2]).tolist(), small.shape[:2]


def test_downscaled_images_give_outputs_in_the_original_frame(config, tmp_path):
  config.data.max_tokens = 200
  config.data.batch_tokens = 4096
  extractor = pipeline.load_extractor(
    MANIFEST['model_name'], str(CHECKPOINT), config.model.cache_dir
  )
  image = np.asarray(Image.open(IMAGES / 'coffee.png').convert('RGB'))
  for method in ('tokencut', 'lost'):
    config.method = method
    localize.run(config, tmp_path / method)
    pred = _predictions(tmp_path / method)['coffee']
    want, small = _oracle_box(extractor, image, method, 200)
    assert small != image.shape[:2]  # really downscaled
    assert pred['image_size'] == list(image.shape[:2])
    assert pred['box_xyxy'] == want, method
  config.method = 'tokencut'
  for refine in ('none', 'bilateral'):
    config.segment.refine = refine
    segment.run(config, tmp_path / f'seg_{refine}')
    for image_id in IDS:
      info = MANIFEST['images'][image_id]
      mask = np.asarray(Image.open(tmp_path / f'seg_{refine}' / 'masks' / f'{image_id}.png'))
      assert mask.shape == (info['height'], info['width'])
      assert 0 < (mask > 0).mean() < 1


def test_lost_segment_masks_are_the_official_seed_component(config, tmp_path):
  """LOST's mask (stable sort: the official seed component on every reference image), ×16
  blocks of the padded grid cropped to the image."""
  config.method = 'lost'
  segment.run(config, tmp_path / 'out')
  for image_id in IDS:
    ours = np.asarray(Image.open(tmp_path / 'out' / 'masks' / f'{image_id}.png')) > 0
    blocks = np.kron(_ref(image_id)['lost_mask'], np.ones((16, 16), bool))
    np.testing.assert_array_equal(ours, blocks[: ours.shape[0], : ours.shape[1]])


def test_extract_tokencut_eigenpairs_and_lost_refused(config, tmp_path):
  from spectral_jax.tasks import extract  # pylint: disable=import-outside-toplevel

  config.method = 'tokencut'
  config.data.limit = 1
  extract.run(config, tmp_path / 'out')
  eigs = np.load(tmp_path / 'out' / 'eigs' / f'{IDS[0]}.npz')
  ref = _ref(IDS[0])
  assert eigs['patch_grid'].tolist() == MANIFEST['images'][IDS[0]]['patch_grid']
  np.testing.assert_allclose(eigs['eigenvalues'][1:3], ref['tc_eigenvalues'], atol=2e-6)
  v = eigs['eigenvectors'][1]
  assert np.dot(v, ref['tc_eigvec']) / np.linalg.norm(v) / np.linalg.norm(ref['tc_eigvec']) > 0.9999
  feats = np.load(tmp_path / 'out' / 'features' / f'{IDS[0]}.npz')['k']
  k = ref['k'][1:]
  assert np.abs(feats - k).max() <= 1e-4 * np.abs(k).max()
  config.method = 'lost'
  with pytest.raises(ValueError, match='no eigenvectors'):
    extract.run(config, tmp_path / 'lost')
