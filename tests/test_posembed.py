"""models/posembed.py against PyTorch's own bicubic output and a float64 direct formula."""

import math

import numpy as np
import pytest

from spectral_jax.models import posembed, vit

TORCH = np.load('tests/data/posembed_torch.npz')
GRIDS = [(1, 1), (3, 40), (14, 14), (14, 15), (25, 37), (31, 23), (60, 7), (28, 28)]


def direct_bicubic(grid: np.ndarray, out_hw, scale_hw) -> np.ndarray:
  """Float64 per-pixel evaluation of PyTorch's bicubic (A = -0.75, clamped taps)."""

  def w(x):
    x = abs(x)
    a = -0.75
    if x <= 1:
      return (a + 2) * x**3 - (a + 3) * x**2 + 1
    if x < 2:
      return a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a
    return 0.0

  g_h, g_w = grid.shape[-2:]
  out = np.zeros(grid.shape[:-2] + tuple(out_hw))
  for oy in range(out_hw[0]):
    sy = (oy + 0.5) / scale_hw[0] - 0.5
    for ox in range(out_hw[1]):
      sx = (ox + 0.5) / scale_hw[1] - 0.5
      acc = 0.0
      for iy in range(math.floor(sy) - 1, math.floor(sy) + 3):
        for ix in range(math.floor(sx) - 1, math.floor(sx) + 3):
          acc = (
            acc
            + w(sy - iy)
            * w(sx - ix)
            * grid[..., min(max(iy, 0), g_h - 1), min(max(ix, 0), g_w - 1)]
          )
      out[..., oy, ox] = acc
  return out


def apply(grid: np.ndarray, hw) -> np.ndarray:
  g = grid.shape[-1]
  rows, cols = posembed.interpolation_matrices(hw, g)
  return np.einsum('hg,cgk,wk->chw', rows, grid[0], cols)[None]


@pytest.mark.parametrize('g', [14, 28])
@pytest.mark.parametrize('hw', GRIDS)
def test_matches_torch_bicubic(g, hw):
  ref = TORCH[f'grid{g}_{hw[0]}x{hw[1]}']
  got = apply(TORCH[f'grid{g}'].astype(np.float32), hw)
  assert got.shape == ref.shape
  np.testing.assert_allclose(got, ref, atol=2e-6 * np.abs(ref).max())


@pytest.mark.parametrize('hw', [(3, 40), (25, 37), (14, 15)])
def test_matches_float64_direct_formula(hw):
  grid = TORCH['grid14'].astype(np.float64)
  ref = direct_bicubic(grid, hw, posembed.dino_scale_factors(hw, 14))
  rows = posembed.bicubic_matrix(14, hw[0], posembed.dino_scale_factors(hw, 14)[0], np.float64)
  cols = posembed.bicubic_matrix(14, hw[1], posembed.dino_scale_factors(hw, 14)[1], np.float64)
  got = np.einsum('hg,cgk,wk->chw', rows, grid[0], cols)[None]
  np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)
  np.testing.assert_allclose(apply(grid.astype(np.float32), hw), ref, atol=1e-5)


def test_pretrained_square_grid_is_left_unchanged():
  assert not posembed.needs_interpolation((14, 14), 14)
  assert posembed.needs_interpolation((14, 15), 14)
  table = np.random.default_rng(0).normal(size=(1, 1 + 14 * 14, 4)).astype(np.float32)
  np.testing.assert_array_equal(vit.interpolate_pos_embed(table, (14, 14), 14), table)


def test_cls_position_is_kept_in_front():
  table = np.random.default_rng(1).normal(size=(1, 1 + 14 * 14, 4)).astype(np.float32)
  out = np.asarray(vit.interpolate_pos_embed(table, (5, 9), 14))
  assert out.shape == (1, 1 + 45, 4)
  np.testing.assert_array_equal(out[0, 0], table[0, 0])
