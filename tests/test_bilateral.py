"""spectral/bilateral.py against the official solver outputs and a dense float64 scipy oracle."""

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse.linalg
from PIL import Image

from spectral_jax.spectral import bilateral

METHODS = Path(__file__).parent / 'data' / 'methods'
MANIFEST = json.loads((METHODS / 'manifest.json').read_text())
IMAGES_DIR = METHODS / MANIFEST['images_dir']
IDS = sorted(MANIFEST['images'])
SETTINGS = MANIFEST['settings']['saliency']['bilateral']


@pytest.mark.parametrize('image_id', IDS)
def test_solve_matches_official(image_id):
  ref = np.load(METHODS / f'{image_id}.npz')
  image = np.asarray(Image.open(IMAGES_DIR / f'{image_id}.png').convert('RGB'))
  out, mask = bilateral.solve(
    image,
    ref['sal_mask'] > 0,
    sigma_spatial=SETTINGS['sigma_spatial'],
    sigma_luma=SETTINGS['sigma_luma'],
    sigma_chroma=SETTINGS['sigma_chroma'],
    lam=SETTINGS['lam'],
    confidence=SETTINGS['confidence'],
    a_diag_min=SETTINGS['A_diag_min'],
    cg_tol=SETTINGS['cg_tol'],
    cg_maxiter=SETTINGS['cg_maxiter'],
  )
  assert out.shape == image.shape[:2] and out.dtype == np.float64
  np.testing.assert_allclose(out, ref['bs_output'], rtol=0, atol=1e-9)
  agreement = np.mean(mask == (ref['bs_mask'] > 0))
  assert agreement >= 0.999, agreement
  # The defaults are the official README values.
  out_default, _ = bilateral.solve(image, ref['sal_mask'] > 0)
  np.testing.assert_array_equal(out_default, out)


def _dense_oracle(image, target, ss, sl, sc, lam, conf, maxiter):
  """The official algorithm with dense matrices, per-pixel coordinates and scipy's cg."""
  h, w = image.shape[:2]
  yuv = image.reshape(-1, 3).astype(np.float64) @ bilateral.RGB_TO_YUV.T + [0, 128, 128]
  iy, ix = np.divmod(np.arange(h * w), w)
  coords = np.stack(
    [
      ix // ss,
      iy // ss,
      np.trunc(yuv[:, 0] / sl),
      np.trunc(yuv[:, 1] / sc),
      np.trunc(yuv[:, 2] / sc),
    ],
    1,
  ).astype(int)
  verts = sorted(set(map(tuple, coords)))
  index = {v: i for i, v in enumerate(verts)}
  nv = len(verts)
  s = np.zeros((nv, h * w))
  s[[index[tuple(c)] for c in coords], np.arange(h * w)] = 1
  blur = 10 * np.eye(nv)
  for i, v in enumerate(verts):
    for d in range(5):
      for o in (-1, 1):
        u = list(v)
        u[d] += o
        if tuple(u) in index:
          blur[i, index[tuple(u)]] += 1
  m = s.sum(1)
  n = np.ones(nv)
  for _ in range(10):
    n = np.sqrt(n * m / (blur @ n))
  m = n * (blur @ n)
  c = np.full(h * w, conf)
  a = lam * (np.diag(m) - np.diag(n) @ blur @ np.diag(n)) + np.diag(s @ c)
  b = s @ (target.ravel() * c)
  precond = np.diag(1 / np.maximum(np.diag(a), 1e-5))
  y, _ = scipy.sparse.linalg.cg(a, b, x0=b / (s @ c), M=precond, maxiter=maxiter, rtol=1e-5)
  return (s.T @ y).reshape(h, w)


