"""Single-object segments from Laplacian eigenvectors: Fiedler masks, largest component, boxes.

Host-side numpy/scipy post-processing reproducing the official code (official_protocol.md
sections 3 and 5.2):
  * `fiedler_mask`        - eigenvector[index] > 0 on the patch grid.
  * `infer_patch_grid`    - the localisation script's grid inference from N and the image size.
  * `largest_component`   - 8-connected component with the most patches (ties -> first in
                            raster order, like `skimage.measure.label` + argmax).
  * `box_from_patch_mask` / `localization_box` - the official CorLoc box.
  * `upsample_patch_mask` - patch mask -> pixel mask, exactly as the official cv2 recipe
                            (`spectral_jax.imaging.resample.upsample_patches_cv2`).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from spectral_jax.imaging import resample

__all__ = [
  'fiedler_mask',
  'infer_patch_grid',
  'largest_component',
  'box_from_patch_mask',
  'localization_box',
  'upsample_patch_mask',
]

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def fiedler_mask(eigenvectors: np.ndarray, grid_hw: tuple[int, int], index: int = 1) -> np.ndarray:
  """bool [h, w] mask `eigenvectors[index] > 0` (index 1 = Fiedler vector of the Laplacian).

  Args:
    eigenvectors: [K, N] with N = h * w, rows are eigenvectors (row-major patch order).
    grid_hw: (h, w) patch grid.
  """
  ev = np.asarray(eigenvectors)
  h, w = grid_hw
  if ev.ndim != 2 or ev.shape[1] != h * w:
    raise ValueError(f'eigenvectors {ev.shape} do not match a {h}x{w} grid (expected [K, {h * w}])')
  return (ev[index] > 0).reshape(h, w)


def infer_patch_grid(n_tokens: int, image_hw: tuple[int, int]) -> tuple[int, tuple[int, int]]:
  """(patch size, (h, w)) from the token count and the uncropped image size (official 5.2.4).

  First match of: N = (H//8)(W//8) -> P=8; N = (H//16)(W//16) -> P=16;
  N = 4(H//16)(W//16) -> P=8 on a (2(H//16), 2(W//16)) grid; N = 16(H//32)(W//32) -> P=8 on
  a (4(H//32), 4(W//32)) grid.
  """
  H, W = image_hw
  for patch, h, w in (
    (8, H // 8, W // 8),
    (16, H // 16, W // 16),
    (8, 2 * (H // 16), 2 * (W // 16)),
    (8, 4 * (H // 32), 4 * (W // 32)),
  ):
    if h * w == n_tokens:
      return patch, (h, w)
  raise ValueError(f'{n_tokens} tokens do not fit an image of size {H}x{W} with patch 8 or 16')


def largest_component(mask: np.ndarray) -> np.ndarray:
  """The largest 8-connected component of a bool [h, w] mask (ties -> lowest raster label).

  scipy.ndimage.label numbers components in raster order of their first pixel, like
  skimage.measure.label, so argmax over the sizes picks the same component as the official
  code. An empty mask raises.
  """
  labels, n = ndimage.label(np.asarray(mask, bool), structure=_EIGHT_CONNECTED)
  if n == 0:
    raise ValueError('largest_component: empty mask')
  sizes = np.bincount(labels.ravel())[1:]
  return labels == (int(np.argmax(sizes)) + 1)


def box_from_patch_mask(mask: np.ndarray, patch_size: int, image_hw: tuple[int, int]) -> np.ndarray:
  """Official CorLoc box of a patch mask: int64 [x1, y1, x2, y2] in pixels.

  If 0.5 < mean(mask) < 1 the mask is inverted (the object is the minority side); an empty
  mask becomes all ones (whole image). Box of the largest 8-connected component,
  [xmin, ymin, xmax + 1, ymax + 1] * patch_size, with x2 <= W and y2 <= H.
  """
  m = np.asarray(mask, bool)
  frac = float(np.mean(m))
  if 0.5 < frac < 1.0:
    m = ~m
  elif not m.any():
    m = np.ones_like(m)
  ys, xs = np.nonzero(largest_component(m))
  H, W = image_hw
  p = int(patch_size)
  box = [
    p * int(xs.min()),
    p * int(ys.min()),
    min(p * (int(xs.max()) + 1), W),
    min(p * (int(ys.max()) + 1), H),
  ]
  return np.asarray(box, dtype=np.int64)


def localization_box(
  eigenvectors: np.ndarray,
  grid_hw: tuple[int, int],
  patch_size: int,
  image_hw: tuple[int, int],
  index: int = 1,
) -> np.ndarray:
  """CorLoc box from eigenvectors [K, N]: `box_from_patch_mask(fiedler_mask(...))`; int64 [4]."""
  return box_from_patch_mask(fiedler_mask(eigenvectors, grid_hw, index), patch_size, image_hw)


# Moved to spectral_jax.imaging.resample (one home per resampling rule); the old names stay for
# their callers (tasks.semantic, results.masks, results.cutout).
cv2_nearest_index = resample.cv2_index
upsample_patch_mask = resample.upsample_patches_cv2
