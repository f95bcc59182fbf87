"""Eigen-solvers of the Deep Spectral Methods eigen stage (official protocol, section 2).

The official code solves the generalised problem ``(D − W) v = λ D v`` with
``scipy.sparse.linalg.eigsh(D − W, k=K, sigma=0, which='LM', M=D)`` on dense float32 matrices.
Here it is solved through the symmetric normalisation: with degrees ``d = W·1`` (``d < 1e-12`` →
1, as the official code does), ``s = d^-½`` and ``A = diag(s) W diag(s)``, the pairs are
``λ = 1 − θ`` and ``v = s ⊙ u`` for the eigenpairs ``(θ, u)`` of ``A`` with the largest ``θ``.
``v`` is then D-orthonormal (``vᵀ D v = 1``) like ARPACK's output, eigenvalues are ascending,
and the official sign rule is applied (:func:`sign_fix`).

Solvers (``solver=``):

* ``'dense'``: ``jnp.linalg.eigh`` of ``I − A`` (all pairs, then the K smallest).
* ``'lanczos'``: a restarted block Lanczos / block Krylov method with full re-orthogonalisation
  and an explicit Rayleigh–Ritz projection, on ``A`` applied as ``s ⊙ (W (s ⊙ X))`` (``A`` is
  never formed). Convergence is judged by Ritz residual norms ``‖A u − θ u‖``. All heavy work is
  float32 JAX matmuls at ``HIGHEST`` precision, so it runs unchanged on CPU/GPU/TPU.
* ``'auto'``: by measurement (``benchmarks/bench_eigen.py``): on CPU dense LAPACK ``eigh`` is
  slower than block Lanczos beyond a few hundred nodes, so Lanczos is used there; on GPU/TPU dense
  ``eigh`` is used up to :data:`ACCEL_DENSE_MAX_N` nodes.

Batches ``[B, N, N]`` are vmapped. Graphs of different sizes are batched by zero-padding with
:func:`pad_affinities`: padded nodes are isolated and carry a self-loop of weight −2, so their
degree (< 1e-12) is replaced by 1 and their normalised-Laplacian eigenvalue is exactly
``1 − (−2) = 3``, strictly above the whole real spectrum (⊂ [0, 2]); they are never among the K
smallest when ``K ≤ n_valid``, and the real eigenpairs are untouched (the padded block is
decoupled). This also holds for the official generalised formulation itself.

MaskCut's cut (:func:`ncut_pairs`) needs only the second pair of small dense graphs, in float64
as its official code: a batched dense ``eigh`` on the device or LAPACK / ARPACK per graph on the
host (``solver='jax' | 'lapack' | 'arpack' | 'auto'``). The block Krylov engine behind
``'lanczos'`` is :mod:`spectral_jax.spectral.krylov`.
"""

from __future__ import annotations

import functools
from typing import List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
import scipy.sparse.linalg

from spectral_jax.spectral import krylov

__all__ = [
  'sign_fix',
  'laplacian_eigs',
  'affinity_eigs',
  'bucket_size',
  'pad_affinities',
  'unpad',
  'choose_solver',
  'resolve_solver',
  'PAD_SELF_LOOP',
  'CPU_DENSE_MAX_N',
  'CPU_DENSE_PER_K',
  'ACCEL_DENSE_MAX_N',
  'NCUT_SOLVERS',
  'resolve_ncut_solver',
  'ncut_pair_dense',
  'ncut_pairs',
]

_HI = jax.lax.Precision.HIGHEST

#: Self-loop weight on padded nodes: their normalised Laplacian eigenvalue is 1 − (−2) = 3 > 2.
PAD_SELF_LOOP = -2.0
#: On CPU, dense LAPACK eigh is used up to max(CPU_DENSE_MAX_N, CPU_DENSE_PER_K · K) nodes
#: (measured crossovers: ~150 nodes for K ≤ 5, ~800 for K = 20).
CPU_DENSE_MAX_N = 256
CPU_DENSE_PER_K = 32
#: On GPU/TPU, dense eigh is used up to this many nodes (not measured here: no accelerator).
ACCEL_DENSE_MAX_N = 2048


# ----------------------------------------------------------------------------------------------
# Sign rule
# ----------------------------------------------------------------------------------------------


