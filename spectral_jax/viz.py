"""PNG panels for looking at results: one row of captioned tiles (image | eigenvectors as heat
maps | box, mask or instances), each tile saying what it shows."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from spectral_jax.imaging import resample

# Tiles are shrunk to at most this many rows: a 48 MP photo gives a panel of a few MB, not GBs.
MAX_TILE_HEIGHT = 384
_GAP = 4  # white pixels between tiles


def heatmap(values: np.ndarray) -> np.ndarray:
  """float [h, w] → uint8 RGB [h, w, 3]: the web page's diverging map, blue < 0 < red, white at
  0, scaled by the largest magnitude (an eigenvector's sign is its meaning)."""
  v = np.asarray(values, np.float64)
  t = v / max(float(np.abs(v).max(initial=0.0)), 1e-12)
  a = np.round(255 * (1 - np.abs(t)))
  rgb = np.stack([np.where(t > 0, 255, a), a, np.where(t < 0, 255, a)], -1)
  return rgb.astype(np.uint8)


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


def _font(size: int):
  return ImageFont.load_default(size=max(int(size), 6))


def caption(tile: np.ndarray, text: str) -> np.ndarray:
  """The tile with a light strip above it holding ``text``, shrunk to fit the tile's width."""
  h, w = tile.shape[:2]
  strip = int(np.clip(round(0.08 * h), 14, 28))
  size = int(strip * 0.72)
  canvas = Image.new('RGB', (w, strip), (240, 240, 240))
  draw = ImageDraw.Draw(canvas)
  while size > 7 and draw.textlength(text, font=_font(size)) > w - 4:
    size -= 1
  while len(text) > 1 and draw.textlength(text, font=_font(size)) > w - 4:
    text = text[:-2] + '…'  # too narrow even at the smallest size: cut, and say so
  draw.text((2, (strip - size) // 2), text, fill=(20, 20, 20), font=_font(size))
  return np.concatenate([np.asarray(canvas), tile], axis=0)


def row(tiles: Sequence[np.ndarray], captions: Sequence[str]) -> np.ndarray:
  """Captioned tiles of one height side by side, with white gaps."""
  captioned = [caption(t, c) for t, c in zip(tiles, captions)]
  gap = np.full((captioned[0].shape[0], _GAP, 3), 255, np.uint8)
  return np.concatenate([t for tile in captioned for t in (tile, gap)][:-1], axis=1)


def _shrink(image: np.ndarray, max_height: int) -> tuple[np.ndarray, float]:
  h, w = image.shape[:2]
  if h <= max_height:
    return image, 1.0
  scale = max_height / h
  size = (max_height, max(1, round(w * scale)))
  return np.asarray(Image.fromarray(image).resize(size[::-1], Image.BILINEAR)), scale


def _scaled_box(box_xyxy: Sequence[float], scale: float) -> list[int]:
  return [int(round(v * scale)) for v in box_xyxy]


def panel(
  image: np.ndarray,
  eigenvectors: Optional[np.ndarray],
  grid_hw: tuple[int, int],
  box_xyxy: Optional[Sequence[int]] = None,
  mask: Optional[np.ndarray] = None,
  num_eigenvectors: int = 4,
  eigenvalues: Optional[Sequence[float]] = None,
  score: Optional[float] = None,
  title: str = '',
  vector_names: Sequence[str] = (),
  max_height: int = MAX_TILE_HEIGHT,
) -> np.ndarray:
  """One row: the image (captioned with ``title``, e.g. method and model), eigenvectors 1..n as
  heat maps (each with its eigenvalue where ``eigenvalues`` are given; ``vector_names`` replace
  'eigenvector k' for maps that are not eigenvectors), and the box/mask overlay with ``score``."""
  small, scale = _shrink(image, max_height)
  h, w = small.shape[:2]
  tiles, captions = [small], [f'image · {title}' if title else 'image']
  if eigenvectors is not None:
    for k, vec in enumerate(eigenvectors[1 : 1 + num_eigenvectors], start=1):
      tiles.append(resample.nearest_pil(heatmap(vec.reshape(grid_hw)), (h, w)))
      name = vector_names[k - 1] if k - 1 < len(vector_names) else f'eigenvector {k}'
      if eigenvalues is not None and k < len(eigenvalues) and not vector_names:
        name += f', eigenvalue {float(eigenvalues[k]):.4g}'
      captions.append(name)
  result, words = small, []
  if mask is not None:
    result = overlay_mask(result, resample.nearest_pil(np.asarray(mask, np.uint8), (h, w)) > 0)
    words.append('mask')
  if box_xyxy is not None:
    result = draw_box(result, _scaled_box(box_xyxy, scale))
    words.append('box')
  if score is not None:
    words.append(f'score {score:.3f}')
  tiles.append(result)
  captions.append('  '.join(words) or 'result')
  return row(tiles, captions)


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


def label_panel(
  image: np.ndarray,
  label_maps: Sequence[np.ndarray],
  captions: Sequence[str] = (),
  max_height: int = MAX_TILE_HEIGHT,
  title: str = '',
) -> np.ndarray:
  """One row: the image (captioned with ``title``, e.g. method and model) and each label map
  (any resolution) in VOC colours at image size."""
  small, _ = _shrink(image, max_height)
  h, w = small.shape[:2]
  palette = label_palette()
  tiles = [small] + [resample.nearest_pil(palette[m.astype(np.uint8)], (h, w)) for m in label_maps]
  names = [f'image · {title}' if title else 'image'] + [
    captions[i] if i < len(captions) else f'labels {i + 1}' for i in range(len(label_maps))
  ]
  return row(tiles, names)


def instances_panel(
  image: np.ndarray,
  labels: np.ndarray,
  boxes_xyxy: Sequence[Sequence[float]],
  scores: Sequence[float],
  title: str = '',
  max_height: int = MAX_TILE_HEIGHT,
) -> np.ndarray:
  """One row: the image, and the image with object i's mask (``labels == i + 1``) in VOC colour
  i + 1, its box and its score written at the box's corner."""
  small, scale = _shrink(image, max_height)
  h, w = small.shape[:2]
  small_labels = resample.nearest_pil(np.asarray(labels, np.uint8), (h, w))
  palette = label_palette()
  out = small.astype(np.float32)
  colored = small_labels > 0
  out[colored] = 0.45 * out[colored] + 0.55 * palette[small_labels[colored]]
  out = out.round().astype(np.uint8)
  for i, box in enumerate(boxes_xyxy):
    out = draw_box(out, _scaled_box(box, scale), tuple(int(c) for c in palette[i + 1]), width=2)
  canvas = Image.fromarray(out)
  draw = ImageDraw.Draw(canvas)
  size = int(np.clip(round(0.045 * h), 9, 18))
  for i, (box, s) in enumerate(zip(boxes_xyxy, scores)):
    x0, y0 = _scaled_box(box[:2], scale)
    text = f'{i + 1}: {float(s):.2f}'
    at = (min(max(x0 + 3, 0), max(w - 4 * size, 0)), min(max(y0 + 2, 0), max(h - size - 2, 0)))
    bg = draw.textbbox(at, text, font=_font(size))
    draw.rectangle(bg, fill=tuple(int(c) for c in palette[i + 1]))
    draw.text(at, text, fill=(255, 255, 255), font=_font(size))
  n = len(boxes_xyxy)
  first = f'image · {title}' if title else 'image'
  return row([small, np.asarray(canvas)], [first, f'{n} object{"s" * (n != 1)}: mask, box, score'])
