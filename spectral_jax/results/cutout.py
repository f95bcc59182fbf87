"""Background removal and compositing of one image from its eigenvectors: the coarse mask
(Fiedler foreground or one eigen-segment), matting, foreground colours, the composite."""

from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np
from absl import logging

from spectral_jax import pipeline
from spectral_jax.imaging import matting
from spectral_jax.data import datasets, decode
from spectral_jax.errors import SettingError
from spectral_jax.imaging import resample
from spectral_jax.settings import EditSettings
from spectral_jax.spectral import segments

# None (cutout only), an (r, g, b) colour, or an RGB uint8 [H, W, 3] image.
Background = Union[None, tuple[int, int, int], np.ndarray]


def resolve_background(spec: str, max_pixels: int = decode.DEFAULT_MAX_PIXELS) -> Background:
  """'' → None; an existing file → its pixels (uint8 [H, W, 3]); otherwise a colour."""
  spec = (spec or '').strip()
  if not spec:
    return None
  path = Path(spec).expanduser()
  if path.is_file():
    return decode.load_rgb(path, max_pixels=max_pixels)
  try:
    return matting.parse_color(spec)
  except ValueError as e:
    if path.suffix.lower() in datasets.IMAGE_EXTENSIONS or '/' in spec:
      raise FileNotFoundError(f'edit.background: no such image file {spec!r}') from e
    raise SettingError(
      'edit.background',
      spec,
      "is neither an image file nor a colour ('white', '#RRGGBB', 'r,g,b')",
    ) from e


def foreground_patches(
  eigenvectors: np.ndarray, grid_hw: tuple[int, int], opts: EditSettings, seed: int = 0
) -> np.ndarray:
  """bool [h', w'] foreground on the patch grid (or the eigen-segmentation's grid)."""
  if opts.segment < 0:
    return segments.fiedler_mask(eigenvectors, grid_hw, index=1)
  import jax  # pylint: disable=import-outside-toplevel
  from spectral_jax.spectral import clustering  # pylint: disable=import-outside-toplevel

  segmap = clustering.multi_region_segments(
    eigenvectors, grid_hw, opts.n_segments, jax.random.PRNGKey(seed)
  )
  return np.asarray(segmap) == opts.segment


def edit_image(
  image: np.ndarray,
  mask: np.ndarray,
  patch_size: float,
  opts: EditSettings,
  background: Background,
) -> dict[str, np.ndarray]:
  """alpha / cutout (and composite) arrays of one image from its pixel-level coarse mask."""
  alpha = matting.matte(
    image, mask, opts.band_px or patch_size, opts.eps, opts.max_pixels, opts.levels
  )
  if opts.foreground == 'image':
    fg = image.astype(np.float32) / 255.0
  else:
    fg = matting.estimate_foreground(image, alpha)
  out = {'alpha': alpha, 'cutout': matting.cutout_rgba(image, alpha, fg)}
  if background is not None:
    out['composite'] = matting.composite(image, alpha, background, fg)
  return out


def image_cutout(
  image: np.ndarray,
  eigenvectors: np.ndarray,
  patch_size: int,
  grid_hw: tuple[int, int],
  working_hw: tuple[int, int],
  opts: EditSettings,
  background: Background,
  seed: int = 0,
  name: str = '',
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  """(coarse mask bool [H, W], ``edit_image``'s arrays) of an original image [H, W, 3] from the
  eigenvectors [K, h·w] of its working-resolution version (``working_hw``)."""
  patch_mask = foreground_patches(eigenvectors, grid_hw, opts, seed)
  if not patch_mask.any():
    logging.warning('%s: no foreground patches; the cutout is empty', name or 'image')
  # A segment map may be finer than the patch grid (2× for downsampled-8 eigenvectors).
  cell = max(patch_size * grid_hw[0] // patch_mask.shape[0], 1)
  upsampled = resample.upsample_patches_cv2(patch_mask, working_hw, cell)
  mask = pipeline.resize_mask(upsampled, image.shape[:2])
  band = patch_size * image.shape[0] / working_hw[0]  # one patch, in pixels of the original
  return mask, edit_image(image, mask, band, opts, background)
