"""Image geometry of the pipeline: the working resolution (at most ``max_tokens`` patches)
and mapping boxes and masks between the working and the original frame."""

from __future__ import annotations

import numpy as np
from absl import logging
from PIL import Image

from spectral_jax.errors import ImageTooLargeError
from spectral_jax.imaging import resample


def working_size(image_hw, patch_size: int, max_tokens: int) -> tuple[int, int]:
  """(H', W') with at most ``max_tokens`` whole patches, aspect kept; (H, W) if it fits."""
  h, w = int(image_hw[0]), int(image_hw[1])
  if (h // patch_size) * (w // patch_size) <= max_tokens:
    return h, w
  scale = np.sqrt(max_tokens * patch_size * patch_size / (h * w))
  while True:  # rounding can leave a patch too many: shrink by 0.5 % until it fits
    size = max(int(h * scale), 1), max(int(w * scale), 1)
    if (size[0] // patch_size) * (size[1] // patch_size) <= max_tokens:
      return size
    scale *= 0.995


def fit_tokens(
  image: np.ndarray, patch_size: int, max_tokens: int, resize: bool = True, name: str = ''
) -> np.ndarray:
  """The image at working resolution: downscaled (antialiased bicubic) to ``max_tokens``
  patches if it has more, else unchanged. ``resize=False`` raises ImageTooLargeError instead."""
  size = working_size(image.shape[:2], patch_size, max_tokens)
  if size == tuple(image.shape[:2]):
    return image
  tokens = (image.shape[0] // patch_size) * (image.shape[1] // patch_size)
  if not resize:
    raise ImageTooLargeError(
      name,
      f'{image.shape[1]}x{image.shape[0]} has {tokens} patches, above data.max_tokens='
      f'{max_tokens}, and data.resize_large=False',
      'data.max_tokens',
      max_tokens,
    )
  logging.info(
    '%s: %dx%d (%d patches) downscaled to %dx%d for the model; outputs are given at %dx%d',
    name,
    image.shape[1],
    image.shape[0],
    tokens,
    size[1],
    size[0],
    image.shape[1],
    image.shape[0],
  )
  return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.BICUBIC))


def scale_box(box_xyxy, from_hw, to_hw) -> np.ndarray:
  """Box [x0, y0, x1, y1] (exclusive max) from one pixel frame to another, covering the same
  area (floor of the minimum, ceiling of the maximum), clipped to the target image."""
  if tuple(from_hw) == tuple(to_hw):
    return np.asarray(box_xyxy)
  sy, sx = to_hw[0] / from_hw[0], to_hw[1] / from_hw[1]
  x0, y0, x1, y1 = (float(v) for v in box_xyxy)
  return np.array(
    [
      max(int(np.floor(x0 * sx)), 0),
      max(int(np.floor(y0 * sy)), 0),
      min(int(np.ceil(x1 * sx)), to_hw[1]),
      min(int(np.ceil(y1 * sy)), to_hw[0]),
    ]
  )


# Working frame → original frame of a mask or label map (half-pixel nearest).
resize_mask = resample.nearest_half_pixel
