"""Tests of spectral_jax.spectral.eigen.

Oracles: the official code's outputs (``tests/data/parity``) and scipy in float64
(``scipy.linalg.eigh(D − W, D)``, also for MaskCut's ``ncut_pairs``); results are never compared
with the code itself, except for padded-vs-unpadded, batched-vs-single and array-vs-iterable
consistency (all also checked against scipy).
"""

from __future__ import annotations

from typing import List, Optional

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg as sl
import scipy.sparse.linalg as sla
from PIL import Image

from spectral_jax.spectral.affinity import (
  color_image_for_grid,
  combined_affinity,
  feature_affinity,
)
from spectral_jax.spectral.eigen import (
  NCUT_SOLVERS,
  PAD_SELF_LOOP,
  affinity_eigs,
  bucket_size,
  choose_solver,
  laplacian_eigs,
  ncut_pairs,
  pad_affinities,
  resolve_ncut_solver,
  resolve_solver,
  sign_fix,
  unpad,
)

from tests.conftest import MANIFEST, PARITY, PARITY_IDS as IDS

SOLVERS = ['dense', 'lanczos']


# ----------------------------------------------------------------------------------------------
# Reference maths (float64, scipy) and comparison helpers
# ----------------------------------------------------------------------------------------------


def degrees64(w: np.ndarray) -> np.ndarray:
  d = np.asarray(w, np.float64).sum(axis=1)
  d[d < 1e-12] = 1.0
  return d


def reference_pairs(w: np.ndarray, m: int):
  """``m`` smallest pairs of ``(D − W) v = λ D v`` in float64: values ``[m]``, vectors ``[N, m]``.

  Dense generalized LAPACK ``eigh`` up to 1,500 nodes; above, ARPACK (float64, tol 1e-13) on
  ``D^-½ W D^-½`` (largest θ ↔ smallest λ = 1 − θ), which is much cheaper on a 2-core CPU.
  """
  w64 = np.asarray(w, np.float64)
  d = degrees64(w64)
  m = min(m, w64.shape[0])
  if w64.shape[0] <= 1500:
    dm = np.diag(d)
    return sl.eigh(dm - w64, dm, subset_by_index=[0, m - 1])
  s = 1.0 / np.sqrt(d)
  theta, u = sla.eigsh(
    w64 * s[:, None] * s[None, :],
    k=m,
    which='LA',
    tol=1e-13,
    ncv=max(2 * m + 1, 60),
    v0=np.sqrt(d),
  )
  order = np.argsort(-theta)
  return 1.0 - theta[order], u[:, order] * s[:, None]


def assert_sign_rule(vecs: np.ndarray, n_valid: Optional[int] = None) -> None:
  v = np.asarray(vecs)[:, :n_valid]
  frac = (v > 0).mean(axis=1)
  assert not np.any((frac > 0.5) & (frac < 1.0)), frac


def assert_matches_reference(
  w: np.ndarray,
  vals,
  vecs,
  k: int,
  val_tol: float = 1e-5,
  cos_tol: float = 1e-3,
  group_gap: float = 1e-3,
) -> None:
  """Eigenvalues, D-orthonormality and (grouped) eigenvector subspaces vs float64 scipy.

  Each computed vector must lie in the span of the reference eigenvectors whose eigenvalues
  are within ``group_gap`` of its own (a near-degenerate group is only defined as a subspace).
  """
  vals = np.asarray(vals, np.float64)
  vecs = np.asarray(vecs, np.float64)
  assert vals.shape == (k,) and vecs.shape == (k, w.shape[0])
  ref_vals, ref_vecs = reference_pairs(w, k + 10)
  np.testing.assert_allclose(vals, ref_vals[:k], rtol=0, atol=val_tol)
  assert np.all(np.diff(vals) >= -val_tol)
  d = degrees64(w)
  gram = (vecs * d) @ vecs.T
  np.testing.assert_allclose(gram, np.eye(k), rtol=0, atol=1e-4)
  coords = (vecs * d) @ ref_vecs  # [k, k+10], ref is D-orthonormal
  for i in range(k):
    group = np.abs(ref_vals - vals[i]) <= group_gap
    assert group.any()
    captured = np.linalg.norm(coords[i, group])
    assert captured >= 1 - cos_tol, (i, captured, vals[i])
  assert_sign_rule(vecs)


