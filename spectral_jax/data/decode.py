"""Image and mask decoding: any file PIL can read -> RGB uint8 [H, W, 3] or bool mask [H, W].

Conversions (each logged once per file with absl, naming the file and what was done):
  * EXIF orientation is applied (`ImageOps.exif_transpose`) when `apply_exif=True`. Annotated
    datasets (VOC, COCO, saliency sets) pass `apply_exif=False`: their boxes and masks live in
    the stored pixel grid, and the official loaders (PIL `Image.open`) ignore EXIF too.
  * L, 1, P, CMYK, YCbCr, LAB, HSV -> RGB with PIL's `convert('RGB')` (what the official code does).
  * LA, PA, RGBA, RGBa and palette images with transparency: the alpha channel is dropped, not
    composited onto a background (PIL `convert('RGB')`, as the official code does).
  * 16-bit (I;16*): scaled to 8 bits as OpenCV's imread does, round(v / 256) saturated at 255
    (the official feature stage reads with cv2; PIL would clip v > 255 to 255).
  * 32-bit integer (I): treated as 16-bit when all values are in [0, 65535], else stretched
    linearly from [min, max] to [0, 255].
  * Float (F): values in [0, 1] are scaled by 255 and rounded; otherwise stretched from
    [min, max]; NaN/inf become 0.

Errors: a missing file raises FileNotFoundError; anything unreadable (not an image, truncated,
unsupported mode, too small, too large) raises `BadImageError(path, reason)`, a ValueError.
"""

from __future__ import annotations

import io
import os
from typing import Union

import numpy as np
from absl import logging
from PIL import Image, ImageOps, UnidentifiedImageError

from spectral_jax.errors import BadImageError, ImageTooLargeError

__all__ = [
  'BadImageError',
  'DEFAULT_MAX_PIXELS',
  'load_rgb',
  'decode_rgb',
  'to_rgb_array',
  'rgb_array',
  'check_pixels',
  'load_label_map',
  'load_mask',
  'center_crop_offsets',
  'center_crop_square',
  'center_crop',
]

PathLike = Union[str, os.PathLike]

# 8192 x 8192: a ViT-S/16 on such an image already has 262k tokens (a 262k^2 affinity).
DEFAULT_MAX_PIXELS = 8192 * 8192

# Modes PIL converts to RGB losslessly enough for our purpose (no alpha, <= 8 bits).
_PLAIN_MODES = ('L', '1', 'P', 'CMYK', 'YCbCr', 'LAB', 'HSV')
_ALPHA_MODES = ('LA', 'La', 'PA', 'RGBA', 'RGBa')
_16BIT_MODES = ('I;16', 'I;16L', 'I;16B', 'I;16N')


def _check_size(name: str, width: int, height: int, min_side: int, max_pixels: int) -> None:
  if min(width, height) < min_side:
    raise BadImageError(
      name, f'image is {width}x{height} pixels; the minimum side is {min_side} (one patch)'
    )
  if width * height > max_pixels:
    raise ImageTooLargeError(
      name,
      f'image is {width}x{height} = {width * height} pixels, above the limit of {max_pixels}',
      'data.max_pixels',
      max_pixels,
    )


def _open(source: PathLike | bytes, name: str, max_pixels: int) -> Image.Image:
  """Opens (header only) with errors mapped to FileNotFoundError / BadImageError."""
  if not isinstance(source, (bytes, bytearray)) and not os.path.exists(source):
    raise FileNotFoundError(2, 'No such image file', str(source))
  # PIL refuses images above 2 * MAX_IMAGE_PIXELS at open; never let that limit undercut ours.
  if max_pixels > Image.MAX_IMAGE_PIXELS:
    Image.MAX_IMAGE_PIXELS = max_pixels
  try:
    if isinstance(source, (bytes, bytearray)):
      return Image.open(io.BytesIO(source))
    return Image.open(source)
  except UnidentifiedImageError as e:
    raise BadImageError(name, 'not a recognised image file (corrupt or unsupported format)') from e
  except Image.DecompressionBombError as e:  # PIL's own check, above twice our limit
    raise ImageTooLargeError(
      name, f'image is above the limit of {max_pixels} pixels ({e})', 'data.max_pixels', max_pixels
    ) from e
  except OSError as e:
    raise BadImageError(name, f'cannot read image: {e}') from e


