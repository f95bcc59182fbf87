"""Tests of spectral_jax.spectral.affinity against independent numpy / scipy constructions."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from scipy.spatial import cKDTree

from spectral_jax.spectral.affinity import (
  color_image_for_grid,
  combined_affinity,
  feature_affinity,
  knn_color_affinity,
)

from tests.conftest import MANIFEST, PARITY, PARITY_IDS as IDS


def _grid(image_id: str):
  return tuple(MANIFEST['images'][image_id]['patch_grid'])


def _image(image_id: str) -> np.ndarray:
  return np.asarray(Image.open(PARITY / 'images' / f'{image_id}.png').convert('RGB'))


def _knn_features(image_lr: np.ndarray, dw: float) -> np.ndarray:
  """Official pixel features [r, g, b, dw·x, dw·y] (float64 maths, stored float32)."""
  h, w, _ = image_lr.shape
  x = np.tile(np.linspace(0, 1, w), h)
  y = np.repeat(np.linspace(0, 1, h), w)
  r, g, b = image_lr.reshape(-1, 3).T
  return np.stack([r, g, b, dw * x, dw * y], axis=1).astype(np.float32)


def _counts_from_neighbours(n: int, neighbour_lists) -> np.ndarray:
  """Official COO construction: (i, j) and (j, i) for every j in kNN(i), duplicates summed."""
  out = np.zeros((n, n), np.float32)
  for idx in neighbour_lists:
    rows = np.repeat(np.arange(n), idx.shape[1])
    cols = idx.reshape(-1)
    np.add.at(out, (np.concatenate([rows, cols]), np.concatenate([cols, rows])), 1.0)
  return out


def _boundary_tie_rows(feats: np.ndarray, k: int) -> np.ndarray:
  """Rows whose k-th and (k+1)-th smallest distances tie up to float32 rounding.

  Within that margin the neighbour set depends on the arithmetic (float32 vs float64) and on
  the tie-break, so it is not unique.
  """
  sq = ((feats[:, None, :].astype(np.float64) - feats[None, :, :]) ** 2).sum(-1)
  srt = np.sort(sq, axis=1)
  return np.where(srt[:, k] - srt[:, k - 1] <= 1e-6 * srt[:, k])[0]


@pytest.mark.parametrize('image_id', IDS)
def test_feature_affinity_matches_float64_numpy(image_id):
  k = np.load(PARITY / f'{image_id}.npz')['k'].astype(np.float64)
  f = k / np.maximum(np.linalg.norm(k, axis=1, keepdims=True), 1e-12)
  ref = f @ f.T
  ref = ref * (ref > 0)
  ref /= ref.max()
  w = np.asarray(jax.jit(feature_affinity)(k.astype(np.float32)))
  assert w.dtype == np.float32 and w.shape == ref.shape
  np.testing.assert_allclose(w, ref, atol=2e-6)
  assert (w >= 0).all() and np.isclose(w.max(), 1.0)


def test_feature_affinity_zero_rows_and_no_threshold():
  feats = np.array([[1.0, 0.0], [0.0, 0.0], [-1.0, 0.5]], np.float32)
  w = np.asarray(feature_affinity(feats))
  assert np.all(w[1] == 0) and w[0, 2] == 0  # zero feature → zero row; negative clipped
  raw = np.asarray(feature_affinity(feats, threshold_at_zero=False))
  assert raw[0, 2] < 0


def test_color_image_for_grid_resizes_whole_image_with_pil():
  # A left/right split image: if the image were cropped first, columns would shift.
  img = np.zeros((37, 53, 3), np.uint8)
  img[:, 26:] = 200
  out = color_image_for_grid(img, (2, 3))
  assert out.shape == (2, 3, 3) and out.dtype == np.float64
  expected = np.asarray(Image.fromarray(img).resize((3, 2), Image.BILINEAR)) / 255.0
  np.testing.assert_array_equal(out, expected)
  const = color_image_for_grid(np.full((40, 40, 3), 51, np.uint8), (5, 4))
  np.testing.assert_allclose(const, 0.2)


@pytest.mark.parametrize('image_id', IDS)
def test_knn_affinity_matches_bruteforce_numpy(image_id):
  """Same neighbour sets as a float32 numpy brute force with lowest-index tie-break."""
  image_lr = color_image_for_grid(_image(image_id), _grid(image_id))
  n = image_lr.shape[0] * image_lr.shape[1]
  lists = []
  for k, dw in [(20, 2.0), (10, 0.1)]:
    f = _knn_features(image_lr, dw)
    sq = np.zeros((n, n), np.float32)
    for c in range(f.shape[1]):
      diff = f[:, None, c] - f[None, :, c]
      sq += diff * diff
    lists.append(np.argsort(sq, axis=1, kind='stable')[:, :k])
  expected = _counts_from_neighbours(n, lists)
  w = np.asarray(jax.jit(knn_color_affinity)(jnp.asarray(image_lr)))
  np.testing.assert_array_equal(w, expected)


@pytest.mark.parametrize('image_id', IDS)
def test_knn_affinity_matches_kdtree_except_ties(image_id):
  """Against scipy's cKDTree: identical except in rows whose k-th neighbour is a tie."""
  image_lr = color_image_for_grid(_image(image_id), _grid(image_id))
  n = image_lr.shape[0] * image_lr.shape[1]
  w = np.asarray(knn_color_affinity(image_lr))
  lists, tie_rows = [], set()
  for k, dw in [(20, 2.0), (10, 0.1)]:
    f = _knn_features(image_lr, dw)
    dist, idx = cKDTree(f).query(f, k=k)
    assert np.all(idx[:, 0] == np.arange(n)) and np.all(dist[:, 0] == 0)  # self first
    lists.append(idx)
    tie_rows.update(_boundary_tie_rows(f, k).tolist())
  expected = _counts_from_neighbours(n, lists)
  diff_rows, diff_cols = np.nonzero(w != expected)
  # Every difference is an edge (i, j) or (j, i) whose owner row has a tie at rank k, and a
  # swapped tie changes at most 4 entries ((i, j), (j, i), (i, j'), (j', i)).
  for r, c in zip(diff_rows, diff_cols):
    assert r in tie_rows or c in tie_rows, (r, c)
  assert len(diff_rows) <= 4 * len(tie_rows)