def principal_cosines(a: np.ndarray, b: np.ndarray, d: np.ndarray) -> np.ndarray:
  """Cosines of the principal angles between row spaces of ``a``, ``b`` in the D-inner product."""
  qa = np.linalg.qr((a * np.sqrt(d)).T)[0]
  qb = np.linalg.qr((b * np.sqrt(d)).T)[0]
  return np.linalg.svd(qa.T @ qb, compute_uv=False)


# ----------------------------------------------------------------------------------------------
# Graph generators
# ----------------------------------------------------------------------------------------------


def clustered_affinity(
  n: int, seed: int, clusters: int = 5, dim: int = 32, spread: float = 1.0
) -> np.ndarray:
  """Thresholded cosine affinity of Gaussian-cluster features (like DINO keys)."""
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=dim) + 1.5 * rng.normal(size=(clusters, dim))
  feats = centres[rng.integers(clusters, size=n)] + spread * rng.normal(size=(n, dim))
  return np.asarray(feature_affinity(feats.astype(np.float32)))


def random_sparse_affinity(n: int, seed: int, density: float = 0.05) -> np.ndarray:
  """Symmetric random weights on an Erdős–Rényi pattern (with some zero-degree-free rows)."""
  rng = np.random.default_rng(seed)
  mask = rng.uniform(size=(n, n)) < density
  w = np.triu(mask * rng.uniform(0.1, 1.0, size=(n, n)), 1)
  return (w + w.T).astype(np.float32)


def grid_affinity(h: int, w: int) -> np.ndarray:
  """4-neighbour grid graph: many small, slowly separating eigenvalues (hard for Krylov)."""
  n = h * w
  a = np.zeros((n, n), np.float32)
  for i in range(h):
    for j in range(w):
      p = i * w + j
      if j + 1 < w:
        a[p, p + 1] = a[p + 1, p] = 1.0
      if i + 1 < h:
        a[p, p + w] = a[p + w, p] = 1.0
  return a


def block_diag(*blocks: np.ndarray) -> np.ndarray:
  return sl.block_diag(*blocks).astype(np.float32)


def near_degenerate_affinity(n: int, seed: int) -> np.ndarray:
  """Two copies of a graph, one with weights perturbed by ~1e-5 (eigenvalue pairs ~1e-6 apart)."""
  a = clustered_affinity(n, seed, clusters=3)
  noise = np.random.default_rng(seed).uniform(size=a.shape)
  b = a * (1 + 1e-5 * (noise + noise.T))
  return block_diag(a, b)


# ----------------------------------------------------------------------------------------------
# Parity with the official code
# ----------------------------------------------------------------------------------------------


def _parity(image_id: str):
  return np.load(PARITY / f'{image_id}.npz')


def _parity_affinity(image_id: str, setting: str) -> np.ndarray:
  z = _parity(image_id)
  if setting == 'color':
    image = np.asarray(Image.open(PARITY / 'images' / f'{image_id}.png').convert('RGB'))
    grid = MANIFEST['images'][image_id]['patch_grid']
    image_lr = color_image_for_grid(image, grid)
    lam = MANIFEST['settings']['color']['image_color_lambda']
    return np.asarray(combined_affinity(z['k'], image_lr, color_lambda=lam))
  return np.asarray(feature_affinity(z['k']))


def _assert_rows_match(
  ours: np.ndarray, ref: np.ndarray, ref_vals: np.ndarray, inner: np.ndarray, gap: float
) -> None:
  """Row-by-row cosines where the eigengap allows, principal angles for close groups.

  ``inner`` are the weights of the inner product (D for Laplacian vectors, 1 for affinity).
  Where the official row's sign is fixed by the sign rule (0 < positive fraction < 0.5) the
  signed cosine is checked, otherwise (all one sign, or exactly half) its absolute value.
  """
  k = len(ref_vals)
  norms = np.sqrt((ours**2 * inner).sum(1) * (ref**2 * inner).sum(1))
  cos = (ours * ref * inner).sum(1) / norms
  for i in range(k):
    neighbours = [j for j in range(k) if j != i and abs(ref_vals[j] - ref_vals[i]) < gap]
    if neighbours:
      group = [i] + neighbours
      pc = principal_cosines(ours[group], ref[group], inner)
      assert pc.min() >= 0.999, (i, pc)
      continue
    frac = (ref[i] > 0).mean()
    sign_defined = 0.0 < frac < 0.49
    value = cos[i] if sign_defined else abs(cos[i])
    assert value >= 0.999, (i, cos[i], frac)


