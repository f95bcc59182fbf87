"""spectral/tokencut.py against the official TokenCut outputs and a float64 scipy oracle."""

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
from PIL import Image
from skimage.measure import label as sk_label

from spectral_jax import pipeline
from spectral_jax.spectral import tokencut

METHODS = Path(__file__).parent / 'data' / 'methods'
MANIFEST = json.loads((METHODS / 'manifest.json').read_text())
IMAGES_DIR = METHODS / MANIFEST['images_dir']
CHECKPOINT = METHODS / MANIFEST['checkpoint']
IDS = sorted(MANIFEST['images'])


def _ref(image_id):
  return np.load(METHODS / f'{image_id}.npz')


def _image(image_id):
  return np.asarray(Image.open(IMAGES_DIR / f'{image_id}.png').convert('RGB'))


@pytest.fixture(scope='module')
def extractor():
  with tempfile.TemporaryDirectory() as cache:
    yield pipeline.load_extractor(MANIFEST['model_name'], str(CHECKPOINT), cache)


def _recorded_batch():
  """The official keys (CLS dropped) of all images, zero-padded to one token length."""
  keys = [_ref(i)['k'][1:] for i in IDS]
  batch = np.zeros((len(keys), max(len(k) for k in keys), keys[0].shape[1]), np.float32)
  for b, k in enumerate(keys):
    batch[b, : len(k)] = k
  grids = [tuple(MANIFEST['images'][i]['patch_grid']) for i in IDS]
  hws = [(MANIFEST['images'][i]['height'], MANIFEST['images'][i]['width']) for i in IDS]
  return batch, grids, hws


def _abs_cos(a, b):
  return abs(np.dot(a, b)) / (np.linalg.norm(a) * np.linalg.norm(b))


# ----------------------------------------------------------------------------------------------
# Object discovery
# ----------------------------------------------------------------------------------------------


def test_padded_input_pads_zeros_after_normalisation():
  image = np.full((20, 35, 3), 200, np.uint8)
  x = tokencut.padded_input(image, 16)
  assert x.shape == (32, 48, 3) and x.dtype == np.float32
  want = (np.float32(200) / np.float32(255) - np.array([0.485, 0.456, 0.406], np.float32)) / (
    np.array([0.229, 0.224, 0.225], np.float32)
  )
  np.testing.assert_allclose(x[:20, :35], np.broadcast_to(want, (20, 35, 3)), rtol=1e-6)
  assert not x[20:].any() and not x[:, 35:].any()


def test_padded_keys_match_official(extractor):
  images = [_image(i) for i in IDS]
  keys, grids = tokencut.padded_keys(extractor, images)
  keys = np.asarray(keys)
  for b, image_id in enumerate(IDS):
    assert grids[b] == tuple(MANIFEST['images'][image_id]['patch_grid'])
    ref = _ref(image_id)['k'][1:]
    err = np.abs(keys[b, : len(ref)] - ref).max()
    assert err <= 1e-4 * np.abs(ref).max(), (image_id, err)


def _check_against_official(res, b, image_id, grid):
  ref, info = _ref(image_id), MANIFEST['images'][image_id]
  n = grid[0] * grid[1]
  np.testing.assert_array_equal(
    tokencut.as_grid(res['bipartition'][b], grid), ref['tc_bipartition']
  )
  assert res['seed'][b] == ref['tc_seed'] == info['tokencut_seed']
  np.testing.assert_array_equal(tokencut.as_grid(res['mask'][b], grid), ref['tc_mask'])
  np.testing.assert_array_equal(res['box'][b], ref['tc_box_xyxy'])
  np.testing.assert_array_equal(res['box'][b], info['tokencut_box_xyxy'])
  np.testing.assert_allclose(res['eigenvalues'][b], ref['tc_eigenvalues'], atol=2e-6)
  assert _abs_cos(res['eigvec'][b, :n], ref['tc_eigvec']) >= 0.9999
  # Same orientation as the official vector (seed on the > mean side).
  assert np.dot(res['eigvec'][b, :n], ref['tc_eigvec']) > 0
  assert not res['mask'][b, n:].any() and not res['bipartition'][b, n:].any()


def test_discover_batched_matches_official():
  """All three images in one padded batch (Lanczos, the CPU 'auto' choice at these sizes)."""
  keys, grids, hws = _recorded_batch()
  res = tokencut.discover(keys, grids, hws, 16, tau=0.2, eps=1e-5, solver='lanczos')
  for b, image_id in enumerate(IDS):
    _check_against_official(res, b, image_id, grids[b])


@pytest.mark.parametrize('image_id', ['chelsea'])  # saliency_end_to_end runs dense on all
def test_discover_dense_matches_official(image_id):
  info = MANIFEST['images'][image_id]
  grid = tuple(info['patch_grid'])
  res = tokencut.discover(
    _ref(image_id)['k'][None, 1:], [grid], [(info['height'], info['width'])], 16, solver='dense'
  )
  _check_against_official(res, 0, image_id, grid)


def _two_cluster_keys(rng, n, d=8):
  centres = rng.normal(size=(2, d))
  labels = rng.random(n) < 0.35
  return (centres[labels.astype(int)] + 0.9 * rng.normal(size=(n, d))).astype(np.float32)


