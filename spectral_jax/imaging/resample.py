"""Mask and label-map resampling: the named variants the project needs for parity.

Each official code base resizes masks with its own library, and their nearest-neighbour rules
pick different source pixels at some sizes, so each rule has its own function here. Along one
axis of ``n_in`` pixels resampled to ``n_out`` (``dst`` the output index):

==========================  ======================================================  =============
function                    source index                                            reproduces
==========================  ======================================================  =============
:func:`nearest_floor`       ``⌊dst·n_in / n_out⌋`` in exact integers                 torch's rule
:func:`nearest_torch`       ``⌊fl32(dst)·fl32(n_in / n_out)⌋`` (+ 2 special cases)   torch CPU
:func:`nearest_cv2`         ``⌊dst·(1 / (n_out / n_in))⌋`` in float64                cv2 NEAREST
:func:`nearest_half_pixel`  ``⌊(dst + ½)·n_in / n_out⌋`` in float64                  pixel centres
:func:`nearest_pil`         ``⌊start + s/2 + dst·s⌋``, s = box width / n_out,         PIL NEAREST
                            the sum accumulated term by term in float64
==========================  ======================================================  =============

All clip to ``n_in − 1``. ``floor``, ``torch`` and ``cv2`` take the top-left source pixel of
each output cell and agree except where float rounding lands on the other side of an integer;
``half_pixel`` and ``pil`` take the pixel under the output cell's centre and differ from each
other only at exact ties (where PIL's accumulated sum may fall just short of the integer).
:func:`repeat_blocks` (integer upsampling), :func:`upsample_patches_cv2` (DSM's official patch
mask → pixel recipe) and :func:`vote_bilinear` (a majority vote, not a nearest rule) complete
the set. Every function is pure numpy on arrays ``[H, W, ...]`` of any dtype (the vote calls
Pillow) and returns a new array, except where a docstring says otherwise.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from PIL import Image

__all__ = [
  'floor_index',
  'torch_index',
  'cv2_index',
  'half_pixel_index',
  'pil_index',
  'nearest_floor',
  'nearest_torch',
  'nearest_cv2',
  'nearest_half_pixel',
  'nearest_pil',
  'repeat_blocks',
  'upsample_patches_cv2',
  'vote_bilinear',
]


# ----------------------------------------------------------------------------------------------
# Source indices along one axis
# ----------------------------------------------------------------------------------------------


def floor_index(out_size: int, in_size: int) -> np.ndarray:
  """``min(⌊dst·in / out⌋, in − 1)`` in exact integer arithmetic.

  The rule torch's ``F.interpolate(mode='nearest')`` states, without its float32 rounding (see
  :func:`torch_index` for that): MaskCut's patch-mask upsampling and the cut-out tiles.
  """
  return np.minimum((np.arange(out_size) * in_size) // out_size, in_size - 1)


def torch_index(out_size: int, in_size: int) -> np.ndarray:
  """Source indices of torch ``F.interpolate(mode='nearest')`` (its CPU kernel).

  Identity for equal sizes, ``dst >> 1`` for exact doubling, else
  ``min(⌊fl32(dst)·fl32(in / out)⌋, in − 1)`` in float32: TokenCut's saliency mask. Differs
  from :func:`floor_index` where float32 rounding crosses an integer (e.g. 2 → 82).
  """
  idx = np.arange(out_size)
  if out_size == in_size:
    return idx
  if out_size == 2 * in_size:
    return idx >> 1
  scale = np.float32(in_size) / np.float32(out_size)
  src = np.floor(idx.astype(np.float32) * scale).astype(np.int64)
  return np.minimum(src, in_size - 1)


def cv2_index(out_size: int, in_size: int) -> np.ndarray:
  """Source indices of ``cv2.resize(INTER_NEAREST)``: ``min(⌊dst·(1 / (out / in))⌋, in − 1)``.

  The same float64 arithmetic as OpenCV's ``resizeNN`` (``ifx = 1 / fx``, ``fx = out / in``):
  the official Deep Spectral Methods resizes. Differs from :func:`floor_index` where the
  rounded reciprocal puts an exact integer just below it (e.g. 2 → 98).
  """
  inv_scale = 1.0 / (float(out_size) / float(in_size))
  idx = np.floor(np.arange(out_size, dtype=np.float64) * inv_scale).astype(np.int64)
  return np.minimum(idx, in_size - 1)


def half_pixel_index(out_size: int, in_size: int) -> np.ndarray:
  """``min(⌊(dst + ½)·in / out⌋, in − 1)`` computed directly in float64: the input pixel under
  each output pixel's centre, exact ties going to the higher index. Equals :func:`pil_index`
  except at those ties (e.g. 2 → 7, output 3), where PIL's accumulated sum can fall short."""
  src = np.minimum((np.arange(out_size) + 0.5) * in_size / out_size, in_size - 1)
  return src.astype(int)