def sign_fix(vecs: jax.Array, n_valid: Optional[jax.Array] = None) -> jax.Array:
  """Official sign rule: negate ``v_k`` when ``0.5 < mean(v_k > 0) < 1``.

  Args:
    vecs: ``[..., K, N]`` eigenvectors (rows).
    n_valid: optional ``[...]`` number of real (unpadded) nodes; entries at index ``≥ n_valid``
      are ignored in the mean.

  Returns:
    ``[..., K, N]`` eigenvectors; the positive side is the minority (or all / exactly half).
  """
  n = vecs.shape[-1]
  if n_valid is None:
    n_valid = jnp.asarray(n, jnp.int32)
  n_valid = jnp.asarray(n_valid, jnp.int32)[..., None]  # [..., 1] broadcasts over K
  valid = jnp.arange(n) < n_valid[..., None]  # [..., 1, N]
  count = jnp.sum((vecs > 0) & valid, axis=-1)  # [..., K]
  # Integer form of 0.5 < count / n < 1 (exact, no float rounding).
  flip = (2 * count > n_valid) & (count < n_valid)
  return jnp.where(flip[..., None], -vecs, vecs)


_sign_fix_jit = jax.jit(sign_fix)


# ----------------------------------------------------------------------------------------------
# Helpers shared by the solvers
# ----------------------------------------------------------------------------------------------


def _degrees(w: jax.Array) -> jax.Array:
  """Row sums ``W·1`` with ``d < 1e-12`` → 1 (pymatting ``row_sum`` + official fix-up)."""
  d = jnp.sum(w, axis=-1)
  return jnp.where(d < 1e-12, jnp.ones_like(d), d)


# ----------------------------------------------------------------------------------------------
# Laplacian eigenpairs
# ----------------------------------------------------------------------------------------------


def choose_solver(n: int, k: int, backend: Optional[str] = None) -> str:
  """The ``'auto'`` choice: ``'dense'`` or ``'lanczos'`` for an ``n``-node graph and ``k`` pairs.

  CPU: dense LAPACK ``eigh`` is cubic and, from a few hundred nodes on, much slower than block
  Lanczos (whose cost is a few GEMMs with ``W``); tiny graphs, or ``k`` so large that the
  Krylov basis would not fit, go dense. GPU/TPU: dense ``eigh`` up to
  :data:`ACCEL_DENSE_MAX_N` nodes (robust, one library call), Lanczos above.
  """
  backend = backend or jax.default_backend()
  b, s = krylov.krylov_sizes(n, k, None, None)
  if s < 2 or 2 * k > n:
    return 'dense'
  limit = max(CPU_DENSE_MAX_N, CPU_DENSE_PER_K * k) if backend == 'cpu' else ACCEL_DENSE_MAX_N
  return 'dense' if n <= limit else 'lanczos'


def _smallest_graph(n: int, n_valid) -> int:
  """Fewest real nodes in a batch; with n_valid traced (inside jit) the caller checks the
  Krylov fit (see resolve_solver)."""
  if n_valid is None or isinstance(n_valid, jax.core.Tracer):
    return n
  return int(np.min(np.asarray(n_valid)))


def resolve_solver(
  solver: str, n: int, k: int, smallest: Optional[int] = None, backend: Optional[str] = None
) -> str:
  """``'dense'`` or ``'lanczos'`` for a batch of ``n``-node graphs, the smallest with
  ``smallest`` real nodes (padded batches; default ``n``): ``'auto'`` is decided by
  :func:`choose_solver`, and Lanczos falls back to dense when its basis cannot fit."""
  if solver not in ('auto', 'dense', 'lanczos'):
    raise ValueError(f'unknown solver {solver!r}')
  if solver == 'auto':
    solver = choose_solver(n, k, backend)
  b, s = krylov.krylov_sizes(n, k, None, None)
  if solver == 'lanczos' and not krylov.krylov_fits(b, s, k, min(n, smallest or n)):
    return 'dense'
  return solver


def _lap_dense_single(w: jax.Array, k: int) -> Tuple[jax.Array, jax.Array]:
  """``[N, N] -> ([K], [K, N])`` via dense ``eigh(I − A)``."""
  s = jax.lax.rsqrt(_degrees(w))
  a = w * s[:, None] * s[None, :]
  # eigh symmetrises its input ((L + Lᵀ)/2), absorbing rounding asymmetry of s_i w_ij s_j.
  lam, u = jnp.linalg.eigh(jnp.eye(w.shape[0], dtype=w.dtype) - a)
  return lam[:k], (u[:, :k] * s[:, None]).T


