"""LOST (Siméoni et al. 2021): seed = least-connected patch, then seed expansion.

Equal to the official code (``methods_protocol.md`` §3) on raw (not normalised) patch keys of the
object-discovery input (:func:`spectral_jax.spectral.tokencut.padded_keys`). One deliberate
difference: patches of equal degree are ordered by lowest index (a stable sort), where the
official code uses torch's unstable sort whose tie order is implementation-defined; seeds and
boxes agree, the expansion set can differ where ties straddle the ``k_patches``-th place.
Pass ``order=`` to :func:`expansion` to reproduce a recorded official order.

Degree, order, expansion and the map ``M`` run jitted and batched over images padded to one
token length ``L``; the seed's 4-connected component and the box on the host.
"""

from __future__ import annotations

import functools
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from spectral_jax.spectral import tokencut

__all__ = ['degree_order', 'expansion', 'discover']

_HI = jax.lax.Precision.HIGHEST


def _valid_mask(n: int, n_valid) -> jax.Array:
  return jnp.arange(n) < jnp.asarray(n_valid, jnp.int32)[..., None]


def _dots(keys: jax.Array) -> jax.Array:
  keys = jnp.asarray(keys, jnp.float32)
  return jnp.einsum('bnd,bmd->bnm', keys, keys, precision=_HI)


@jax.jit
def degree_order(keys: jax.Array, n_valid: jax.Array):
  """Degrees and the order of patches by increasing degree.

  Args:
    keys: [B, N, D] raw patch keys (CLS excluded), padded tokens after the real ones.
    n_valid: [B] real tokens.

  Returns:
    degree [B, N] int32 (number of OTHER real patches with a positive dot product; 0 on
    padding) and order [B, N] int32 (stable argsort of the degree, ties by lowest index;
    padded tokens last).
  """
  a = _dots(keys)
  n = a.shape[-1]
  valid = _valid_mask(n, n_valid)
  pos = (a > 0) & valid[:, None, :] & ~jnp.eye(n, dtype=bool)[None]
  deg = jnp.where(valid, jnp.sum(pos, axis=-1), 0).astype(jnp.int32)
  key = jnp.where(valid, deg, jnp.iinfo(jnp.int32).max)
  return deg, jnp.argsort(key, axis=-1, stable=True).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=('k_patches',))
def expansion(keys: jax.Array, n_valid: jax.Array, order: jax.Array, k_patches: int = 100):
  """Seed expansion given an order of the patches.

  Args:
    keys: [B, N, D] raw patch keys; n_valid: [B]; order: [B, N] patch order (the seed first,
      real patches before padded ones).
    k_patches: the official ``--k_patches``.

  Returns:
    seed [B] int32 (order[:, 0]), potentials [B, N] bool (the first k_patches of the order),
    similars [B, N] bool (potentials with a positive dot product with the seed), M [B, N]
    float32 (sum of the dot-product rows of the similars; 0 on padding).
  """
  a = _dots(keys)
  n = a.shape[-1]
  valid = _valid_mask(n, n_valid)
  seed = order[:, 0]
  rank = (
    jnp.zeros_like(order)
    .at[jnp.arange(order.shape[0])[:, None], order]
    .set(jnp.broadcast_to(jnp.arange(n, dtype=order.dtype), order.shape))
  )
  potentials = (rank < k_patches) & valid
  seed_row = jnp.take_along_axis(a, seed[:, None, None], axis=1)[:, 0]  # [B, N]
  similars = potentials & (seed_row > 0)
  m = jnp.einsum('bn,bnm->bm', similars.astype(a.dtype), a, precision=_HI)
  return seed, potentials, similars, jnp.where(valid, m, 0.0)


def discover(
  keys,
  grids: Sequence[Sequence[int]],
  image_hw: Optional[Sequence[Sequence[int]]] = None,
  patch_size: int = 16,
  k_patches: int = 100,
  order=None,
) -> dict[str, np.ndarray]:
  """LOST on a batch of images' keys.

  Args:
    keys: [B, L, D] raw patch keys, CLS excluded, each image's gh·gw tokens first (row-major).
    grids: B patch grids (gh, gw).
    image_hw: B unpadded image sizes (H, W) for clipping boxes (default: gh·P, gw·P).
    patch_size: P.
    k_patches: the official ``--k_patches`` (100).
    order: optional [B, L] patch order to use instead of the stable degree order.

  Returns (numpy):
    degree [B, L] int32, order [B, L] int32, seed [B] int64, potentials / similars [B, L] bool,
    M [B, L] float32, mask [B, L] bool (the seed's 4-connected component of M > 0), box [B, 4]
    int64.
  """
  keys = jnp.asarray(keys, jnp.float32)
  b, length = keys.shape[:2]
  if len(grids) != b:
    raise ValueError(f'{len(grids)} grids for {b} images')
  n_valid = jnp.asarray([g[0] * g[1] for g in grids], jnp.int32)
  if int(jnp.max(n_valid)) > length:
    raise ValueError(f'a grid has more than {length} tokens')
  deg, stable = degree_order(keys, n_valid)
  order = stable if order is None else jnp.asarray(order, jnp.int32)
  seed, potentials, similars, m = expansion(keys, n_valid, order, k_patches=k_patches)
  seed, m = np.asarray(seed).astype(np.int64), np.asarray(m)
  mask = np.zeros(m.shape, bool)
  boxes = np.zeros((b, 4), np.int64)
  for i, grid in enumerate(grids):
    # M_s = sum of |positive| dot products with the seed > 0, so the seed is in M > 0.
    comp = tokencut.seed_component(tokencut.as_grid(m[i], grid) > 0, seed[i])
    mask[i, : grid[0] * grid[1]] = comp.ravel()
    hw = image_hw[i] if image_hw is not None else (grid[0] * patch_size, grid[1] * patch_size)
    boxes[i] = tokencut.box_from_mask(comp, patch_size, hw)
  return dict(
    degree=np.asarray(deg),
    order=np.asarray(order),
    seed=seed,
    potentials=np.asarray(potentials),
    similars=np.asarray(similars),
    M=m,
    mask=mask,
    box=boxes,
  )
