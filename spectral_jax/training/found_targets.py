"""Patch-grid targets for FOUND's head (``found_protocol.md`` §5) from FOUND's own background
discovery or from another method, all on the same training input.

Every target is a bool mask on the grid of the un-augmented training input (224 × 224 → 28 × 28
with a ViT-S/8: :func:`spectral_jax.spectral.found.train_image` at scale 1, no blur), made by
the project's implementation of each method:

* ``found``: the official pseudo-mask (background discovery on the last block's CLS attention
  and keys, bkg_th, the bilateral solver on the 8-bit round trip of the input, the gate and the
  "any" downsampling; :func:`spectral_jax.training.found.background_targets`);
* ``dsm``: Deep Spectral Methods' Fiedler mask (eigenvector 1 > 0 of the Laplacian of the key
  affinity, the minority-side sign rule; ``spectral`` settings: K, color_lambda, solver);
* ``tokencut``: TokenCut's seed component (tau, eps) refined by its bilateral solver (σ
  16/16/8 by default, ``segment.bilateral_params``) on the 224 image, solver mask > 0.5 brought
  back to the grid as FOUND's pseudo-masks are (a cell is object if any of its 2 × 2 central
  pixels is);
* ``maskcut``: the union of MaskCut's kept objects on the grid (``discover`` settings: up to
  max_objects cuts, tau, eps, dtype, solver; no CRF: it refines pixels, not patches).

The augmentation keeps the geometry (its random scale is undone by the resize to the crop
size, the blur is photometric), so a grid target of the un-augmented input labels every
augmented copy of the image.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from spectral_jax import pipeline
from spectral_jax.imaging import resample
from spectral_jax.settings import Settings
from spectral_jax.spectral import bilateral, found, maskcut, segments, tokencut
from spectral_jax.spectral import found_background
from spectral_jax.training import found as found_train

__all__ = [
  'TARGETS',
  'training_images',
  'make_targets',
  'found_targets',
  'dsm_targets',
  'tokencut_targets',
  'maskcut_targets',
]

TARGETS = ('found', 'dsm', 'tokencut', 'maskcut')


def training_images(images: Sequence[np.ndarray], crop_size: int = found.CROP_SIZE) -> np.ndarray:
  """The un-augmented training inputs: uint8 [B, crop, crop, 3]."""
  return np.stack([found_background.train_image(im, crop_size) for im in images])


def _grid(extractor: Any, size: int) -> tuple[int, int]:
  p = extractor.arch.patch_size
  return size // p, size // p


def found_targets(extractor: Any, images: np.ndarray, bkg_th: float = found.BKG_TH) -> np.ndarray:
  """FOUND's pseudo-masks of training inputs uint8 [B, S, S, 3]: bool [B, gh, gw]."""
  x = np.stack([found_background.train_input(im) for im in images])
  keys, attention = found_background.keys_and_cls_attention(extractor, x)
  references = [found_background.unnormalised_reference(xi) for xi in x]
  grid = _grid(extractor, images.shape[1])
  masks = found_train.background_targets(references, attention, keys, grid, bkg_th)
  return masks.reshape(len(images), *grid)


def dsm_targets(extractor: Any, images: np.ndarray, settings: Settings = Settings()) -> np.ndarray:
  """Fiedler masks (eigenvector 1 > 0) of the key graph of each input: bool [B, gh, gw]."""
  p, s = extractor.arch.patch_size, settings.spectral
  crops = [pipeline.prepare_input(im, p, 'crop') for im in images]
  grid = _grid(extractor, images.shape[1])
  n = grid[0] * grid[1]
  feats = extractor(crops, n)['k']
  _, vecs = pipeline.spectral_decomposition(
    feats, np.full(len(crops), n), crops, grid, s.K, s.color_lambda, s.which_matrix, s.solver
  )
  vecs = np.asarray(vecs)[: len(images)]
  return np.stack([segments.fiedler_mask(v, grid) for v in vecs])


def tokencut_targets(
  extractor: Any, images: np.ndarray, settings: Settings = Settings()
) -> np.ndarray:
  """TokenCut's seed component + its bilateral solver, on the grid: bool [B, gh, gw]."""
  p, t = extractor.arch.patch_size, settings.method.tokencut
  keys, grids = tokencut.padded_keys(extractor, list(images))
  res = tokencut.discover(
    np.asarray(keys)[: len(images)], grids, None, p, t.tau, t.eps, settings.spectral.solver
  )
  sigmas = dataclasses.asdict(settings.refine.bilateral_params)
  out = []
  for i, (image, grid) in enumerate(zip(images, grids)):
    patch_mask = tokencut.as_grid(res['mask'][i], grid)
    full = resample.nearest_torch(patch_mask, image.shape[:2])
    _, solved = bilateral.solve(image, full, **sigmas)
    out.append(found_background.downsample_any(solved, grid))
  return np.stack(out)


def maskcut_targets(
  extractor: Any, images: np.ndarray, settings: Settings = Settings()
) -> np.ndarray:
  """The union of MaskCut's kept objects on the grid: bool [B, gh, gw]."""
  p, d = extractor.arch.patch_size, settings.discover
  crops = [pipeline.prepare_input(im, p, 'crop') for im in images]
  grid = _grid(extractor, images.shape[1])
  n = grid[0] * grid[1]
  keys = np.asarray(extractor(crops, n)['k'])[: len(images)]
  results = maskcut.discover(keys, grid, d.max_objects, d.tau, d.eps, d.dtype, d.solver)
  return np.stack([r.patch_masks.any(axis=0) for r in results])


def make_targets(
  method: str, extractor: Any, images: np.ndarray, settings: Settings = Settings()
) -> np.ndarray:
  """``method``'s grid targets (see the module doc) of un-augmented training inputs uint8
  [B, S, S, 3] (:func:`training_images`): bool [B, S/P, S/P]."""
  if method == 'found':
    return found_targets(extractor, images, settings.found.bkg_th)
  if method == 'dsm':
    return dsm_targets(extractor, images, settings)
  if method == 'tokencut':
    return tokencut_targets(extractor, images, settings)
  if method == 'maskcut':
    return maskcut_targets(extractor, images, settings)
  raise ValueError(f'training targets {method!r}: use one of {TARGETS}')
