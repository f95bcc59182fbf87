"""Affinity matrices of the Deep Spectral Methods eigen stage (official protocol, section 2).

All functions take and return arrays and are pure; everything except
:func:`color_image_for_grid` is JAX and jit-able (grid sizes are static shapes).

* :func:`feature_affinity` — thresholded cosine affinity of patch features (section 2.1, step 3).
* :func:`color_image_for_grid` — the colour image at patch-grid resolution (section 2.1, step 4).
* :func:`knn_color_affinity` — pymatting-style KNN colour affinity (section 2.3).
* :func:`combined_affinity` — ``W_feat + λ · W_knn`` (section 2.1, step 5).
"""

from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

__all__ = [
  'feature_affinity',
  'color_image_for_grid',
  'knn_color_affinity',
  'combined_affinity',
]


def _l2_normalize(feats: jax.Array, eps: float = 1e-12) -> jax.Array:
  """``x / max(||x||, eps)`` row-wise, like ``torch.nn.functional.normalize``."""
  norm = jnp.linalg.norm(feats, axis=-1, keepdims=True)
  return feats / jnp.maximum(norm, eps)


def feature_affinity(
  feats: jax.Array, normalize: bool = True, threshold_at_zero: bool = True
) -> jax.Array:
  """Thresholded cosine affinity of patch features.

  Args:
    feats: ``[N, D]`` features (row-major over the patch grid).
    normalize: L2-normalise rows first (official default ``True``).
    threshold_at_zero: keep only positive affinities (official default ``True``).

  Returns:
    ``W`` ``[N, N]`` float32, ``W = F Fᵀ``, negatives zeroed, divided by its maximum.
  """
  f = jnp.asarray(feats, jnp.float32)
  if normalize:
    f = _l2_normalize(f)
  # 'highest': the official product is a true float32 GEMM (no TF32/bf16 passes on accelerators).
  w = jnp.matmul(f, f.T, precision=jax.lax.Precision.HIGHEST)
  if threshold_at_zero:
    w = w * (w > 0)
  return w / jnp.max(w)


def color_image_for_grid(image_uint8_rgb: np.ndarray, grid_hw: Sequence[int]) -> np.ndarray:
  """The colour image at patch-grid resolution, as the official code builds it.

  The official code resizes the WHOLE uncropped image (not the top-left crop that the
  features see) with ``PIL.Image.resize((w, h), Image.BILINEAR)`` and divides by 255.
  PIL's bilinear filter is antialiased (its support widens with the scale factor), which no
  JAX resize reproduces bit-for-bit, so this pre-processing step runs on the CPU with PIL
  to keep the KNN graph identical to the official one.

  Args:
    image_uint8_rgb: ``[H, W, 3]`` uint8 RGB image (uncropped).
    grid_hw: ``(h, w)`` patch grid, ``(H // P, W // P)``.

  Returns:
    ``[h, w, 3]`` float64 in ``[0, 1]``.
  """
  h, w = int(grid_hw[0]), int(grid_hw[1])
  img = Image.fromarray(np.asarray(image_uint8_rgb, dtype=np.uint8))
  return np.asarray(img.resize((w, h), Image.BILINEAR), dtype=np.float64) / 255.0


def _pixel_positions(h: int, w: int, distance_weight: float) -> np.ndarray:
  """``[h*w, 2]`` float32 ``(dw·x, dw·y)``, row-major.

  Computed with numpy in float64 and then cast, exactly like pymatting does; ``h`` and ``w``
  are static under ``jit`` so this becomes a compile-time constant.
  """
  x = np.tile(np.linspace(0.0, 1.0, w), h)
  y = np.repeat(np.linspace(0.0, 1.0, h), w)
  return np.stack([distance_weight * x, distance_weight * y], axis=1).astype(np.float32)


def _knn_indices(points: jax.Array, k: int) -> jax.Array:
  """Exact brute-force ``k`` nearest neighbours (Euclidean), ``[n, d] -> [n, k]`` int32.

  Squared distances are accumulated coordinate by coordinate from differences (not with the
  ``|a|² + |b|² − 2ab`` expansion, whose cancellation would perturb near ties); a point is
  its own nearest neighbour (distance exactly 0). Ties are broken by ``lax.top_k`` (lower
  index first), which is deterministic but may differ from pymatting's KD-tree order when
  two candidates are at exactly the same distance at the k-th position.
  """
  sq = jnp.zeros((points.shape[0], points.shape[0]), jnp.float32)
  for c in range(points.shape[1]):
    diff = points[:, None, c] - points[None, :, c]
    sq = sq + diff * diff
  _, idx = jax.lax.top_k(-sq, k)
  return idx


def knn_color_affinity(
  image_lr: jax.Array,
  n_neighbors: Sequence[int] = (20, 10),
  distance_weights: Sequence[float] = (2.0, 0.1),
) -> jax.Array:
  """KNN colour affinity with pymatting ``knn_affinity`` semantics (official section 2.3).

  For each pass ``(k, dw)`` the pixel features are ``[r, g, b, dw·x, dw·y]`` (float32) with
  ``x = tile(linspace(0, 1, w), h)``, ``y = repeat(linspace(0, 1, h), w)``; for every pixel
  ``i`` and each of its ``k`` nearest neighbours ``j`` (``i`` included) 1 is added at
  ``(i, j)`` and at ``(j, i)``. Duplicates are summed, so entries are integers in
  ``{0, …, 2·len(n_neighbors)}`` and the diagonal equals ``2·len(n_neighbors)`` (4 by default).
  No kernel weighting.

  Args:
    image_lr: ``[h, w, 3]`` float image in ``[0, 1]`` (see :func:`color_image_for_grid`).
    n_neighbors: neighbours per pass.
    distance_weights: spatial weight per pass.

  Returns:
    ``W`` ``[h*w, h*w]`` float32, symmetric.
  """
  h, w, _ = image_lr.shape
  n = h * w
  rgb = jnp.asarray(image_lr).reshape(n, 3).astype(jnp.float32)
  counts = jnp.zeros((n, n), jnp.float32)
  rows = jnp.arange(n)[:, None]
  for k, dw in zip(n_neighbors, distance_weights):
    points = jnp.concatenate([rgb, jnp.asarray(_pixel_positions(h, w, float(dw)))], axis=1)
    # A thumbnail with fewer pixels than neighbours: every pixel is a neighbour (the
    # official KNN would fail there; for n >= k nothing changes).
    idx = _knn_indices(points, min(int(k), n))
    counts = counts.at[rows, idx].add(1.0)
  # Each (i, j) pair is also entered as (j, i).
  return counts + counts.T


def combined_affinity(
  feats: jax.Array, image_lr: Optional[jax.Array] = None, color_lambda: float = 0.0
) -> jax.Array:
  """``W = W_feat + λ · W_knn`` (official section 2.1, step 5).

  Args:
    feats: ``[N, D]`` patch features, ``N = h*w``.
    image_lr: ``[h, w, 3]`` colour image at grid resolution; needed only when ``λ > 0``.
    color_lambda: weight ``λ`` of the colour term (official wrapper default 0).

  Returns:
    ``W`` ``[N, N]`` float32.
  """
  w = feature_affinity(feats)
  if color_lambda > 0:
    if image_lr is None:
      raise ValueError('color_lambda > 0 needs image_lr')
    w = w + jnp.float32(color_lambda) * knn_color_affinity(image_lr)
  return w
