"""Tests for spectral_jax.spectral.clustering: k-means vs sklearn, segments, boxes, maps."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs

from spectral_jax.spectral import clustering as C


def _blobs(seed, n=600, d=5, centers=6, std=3.0):
  x, y = make_blobs(n, d, centers=centers, random_state=seed, cluster_std=std)
  return x.astype(np.float32), y


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_lloyd_matches_sklearn_from_same_init(seed):
  x, _ = _blobs(seed)
  mask = jnp.ones(len(x), bool)
  init = np.asarray(C.kmeans_plusplus(jax.random.PRNGKey(seed), jnp.asarray(x), mask, 6))
  ours = jax.jit(C.lloyd)(jnp.asarray(x), mask, jnp.asarray(init))
  ref = KMeans(6, init=init, n_init=1).fit(x)
  np.testing.assert_array_equal(np.asarray(ours.labels), ref.labels_)
  np.testing.assert_allclose(float(ours.inertia), ref.inertia_, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(ours.centres), ref.cluster_centers_, atol=1e-4)
  assert int(ours.n_iter) == ref.n_iter_


def test_lloyd_relocates_empty_clusters_like_sklearn():
  x, _ = _blobs(3)
  init = x[np.random.default_rng(0).choice(len(x), 6, replace=False)].copy()
  init[1] = 1e3  # far away: empty after the first assignment
  ours = jax.jit(C.lloyd)(jnp.asarray(x), jnp.ones(len(x), bool), jnp.asarray(init))
  ref = KMeans(6, init=init, n_init=1).fit(x)
  np.testing.assert_array_equal(np.asarray(ours.labels), ref.labels_)
  np.testing.assert_allclose(float(ours.inertia), ref.inertia_, rtol=1e-5)


@pytest.mark.parametrize('seed', [0, 1, 2, 3])
def test_kmeans_inertia_at_least_as_good_as_sklearn_default(seed):
  x, _ = _blobs(seed, n=800, d=4, centers=8, std=0.5)  # well separated
  ours = C.kmeans(jnp.asarray(x), 8, jax.random.PRNGKey(seed))
  ref = KMeans(8, random_state=seed).fit(x)
  assert float(ours.inertia) <= ref.inertia_ * (1 + 1e-5)


def test_kmeans_is_deterministic_for_a_key():
  x, _ = _blobs(0)
  a = C.kmeans(jnp.asarray(x), 6, jax.random.PRNGKey(5))
  b = C.kmeans(jnp.asarray(x), 6, jax.random.PRNGKey(5))
  np.testing.assert_array_equal(np.asarray(a.labels), np.asarray(b.labels))


def test_batched_with_padding_equals_single_runs():
  xs = [_blobs(s, n=n)[0] for s, n in ((0, 600), (1, 410))]  # 600: same compile as above
  keys = jax.random.split(jax.random.PRNGKey(0), 2)
  x, mask = C._pad_points(xs, 768)
  batched = C.kmeans_batched(jnp.asarray(x), jnp.asarray(mask), keys, 6)
  for i, xi in enumerate(xs):
    single = C.kmeans(jnp.asarray(xi), 6, keys[i])
    labels = np.asarray(batched.labels[i])
    np.testing.assert_array_equal(labels[: len(xi)], np.asarray(single.labels))
    assert (labels[len(xi) :] == -1).all()
    np.testing.assert_allclose(float(batched.inertia[i]), float(single.inertia), rtol=1e-5)


def test_cluster_count_above_points_is_capped():
  vecs = np.random.default_rng(0).normal(size=(3, 6)).astype(np.float32)
  seg = C.multi_region_segments(vecs, (2, 3), n_segments=15)
  assert seg.shape == (2, 3) and seg.max() < 6


def _piecewise_eigvecs(regions, k=4, noise=1e-3, seed=0):
  """Eigenvector-like rows that are constant per region (plus noise): [k, N]."""
  rng = np.random.default_rng(seed)
  n_regions = regions.max() + 1
  table = rng.normal(size=(k, n_regions))
  table[0] = 1.0
  return (table[:, regions.ravel()] + noise * rng.normal(size=(k, regions.size))).astype(np.float32)


def test_multi_region_segments_recovers_regions_with_background_zero():
  regions = np.zeros((8, 10), np.int64)
  regions[2:5, 2:5] = 1
  regions[3:7, 6:9] = 2
  seg = C.multi_region_segments(
    _piecewise_eigvecs(regions), (8, 10), n_segments=3, key=jax.random.PRNGKey(1)
  )
  assert seg.shape == (8, 10)
  assert (seg[regions == 0] == 0).all()  # the border region became background
  for r in (1, 2):
    vals = np.unique(seg[regions == r])
    assert len(vals) == 1 and vals[0] != 0
  assert len(np.unique(seg)) == 3


def test_multi_region_segments_double_grid():
  regions = np.zeros((8, 8), np.int64)
  regions[2:6, 2:6] = 1
  seg = C.multi_region_segments(_piecewise_eigvecs(regions), (4, 4), n_segments=2)
  assert seg.shape == (8, 8)
  with pytest.raises(ValueError, match='fit neither'):
    C.multi_region_segments(_piecewise_eigvecs(regions), (3, 4), n_segments=2)


def test_adaptive_num_segments_uses_largest_gap_after_first():
  # gaps: 5 (excluded, i=0), 0.1, 0.1, 2.0 (i=3) → 4 clusters
  assert C.adaptive_num_segments(np.array([0.0, 5.0, 5.1, 5.2, 7.2, 7.3])) == 4
  regions = np.zeros((6, 6), np.int64)
  regions[1:4, 1:4] = 1
  seg = C.multi_region_segments(
    _piecewise_eigvecs(regions), (6, 6), adaptive=True, eigenvalues=np.array([0.0, 0.1, 0.9, 1.0])
  )
  assert len(np.unique(seg)) == 2  # gap at i=1 → 2 clusters


def test_border_background_counts_corners_twice_and_breaks_ties_low():
  seg = np.array([[3, 1, 1, 3], [3, 0, 0, 1], [3, 0, 0, 1], [3, 1, 3, 3]])
  # label 3: col0 4 + col3 2 + row0 2 + row3 3 = 11; label 1: 0 + 2 + 2 + 1 = 5
  assert C.border_background(seg) == 3
  swapped = C.swap_background(seg)
  assert (swapped[seg == 3] == 0).all() and (swapped[seg == 0] == 3).all()
  tie = np.array([[2, 2], [1, 1]])
  assert C.border_background(tie) == 1


def _skimage_box(mask, num_erode, num_dilate):
  """The official extract_bboxes loop, run with skimage as the oracle."""
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    from skimage.morphology import binary_dilation, binary_erosion

    for op, n in ((binary_erosion, num_erode), (binary_dilation, num_dilate)):
      for _ in range(n):
        new = op(mask)
        if new.sum() > 0:
          mask = new
  rows, cols = np.where(mask)
  return [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]


def test_morphology_matches_skimage():
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    from skimage.morphology import binary_dilation, binary_erosion

    rng = np.random.default_rng(0)
    for _ in range(20):
      m = rng.random((9, 13)) < 0.6
      np.testing.assert_array_equal(C.binary_erosion(m), binary_erosion(m))
      np.testing.assert_array_equal(C.binary_dilation(m), binary_dilation(m))


@pytest.mark.parametrize('seed', range(5))
def test_segment_boxes_match_skimage_oracle(seed):
  rng = np.random.default_rng(seed)
  seg = rng.integers(0, 5, size=(12, 17))
  seg[3:9, 4:12] = 5  # one solid segment; the others are speckle that erodes away
  idx, boxes = C.segment_boxes(seg, num_erode=2, num_dilate=5)
  np.testing.assert_array_equal(idx, [1, 2, 3, 4, 5])
  for s, box in zip(idx, boxes):
    assert list(box) == _skimage_box(seg == s, 2, 5)


def test_segment_boxes_border_segment_keeps_border():
  seg = np.zeros((6, 6), np.int64)
  seg[:, :2] = 1  # touches the border: erosion does not eat from outside
  _, boxes = C.segment_boxes(seg, num_erode=1, num_dilate=0)
  np.testing.assert_array_equal(boxes, [[0, 0, 1, 6]])


def test_cluster_features_and_semantic_map():
  rng = np.random.default_rng(0)
  centres = rng.normal(size=(3, 16))
  feats = np.concatenate([c + 0.01 * rng.normal(size=(10, 16)) for c in centres]) * 7.0
  labels = C.cluster_features(feats, n_clusters=3, seed=0)
  np.testing.assert_array_equal(labels, C.cluster_features(feats, n_clusters=3, seed=0))
  for g in range(3):  # each true group is one cluster
    assert len(np.unique(labels[g * 10 : (g + 1) * 10])) == 1
  assert len(np.unique(labels)) == 3
  mb = C.cluster_features(feats, n_clusters=3, method='minibatch')
  assert len(np.unique(mb)) == 3
  with pytest.raises(ValueError, match='cannot make 3 clusters'):
    C.cluster_features(feats[:2], n_clusters=3)

  from sklearn.decomposition import PCA  # pylint: disable=import-outside-toplevel

  np.testing.assert_allclose(
    np.abs(C.pca(feats, 4)), np.abs(PCA(4).fit_transform(feats)), atol=1e-4
  )

  seg = np.array([[0, 1], [2, 2]])
  sem = C.semantic_map(seg, np.array([1, 2]), np.array([0, 4]))
  np.testing.assert_array_equal(sem, [[0, 1], [5, 5]])  # cluster 0 ≠ background
  assert sem.dtype == np.uint8