def _lap_lanczos_single(
  w: jax.Array, n_valid: jax.Array, k: int, block: int, steps: int, max_cycles: int, tol: float
) -> Tuple[jax.Array, jax.Array, jax.Array]:
  """``[N, N] -> ([K], [K, N], residuals [K])`` via block Lanczos on ``A``."""
  d = _degrees(w)
  s = jax.lax.rsqrt(d)

  def apply_a(x: jax.Array) -> jax.Array:
    return s[:, None] * jnp.matmul(w, s[:, None] * x, precision=_HI)

  # Start block: sqrt(d) (the exact θ = 1 eigenvector of a connected graph) + hashed vectors,
  # zero on padded nodes so that their (decoupled, unwanted) eigenspace is never entered.
  valid = (jnp.arange(w.shape[0]) < n_valid)[:, None]
  x0 = krylov.hash_uniform(w.shape[0], block).at[:, 0].set(jnp.sqrt(d))
  x0 = jnp.where(valid, x0, 0.0)
  theta, u, res, _ = krylov.block_krylov(apply_a, x0, k, steps, max_cycles, tol, 'LA')
  # Ritz values come out largest-first, i.e. λ = 1 − θ ascending.
  return 1.0 - theta, (u * s[:, None]).T, res


@functools.partial(jax.jit, static_argnames=('k',))
def _lap_dense(w: jax.Array, k: int) -> Tuple[jax.Array, jax.Array]:
  fn = functools.partial(_lap_dense_single, k=k)
  for _ in range(w.ndim - 2):
    fn = jax.vmap(fn)
  return fn(w)


@functools.partial(jax.jit, static_argnames=('k', 'block', 'steps', 'max_cycles', 'tol'))
def _lap_lanczos(
  w: jax.Array, n_valid: jax.Array, k: int, block: int, steps: int, max_cycles: int, tol: float
) -> Tuple[jax.Array, jax.Array, jax.Array]:
  fn = functools.partial(
    _lap_lanczos_single, k=k, block=block, steps=steps, max_cycles=max_cycles, tol=tol
  )
  for _ in range(w.ndim - 2):
    fn = jax.vmap(fn)
  return fn(w, n_valid)


def laplacian_eigs(
  w: jax.Array,
  k: int,
  solver: str = 'auto',
  n_valid: Optional[jax.Array] = None,
  *,
  tol: float = 1e-5,
  block: Optional[int] = None,
  steps: Optional[int] = None,
  max_cycles: int = 30,
  return_residuals: bool = False,
):
  """The ``k`` smallest eigenpairs of ``(D − W) v = λ D v`` (official Laplacian branch).

  Args:
    w: ``[N, N]`` or ``[B, N, N]`` symmetric float32 affinity (see
      :func:`spectral_jax.spectral.affinity.combined_affinity`); padded batches from
      :func:`pad_affinities`.
    k: number of eigenpairs (``k ≤ N``, and ``k ≤ n_valid`` for padded graphs).
    solver: ``'auto'``, ``'dense'`` or ``'lanczos'`` (see the module docstring).
    n_valid: optional ``[B]`` (or scalar) number of real nodes of padded graphs: the sign rule
      only counts real entries, and Lanczos start vectors are zero on padded nodes. Padded
      entries of the returned eigenvectors are ~0; drop them with :func:`unpad`.
    tol: Lanczos residual tolerance on ``‖A u − θ u‖`` (``A`` has norm ≤ 1).
    block, steps, max_cycles: Lanczos block size, block steps per restart cycle, cycle limit.
    return_residuals: also return the Lanczos residual norms ``[..., K]`` (zeros for dense).

  Returns:
    ``eigenvalues [..., K]`` ascending and ``eigenvectors [..., K, N]`` (rows, D-orthonormal,
    sign-fixed); plus residuals when ``return_residuals``.
  """
  w = jnp.asarray(w, jnp.float32)
  n = w.shape[-1]
  if not 0 < k <= n:
    raise ValueError(f'need 0 < k <= N, got k={k}, N={n}')
  if solver == 'auto':
    solver = choose_solver(n, k)
  smallest = _smallest_graph(n, n_valid)
  if solver == 'dense':
    vals, vecs = _lap_dense(w, k)
    res = jnp.zeros_like(vals)
  elif solver == 'lanczos':
    b, s = krylov.krylov_sizes(n, k, block, steps)
    if not krylov.krylov_fits(b, s, k, smallest):  # too few nodes for a subset method
      vals, vecs = _lap_dense(w, k)
      res = jnp.zeros_like(vals)
    else:
      nv = jnp.broadcast_to(jnp.asarray(n if n_valid is None else n_valid, jnp.int32), w.shape[:-2])
      vals, vecs, res = _lap_lanczos(w, nv, k, b, s, int(max_cycles), float(tol))
  else:
    raise ValueError(f'unknown solver {solver!r}')
  vecs = _sign_fix_jit(vecs, n if n_valid is None else n_valid)
  return (vals, vecs, res) if return_residuals else (vals, vecs)