def test_solve_matches_dense_oracle():
  rng = np.random.default_rng(0)
  # Smooth colours so that vertices have neighbours; a noisy square target.
  yy, xx = np.mgrid[:24, :30]
  image = np.stack([4 * xx + 20, 3 * yy + 40, 2 * (xx + yy) + 10], -1)
  image = np.clip(image + rng.integers(-6, 7, image.shape), 0, 255).astype(np.uint8)
  target = np.zeros((24, 30), bool)
  target[6:18, 8:22] = True
  target ^= rng.random(target.shape) < 0.1
  for maxiter in (3, 25):
    want = _dense_oracle(image, target, 4, 8, 8, 256.0, 0.999, maxiter)
    got, mask = bilateral.solve(image, target, 4, 8, 8, cg_maxiter=maxiter)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)
    np.testing.assert_array_equal(mask, want > 0.5)


def test_pcg_is_scipy_cg_with_an_iteration_cap():
  rng = np.random.default_rng(1)
  q, _ = np.linalg.qr(rng.normal(size=(80, 80)))
  a = (q * np.logspace(0, 5, 80)) @ q.T  # ill-conditioned: 25 iterations do not converge
  b = rng.normal(size=80)
  x0 = rng.normal(size=80)
  inv_diag = 1 / np.diag(a)
  for maxiter in (1, 25):
    want, info = scipy.sparse.linalg.cg(
      a, b, x0=x0.copy(), M=np.diag(inv_diag), maxiter=maxiter, rtol=1e-5
    )
    assert info == maxiter
    got, iters = bilateral.pcg(lambda v: a @ v, b, x0, inv_diag, maxiter, 1e-5)
    assert iters == maxiter
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_luma_bin_edges_follow_float64_rounding():
  # Greys 16, 32, 64 have Y = 16k exactly in exact arithmetic but slightly below in float64:
  # the official grid puts them in luma bins k − 1 (methods_protocol.md §2.5 step 2).
  image = np.array([[[16] * 3, [32] * 3, [64] * 3]], np.uint8)
  grid = bilateral.BilateralGrid(image, 16, 16, 8)
  np.testing.assert_array_equal(grid.vertices[:, 2], [0, 1, 3])
  np.testing.assert_array_equal(grid.vertices[:, 3:], 16)  # U = V = 128 exactly


def _brute_force_grid(image, sigma_spatial, sigma_luma, sigma_chroma):
  """Vertices as a dict of 5-tuples (first-seen order irrelevant), pixel → vertex tuple, and
  each vertex's ±1 neighbours by dictionary lookup: no hashing at all."""
  h, w = image.shape[:2]
  yuv = bilateral.rgb_to_yuv(image)
  iy, ix = np.mgrid[:h, :w]
  coords = np.dstack(
    (
      (ix / sigma_spatial).astype(int),
      (iy / sigma_spatial).astype(int),
      (yuv[..., 0] / sigma_luma).astype(int),
      (yuv[..., 1:] / sigma_chroma).astype(int),
    )
  ).reshape(-1, 5)
  return [tuple(c) for c in coords]


@pytest.mark.parametrize('width', [300, 5000])
def test_grid_of_any_width_equals_a_brute_force_grid(width):
  """Under 4,064 px the vertex order is the official base-255 hash order (lexicographic in
  v, u, luma, y, x); wider images (which the official hash cannot take) get the same
  lexicographic order and exact neighbours."""
  rng = np.random.default_rng(3)
  image = rng.integers(0, 255, (20, width, 3)).astype(np.uint8)
  image[:, : width // 2] //= 4  # a few colour regions, so that vertices have neighbours
  grid = bilateral.BilateralGrid(image, 16, 16, 8)
  pixels = _brute_force_grid(image, 16, 16, 8)
  order = sorted(set(pixels), key=lambda c: c[::-1])  # lexicographic in v, u, luma, y, x
  index = {c: i for i, c in enumerate(order)}
  np.testing.assert_array_equal(grid.vertices, np.array(order))
  np.testing.assert_array_equal(grid.idx, [index[c] for c in pixels])
  want = []
  for d in range(5):
    for offset in (-1, 1):
      shifted = [c[:d] + (c[d] + offset,) + c[d + 1 :] for c in order]
      want.append([index.get(c, -1) for c in shifted])
  np.testing.assert_array_equal(grid.neighbours, np.array(want))
