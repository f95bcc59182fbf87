"""PyTorch-exact bicubic resampling of DINO's position-embedding grid.

DINO calls ``F.interpolate(grid, scale_factor=((h + 0.1) / G, (w + 0.1) / G),
mode='bicubic')`` (align_corners=False). PyTorch maps output index ``o`` to the
source coordinate ``(o + 0.5) / scale - 0.5`` using the *given* scale (not
out/in), uses the Keys kernel with A = -0.75 and clamps tap indices to the
border. ``jax.image.resize`` uses another kernel and mapping, so we build the
(static) interpolation matrices in numpy and apply them with two matmuls.
"""

from __future__ import annotations

import functools

import numpy as np

CUBIC_A = -0.75


def _cubic_weights(t: np.ndarray, a: float = CUBIC_A) -> np.ndarray:
  """Keys-kernel weights of the taps at offsets -1, 0, 1, 2 for fraction t: [n, 4]."""

  def near(x):  # |x| <= 1
    return ((a + 2) * x - (a + 3)) * x * x + 1

  def far(x):  # 1 < |x| < 2
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

  return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


@functools.lru_cache(maxsize=256)
def bicubic_matrix(in_size: int, out_size: int, scale: float, dtype=np.float32) -> np.ndarray:
  """Matrix M [out, in] such that ``M @ x`` is PyTorch's 1-D bicubic resize.

  Computed in the dtype PyTorch uses for float32 inputs (float32 source index
  and weights) so results agree to float32 rounding; pass ``np.float64`` for a
  reference.
  """
  inv_scale = dtype(1.0 / scale)
  src = inv_scale * (np.arange(out_size, dtype=dtype) + dtype(0.5)) - dtype(0.5)
  base = np.floor(src)
  weights = _cubic_weights((src - base).astype(dtype), dtype(CUBIC_A)).astype(dtype)
  taps = np.clip(base.astype(np.int64)[:, None] + np.arange(-1, 3)[None, :], 0, in_size - 1)
  matrix = np.zeros((out_size, in_size), dtype)
  for k in range(4):  # clamped taps may coincide at the border: accumulate
    np.add.at(matrix, (np.arange(out_size), taps[:, k]), weights[:, k])
  return matrix


def dino_scale_factors(grid_hw: tuple[int, int], pretrained_grid: int) -> tuple[float, float]:
  """DINO's scale factors: the +0.1 avoids floating-point floor errors upstream."""
  return ((grid_hw[0] + 0.1) / pretrained_grid, (grid_hw[1] + 0.1) / pretrained_grid)


def needs_interpolation(grid_hw: tuple[int, int], pretrained_grid: int) -> bool:
  """DINO skips interpolation only for a square grid of the pretrained size."""
  return not (grid_hw[0] == grid_hw[1] == pretrained_grid)


def interpolation_matrices(
  grid_hw: tuple[int, int], pretrained_grid: int, dtype=np.float32
) -> tuple[np.ndarray, np.ndarray]:
  """Row matrix [h, G] and column matrix [w, G] for the pretrained G×G grid."""
  scale_h, scale_w = dino_scale_factors(grid_hw, pretrained_grid)
  out_h, out_w = int(np.floor(pretrained_grid * scale_h)), int(np.floor(pretrained_grid * scale_w))
  if (out_h, out_w) != tuple(grid_hw):  # DINO asserts the same
    raise ValueError(f'bicubic output {(out_h, out_w)} != patch grid {tuple(grid_hw)}')
  return (
    bicubic_matrix(pretrained_grid, out_h, scale_h, dtype),
    bicubic_matrix(pretrained_grid, out_w, scale_w, dtype),
  )