def pil_index(out_size: int, in_size: int, start: float = 0.0, end: Optional[float] = None):
  """Source indices of Pillow's ``resize(NEAREST, box)`` along one axis (``ImagingScaleAffine``).

  With ``s = (end − start) / out`` (``end`` defaults to ``in``) PIL starts at
  ``start + s·½`` and adds ``s`` once per output pixel in float64, truncating each running
  sum: the centre rule of :func:`half_pixel_index`, but with the rounding of that running sum
  (and a crop box). Raises when the box leaves the input.
  """
  end = float(in_size) if end is None else float(end)
  start = float(start)
  if not 0.0 <= start < end <= in_size:
    raise ValueError(f'box [{start}, {end}) is not inside [0, {in_size}]')
  step = (end - start) / out_size
  terms = np.full(out_size, step)
  terms[0] = start + step * 0.5
  return np.add.accumulate(terms).astype(np.int64)  # sequential float64 sums, truncated


# ----------------------------------------------------------------------------------------------
# Nearest-neighbour resizes of [H, W, ...] arrays
# ----------------------------------------------------------------------------------------------


def _take(array: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
  return np.asarray(array)[rows[:, None], cols[None, :]]


def nearest_floor(array: np.ndarray, hw: Sequence[int]) -> np.ndarray:
  """[H, W, ...] → [h, w, ...] by :func:`floor_index` (exact ``⌊dst·in / out⌋``).

  The rule of MaskCut's official ``F.interpolate`` upsampling of its patch masks written in
  integers (a P × P block per patch when the size is a multiple of the grid), and the
  cut-out preview tiles of ``edit``. See :func:`nearest_torch` for torch's float32 rounding.
  """
  a = np.asarray(array)
  return _take(a, floor_index(int(hw[0]), a.shape[0]), floor_index(int(hw[1]), a.shape[1]))


def nearest_torch(array: np.ndarray, hw: Sequence[int]) -> np.ndarray:
  """[H, W, ...] → [h, w, ...] as torch ``F.interpolate(mode='nearest', size=hw)`` on CPU
  (:func:`torch_index`): the official TokenCut saliency mask back to the image size."""
  a = np.asarray(array)
  return _take(a, torch_index(int(hw[0]), a.shape[0]), torch_index(int(hw[1]), a.shape[1]))


def nearest_cv2(array: np.ndarray, hw: Sequence[int]) -> np.ndarray:
  """[H, W, ...] → [h, w, ...] as ``cv2.resize(..., (w, h), interpolation=INTER_NEAREST)``
  (:func:`cv2_index`): Deep Spectral Methods' pseudo-label and segment resizes."""
  a = np.asarray(array)
  return _take(a, cv2_index(int(hw[0]), a.shape[0]), cv2_index(int(hw[1]), a.shape[1]))


def nearest_half_pixel(array: np.ndarray, hw: Sequence[int]) -> np.ndarray:
  """[H, W, ...] → [h, w, ...] by pixel centres (:func:`half_pixel_index`); our own masks
  between working and original resolutions (no official counterpart). The input itself is
  returned, not a copy, when it already has the size."""
  a = np.asarray(array)
  if tuple(a.shape[:2]) == tuple(hw):
    return array
  rows = half_pixel_index(int(hw[0]), a.shape[0])
  return _take(a, rows, half_pixel_index(int(hw[1]), a.shape[1]))


def nearest_pil(
  array: np.ndarray, hw: Sequence[int], box: Optional[Sequence[float]] = None
) -> np.ndarray:
  """[H, W, ...] → [h, w, ...] as ``Image.fromarray(array).resize((w, h), NEAREST, box=box)``.

  ``box`` is PIL's ``(left, top, right, bottom)`` crop of the input (default: all of it);
  indices by :func:`pil_index`. Any dtype (PIL's modes are not needed). The visualisation
  panels and the albumentations-style crop of the segmenter's training labels use it.
  """
  a = np.asarray(array)
  left, top, right, bottom = (0, 0, a.shape[1], a.shape[0]) if box is None else box
  rows = pil_index(int(hw[0]), a.shape[0], top, bottom)
  return _take(a, rows, pil_index(int(hw[1]), a.shape[1], left, right))


def repeat_blocks(array: np.ndarray, factor: int) -> np.ndarray:
  """[h, w, ...] → [h·f, w·f, ...]: each cell becomes an f × f block, ``out[y, x] =
  in[y // f, x // f]`` (``np.repeat`` along both axes): the × P patch blocks of the padded-input
  methods (LOST, TokenCut object discovery). At an exact integer factor every nearest rule
  above gives the same blocks (tests/test_resample.py checks factors up to 32)."""
  f = int(factor)
  return np.repeat(np.repeat(np.asarray(array), f, axis=0), f, axis=1)


def upsample_patches_cv2(mask: np.ndarray, image_hw: Sequence[int], patch_size: int):
  """Patch-level mask [h, w] → pixel mask [H, W], the official DSM recipe (protocol §3.2, §6).

  Official: ``full = cv2 nearest resize(mask, (H, W))``, then ``full[:h·P, :w·P]`` replaced by
  a second cv2 nearest resize to ``(h·P, w·P)`` (× P replication). Inside the patch-covered
  area each patch becomes a P × P block; the bottom strip repeats the last patch row and the
  right strip the last patch column, indexed along their length by the plain resize
  (:func:`cv2_index`), not by ``y // P`` — where the official code differs from a naive "pad
  by edge". Any dtype (bool, uint8 labels, ...).
  """
  m = np.asarray(mask)
  h, w = m.shape[:2]
  H, W = (int(v) for v in image_hw)  # pylint: disable=invalid-name
  P = int(patch_size)  # pylint: disable=invalid-name
  if h * P > H or w * P > W:
    raise ValueError(f'a {h}x{w} grid of {P}-pixel patches does not fit in an {H}x{W} image')
  full = nearest_cv2(m, (H, W))
  full[: h * P, : w * P] = nearest_cv2(m, (h * P, w * P))
  return full


def vote_bilinear(mask: np.ndarray, hw: Sequence[int]) -> np.ndarray:
  """Boolean mask → (h, w) by area (majority) vote: Pillow's antialiased BILINEAR of the 0/255
  mask, kept where > 127 (the 50 % vote), so thin parts are not lost at random as a nearest
  rule would. 8-bit keeps it at 2 bytes per input pixel for huge images. Not a parity rule:
  ``edit``'s working-resolution mask. The input is returned when it already has the size."""
  mask = np.asarray(mask, bool)
  h, w = int(hw[0]), int(hw[1])
  if mask.shape == (h, w):
    return mask
  u8 = Image.fromarray(mask.astype(np.uint8) * np.uint8(255))
  return np.asarray(u8.resize((w, h), Image.Resampling.BILINEAR)) > 127
