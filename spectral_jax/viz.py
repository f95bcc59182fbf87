"""PNG panels for looking at results: image | eigenvectors as heat maps | box or mask overlay."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from spectral_jax.imaging import resample

# Viridis sampled at 10 points; linear interpolation between them is visually faithful.
_VIRIDIS = np.array(
  [
    [68, 1, 84],
    [72, 40, 120],
    [62, 73, 137],
    [49, 104, 142],
    [38, 130, 142],
    [31, 158, 137],
    [53, 183, 121],
    [110, 206, 88],
    [181, 222, 43],
    [253, 231, 37],
  ],
  np.float32,
)


def heatmap(values: np.ndarray) -> np.ndarray:
  """float [h, w] → uint8 RGB [h, w, 3], min–max scaled (constant input → mid colour)."""
  v = values.astype(np.float64)
  span = v.max() - v.min()
  t = (v - v.min()) / span if span > 0 else np.full_like(v, 0.5)
  pos = t * (len(_VIRIDIS) - 1)
  lo = np.clip(np.floor(pos).astype(int), 0, len(_VIRIDIS) - 2)
  frac = (pos - lo)[..., None]
  return ((1 - frac) * _VIRIDIS[lo] + frac * _VIRIDIS[lo + 1]).round().astype(np.uint8)


def draw_box(
  image: np.ndarray, box_xyxy: Sequence[int], color=(255, 0, 0), width: int = 3
) -> np.ndarray:
  """Outline of a box (exclusive max) drawn on a copy of the image."""
  out = image.copy()
  h, w = out.shape[:2]
  x0, y0, x1, y1 = (int(v) for v in box_xyxy)
  x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
  if x1 <= x0 or y1 <= y0:
    return out
  for t in range(width):
    out[min(y0 + t, y1 - 1), x0:x1] = color
    out[max(y1 - 1 - t, y0), x0:x1] = color
    out[y0:y1, min(x0 + t, x1 - 1)] = color
    out[y0:y1, max(x1 - 1 - t, x0)] = color
  return out


def overlay_mask(
  image: np.ndarray, mask: np.ndarray, color=(255, 0, 0), opacity: float = 0.5
) -> np.ndarray:
  out = image.astype(np.float32)
  out[mask] = (1 - opacity) * out[mask] + opacity * np.asarray(color, np.float32)
  return out.round().astype(np.uint8)


def panel(
  image: np.ndarray,
  eigenvectors: Optional[np.ndarray],
  grid_hw: tuple[int, int],
  box_xyxy: Optional[Sequence[int]] = None,
  mask: Optional[np.ndarray] = None,
  num_eigenvectors: int = 4,
) -> np.ndarray:
  """One row: the image, eigenvectors 1..n as heat maps, and the box/mask overlay."""
  h, w = image.shape[:2]
  tiles = [image]
  if eigenvectors is not None:
    for vec in eigenvectors[1 : 1 + num_eigenvectors]:
      tiles.append(resample.nearest_pil(heatmap(vec.reshape(grid_hw)), (h, w)))
  result = image
  if mask is not None:
    result = overlay_mask(result, mask)
  if box_xyxy is not None:
    result = draw_box(result, box_xyxy)
  tiles.append(result)
  gap = np.full((h, 4, 3), 255, np.uint8)
  return np.concatenate([t for tile in tiles for t in (tile, gap)][:-1], axis=1)


def label_palette(n: int = 256) -> np.ndarray:
  """The PASCAL VOC colour map: label bits spread over the high bits of R, G and B."""
  palette = np.zeros((n, 3), np.uint8)
  for label in range(n):
    c, r, g, b = label, 0, 0, 0
    for shift in range(7, -1, -1):
      r |= (c & 1) << shift
      g |= ((c >> 1) & 1) << shift
      b |= ((c >> 2) & 1) << shift
      c >>= 3
    palette[label] = (r, g, b)
  return palette


def label_panel(image: np.ndarray, label_maps: Sequence[np.ndarray]) -> np.ndarray:
  """One row: the image and each label map (any resolution) in VOC colours at image size."""
  h, w = image.shape[:2]
  palette = label_palette()
  tiles = [image] + [resample.nearest_pil(palette[m.astype(np.uint8)], (h, w)) for m in label_maps]
  gap = np.full((h, 4, 3), 255, np.uint8)
  return np.concatenate([t for tile in tiles for t in (tile, gap)][:-1], axis=1)
