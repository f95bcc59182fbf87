"""k-means in JAX and the clustering stages of the semantic-segmentation pipeline.

* ``kmeans`` / ``kmeans_batched``: greedy k-means++ seeding (sklearn's algorithm,
  2 + ⌊ln k⌋ local trials) keyed by a PRNG key, then Lloyd iterations with
  sklearn's stopping rule (labels unchanged, or total squared centre shift ≤
  tol · mean feature variance) and its empty-cluster relocation (an empty
  cluster takes the point farthest from its centre). Points may be padded and
  masked, so images of different sizes run in one ``vmap``.
* ``multi_region_segments`` (official §4.1): k-means on eigenvectors 1..K−1
  of one image, background = the segment touching the border most, swapped to 0.
* ``segment_boxes`` (§4.2): per-segment box after erode/dilate with the
  official skimage semantics (re-implemented in numpy; skimage's functions are
  deprecated).
* ``cluster_features`` / ``semantic_map`` (§4.4–4.5): dataset-wide clustering
  of L2-normalised box CLS features and per-image semantic label maps.

Label convention of ``semantic_map`` (differs from the official code, on
purpose): background is 0 and box cluster c becomes c + 1, so with 20 clusters
labels are 0..20 — 21 labels for the 21 VOC classes. The official code maps
cluster 0 and background both to 0 (protocol §10.4), which merges one
foreground cluster into background and never produces label 20.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

_PRECISION = jax.lax.Precision.HIGHEST
# Padded point counts are rounded up to this, so mixed image sizes share compilations.
POINT_BUCKET = 256


class KMeansResult(NamedTuple):
  centres: jax.Array  # [k, D]
  labels: jax.Array  # [N] int32; -1 for masked points
  inertia: jax.Array  # [] sum of squared distances of valid points to their centre
  n_iter: jax.Array  # [] Lloyd iterations run


def _sq_dists(x: jax.Array, c: jax.Array) -> jax.Array:
  """Squared Euclidean distances [N, k] (expanded form, clipped at 0 like sklearn)."""
  xc = jnp.dot(x, c.T, precision=_PRECISION)
  d = jnp.sum(x * x, 1)[:, None] - 2.0 * xc + jnp.sum(c * c, 1)[None, :]
  return jnp.maximum(d, 0.0)


def kmeans_plusplus(
  key: jax.Array, x: jax.Array, mask: jax.Array, k: int, n_local_trials: Optional[int] = None
) -> jax.Array:
  """Greedy k-means++ (Arthur & Vassilvitskii; sklearn's variant). x [N, D], mask [N] → [k, D].

  Each new centre is the best of ``n_local_trials`` candidates drawn ∝ D(x)²,
  "best" = lowest resulting potential. Masked points are never drawn.
  """
  if n_local_trials is None:
    n_local_trials = 2 + int(math.log(k))
  w = mask.astype(x.dtype)
  n = x.shape[0]
  key, sub = jax.random.split(key)
  first = jax.random.choice(sub, n, p=w / jnp.sum(w))
  centres = jnp.zeros((k, x.shape[1]), x.dtype).at[0].set(x[first])
  closest = _sq_dists(x, x[first][None])[:, 0] * w

  def add_centre(c, carry):
    centres, closest, key = carry
    key, sub = jax.random.split(key)
    pot = jnp.sum(closest)
    # All valid points coincide with centres: fall back to uniform draws.
    p = jnp.where(pot > 0, closest / jnp.where(pot > 0, pot, 1.0), w / jnp.sum(w))
    cand = jax.random.choice(sub, n, shape=(n_local_trials,), p=p)
    d_cand = jnp.minimum(closest[None], _sq_dists(x, x[cand]).T * w[None])  # [T, N]
    best = jnp.argmin(jnp.sum(d_cand, 1))
    return centres.at[c].set(x[cand[best]]), d_cand[best], key

  centres, _, _ = jax.lax.fori_loop(1, k, add_centre, (centres, closest, key))
  return centres


def _relocate_empty(x, w, labels, centres, sums, counts):
  """sklearn's relocation: empty cluster j takes the j-th farthest point from its centre.

  ``sums``/``counts`` are the weighted per-cluster sums; the donor cluster loses the point.
  """
  k = centres.shape[0]
  empty = counts == 0
  dist = jnp.sum((x - centres[labels]) ** 2, 1)
  dist = jnp.where(w > 0, dist, -1.0)
  far = jax.lax.top_k(dist, min(k, x.shape[0]))[1]  # ≤ k clusters can be empty
  rank = jnp.clip(jnp.cumsum(empty) - 1, 0, far.shape[0] - 1)
  far_idx = far[rank]  # [k]: the point given to cluster j, if j is empty
  give = empty.astype(x.dtype) * w[far_idx]
  px = x[far_idx] * give[:, None]
  donors = labels[far_idx]
  sums = sums.at[donors].add(-px)
  counts = counts.at[donors].add(-give)
  sums = jnp.where(empty[:, None], px, sums)
  counts = jnp.where(empty, give, counts)
  return sums, counts


def _update_centres(x, w, labels, centres):
  onehot = jax.nn.one_hot(labels, centres.shape[0], dtype=x.dtype) * w[:, None]
  sums = jnp.dot(onehot.T, x, precision=_PRECISION)
  counts = jnp.sum(onehot, 0)
  sums, counts = _relocate_empty(x, w, labels, centres, sums, counts)
  # A donor left empty keeps its old centre (sklearn would divide by zero weight).
  return jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1e-30)[:, None], centres)


def lloyd(
  x: jax.Array, mask: jax.Array, init: jax.Array, max_iter: int = 300, tol: float = 1e-4
) -> KMeansResult:
  """Lloyd iterations from ``init`` [k, D] with sklearn's ``_kmeans_single_lloyd`` semantics."""
  w = mask.astype(x.dtype)
  n_valid = jnp.maximum(jnp.sum(w), 1.0)
  # Centre the data (as sklearn does) so the expanded distance keeps its precision.
  mean = jnp.sum(x * w[:, None], 0) / n_valid
  x = (x - mean) * w[:, None]
  init = init - mean
  abs_tol = tol * jnp.mean(jnp.sum(x * x, 0) / n_valid)  # tol · mean per-feature variance

  def assign(c):
    return jnp.argmin(_sq_dists(x, c), 1).astype(jnp.int32)

  def cond(state):
    _, _, it, done, _ = state
    return (it < max_iter) & ~done

  def body(state):
    centres, labels_old, it, _, _ = state
    labels = assign(centres)
    new = _update_centres(x, w, labels, centres)
    strict = jnp.all((labels == labels_old) | (w == 0))
    shift = jnp.sum((new - centres) ** 2)
    return new, labels, it + 1, strict | (shift <= abs_tol), strict

  labels0 = jnp.full(x.shape[0], -1, jnp.int32)
  state = (init, labels0, jnp.int32(0), jnp.bool_(False), jnp.bool_(False))
  centres, labels, n_iter, _, strict = jax.lax.while_loop(cond, body, state)
  # Like sklearn: after a tolerance stop, re-assign so labels match the final centres.
  labels = jnp.where(strict, labels, assign(centres))
  inertia = jnp.sum(w * jnp.sum((x - centres[labels]) ** 2, 1))
  labels = jnp.where(w > 0, labels, -1)
  return KMeansResult(centres + mean, labels, inertia, n_iter)


def _kmeans(x, k, key, mask, n_init, max_iter, tol) -> KMeansResult:
  def one(key):
    return lloyd(x, mask, kmeans_plusplus(key, x, mask, k), max_iter, tol)

  runs = jax.vmap(one)(jax.random.split(key, n_init))
  best = jnp.argmin(runs.inertia)
  return jax.tree.map(lambda a: a[best], runs)


@functools.partial(jax.jit, static_argnames=('k', 'n_init', 'max_iter'))
def kmeans(
  x: jax.Array,
  k: int,
  key: jax.Array,
  mask: Optional[jax.Array] = None,
  n_init: int = 1,
  max_iter: int = 300,
  tol: float = 1e-4,
) -> KMeansResult:
  """k-means++ then Lloyd; the best of ``n_init`` seedings by inertia. x [N, D], mask [N]."""
  x = jnp.asarray(x, jnp.float32)
  if mask is None:
    mask = jnp.ones(x.shape[0], bool)
  return _kmeans(x, k, key, mask, n_init, max_iter, tol)


@functools.partial(jax.jit, static_argnames=('k', 'n_init', 'max_iter'))
def kmeans_batched(
  x: jax.Array,
  mask: jax.Array,
  keys: jax.Array,
  k: int,
  n_init: int = 1,
  max_iter: int = 300,
  tol: float = 1e-4,
) -> KMeansResult:
  """Independent k-means per row: x [B, N, D], mask [B, N] (False = padding), keys [B]."""
  x = jnp.asarray(x, jnp.float32)
  return jax.vmap(lambda xi, ki, mi: _kmeans(xi, k, ki, mi, n_init, max_iter, tol))(x, keys, mask)


# --------------------------------------------------------------------------------------
# Multi-region segments (official §4.1)


def adaptive_num_segments(eigenvalues: np.ndarray) -> int:
  """Official eigengap rule: largest gap μ_{i+1} − μ_i with i ≥ 1, n = i* + 1."""
  gaps = np.diff(np.asarray(eigenvalues, np.float64))
  if gaps.size < 2:
    raise ValueError(f'adaptive segments need K ≥ 3 eigenvalues, got {len(eigenvalues)}')
  return int(np.argmax(gaps[1:])) + 2


def segment_grid(n_points: int, grid_hw: tuple[int, int]) -> tuple[int, int]:
  """Shape of a segment map: the patch grid, or twice it for downsample-8 eigenvectors."""
  h, w = grid_hw
  if n_points == h * w:
    return h, w
  if n_points == 4 * h * w:
    return 2 * h, 2 * w
  raise ValueError(f'{n_points} eigenvector entries fit neither grid {grid_hw} nor twice it')


def border_background(segmap: np.ndarray) -> int:
  """Official ``get_border_fraction`` argmax: the label most frequent on the 4 borders.

  Corners count twice; ties go to the smallest label (np.argmax returns the first).
  """
  border = np.concatenate([segmap[:, 0], segmap[:, -1], segmap[0, :], segmap[-1, :]])
  return int(np.argmax(np.bincount(border.ravel())))


def swap_background(segmap: np.ndarray) -> np.ndarray:
  """Relabels so the border-most segment is 0 (swapped with whatever was 0)."""
  bg = border_background(segmap)
  out = segmap.copy()
  out[segmap == bg] = 0
  out[segmap == 0] = bg
  return out


def _bucket(n: int) -> int:
  return -(-n // POINT_BUCKET) * POINT_BUCKET


def _pad_points(points: Sequence[np.ndarray], n_pad: int) -> tuple[np.ndarray, np.ndarray]:
  d = points[0].shape[1]
  x = np.zeros((len(points), n_pad, d), np.float32)
  mask = np.zeros((len(points), n_pad), bool)
  for i, p in enumerate(points):
    x[i, : len(p)] = p
    mask[i, : len(p)] = True
  return x, mask


def multi_region_segments_batch(
  eigenvectors: Sequence[np.ndarray],
  grids: Sequence[tuple[int, int]],
  keys: jax.Array,
  n_segments: int = 15,
  adaptive: bool = False,
  eigenvalues: Optional[Sequence[np.ndarray]] = None,
  num_eigenvectors: int = 1_000_000,
) -> list[np.ndarray]:
  """``multi_region_segments`` for many images at once (one padded vmap per cluster count).

  Results equal the per-image call with the same key: padding does not change the
  random draws (k-means++ samples by an inverse CDF whose padded tail has zero mass).
  """
  if adaptive and eigenvalues is None:
    raise ValueError('adaptive=True needs the eigenvalues')
  points, ks = [], []
  for i, vecs in enumerate(eigenvectors):
    vecs = np.asarray(vecs, np.float32)
    if vecs.shape[0] < 2:
      raise ValueError(f'need ≥ 2 eigenvectors (the first is constant), got {vecs.shape[0]}')
    points.append(vecs[1 : 1 + num_eigenvectors].T)
    k = adaptive_num_segments(eigenvalues[i]) if adaptive else n_segments
    ks.append(min(k, vecs.shape[1]))  # sklearn would refuse k > N; we cap
  out: list[Optional[np.ndarray]] = [None] * len(points)
  for k in sorted(set(ks)):
    idx = [i for i, ki in enumerate(ks) if ki == k]
    x, mask = _pad_points([points[i] for i in idx], _bucket(max(len(points[i]) for i in idx)))
    labels = np.asarray(
      kmeans_batched(jnp.asarray(x), jnp.asarray(mask), keys[np.array(idx)], k).labels
    )
    for row, i in enumerate(idx):
      shape = segment_grid(len(points[i]), grids[i])
      out[i] = swap_background(labels[row, : len(points[i])].reshape(shape))
  return out


def multi_region_segments(
  eigenvectors: np.ndarray,
  grid_hw: tuple[int, int],
  n_segments: int = 15,
  key: Optional[jax.Array] = None,
  adaptive: bool = False,
  eigenvalues: Optional[np.ndarray] = None,
  num_eigenvectors: int = 1_000_000,
) -> np.ndarray:
  """Segment map [h, w] int32 from eigenvectors [K, N] (official §4.1; background = 0).

  Clusters the rows 1..K−1 (the constant eigenvector 0 is skipped) into
  ``n_segments`` regions, or, if ``adaptive``, into the eigengap count.
  """
  key = jax.random.PRNGKey(0) if key is None else key
  return multi_region_segments_batch(
    [eigenvectors],
    [grid_hw],
    key[None],
    n_segments,
    adaptive,
    None if eigenvalues is None else [eigenvalues],
    num_eigenvectors,
  )[0]


# --------------------------------------------------------------------------------------
# Boxes (official §4.2)


def _shift_stack(mask: np.ndarray, border: bool) -> np.ndarray:
  """The 3×3-cross neighbourhood of every pixel, outside pixels = ``border``: [5, H, W]."""
  p = np.pad(mask, 1, constant_values=border)
  return np.stack([p[1:-1, 1:-1], p[:-2, 1:-1], p[2:, 1:-1], p[1:-1, :-2], p[1:-1, 2:]])


def binary_erosion(mask: np.ndarray) -> np.ndarray:
  """skimage's default erosion: 3×3 cross, pixels outside the image count as True."""
  return _shift_stack(mask, True).all(0)


def binary_dilation(mask: np.ndarray) -> np.ndarray:
  """skimage's default dilation: 3×3 cross, pixels outside the image count as False."""
  return _shift_stack(mask, False).any(0)


def _morph_box(mask: np.ndarray, num_erode: int, num_dilate: int) -> np.ndarray:
  for op, n in ((binary_erosion, num_erode), (binary_dilation, num_dilate)):
    for _ in range(n):
      new = op(mask)
      if new.any():  # a step that would empty the mask is skipped (official)
        mask = new
  rows, cols = np.nonzero(mask)
  return np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], np.int64)