def _load_pixels(img: Image.Image, name: str) -> None:
  try:
    img.load()
  except (OSError, SyntaxError, ValueError) as e:  # PIL reports truncation as OSError
    raise BadImageError(name, f'truncated or corrupt image data ({e})') from e


def _stretch_to_uint8(a: np.ndarray) -> np.ndarray:
  a = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
  lo, hi = float(a.min()), float(a.max())
  if hi <= lo:
    return np.zeros(a.shape, np.uint8)
  return np.rint((a - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _16bit_to_uint8(a: np.ndarray) -> np.ndarray:
  """OpenCV's imread rule (the official feature decoder): round(v / 256), saturated at 255."""
  return np.minimum(np.rint(a.astype(np.float64) / 256.0), 255).astype(np.uint8)


def _gray_to_uint8(img: Image.Image, notes: list[str]) -> np.ndarray:
  """High-bit-depth single-channel modes -> uint8 [H, W] (scaled, never clipped)."""
  a = np.asarray(img)
  if img.mode in _16BIT_MODES:
    notes.append(f'16-bit {img.mode} scaled to 8 bits')
    return _16bit_to_uint8(a)
  if img.mode == 'I':
    if a.size and a.min() >= 0 and a.max() <= 65535:
      notes.append('32-bit integer I read as 16-bit and scaled to 8 bits')
      return _16bit_to_uint8(a)
    notes.append('32-bit integer I stretched from [min, max] to 8 bits')
    return _stretch_to_uint8(a)
  # mode F
  finite = np.isfinite(a)
  if a.size and finite.all() and a.min() >= 0.0 and a.max() <= 1.0:
    notes.append('float F in [0, 1] scaled by 255')
    return np.rint(a.astype(np.float64) * 255.0).astype(np.uint8)
  notes.append('float F stretched from [min, max] to 8 bits')
  return _stretch_to_uint8(a)


def to_rgb_array(img: Image.Image, name: str, notes: list[str] | None = None) -> np.ndarray:
  """Converts a loaded PIL image of any mode to RGB uint8 [H, W, 3] (see module docstring).

  Appends a short description of each conversion to `notes` (if given).
  """
  notes = [] if notes is None else notes
  mode = img.mode
  if mode == 'RGB':
    return np.asarray(img, dtype=np.uint8).copy()
  if mode in _16BIT_MODES or mode in ('I', 'F'):
    gray = _gray_to_uint8(img, notes)
    return np.repeat(gray[:, :, None], 3, axis=2)
  try:
    if mode == 'P' and 'transparency' in img.info:
      notes.append('palette with transparency -> RGB (alpha dropped)')
      return np.asarray(img.convert('RGBA').convert('RGB'), dtype=np.uint8).copy()
    if mode in _ALPHA_MODES:
      notes.append(f'{mode} -> RGB (alpha dropped, not composited)')
    elif mode in _PLAIN_MODES:
      notes.append(f'{mode} -> RGB')
    else:
      notes.append(f'{mode} -> RGB (PIL convert)')
    return np.asarray(img.convert('RGB'), dtype=np.uint8).copy()
  except (ValueError, OSError) as e:
    raise BadImageError(name, f'unsupported image mode {mode!r} ({e})') from e


def _decode(
  source: PathLike | bytes, name: str, min_side: int, max_pixels: int, apply_exif: bool
) -> np.ndarray:
  img = _open(source, name, max_pixels)
  with img:
    _check_size(name, img.width, img.height, min_side, max_pixels)
    _load_pixels(img, name)
    notes: list[str] = []
    if apply_exif:
      orientation = img.getexif().get(0x0112, 1)  # 0x0112 = EXIF Orientation
      if orientation not in (None, 1):
        transposed = ImageOps.exif_transpose(img)
        if transposed is not None:
          img = transposed
        notes.append(f'EXIF orientation {orientation} applied')
    rgb = to_rgb_array(img, name, notes)
  if notes:
    logging.info('%s: %s', name, '; '.join(notes))
  return rgb


def load_rgb(
  path: PathLike,
  *,
  min_side: int = 1,
  max_pixels: int = DEFAULT_MAX_PIXELS,
  apply_exif: bool = True,
  name: str = '',
) -> np.ndarray:
  """Reads an image file as RGB uint8 [H, W, 3] (``name``: how errors call it; the path).

  Args:
    path: image file.
    min_side: smallest allowed min(H, W) (pass the patch size: smaller images have no patch).
    max_pixels: largest allowed H * W (setting `data.max_pixels`).
    apply_exif: rotate/flip according to the EXIF orientation tag (see module docstring).
  Raises:
    FileNotFoundError: `path` does not exist.
    BadImageError: not an image, truncated, unsupported mode, too small or too large.
  """
  return _decode(path, name or str(path), min_side, max_pixels, apply_exif)


def rgb_array(array: np.ndarray, name: str = 'image') -> np.ndarray:
  """An image already in memory, uint8 [H, W], [H, W, 1], [H, W, 3] or [H, W, 4], as RGB uint8
  [H, W, 3] (grey repeated, alpha dropped: the conversions of the file decoder). Arrays of
  another dtype or shape raise BadImageError saying what to pass."""
  if array.dtype != np.uint8:
    raise BadImageError(
      name,
      f'dtype {array.dtype}; pass uint8 pixels in 0..255 '
      '(e.g. (x * 255).round().astype(np.uint8) for floats in [0, 1])',
    )
  if array.ndim == 3 and array.shape[2] == 1:
    array = array[:, :, 0]
  if array.ndim == 2:
    return np.repeat(array[:, :, None], 3, axis=2)
  if array.ndim == 3 and array.shape[2] in (3, 4):
    return np.ascontiguousarray(array[:, :, :3])
  raise BadImageError(name, f'shape {array.shape}; use [H, W], [H, W, 3] or [H, W, 4]')


def check_pixels(
  image: np.ndarray, name: str, *, min_side: int = 1, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
  """A decoded RGB image held to the same size limits as a file (BadImageError otherwise)."""
  _check_size(name, int(image.shape[1]), int(image.shape[0]), min_side, max_pixels)
  return image


def decode_rgb(
  data: bytes,
  name: str = '<bytes>',
  *,
  min_side: int = 1,
  max_pixels: int = DEFAULT_MAX_PIXELS,
  apply_exif: bool = True,
) -> np.ndarray:
  """`load_rgb` for encoded bytes (e.g. a tfds record); `name` is used in logs and errors."""
  return _decode(bytes(data), name, min_side, max_pixels, apply_exif)


def load_mask(path: PathLike) -> np.ndarray:
  """Reads a ground-truth mask as bool [H, W], official rule: `convert('RGB')` channel 0 > 127.

  (The official code applies ToTensor, i.e. /255, then keeps channel 0 > 0.5.) No EXIF.
  """
  name = str(path)
  img = _open(path, name, DEFAULT_MAX_PIXELS)
  with img:
    _load_pixels(img, name)
    try:
      rgb = np.asarray(img.convert('RGB'), dtype=np.uint8)
    except (ValueError, OSError) as e:
      raise BadImageError(name, f'unsupported mask mode {img.mode!r} ({e})') from e
  return rgb[:, :, 0] > 127


def load_label_map(path: PathLike) -> np.ndarray:
  """Reads a label PNG (palette or greyscale indices, e.g. VOC SegmentationClass: 0..20,
  255 = void) as uint8 [H, W]; unreadable files and other modes raise BadImageError."""
  name = str(path)
  img = _open(path, name, DEFAULT_MAX_PIXELS)
  with img:
    _load_pixels(img, name)
    if img.mode not in ('P', 'L'):
      raise BadImageError(name, f'expected a palette/greyscale label PNG, got mode {img.mode}')
    return np.asarray(img, np.uint8)


def center_crop_offsets(height: int, width: int) -> tuple[int, int, int]:
  """(top, left, side) of torchvision's CenterCrop to the shorter side.

  top = round((H - s) / 2) with Python's round (half to even), as torchvision does.
  """
  side = min(height, width)
  return int(round((height - side) / 2.0)), int(round((width - side) / 2.0)), side


def center_crop_square(array: np.ndarray) -> np.ndarray:
  """Centre crop of [H, W, ...] to [s, s, ...], s = min(H, W) (CUB protocol)."""
  top, left, side = center_crop_offsets(array.shape[0], array.shape[1])
  return array[top : top + side, left : left + side]


center_crop = center_crop_square  # short alias used by the task runners