def test_knn_affinity_structure():
  rng = np.random.default_rng(0)
  image_lr = rng.uniform(size=(9, 11, 3))
  w = np.asarray(knn_color_affinity(image_lr))
  n = 99
  assert w.shape == (n, n)
  np.testing.assert_array_equal(w, w.T)
  np.testing.assert_array_equal(np.diag(w), 4.0)  # self: 2 passes × 2 directions
  assert set(np.unique(w).tolist()) <= {0.0, 1.0, 2.0, 3.0, 4.0}
  # Row i sum per pass = k (its own list) + number of lists naming i (≥ 1: itself).
  assert w.sum() == 2 * n * (20 + 10) and (w.sum(1) >= 21 + 11).all()
  # n_neighbors / distance_weights are honoured: a single pass of 1 neighbour = 2·I.
  np.testing.assert_array_equal(
    np.asarray(knn_color_affinity(image_lr, n_neighbors=(1,), distance_weights=(1.0,))),
    2 * np.eye(n),
  )


def test_combined_affinity():
  rng = np.random.default_rng(1)
  feats = rng.normal(size=(20, 8)).astype(np.float32)
  image_lr = rng.uniform(size=(4, 5, 3))
  w0 = np.asarray(combined_affinity(feats))
  np.testing.assert_array_equal(w0, np.asarray(feature_affinity(feats)))
  w10 = np.asarray(
    jax.jit(combined_affinity, static_argnames='color_lambda')(feats, image_lr, color_lambda=10.0)
  )
  np.testing.assert_allclose(w10, w0 + 10.0 * np.asarray(knn_color_affinity(image_lr)), rtol=1e-6)
  with pytest.raises(ValueError):
    combined_affinity(feats, None, color_lambda=1.0)