# ----------------------------------------------------------------------------------------------
# Affinity eigenpairs (which_matrix='affinity')
# ----------------------------------------------------------------------------------------------


def _quirky_order(theta: jax.Array, u: jax.Array) -> Tuple[jax.Array, jax.Array]:
  """Official 'affinity' order: values ascending, vectors descending (``[K], [N, K] -> [K, N]``)."""
  order = jnp.argsort(theta)
  return theta[order], u[:, order[::-1]].T


def _aff_dense_single(w: jax.Array, k: int) -> Tuple[jax.Array, jax.Array]:
  theta, u = jnp.linalg.eigh(w)
  idx = krylov.select_ritz(theta, k, 'LM')
  return _quirky_order(theta[idx], u[:, idx])


def _aff_lanczos_single(
  w: jax.Array, k: int, block: int, steps: int, max_cycles: int, tol: float
) -> Tuple[jax.Array, jax.Array]:
  def apply_w(x: jax.Array) -> jax.Array:
    return jnp.matmul(w, x, precision=_HI)

  # Work on W / scale so that the residual tolerance is relative (max row sum ≥ ‖W‖₂).
  scale = jnp.max(jnp.sum(jnp.abs(w), axis=-1))
  theta, u, _, _ = krylov.block_krylov(
    lambda x: apply_w(x) / scale,
    krylov.hash_uniform(w.shape[0], block),
    k,
    steps,
    max_cycles,
    tol,
    'LM',
  )
  return _quirky_order(theta * scale, u)


@functools.partial(jax.jit, static_argnames=('k', 'solver', 'block', 'steps', 'max_cycles', 'tol'))
def _aff(
  w: jax.Array, k: int, solver: str, block: int, steps: int, max_cycles: int, tol: float
) -> Tuple[jax.Array, jax.Array]:
  if solver == 'dense':
    fn = functools.partial(_aff_dense_single, k=k)
  else:
    fn = functools.partial(
      _aff_lanczos_single, k=k, block=block, steps=steps, max_cycles=max_cycles, tol=tol
    )
  for _ in range(w.ndim - 2):
    fn = jax.vmap(fn)
  return fn(w)


def affinity_eigs(
  w: jax.Array,
  k: int,
  solver: str = 'auto',
  n_valid: Optional[jax.Array] = None,
  *,
  tol: float = 1e-6,
  block: Optional[int] = None,
  steps: Optional[int] = None,
  max_cycles: int = 30,
) -> Tuple[jax.Array, jax.Array]:
  """The ``k`` largest-magnitude eigenpairs of ``W`` itself (``which_matrix='affinity'``).

  Reproduces the official quirk: ``eigsh(W, k, which='LM')`` returns eigenvalues in ascending
  order and the code then reverses only the eigenvectors, so ``eigenvectors[0]`` belongs to
  ``eigenvalues[-1]`` (vectors largest-first, values ascending). Eigenvectors have unit norm
  and are sign-fixed with :func:`sign_fix`.

  Args:
    w: ``[N, N]`` or ``[B, N, N]`` symmetric affinity.
    k: number of eigenpairs.
    solver: ``'auto'``, ``'dense'`` or ``'lanczos'``.
    n_valid: optional ``[B]`` (or scalar) real sizes of a padded batch: padded rows/columns
      (incl. the −2 self-loops of :func:`pad_affinities`) are zeroed, so padded eigenvalues
      are 0 and come last in magnitude order; the sign rule counts real nodes only.
    tol: Lanczos residual tolerance relative to ``max_i Σ_j |W_ij|`` (≥ ‖W‖₂).

  Returns:
    ``eigenvalues [..., K]`` ascending, ``eigenvectors [..., K, N]`` in reversed order.
  """
  w = jnp.asarray(w, jnp.float32)
  n = w.shape[-1]
  if not 0 < k <= n:
    raise ValueError(f'need 0 < k <= N, got k={k}, N={n}')
  if solver == 'auto':
    solver = choose_solver(n, k)
  if solver not in ('dense', 'lanczos'):
    raise ValueError(f'unknown solver {solver!r}')
  b, s = krylov.krylov_sizes(n, k, block, steps)
  if solver == 'lanczos' and not krylov.krylov_fits(b, s, k, _smallest_graph(n, n_valid)):
    solver = 'dense'
  if n_valid is not None:
    valid = jnp.arange(n) < jnp.asarray(n_valid, jnp.int32)[..., None]  # [..., N]
    w = jnp.where(valid[..., :, None] & valid[..., None, :], w, 0.0)
  vals, vecs = _aff(w, k, solver, b, s, int(max_cycles), float(tol))
  return vals, _sign_fix_jit(vecs, n if n_valid is None else n_valid)