def segment_boxes(
  segmap: np.ndarray, num_erode: int = 2, num_dilate: int = 5, skip_background: bool = True
) -> tuple[np.ndarray, np.ndarray]:
  """Per-segment boxes in patch units: (segment_indices [M], boxes [M, 4] = x0, y0, x1, y1).

  Segments in ascending label order, background (0) skipped. Morphology only
  moves the box; it never changes the segment.
  """
  labels = np.unique(segmap)
  if skip_background:
    labels = labels[labels != 0]
  boxes = [_morph_box(segmap == s, num_erode, num_dilate) for s in labels]
  return labels.astype(np.int64), np.array(boxes, np.int64).reshape(-1, 4)


# --------------------------------------------------------------------------------------
# Dataset-wide clustering and semantic maps (official §4.4–4.5)


def l2_normalize(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float32)
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def pca(x: np.ndarray, dim: int) -> np.ndarray:
  """Projection on the top ``dim`` principal components (centred, exact SVD)."""
  x = np.asarray(x, np.float64)
  x = x - x.mean(0)
  _, _, vt = np.linalg.svd(x, full_matrices=False)
  return (x @ vt[:dim].T).astype(np.float32)


def cluster_features(
  features: np.ndarray,
  n_clusters: int = 20,
  seed: int = 0,
  pca_dim: int = 0,
  method: str = 'kmeans',
  n_init: int = 1,
) -> np.ndarray:
  """Cluster labels [M] of box features [M, D] (L2-normalised first, then optional PCA).

  ``method='kmeans'`` (default): full-batch JAX k-means, k-means++ seeded by
  ``PRNGKey(seed)`` — deterministic for a seed, and lower inertia than the official
  mini-batch run. ``'minibatch'``: the official sklearn MiniBatchKMeans(batch 4096,
  max_iter 5000, random_state=seed) for parity.
  """
  x = l2_normalize(features)
  if pca_dim:
    x = pca(x, pca_dim)
  if len(x) < n_clusters:
    raise ValueError(f'{len(x)} box features cannot make {n_clusters} clusters')
  if method == 'kmeans':
    res = kmeans(jnp.asarray(x), n_clusters, jax.random.PRNGKey(seed), n_init=n_init)
    return np.asarray(res.labels)
  if method == 'minibatch':
    from sklearn.cluster import MiniBatchKMeans  # pylint: disable=g-import-not-at-top

    return (
      MiniBatchKMeans(n_clusters, batch_size=4096, max_iter=5000, random_state=seed)
      .fit_predict(x)
      .astype(np.int64)
    )
  raise ValueError(f"cluster method {method!r}: use 'kmeans' or 'minibatch'")


def semantic_map(
  segmap: np.ndarray, segment_indices: np.ndarray, clusters: np.ndarray
) -> np.ndarray:
  """uint8 semantic map: background 0, segment s with cluster c → c + 1 (see module doc)."""
  lut = np.zeros(int(segmap.max()) + 1, np.int64)
  lut[np.asarray(segment_indices, np.int64)] = np.asarray(clusters, np.int64) + 1
  if lut.max() > 255:
    raise ValueError('more than 255 clusters do not fit a uint8 map')
  return lut[segmap].astype(np.uint8)
