"""spectral/lost.py against the official LOST outputs and a float64 numpy oracle."""

import json
from pathlib import Path

import numpy as np
import pytest
from skimage.measure import label as sk_label

from spectral_jax.spectral import lost

METHODS = Path(__file__).parent / 'data' / 'methods'
MANIFEST = json.loads((METHODS / 'manifest.json').read_text())
IDS = sorted(MANIFEST['images'])


def _ref(image_id):
  return np.load(METHODS / f'{image_id}.npz')


@pytest.fixture(scope='module')
def batch():
  """The official keys (CLS dropped) of all images zero-padded to one token length."""
  keys = [_ref(i)['k'][1:] for i in IDS]
  length = max(len(k) for k in keys)
  out = np.zeros((len(keys), length, keys[0].shape[1]), np.float32)
  for b, k in enumerate(keys):
    out[b, : len(k)] = k
  grids = [tuple(MANIFEST['images'][i]['patch_grid']) for i in IDS]
  hws = [(MANIFEST['images'][i]['height'], MANIFEST['images'][i]['width']) for i in IDS]
  return out, grids, hws


def _grid(flat, grid):
  return np.asarray(flat)[: grid[0] * grid[1]].reshape(grid)


def test_stable_order_matches_official_seed_mask_box(batch):
  keys, grids, hws = batch
  res = lost.discover(keys, grids, hws, 16, k_patches=100)
  for b, image_id in enumerate(IDS):
    ref, info = _ref(image_id), MANIFEST['images'][image_id]
    n = grids[b][0] * grids[b][1]
    np.testing.assert_array_equal(res['degree'][b, :n], ref['lost_degree'])
    assert res['seed'][b] == ref['lost_seed'] == info['lost_seed']
    assert res['degree'][b, res['seed'][b]] == info['lost_seed_degree']
    np.testing.assert_array_equal(_grid(res['mask'][b], grids[b]), ref['lost_mask'])
    np.testing.assert_array_equal(res['box'][b], ref['lost_box_xyxy'])
    np.testing.assert_array_equal(res['box'][b], info['lost_box_xyxy'])
    # The stable order: degrees ascending, ties by lowest index, padded tokens last.
    order = res['order'][b]
    np.testing.assert_array_equal(order[:n], np.argsort(ref['lost_degree'], kind='stable'))
    np.testing.assert_array_equal(np.sort(order[n:]), np.arange(n, keys.shape[1]))
    assert not res['mask'][b, n:].any() and not res['similars'][b, n:].any()


def test_official_order_reproduces_expansion(batch):
  """With the recorded torch tie order, the expansion set, M and the mask are the official."""
  keys, grids, hws = batch
  order = np.tile(np.arange(keys.shape[1], dtype=np.int32), (len(IDS), 1))
  for b, image_id in enumerate(IDS):
    rec = _ref(image_id)['lost_order']
    order[b, : len(rec)] = rec
  res = lost.discover(keys, grids, hws, 16, k_patches=100, order=order)
  for b, image_id in enumerate(IDS):
    ref = _ref(image_id)
    n = grids[b][0] * grids[b][1]
    assert set(np.flatnonzero(res['potentials'][b])) == set(ref['lost_potentials'])
    assert set(np.flatnonzero(res['similars'][b])) == set(ref['lost_similars'])
    m, m_ref = res['M'][b, :n], ref['lost_M']
    np.testing.assert_allclose(m, m_ref, atol=1e-5 * np.abs(m_ref).max())
    np.testing.assert_array_equal(m > 0, m_ref > 0)
    np.testing.assert_array_equal(_grid(res['mask'][b], grids[b]), ref['lost_mask'])
    np.testing.assert_array_equal(res['box'][b], ref['lost_box_xyxy'])


def _oracle(keys, grid, k_patches, patch_size=16):
  """Float64 LOST with a stable sort and skimage's 4-connected labelling."""
  a = keys.astype(np.float64) @ keys.astype(np.float64).T
  pos = a > 0
  np.fill_diagonal(pos, False)
  deg = pos.sum(1)
  order = np.argsort(deg, kind='stable')
  seed = order[0]
  pot = order[:k_patches]
  sim = pot[a[seed, pot] > 0]
  m = a[sim].sum(0)
  labels = sk_label((m > 0).reshape(grid), connectivity=1)
  comp = labels == labels.ravel()[seed]
  ys, xs = np.nonzero(comp)
  box = [
    patch_size * xs.min(),
    patch_size * ys.min(),
    patch_size * (xs.max() + 1),
    patch_size * (ys.max() + 1),
  ]
  return deg, seed, sim, m, comp, box


def test_matches_float64_oracle_with_ties_and_padding():
  rng = np.random.default_rng(0)
  grids = [(6, 7), (5, 5)]
  keys = np.zeros((2, 42, 4), np.float32)
  for b, g in enumerate(grids):
    n = g[0] * g[1]
    # Small integer keys: exact dot products, many equal degrees (ties) and some zeros.
    keys[b, :n] = rng.integers(-2, 3, size=(n, 4))
    keys[b, :n][np.all(keys[b, :n] == 0, axis=1)] = 1
  res = lost.discover(keys, grids, None, 16, k_patches=10)
  for b, g in enumerate(grids):
    n = g[0] * g[1]
    deg, seed, sim, m, comp, box = _oracle(keys[b, :n], g, 10)
    assert len(np.unique(deg)) < n  # the case has ties
    np.testing.assert_array_equal(res['degree'][b, :n], deg)
    assert res['seed'][b] == seed
    np.testing.assert_array_equal(np.flatnonzero(res['similars'][b]), np.sort(sim))
    np.testing.assert_allclose(res['M'][b, :n], m, atol=1e-4)
    np.testing.assert_array_equal(_grid(res['mask'][b], g), comp)
    assert res['box'][b].tolist() == box


def test_k_patches_larger_than_image_takes_all_real_patches():
  rng = np.random.default_rng(1)
  keys = np.zeros((1, 12, 3), np.float32)
  keys[0, :6] = rng.normal(size=(6, 3))
  res = lost.discover(keys, [(2, 3)], None, 16, k_patches=100)
  np.testing.assert_array_equal(res['potentials'][0], np.arange(12) < 6)