# ----------------------------------------------------------------------------------------------
# Second pair of dense graphs in float64 (MaskCut's normalized cut)
# ----------------------------------------------------------------------------------------------

NCUT_SOLVERS = ('auto', 'jax', 'lapack', 'arpack')


def resolve_ncut_solver(solver: str, backend: Optional[str] = None) -> str:
  """``'jax'``, ``'lapack'`` or ``'arpack'`` for :func:`ncut_pairs`. ``'auto'``, measured on the
  2-core CPU host: for 900 nodes ARPACK 0.1–0.6 s per graph against 1.4 s for LAPACK's two-pair
  dsyevr and more for a full batched eigh; for 3600 nodes (ViT-*/8) 0.7 s against 52 s.
  Accelerators run the batched dense eigh."""
  if solver not in NCUT_SOLVERS:
    raise ValueError(f'solver must be one of {NCUT_SOLVERS}, got {solver!r}')
  if solver == 'auto':
    return 'arpack' if (backend or jax.default_backend()) == 'cpu' else 'jax'
  return solver


def ncut_pair_dense(w: jax.Array) -> Tuple[jax.Array, jax.Array]:
  """The ``'jax'`` route, traceable (callers may fuse it into their own jit): dense ``eigh`` of
  ``I − D^-½ W D^-½`` for ``w [..., N, N]`` → ``(λ2, λ3) [..., 2]``, ``x [..., N]``."""
  s = jax.lax.rsqrt(w.sum(-1))
  lap = jnp.eye(w.shape[-1], dtype=w.dtype) - w * s[..., :, None] * s[..., None, :]
  theta, u = jnp.linalg.eigh(lap)
  return theta[..., 1:3], u[..., :, 1] * s  # D-normalised: xᵀ D x = 1


_ncut_pair_dense_jit = jax.jit(ncut_pair_dense)


def _ncut_pair_host(w: np.ndarray, solver: str) -> Tuple[np.ndarray, np.ndarray]:
  """(λ2, λ3) and x of one graph on the host: LAPACK two-pair eigh or ARPACK on D^-½WD^-½."""
  s = 1.0 / np.sqrt(w.sum(1))
  m = w * s[:, None] * s[None, :]
  if solver == 'arpack':
    # The 3 largest pairs of M (θ1 = 1 is the trivial one); λ = 1 − θ. A fixed start vector
    # keeps runs reproducible; tol 0 is machine precision.
    v0 = np.random.default_rng(0).standard_normal(len(s)).astype(w.dtype)
    try:
      theta, u = scipy.sparse.linalg.eigsh(m, k=3, which='LA', v0=v0, tol=0)
      order = np.argsort(-theta)
      return 1.0 - theta[order[1:3]], u[:, order[1]] * s
    except scipy.sparse.linalg.ArpackNoConvergence:
      pass  # fall back to the dense solver
  theta, u = scipy.linalg.eigh(np.eye(len(s), dtype=w.dtype) - m, subset_by_index=[1, 2])
  return theta, u[:, 0] * s


