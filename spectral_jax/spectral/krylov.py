"""Restarted block Krylov (block Lanczos) engine of the eigen-solvers (:mod:`.eigen`).

A symmetric operator's extreme eigenpairs by block Krylov subspaces with full
re-orthogonalisation and an explicit Rayleigh–Ritz projection; convergence by Ritz residual
norms. All heavy work is float32 JAX matmuls at ``HIGHEST`` precision. Which problems it solves,
and when it is chosen over a dense ``eigh``, is :mod:`spectral_jax.spectral.eigen`'s business.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import jax.scipy.linalg

_HI = jax.lax.Precision.HIGHEST


def hash_uniform(n: int, b: int) -> jax.Array:
  """Deterministic start block ``[n, b]`` in ``[-1, 1)`` from an integer hash of (row, col).

  Row ``i`` does not depend on ``n``, so a zero-padded graph starts from the same vectors on
  its real nodes as the unpadded one.
  """
  i = jnp.arange(n, dtype=jnp.uint32)[:, None]
  j = jnp.arange(b, dtype=jnp.uint32)[None, :]
  h = i * jnp.uint32(0x9E3779B1) + (j + jnp.uint32(1)) * jnp.uint32(0x85EBCA77)
  # murmur3 finaliser: good bit mixing with wrap-around uint32 arithmetic.
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  h = h ^ (h >> 16)
  return (h >> 8).astype(jnp.float32) * jnp.float32(2.0 / (1 << 24)) - 1.0


def _project_out(basis: jax.Array, z: jax.Array) -> jax.Array:
  """``z − V (Vᵀ z)`` for an orthonormal ``V``."""
  return z - jnp.matmul(basis, jnp.matmul(basis.T, z, precision=_HI), precision=_HI)


def _orthonormalize_against(basis: jax.Array, z: jax.Array) -> jax.Array:
  """Orthonormal block spanning ``z`` minus its component in ``span(V)``.

  Project + QR twice ("twice is enough"): the second pass restores orthogonality to float32
  precision, also when ``z`` is numerically inside ``span(V)`` (e.g. an invariant Krylov
  space on a disconnected graph) and the first QR amplified rounding noise.
  """
  q, _ = jnp.linalg.qr(_project_out(basis, z))
  q, _ = jnp.linalg.qr(_project_out(basis, q))
  return q


def select_ritz(theta: jax.Array, count: int, which: str) -> jax.Array:
  """Indices of the ``count`` wanted Ritz values, best first (``'LA'`` or ``'LM'``)."""
  key = theta if which == 'LA' else jnp.abs(theta)
  return jnp.argsort(-key)[:count]


class _KrylovState(NamedTuple):
  x: jax.Array  # [N, b] orthonormal restart block (best Ritz vectors)
  ax: jax.Array  # [N, b] operator applied to x
  theta: jax.Array  # [K] wanted Ritz values
  u: jax.Array  # [N, K] wanted Ritz vectors
  res: jax.Array  # [K] residual norms
  cycle: jax.Array  # [] number of restart cycles done


def block_krylov(
  apply_op, x0: jax.Array, k: int, steps: int, max_cycles: int, tol: float, which: str
) -> Tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """Restarted block Krylov (block Lanczos) eigen-solver for a symmetric operator.

  Each cycle builds ``V = [X, A X, …, A^steps X]`` (orthonormalised block by block against all
  previous blocks), ``AV`` alongside, and solves the projected problem ``Vᵀ A V`` exactly
  (Rayleigh–Ritz). The next cycle restarts from the best ``b`` Ritz vectors, whose images are
  ``AV Y`` (no extra operator application). Stops when every wanted residual
  ``‖A u − θ u‖ ≤ tol`` or after ``max_cycles`` cycles.

  Args:
    apply_op: ``[N, b] -> [N, b]`` symmetric operator.
    x0: ``[N, b]`` start block (need not be orthonormal), ``b ≥ k``.
    k: number of wanted eigenpairs.
    steps: block operator applications per cycle (basis ``b·(steps+1)`` columns).
    max_cycles: cycle limit.
    tol: residual tolerance (absolute).
    which: ``'LA'`` largest algebraic or ``'LM'`` largest magnitude.

  Returns:
    ``theta [k]`` (best first), ``u [N, k]``, residual norms ``[k]``, cycles used ``[]``.
  """
  n, b = x0.shape
  nb = b * (steps + 1)

  def cycle(state: _KrylovState) -> _KrylovState:
    # Re-orthonormalise the restart block (Ritz vectors inherit the basis' rounding errors,
    # which would otherwise accumulate over cycles); R ≈ I, so A X R⁻¹ is accurate.
    x, r = jnp.linalg.qr(state.x)
    ax = jax.scipy.linalg.solve_triangular(r, state.ax.T, trans='T', lower=False).T
    basis = jnp.zeros((n, nb), x0.dtype).at[:, :b].set(x)
    abasis = jnp.zeros((n, nb), x0.dtype).at[:, :b].set(ax)
    for j in range(1, steps + 1):
      # Python-unrolled (`steps` is small) so that slices are static and each block is
      # orthogonalised only against the j·b columns filled so far.
      q = _orthonormalize_against(basis[:, : j * b], abasis[:, (j - 1) * b : j * b])
      basis = basis.at[:, j * b : (j + 1) * b].set(q)
      abasis = abasis.at[:, j * b : (j + 1) * b].set(apply_op(q))
    t = jnp.matmul(basis.T, abasis, precision=_HI)
    theta, y = jnp.linalg.eigh(0.5 * (t + t.T))
    order = select_ritz(theta, b, which)
    y = y[:, order]
    x = jnp.matmul(basis, y, precision=_HI)
    ax = jnp.matmul(abasis, y, precision=_HI)
    th = theta[order]
    res = jnp.linalg.norm(ax[:, :k] - x[:, :k] * th[None, :k], axis=0)
    return _KrylovState(x, ax, th[:k], x[:, :k], res, state.cycle + 1)

  def not_done(state: _KrylovState) -> jax.Array:
    return (state.cycle < max_cycles) & (jnp.max(state.res) > tol)

  x, _ = jnp.linalg.qr(x0)
  init = _KrylovState(
    x,
    apply_op(x),
    jnp.zeros((k,), x0.dtype),
    x[:, :k],
    jnp.full((k,), jnp.inf, x0.dtype),
    jnp.zeros((), jnp.int32),
  )
  final = jax.lax.while_loop(not_done, cycle, init)
  return final.theta, final.u, final.res, final.cycle


def krylov_sizes(n: int, k: int, block: Optional[int], steps: Optional[int]) -> Tuple[int, int]:
  """Block size and steps per cycle, capped so that the basis never exceeds ``n`` columns.

  Defaults (measured on CPU, see the benchmark): a block of ``k + max(3, k // 4)`` (≥ 8)
  columns and 6 steps per cycle. On CPU a 4800×4800 GEMM with ≤ 16 right-hand sides is
  memory-bound and costs about one matvec, ``b > k`` speeds convergence (the rate is set by the
  gap to ``θ_{b+1}``), and ``b ≥ k`` captures eigenvalues of multiplicity up to ``b``
  (e.g. several connected components).
  """
  b = block if block is not None else max(8, k + max(3, k // 4))
  s = steps if steps is not None else 6
  b = min(b, n)
  s = max(1, min(s, n // b - 1))
  return b, s


def krylov_fits(b: int, s: int, k: int, smallest: int) -> bool:
  """Whether a Krylov basis of b·(s + 1) columns fits in the fewest real nodes of a batch.

  Padded nodes are outside the start block's span, so the basis lives in the real nodes'
  space; a basis larger than that space breaks down (spurious Ritz values).
  """
  return b >= k and b * (s + 1) <= smallest
