"""TokenCut (Wang et al. 2022): normalised cut on a binarised key-similarity graph.

Equal to the official code (``methods_protocol.md`` §1, §2): object discovery on the image
normalised and zero-padded to multiples of the patch size, saliency on the image resized with
PIL Lanczos to ``round(H/P)·P × round(W/P)·P``.

Device part (jitted, batched over images padded to one token length ``L``, ``n_valid`` real
tokens each): graph, eigenproblem (through :func:`spectral_jax.spectral.eigen.laplacian_eigs`),
bipartition at the mean, seed and TokenCut's sign rule. Host part (numpy/scipy): the seed's
4-connected component and the box. Masks come back flat ``[B, L]`` (False on padded tokens);
``mask[i, :gh*gw].reshape(gh, gw)`` is image i's patch mask (see :func:`as_grid`).
"""

from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
from scipy import ndimage

from spectral_jax.imaging import resample
from spectral_jax.models import vit
from spectral_jax.spectral import eigen

__all__ = [
  'binary_graph',
  'bipartition',
  'seed_component',
  'box_from_mask',
  'as_grid',
  'discover',
  'padded_input',
  'padded_keys',
  'saliency_size',
  'saliency_input',
  'saliency_keys',
  'torch_nearest_index',
  'upsample_nearest',
  'saliency',
]

_HI = jax.lax.Precision.HIGHEST


# ----------------------------------------------------------------------------------------------
# Graph, eigenvector, bipartition (device, batched)
# ----------------------------------------------------------------------------------------------


def _valid_mask(n: int, n_valid) -> jax.Array:
  """[B, N] True on the first n_valid[b] tokens."""
  return jnp.arange(n) < jnp.asarray(n_valid, jnp.int32)[..., None]


@functools.partial(jax.jit, static_argnames=('tau', 'eps'))
def binary_graph(keys: jax.Array, n_valid: jax.Array, tau: float = 0.2, eps: float = 1e-5):
  """TokenCut's graph ``W_ij = 1 if f̂_i·f̂_j > tau else eps`` on L2-normalised keys.

  Args:
    keys: [B, N, D] patch keys (CLS excluded), padded tokens after the real ones.
    n_valid: [B] real tokens per image.
    tau, eps: the official ``--tau`` / ``--eps``.

  Returns:
    [B, N, N] float32. Padded nodes are isolated with eigen.PAD_SELF_LOOP on the diagonal, so
    the eigen-solver never returns them among the smallest pairs (see eigen.pad_affinities).
  """
  keys = jnp.asarray(keys, jnp.float32)
  norm = jnp.linalg.norm(keys, axis=-1, keepdims=True)
  f = keys / jnp.maximum(norm, 1e-12)  # torch F.normalize
  s = jnp.einsum('bnd,bmd->bnm', f, f, precision=_HI)
  w = jnp.where(s > tau, 1.0, eps).astype(jnp.float32)  # strict >, as the official
  valid = _valid_mask(keys.shape[1], n_valid)
  pair = valid[:, :, None] & valid[:, None, :]
  pad_diag = jnp.eye(keys.shape[1], dtype=bool)[None] & ~valid[:, :, None]
  return jnp.where(pair, w, jnp.where(pad_diag, eigen.PAD_SELF_LOOP, 0.0))


@jax.jit
def bipartition(eigvec: jax.Array, n_valid: jax.Array):
  """Bipartition at the mean, seed ``argmax |v|``, and TokenCut's orientation.

  Args:
    eigvec: [B, N] Fiedler vectors (any sign), padded entries ignored.
    n_valid: [B] real tokens.

  Returns:
    eigvec [B, N] oriented so that the seed is on the ``> mean`` side (padded entries 0),
    bipartition [B, N] bool (the side holding the seed; False on padding), seed [B] int32.
  """
  valid = _valid_mask(eigvec.shape[1], n_valid)
  v = jnp.where(valid, eigvec, 0.0)
  mean = jnp.sum(v, axis=1, keepdims=True) / jnp.asarray(n_valid, v.dtype)[:, None]
  above = (v > mean) & valid
  seed = jnp.argmax(jnp.where(valid, jnp.abs(v), -1.0), axis=1)  # first index on ties
  flip = ~jnp.take_along_axis(above, seed[:, None], axis=1)  # [B, 1]
  # Official: flip the vector and take the complement {v <= mean} (not {-v > -mean}).
  part = jnp.where(flip, (v <= mean) & valid, above)
  return jnp.where(flip, -v, v), part, seed.astype(jnp.int32)


# ----------------------------------------------------------------------------------------------
# Component and box (host)
# ----------------------------------------------------------------------------------------------