@pytest.mark.parametrize('solver', SOLVERS)
@pytest.mark.parametrize('setting', ['loc', 'seg', 'color'])
@pytest.mark.parametrize('image_id', IDS)
def test_parity_laplacian(image_id, setting, solver):
  z = _parity(image_id)
  k = MANIFEST['settings'][setting]['K']
  w = _parity_affinity(image_id, setting)
  vals, vecs = laplacian_eigs(jnp.asarray(w), k, solver=solver)
  vals, vecs = np.asarray(vals), np.asarray(vecs)
  ref_vals, ref_vecs = z[f'{setting}_eigenvalues'], z[f'{setting}_eigenvectors']
  np.testing.assert_allclose(vals, ref_vals, rtol=0, atol=1e-4)
  _assert_rows_match(vecs, ref_vecs, ref_vals, degrees64(w), gap=1e-3)
  assert_sign_rule(vecs)
  if setting == 'seg':
    mask = (vecs[1] > 0).reshape(z['seg_mask'].shape)
    np.testing.assert_array_equal(mask.astype(np.uint8) * 255, z['seg_mask'])


@pytest.mark.parametrize('solver', SOLVERS)
@pytest.mark.parametrize('image_id', IDS)
def test_parity_affinity(image_id, solver):
  z = _parity(image_id)
  w = _parity_affinity(image_id, 'affinity')
  vals, vecs = affinity_eigs(jnp.asarray(w), 5, solver=solver)
  vals, vecs = np.asarray(vals), np.asarray(vecs)
  ref_vals, ref_vecs = z['affinity_eigenvalues'], z['affinity_eigenvectors']
  # Values are O(10²): float32 work gives absolute errors ~ eps·‖W‖ on every eigenvalue (the
  # official float32 ARPACK run is itself 3e-4 off float64 on the largest), so the 1e-4
  # tolerance is taken relative to the spectral scale max|λ|.
  np.testing.assert_allclose(vals, ref_vals, rtol=0, atol=1e-4 * np.abs(ref_vals).max())
  # Quirk: vectors are largest-first while values are ascending → row i pairs with value k-1-i.
  _assert_rows_match(vecs, ref_vecs, ref_vals[::-1], np.ones(w.shape[0]), gap=1e-3 * ref_vals.max())
  norms = np.linalg.norm(vecs, axis=1)
  np.testing.assert_allclose(norms, 1.0, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Property tests against float64 scipy on random graphs
# ----------------------------------------------------------------------------------------------

CASES = [
  # (name, builder, K)
  ('clustered-50', lambda: clustered_affinity(50, 0), 2),
  ('clustered-50-K20', lambda: clustered_affinity(50, 1), 20),
  ('clustered-300', lambda: clustered_affinity(300, 2, clusters=8), 5),
  ('clustered-1000-K20', lambda: clustered_affinity(1000, 3, clusters=4), 20),
  ('sparse-400', lambda: random_sparse_affinity(400, 4, density=0.03), 5),
  # 3 components + 1 isolated node: eigenvalue 0 three times, the isolated node gives 1.
  (
    'disconnected',
    lambda: block_diag(
      clustered_affinity(150, 5),
      clustered_affinity(90, 6),
      random_sparse_affinity(120, 7, 0.1),
      np.zeros((1, 1)),
    ),
    6,
  ),
  # Two identical components: every eigenvalue exactly doubled.
  ('duplicated', lambda: block_diag(*([clustered_affinity(200, 8, clusters=3)] * 2)), 8),
  # Same, one copy's weights perturbed by ~1e-5: near-degenerate pairs.
  ('near-degenerate', lambda: near_degenerate_affinity(200, 9), 6),
  ('grid-20x25', lambda: grid_affinity(20, 25), 5),
]


@pytest.mark.parametrize('solver', SOLVERS)
@pytest.mark.parametrize('name,builder,k', CASES, ids=[c[0] for c in CASES])
def test_laplacian_vs_scipy(name, builder, k, solver):
  w = builder()
  vals, vecs, res = laplacian_eigs(
    jnp.asarray(w), k, solver=solver, max_cycles=200, return_residuals=True
  )
  assert np.all(np.asarray(res) <= 1e-5)
  assert_matches_reference(w, vals, vecs, k)


@pytest.mark.slow
@pytest.mark.parametrize('solver', SOLVERS)
@pytest.mark.parametrize('n,k', [(2500, 5), (5000, 5), (5000, 20)])
def test_laplacian_vs_scipy_large(n, k, solver):
  w = clustered_affinity(n, n + k, clusters=6, dim=64)
  vals, vecs = laplacian_eigs(jnp.asarray(w), k, solver=solver)
  assert_matches_reference(w, vals, vecs, k)


def test_laplacian_large_fast_lanczos():
  """A 3,000-node graph with the subset solver (dense f64 reference on the subset only)."""
  w = clustered_affinity(3000, 11, clusters=6, dim=48)
  vals, vecs = laplacian_eigs(jnp.asarray(w), 5, solver='lanczos')
  assert_matches_reference(w, vals, vecs, 5)


def test_auto_solver_and_choice():
  assert choose_solver(100, 5, 'cpu') == 'dense'
  assert choose_solver(4800, 5, 'cpu') == 'lanczos'
  assert choose_solver(4800, 20, 'cpu') == 'lanczos'
  assert choose_solver(600, 20, 'cpu') == 'dense'
  assert choose_solver(1000, 5, 'gpu') == 'dense'
  w = clustered_affinity(600, 12)
  vals, vecs = laplacian_eigs(jnp.asarray(w), 5)
  assert_matches_reference(w, vals, vecs, 5)


def test_batched_matches_scipy():
  ws = [clustered_affinity(180, s) for s in (20, 21, 22)]
  for solver in SOLVERS:
    vals, vecs = laplacian_eigs(jnp.asarray(np.stack(ws)), 4, solver=solver)
    assert vals.shape == (3, 4) and vecs.shape == (3, 4, 180)
    for i, w in enumerate(ws):
      assert_matches_reference(w, vals[i], vecs[i], 4)


def test_k_out_of_range():
  with pytest.raises(ValueError):
    laplacian_eigs(jnp.eye(4), 5)
  with pytest.raises(ValueError):
    laplacian_eigs(jnp.eye(4), 2, solver='nope')


# ----------------------------------------------------------------------------------------------
# Affinity eigenpairs
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize('solver', SOLVERS)
def test_affinity_eigs_vs_scipy(solver):
  """Largest-magnitude semantics (incl. a dominant negative eigenvalue) and the quirky order."""
  rng = np.random.default_rng(13)
  q = np.linalg.qr(rng.normal(size=(400, 400)))[0]
  spectrum = np.concatenate([[50.0, 30.0, -40.0, 20.0], rng.uniform(-1, 1, size=396)])
  w = ((q * spectrum) @ q.T).astype(np.float32)
  vals, vecs = affinity_eigs(jnp.asarray(w), 4, solver=solver)
  vals, vecs = np.asarray(vals, np.float64), np.asarray(vecs, np.float64)
  ref_vals, ref_vecs = sl.eigh(w.astype(np.float64))
  top = np.argsort(-np.abs(ref_vals))[:4]
  asc = top[np.argsort(ref_vals[top])]  # eigsh order: ascending values
  np.testing.assert_allclose(vals, ref_vals[asc], rtol=1e-5, atol=1e-4)
  for row, col in enumerate(asc[::-1]):  # vectors largest-first
    assert abs(vecs[row] @ ref_vecs[:, col]) >= 0.9999
  assert_sign_rule(vecs)


# ----------------------------------------------------------------------------------------------
# Sign rule
# ----------------------------------------------------------------------------------------------


def test_sign_fix_rule():
  v = np.array(
    [
      [1.0, 1.0, 1.0, -1.0],  # 75 % positive → flipped
      [1.0, 1.0, -1.0, -1.0],  # exactly 50 % → kept
      [1.0, 1.0, 1.0, 1.0],  # all positive → kept
      [-1.0, -1.0, -1.0, -1.0],  # all negative → kept
      [1.0, -1.0, -1.0, -1.0],  # 25 % → kept
      [0.0, 1.0, 1.0, -1.0],  # zeros are not positive: 50 % → kept
    ],
    np.float32,
  )
  out = np.asarray(sign_fix(jnp.asarray(v)))
  expected = v.copy()
  expected[0] *= -1
  np.testing.assert_array_equal(out, expected)


def test_sign_fix_ignores_padding_and_batches():
  v = np.array(
    [[[1.0, 1.0, -1.0, 0.0, 0.0, 0.0]], [[1.0, 1.0, -1.0, 0.0, 0.0, 0.0]]], np.float32
  )  # [B=2, K=1, N=6]
  out = np.asarray(sign_fix(jnp.asarray(v), jnp.asarray([3, 6])))
  np.testing.assert_array_equal(out[0], -v[0])  # 2/3 positive among the 3 real nodes
  np.testing.assert_array_equal(out[1], v[1])  # 2/6 positive


# ----------------------------------------------------------------------------------------------
# Padding / bucketing
# ----------------------------------------------------------------------------------------------


def test_bucket_size():
  assert bucket_size(100, [256, 512, 1024]) == 256
  assert bucket_size(256, [1024, 256, 512]) == 256
  assert bucket_size(257, [256, 512, 1024]) == 512
  assert bucket_size(2000, [256, 512, 1024]) == 2000


def test_padding_keeps_official_generalized_spectrum():
  """The padding scheme, checked on the official formulation itself (scipy float64)."""
  w = clustered_affinity(90, 30)
  batch, n_valid = pad_affinities([w], size=120)
  wp = np.asarray(batch[0])
  assert int(n_valid[0]) == 90
  np.testing.assert_array_equal(np.diag(wp)[90:], PAD_SELF_LOOP)
  vals_p, vecs_p = reference_pairs(wp, 120)
  vals, _ = reference_pairs(w, 90)
  np.testing.assert_allclose(vals_p[:90], vals, atol=1e-10)  # all real pairs come first
  np.testing.assert_allclose(vals_p[90:], 3.0, atol=1e-10)
  assert vals.max() <= 2.0
  np.testing.assert_allclose(vecs_p[90:, :90], 0.0, atol=1e-10)


@pytest.mark.parametrize('solver', SOLVERS)
def test_padded_equals_unpadded(solver):
  ws = [clustered_affinity(n, 40 + n, clusters=4) for n in (90, 170, 233)]
  batch, n_valid = pad_affinities(ws, buckets=[128, 256, 512])
  assert batch.shape == (3, 256, 256)
  k = 5
  vals_b, vecs_b = laplacian_eigs(batch, k, solver=solver, n_valid=n_valid)
  assert np.all(np.abs(np.asarray(vecs_b)[0, :, 90:]) <= 1e-5)
  for w, (vals_p, vecs_p) in zip(ws, unpad(vals_b, vecs_b, n_valid)):
    vals_u, vecs_u = laplacian_eigs(jnp.asarray(w), k, solver=solver)
    vals_u, vecs_u = np.asarray(vals_u), np.asarray(vecs_u)
    assert vecs_p.shape == vecs_u.shape == (k, w.shape[0])
    np.testing.assert_allclose(vals_p, vals_u, rtol=0, atol=2e-6)
    # Same vectors, same signs: the sign rule only counts real nodes. Rows it leaves
    # undetermined (all one sign, e.g. the constant vector, or exactly half positive) may
    # differ in sign, as in the official code (ARPACK's random start).
    frac = (vecs_u > 0).mean(axis=1)
    free = (frac == 0) | (frac == 0.5) | (frac == 1)
    flip = np.where(free & (np.sum(vecs_p * vecs_u, axis=1) < 0), -1.0, 1.0)
    # float32 eigh of a padded vs an unpadded matrix: rounding differs by ~1e-3 of the
    # largest entry on the least separated vector (jaxlib-version dependent).
    np.testing.assert_allclose(
      vecs_p * flip[:, None], vecs_u, rtol=0, atol=1e-3 * np.abs(vecs_u).max()
    )
    assert_matches_reference(w, vals_p, vecs_p, k)


def test_lanczos_on_a_tiny_graph_in_a_large_padded_batch():
  """24 real nodes padded to 512: a 56-column Krylov basis cannot live in 24 dimensions
  (it broke down into a spurious eigenvalue −0.69), so the solver goes dense."""
  ws = [clustered_affinity(24, 5, clusters=2), clustered_affinity(500, 6, clusters=4)]
  batch, n_valid = pad_affinities(ws, size=512)
  assert resolve_solver('lanczos', 512, 5, smallest=24) == 'dense'
  assert resolve_solver('auto', 512, 5, smallest=500, backend='cpu') == 'lanczos'
  assert resolve_solver('auto', 512, 5, smallest=24, backend='cpu') == 'dense'
  vals_b, vecs_b = laplacian_eigs(batch, 5, solver='lanczos', n_valid=n_valid)
  for w, (vals, vecs) in zip(ws, unpad(vals_b, vecs_b, n_valid)):
    assert_matches_reference(w, vals, vecs, 5)
  vals_b, vecs_b = affinity_eigs(batch, 4, solver='lanczos', n_valid=n_valid)
  ref_vals = sl.eigvalsh(ws[0].astype(np.float64))
  top = np.sort(ref_vals[np.argsort(-np.abs(ref_vals))[:4]])
  np.testing.assert_allclose(np.asarray(vals_b)[0], top, atol=1e-5 * np.abs(top).max())


@pytest.mark.parametrize('solver', SOLVERS)
def test_affinity_eigs_padded_vs_scipy(solver):
  ws = [clustered_affinity(n, 60 + n, clusters=4) for n in (150, 260)]
  batch, n_valid = pad_affinities(ws, size=300)
  vals_b, vecs_b = affinity_eigs(batch, 4, solver=solver, n_valid=n_valid)
  for w, (vals, vecs) in zip(ws, unpad(vals_b, vecs_b, n_valid)):
    ref_vals, ref_vecs = sl.eigh(w.astype(np.float64))
    top = np.argsort(-np.abs(ref_vals))[:4]
    asc = top[np.argsort(ref_vals[top])]
    np.testing.assert_allclose(vals, ref_vals[asc], rtol=0, atol=1e-4 * np.abs(ref_vals).max())
    for row, col in enumerate(asc[::-1]):  # top-4 well separated (5th is ~2, like a pad)
      assert abs(vecs[row] @ ref_vecs[:, col]) >= 0.999
    assert_sign_rule(vecs)


def test_unpad_shapes():
  vals = np.zeros((2, 3))
  vecs = np.arange(2 * 3 * 5, dtype=np.float32).reshape(2, 3, 5)
  out: List = unpad(vals, vecs, [5, 2])
  assert out[0][1].shape == (3, 5) and out[1][1].shape == (3, 2)
  np.testing.assert_array_equal(out[1][1], vecs[1, :, :2])


# ----------------------------------------------------------------------------------------------
# ncut_pairs (MaskCut's second pair, float64 by default)
# ----------------------------------------------------------------------------------------------


def _two_cluster_graphs(count: int = 2, n: int = 37):
  """Dense positive graphs: an unequal two-cluster split plus noise (λ2 ≪ λ3)."""
  rng = np.random.default_rng(7)
  out = []
  for _ in range(count):
    side = np.arange(n) < n // 3
    w = np.where(side[:, None] == side[None, :], 1.0, 0.02) + 0.05 * rng.random((n, n))
    out.append((w + w.T) / 2)
  return np.stack(out)


@pytest.mark.parametrize(
  'solver, dtype',
  [('jax', 'float64'), ('lapack', 'float64'), ('arpack', 'float64'), ('jax', 'float32')],
)
def test_ncut_pairs_against_the_generalised_problem(solver, dtype):
  graphs = _two_cluster_graphs()
  lam, x = ncut_pairs(graphs.astype(dtype), dtype, solver)
  assert lam.shape == (2, 2) and x.shape == (2, 37) and lam.dtype == x.dtype == np.dtype(dtype)
  tol = 1e-10 if dtype == 'float64' else 1e-4
  for w, lam_i, x_i in zip(graphs, lam, x):
    d = np.diag(w.sum(1))
    ref_vals, ref_vecs = sl.eigh(d - w, d)  # D-normalised: vᵀ D v = 1
    np.testing.assert_allclose(lam_i, ref_vals[1:3], atol=tol)
    np.testing.assert_allclose(abs(x_i @ d @ ref_vecs[:, 1]), 1.0, atol=tol)


def test_ncut_pairs_takes_an_iterable_of_graphs():
  graphs = _two_cluster_graphs(3)
  for solver in ('lapack', 'arpack', 'jax'):
    lam, x = ncut_pairs(graphs, 'float64', solver)
    lam_it, x_it = ncut_pairs((g for g in graphs), 'float64', solver)
    np.testing.assert_array_equal(lam, lam_it)
    np.testing.assert_array_equal(x, x_it)


def test_ncut_solver_choice_and_errors():
  assert NCUT_SOLVERS == ('auto', 'jax', 'lapack', 'arpack')
  assert resolve_ncut_solver('auto', backend='cpu') == 'arpack'
  assert resolve_ncut_solver('auto', backend='gpu') == 'jax'
  assert resolve_ncut_solver('lapack', backend='gpu') == 'lapack'
  with pytest.raises(ValueError, match='solver must be one of'):
    ncut_pairs(_two_cluster_graphs(1), solver='dense')
  with pytest.raises(ValueError, match='float32 or float64'):
    ncut_pairs(_two_cluster_graphs(1), dtype='float16')