def _oracle(keys, grid, tau, eps):
  """Float64 official pipeline: scipy.linalg.eigh(D − W, D), mean split, seed, skimage 4-CC."""
  k = keys.astype(np.float64)
  f = k / np.linalg.norm(k, axis=1, keepdims=True)
  w = np.where(f @ f.T > tau, 1.0, eps)
  d = np.diag(w.sum(1))
  vals, vecs = scipy.linalg.eigh(d - w, d, subset_by_index=[1, 2])
  v = vecs[:, 0]
  m = v.mean()
  part = v > m
  seed = int(np.argmax(np.abs(v)))
  if not part[seed]:
    v, part = -v, v <= m
  labels = sk_label(part.reshape(grid), connectivity=1)
  comp = labels == labels.ravel()[seed]
  margin = np.min(np.abs(f @ f.T - tau))
  return vals, v, part, seed, comp, margin


def test_eigenproblem_matches_float64_oracle():
  rng = np.random.default_rng(3)
  grids = [(5, 8), (4, 6)]
  keys = np.zeros((2, 40, 8), np.float32)
  for b, g in enumerate(grids):
    keys[b, : g[0] * g[1]] = _two_cluster_keys(rng, g[0] * g[1])
  res = tokencut.discover(keys, grids, None, 16, tau=0.2, eps=1e-5, solver='dense')
  for b, g in enumerate(grids):
    n = g[0] * g[1]
    vals, v, part, seed, comp, margin = _oracle(keys[b, :n], g, 0.2, 1e-5)
    assert margin > 1e-4  # no similarity within float32 noise of tau
    np.testing.assert_allclose(res['eigenvalues'][b], vals, atol=1e-5)
    assert vals[1] - vals[0] > 0.05  # a gap, so the vector is well defined
    assert _abs_cos(res['eigvec'][b, :n], v) >= 0.9999
    np.testing.assert_allclose(
      res['eigvec'][b, :n] / np.abs(v).max(), v / np.abs(v).max(), atol=1e-4
    )
    np.testing.assert_array_equal(res['bipartition'][b, :n], part)
    assert res['seed'][b] == seed
    np.testing.assert_array_equal(tokencut.as_grid(res['mask'][b], g), comp)
    ys, xs = np.nonzero(comp)
    assert res['box'][b].tolist() == [
      16 * xs.min(),
      16 * ys.min(),
      16 * (xs.max() + 1),
      16 * (ys.max() + 1),
    ]


def test_seed_component_is_four_connected():
  mask = np.array([[1, 0, 1], [0, 1, 1], [1, 0, 0]], bool)
  np.testing.assert_array_equal(tokencut.seed_component(mask, 4), [[0, 0, 1], [0, 1, 1], [0, 0, 0]])
  with pytest.raises(ValueError):
    tokencut.seed_component(mask, 1)


def test_box_clips_max_side_to_unpadded_size():
  mask = np.zeros((3, 4), bool)
  mask[1:, 2:] = True
  assert tokencut.box_from_mask(mask, 16, (40, 60)).tolist() == [32, 16, 60, 40]


# ----------------------------------------------------------------------------------------------
# Saliency
# ----------------------------------------------------------------------------------------------


def test_saliency_size_rounds_half_to_even():
  # The protocol's example: 741×500 at P = 8 → 744×496 (62.5 → 62).
  assert tokencut.saliency_size(500, 741, 8) == (496, 744)
  assert tokencut.saliency_size(600, 100, 16) == (608, 96)  # 37.5 → 38, 6.25 → 6
  for image_id in IDS:
    info = MANIFEST['images'][image_id]
    assert (
      list(tokencut.saliency_size(info['height'], info['width'], 16))
      == (info['saliency_resized_size'])
    )
  with pytest.raises(ValueError):
    tokencut.saliency_size(7, 100, 16)


def test_torch_nearest_special_cases():
  np.testing.assert_array_equal(tokencut.torch_nearest_index(5, 5), np.arange(5))
  np.testing.assert_array_equal(tokencut.torch_nearest_index(6, 3), [0, 0, 1, 1, 2, 2])
  np.testing.assert_array_equal(tokencut.torch_nearest_index(5, 2), [0, 0, 0, 1, 1])


@pytest.mark.parametrize('image_id', IDS)
def test_upsample_of_official_patch_mask_is_official_mask(image_id):
  ref, info = _ref(image_id), MANIFEST['images'][image_id]
  full = tokencut.upsample_nearest(ref['sal_mask_patch'], (info['height'], info['width']))
  np.testing.assert_array_equal(full, ref['sal_mask'] > 0)


@pytest.mark.parametrize('image_id', IDS)
def test_saliency_end_to_end(extractor, image_id):
  ref, info = _ref(image_id), MANIFEST['images'][image_id]
  (res,) = tokencut.saliency(extractor, [_image(image_id)], solver='dense')
  assert res['mask'].shape == (info['height'], info['width'])
  agreement = np.mean(res['mask'] == (ref['sal_mask'] > 0))
  assert agreement >= 0.999, agreement
  np.testing.assert_array_equal(res['patch_mask'], ref['sal_mask_patch'])
  assert res['seed'] == ref['sal_seed'] == info['saliency_seed']
  np.testing.assert_allclose(res['eigenvalues'], ref['sal_eigenvalues'], atol=2e-6)