def seed_component(mask: np.ndarray, seed: int) -> np.ndarray:
  """The 4-connected component (scipy.ndimage.label default) of bool [h, w] ``mask`` holding
  the flat index ``seed``; bool [h, w]. Raises if the seed is not in the mask."""
  mask = np.asarray(mask, bool)
  labels, _ = ndimage.label(mask)
  lab = labels.ravel()[int(seed)]
  if lab == 0:
    raise ValueError('seed is not in the mask')
  return labels == lab


def box_from_mask(mask: np.ndarray, patch_size: int, image_hw: Sequence[int]) -> np.ndarray:
  """Box int64 [x0, y0, x1, y1] (exclusive max) of a bool [h, w] patch mask, the max side
  clipped to the unpadded image size (H, W)."""
  ys, xs = np.nonzero(np.asarray(mask, bool))
  p = int(patch_size)
  return np.asarray(
    [
      p * int(xs.min()),
      p * int(ys.min()),
      min(p * (int(xs.max()) + 1), int(image_hw[1])),
      min(p * (int(ys.max()) + 1), int(image_hw[0])),
    ],
    np.int64,
  )


def as_grid(flat: np.ndarray, grid: Sequence[int]) -> np.ndarray:
  """[L] per-token array (padded) → [gh, gw] of the image's real tokens."""
  gh, gw = grid
  return np.asarray(flat)[: gh * gw].reshape(gh, gw)


# ----------------------------------------------------------------------------------------------
# The whole method on keys
# ----------------------------------------------------------------------------------------------


def discover(
  keys,
  grids: Sequence[Sequence[int]],
  image_hw: Optional[Sequence[Sequence[int]]] = None,
  patch_size: int = 16,
  tau: float = 0.2,
  eps: float = 1e-5,
  solver: str = 'auto',
  tol: float = 1e-6,
) -> dict[str, np.ndarray]:
  """TokenCut on a batch of images' keys.

  Args:
    keys: [B, L, D] patch keys, CLS excluded, each image's gh·gw tokens first (row-major).
    grids: B patch grids (gh, gw), gh·gw ≤ L.
    image_hw: B unpadded image sizes (H, W) for clipping boxes (default: gh·P, gw·P).
    patch_size: P.
    tau, eps: the official ``--tau`` (0.2) and ``--eps`` (1e-5).
    solver: eigen.laplacian_eigs solver ('dense', 'lanczos' or 'auto').
    tol: Lanczos residual tolerance (unused by 'dense').

  Returns (numpy):
    eigenvalues [B, 2] (λ1, λ2 of (D − W) v = λ D v), eigvec [B, L] (λ1's vector, D-normalised,
    oriented, 0 on padding), bipartition [B, L] bool, seed [B] int64, mask [B, L] bool (the
    seed's 4-connected component), box [B, 4] int64.
  """
  keys = jnp.asarray(keys, jnp.float32)
  b, length = keys.shape[:2]
  if len(grids) != b:
    raise ValueError(f'{len(grids)} grids for {b} images')
  n_valid = np.asarray([g[0] * g[1] for g in grids], np.int32)
  if n_valid.max() > length:
    raise ValueError(f'a grid has more than {length} tokens')
  if n_valid.min() < 3:
    raise ValueError('TokenCut needs at least 3 patches')
  w = binary_graph(keys, jnp.asarray(n_valid), tau=tau, eps=eps)
  # k = 3: λ0 = 0 and the official pair λ1, λ2. laplacian_eigs applies Deep Spectral Methods'
  # minority sign rule; TokenCut's own orientation (seed side) is applied by bipartition().
  vals, vecs = eigen.laplacian_eigs(w, 3, solver=solver, n_valid=jnp.asarray(n_valid), tol=tol)
  v, part, seed = bipartition(vecs[:, 1], jnp.asarray(n_valid))
  v, part, seed = np.asarray(v), np.asarray(part), np.asarray(seed).astype(np.int64)
  mask = np.zeros_like(part)
  boxes = np.zeros((b, 4), np.int64)
  for i, grid in enumerate(grids):
    comp = seed_component(as_grid(part[i], grid), seed[i])
    mask[i, : grid[0] * grid[1]] = comp.ravel()
    hw = image_hw[i] if image_hw is not None else (grid[0] * patch_size, grid[1] * patch_size)
    boxes[i] = box_from_mask(comp, patch_size, hw)
  return dict(
    eigenvalues=np.asarray(vals)[:, 1:3],
    eigvec=v,
    bipartition=part,
    seed=seed,
    mask=mask,
    box=boxes,
  )