def ncut_pairs(w, dtype: str = 'float64', solver: str = 'auto') -> Tuple[np.ndarray, np.ndarray]:
  """Second and third pairs of ``(D − W) x = λ D x`` for a batch of dense graphs (no sign rule).

  Solved through ``M = D^-½ W D^-½`` (``λ = 1 − θ``, ``x = D^-½ u``): the pairs of
  ``scipy.linalg.eigh(D − W, D)``, up to sign, as MaskCut's official normalized cut.

  Args:
    w: ``[B, N, N]`` symmetric weights with positive degrees (host or device array), or an
      iterable of ``[N, N]`` ones (the host solvers then hold one dense graph at a time).
    dtype: ``'float64'`` (device work under ``jax.enable_x64``) or ``'float32'``.
    solver: ``'jax'``: batched dense ``jnp.linalg.eigh`` on the device (:func:`ncut_pair_dense`);
      ``'lapack'``: host two-pair ``scipy.linalg.eigh`` per graph (the official route);
      ``'arpack'``: host ``scipy.sparse.linalg.eigsh`` of the 3 largest pairs of M per graph
      (``'lapack'`` if it does not converge); ``'auto'``: :func:`resolve_ncut_solver`.

  Returns numpy ``eigenvalues [B, 2]`` (λ2, λ3) and ``x [B, N]``, the 2nd eigenvector,
  D-normalised (``xᵀ D x = 1``), the solver's sign; both of ``dtype``.
  """
  if dtype not in ('float32', 'float64'):
    raise ValueError(f'dtype must be float32 or float64, got {dtype!r}')
  solver = resolve_ncut_solver(solver)
  if solver == 'jax':
    with jax.enable_x64(dtype == 'float64'):
      w = w if isinstance(w, (np.ndarray, jax.Array)) else jnp.stack(list(w))
      return tuple(np.asarray(v) for v in _ncut_pair_dense_jit(jnp.asarray(w, dtype)))
  lam, x = [], []
  for wi in w:
    pair = _ncut_pair_host(np.asarray(wi, dtype), solver)
    lam.append(pair[0])
    x.append(pair[1])
  return np.asarray(lam, dtype).reshape(-1, 2), np.asarray(x, dtype)


# ----------------------------------------------------------------------------------------------
# Mixed sizes: padding and bucketing
# ----------------------------------------------------------------------------------------------


def bucket_size(n: int, buckets: Sequence[int]) -> int:
  """Smallest bucket ``≥ n`` (``buckets`` in any order); ``n`` itself when none is large enough."""
  fitting = [b for b in buckets if b >= n]
  return min(fitting) if fitting else int(n)


def pad_affinities(
  ws: Sequence[np.ndarray], buckets: Optional[Sequence[int]] = None, size: Optional[int] = None
) -> Tuple[jax.Array, jax.Array]:
  """Stack affinities of different sizes into one zero-padded batch.

  Padded nodes are isolated with a self-loop of :data:`PAD_SELF_LOOP` (= −2): degree → 1,
  normalised-Laplacian eigenvalue 3, above every real eigenvalue (see the module docstring).

  Args:
    ws: list of ``[N_i, N_i]`` affinities.
    buckets: optional sizes; the batch is padded to ``bucket_size(max N_i, buckets)`` so that
      few distinct shapes (and jit compilations) occur.
    size: explicit padded size (overrides ``buckets``).

  Returns:
    ``W_batch [B, Nmax, Nmax]`` float32 and ``n_valid [B]`` int32.
  """
  sizes = [int(np.shape(w)[0]) for w in ws]
  nmax = max(sizes)
  if size is not None:
    if size < nmax:
      raise ValueError(f'size {size} < largest graph {nmax}')
    nmax = int(size)
  elif buckets is not None:
    nmax = bucket_size(nmax, buckets)
  out = np.zeros((len(ws), nmax, nmax), np.float32)
  for i, (w, n) in enumerate(zip(ws, sizes)):
    out[i, :n, :n] = np.asarray(w, np.float32)
    idx = np.arange(n, nmax)
    out[i, idx, idx] = PAD_SELF_LOOP
  return jnp.asarray(out), jnp.asarray(sizes, jnp.int32)


def unpad(
  vals: jax.Array, vecs: jax.Array, n_valid: Sequence[int]
) -> List[Tuple[np.ndarray, np.ndarray]]:
  """Split a padded batch result into per-graph ``(eigenvalues [K], eigenvectors [K, N_i])``."""
  vals_np, vecs_np = np.asarray(vals), np.asarray(vecs)
  return [(vals_np[i], vecs_np[i, :, : int(n)]) for i, n in enumerate(np.asarray(n_valid))]