# ----------------------------------------------------------------------------------------------
# Object-discovery input: normalise, then zero-pad (§1.1)
# ----------------------------------------------------------------------------------------------


def padded_input(image: np.ndarray, patch_size: int) -> np.ndarray:
  """uint8 [H, W, 3] → float32 [⌈H/P⌉·P, ⌈W/P⌉·P, 3]: ImageNet-normalised, then zeros
  bottom/right (zero AFTER normalisation, i.e. the mean colour, as the official code)."""
  x = np.asarray(vit.normalize(image))
  h, w = x.shape[:2]
  p = int(patch_size)
  out = np.zeros((-(-h // p) * p, -(-w // p) * p, 3), np.float32)
  out[:h, :w] = x
  return out


def padded_keys(
  extractor: Any, images: Sequence[np.ndarray], length: Optional[int] = None
) -> tuple[jax.Array, list[tuple[int, int]]]:
  """Keys of the object-discovery input (:func:`padded_input`) for a batch of images.

  Args:
    extractor: a ``pipeline.FeatureExtractor`` of a ViT (normalised float32 crops in).
    images: uint8 [H_i, W_i, 3].
    length: tokens per sequence (default: the largest ⌈H/P⌉·⌈W/P⌉).

  Returns:
    keys [B, length, D] (prefix tokens dropped, each image's tokens first, row-major) and
    the B grids.
  """
  p = extractor.arch.patch_size
  xs = [padded_input(im, p) for im in images]
  grids = [(x.shape[0] // p, x.shape[1] // p) for x in xs]
  return extractor(xs, length)['k'][: len(xs)], grids


# ----------------------------------------------------------------------------------------------
# Saliency (§1.2, §2.4)
# ----------------------------------------------------------------------------------------------


def saliency_size(height: int, width: int, patch_size: int) -> tuple[int, int]:
  """(H', W') = (round(H/P)·P, round(W/P)·P) with Python's round (halves to even)."""
  p = int(patch_size)
  h, w = round(height / p) * p, round(width / p) * p
  if h == 0 or w == 0:
    raise ValueError(f'image {(height, width)} has a side shorter than half a {p}px patch')
  return h, w


def saliency_input(image: np.ndarray, patch_size: int) -> np.ndarray:
  """uint8 [H, W, 3] → uint8 [H', W', 3] resized with PIL Lanczos (unchanged if already H'×W')."""
  image = np.asarray(image, np.uint8)
  h, w = saliency_size(image.shape[0], image.shape[1], patch_size)
  if (h, w) == image.shape[:2]:
    return image.copy()
  return np.asarray(Image.fromarray(image).resize((w, h), Image.LANCZOS))


def saliency_keys(
  extractor: Any, images: Sequence[np.ndarray], length: Optional[int] = None
) -> tuple[jax.Array, list[tuple[int, int]]]:
  """Keys [B', length, D] and grids (fh, fw) of the saliency input (:func:`saliency_input`);
  the extractor normalises the resized uint8 crop, as the official code (B' ≥ B: device
  padding)."""
  p = extractor.arch.patch_size
  crops = [saliency_input(im, p) for im in images]
  grids = [(c.shape[0] // p, c.shape[1] // p) for c in crops]
  return extractor(crops, length)['k'], grids


# Moved to spectral_jax.imaging.resample; the old names stay for results.masks and the tests.
torch_nearest_index = resample.torch_index
upsample_nearest = resample.nearest_torch  # [h, w] patch mask → [H, W] (the saliency mask)


def saliency(
  extractor: Any,
  images: Sequence[np.ndarray],
  tau: float = 0.2,
  eps: float = 1e-5,
  solver: str = 'auto',
) -> list[dict[str, np.ndarray]]:
  """TokenCut saliency end to end (refine=none): one dict per image with ``mask`` bool [H, W]
  (the seed component mapped back to the original size), ``patch_mask`` bool [fh, fw], ``seed``,
  ``eigenvalues`` [2], ``eigvec`` [fh·fw]. Feed ``mask`` to bilateral.solve for "TokenCut + BS"."""
  keys, grids = saliency_keys(extractor, images)
  res = discover(
    keys[: len(images)], grids, None, extractor.arch.patch_size, tau, eps, solver=solver
  )
  out = []
  for i, (im, g) in enumerate(zip(images, grids)):
    patch_mask = as_grid(res['mask'][i], g)
    out.append(
      dict(
        mask=resample.nearest_torch(patch_mask, np.shape(im)[:2]),
        patch_mask=patch_mask,
        seed=res['seed'][i],
        eigenvalues=res['eigenvalues'][i],
        eigvec=res['eigvec'][i, : g[0] * g[1]],
      )
    )
  return out
