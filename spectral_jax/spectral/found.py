"""FOUND (Siméoni et al., CVPR 2023): a 1×1-conv saliency head on DINO keys, exact to the official
code (``shared/reference/found_protocol.md``; valeoai/FOUND at 1ad22ba, written from that
description, not copied).

Small pure functions, numpy / jax arrays in and out:

* the decoder file (:func:`read_decoder`; the shipped ``decoder_weights.pt`` holds CUDA tensors,
  which the project's torch-free reader maps to numpy like any other);
* inference (§1-§4): :func:`decoder_logits` on the last block's keys of the image normalised and
  zero-padded to multiples of the patch size (:func:`spectral_jax.spectral.tokencut.padded_keys`),
  :func:`upsample_logits` (torch bilinear ×P, align_corners=False, cropped), :func:`multi_mask`,
  :func:`single_mask`, the "+BS" refinement :func:`refine` (TokenCut's solver from
  :mod:`spectral_jax.spectral.bilateral`, FOUND's post-processing and IoU > 0.5 gate),
  :func:`prediction` (all of it for one mode), :func:`discovery_box` and :func:`mask_score`;
* training targets (§5): :func:`train_image` (224×224 preprocessing, augmentation draws as
  parameters), :func:`train_input`, :func:`keys_and_cls_attention`, :func:`background`,
  :func:`unnormalised_reference`, :func:`resize_bilinear` (cv2 INTER_LINEAR without OpenCV),
  :func:`downsample_any` and :func:`pseudo_mask`.

Ties follow the official code: component sizes are ordered with ``np.argsort``'s default kind, as
the official (stable for ≤ 16 labels), seeds and box labels take the first index.
"""

from __future__ import annotations

import functools
import zipfile
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from spectral_jax import errors
from spectral_jax.models.weights import torch_pickle
from spectral_jax.models.weights.errors import CheckpointError
from spectral_jax.spectral import bilateral, tokencut

__all__ = [
  'MODES',
  'DecoderFileError',
  'read_decoder',
  'decoder_logits',
  'upsample_logits',
  'multi_mask',
  'single_mask',
  'bilateral_postprocess',
  'mask_iou',
  'refine',
  'prediction',
  'discovery_box',
  'mask_score',
]

MODES = ('single', 'multi')  # the official ``evaluation_mode``
BS_SIGMAS = dict(sigma_spatial=16, sigma_luma=16, sigma_chroma=8)  # FOUND's solver call
BS_IOU = 0.5  # the gate: the solver's mask replaces the prediction if IoU > 0.5
BKG_TH = 0.3  # configs/found_DUTS-TR.yaml found.bkg_th
CROP_SIZE = 224  # training input
SCALE_RANGE = (0.1, 3.0)
BLUR_P = 0.5
BLUR_SIGMA = (0.1, 2.0)
_HI = jax.lax.Precision.HIGHEST


# ----------------------------------------------------------------------------------------------
# The decoder file
# ----------------------------------------------------------------------------------------------


class DecoderFileError(errors.SpectralJaxError, ValueError):
  """A FOUND decoder file that is missing, unreadable or not in the official format.
  ``path``: the file; ``reason``: what is wrong and what was expected."""

  def __init__(self, path: Any, reason: str):
    self.path, self.reason = str(path), reason
    super().__init__(f'{self.path}: {reason}')


EXPECTED = (
  "expected FOUND's decoder file: torch.save({'decoder': {'weight': (1, D, 1, 1), "
  "'bias': (1,)}}) (e.g. data/weights/decoder_weights.pt)"
)


def read_decoder(path, dim: Optional[int] = None) -> tuple[np.ndarray, np.float32]:
  """The 1×1 convolution of a decoder file (``{'decoder': {'weight': (1, D, 1, 1), 'bias':
  (1,)}}``, CPU or CUDA tensors, zip or legacy torch format) as (weight float32 [D], bias
  float32). ``dim``: the feature width the caller needs (384 for ViT-S), checked if given.
  Raises :class:`DecoderFileError` (a ValueError) naming the file and what was expected."""
  path = Path(path).expanduser()
  if not path.is_file():
    raise DecoderFileError(path, f'no such file; {EXPECTED}')
  try:
    with open(path, 'rb') as f:
      head = f.read(1)
    legacy = not zipfile.is_zipfile(path)
    if legacy and head != b'\x80':  # neither a zip nor a pickle (legacy torch format)
      raise CheckpointError(f'{path}: not a PyTorch file')
    obj = torch_pickle.read_pth(path, legacy=legacy)
  except CheckpointError as e:
    raise DecoderFileError(path, f'not a readable PyTorch file ({e}); {EXPECTED}') from e
  state = obj.get('decoder') if isinstance(obj, Mapping) else None
  if not isinstance(state, Mapping):
    keys = sorted(map(str, obj))[:5] if isinstance(obj, Mapping) else type(obj).__name__
    raise DecoderFileError(path, f"no 'decoder' entry (found {str(keys)[:200]}); {EXPECTED}")
  weight, bias = state.get('weight'), state.get('bias')
  ok = (
    isinstance(weight, np.ndarray)
    and isinstance(bias, np.ndarray)
    and weight.ndim == 4
    and weight.shape[0] == 1
    and weight.shape[2:] == (1, 1)
    and bias.shape == (1,)
    and weight.dtype.kind == 'f'
    and bias.dtype.kind == 'f'
  )
  if not ok:
    shapes = {k: getattr(v, 'shape', type(v).__name__) for k, v in state.items()}
    raise DecoderFileError(path, f"'decoder' holds {str(shapes)[:200]}; {EXPECTED}")
  if dim is not None and weight.shape[1] != dim:
    raise DecoderFileError(
      path, f'the decoder reads {weight.shape[1]} features, the backbone gives {dim}'
    )
  return weight.reshape(-1).astype(np.float32), np.float32(bias[0])


# ----------------------------------------------------------------------------------------------
# Inference (§2-§4)
# ----------------------------------------------------------------------------------------------


@jax.jit
def decoder_logits(keys, weight, bias) -> jax.Array:
  """The decoder's 1×1 convolution: keys [..., N, D] (last block, CLS dropped) → logits
  [..., N] = w·k + b, float32. Reshape to the patch grid (row-major) for the masks."""
  keys = jnp.asarray(keys, jnp.float32)
  return jnp.einsum('...nd,d->...n', keys, jnp.asarray(weight, jnp.float32), precision=_HI) + bias


def _taps(in_size: int, out_size: int, scale: float, rule: str):
  """Linear-interpolation taps along one axis, half-pixel centres, float32 as the official
  kernels: (i0, i1, w0, w1) with out[o] = w0·x[i0] + w1·x[i1]. ``scale`` = input step per
  output pixel. 'torch': F.interpolate(align_corners=False) (source clamped at 0; at the far
  end i1 = i0 with the fraction kept); 'cv2': cv2.resize INTER_LINEAR (weights (1, 0) on the
  border pixel outside [0, in − 1])."""
  o = np.arange(out_size)
  if rule == 'torch':
    src = np.float32(scale) * (o.astype(np.float32) + np.float32(0.5)) - np.float32(0.5)
    src = np.maximum(src, np.float32(0))
    i0 = np.minimum(src.astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    w1 = (src - i0.astype(np.float32)).astype(np.float32)
  else:  # cv2: fx = (float)((dx + 0.5)·scale − 0.5) in double, floor, clamp both ends
    src = ((o + 0.5) * float(scale) - 0.5).astype(np.float32)
    i0 = np.floor(src).astype(np.int64)
    w1 = (src - i0.astype(np.float32)).astype(np.float32)
    low, high = i0 < 0, i0 >= in_size - 1
    i0 = np.clip(i0, 0, in_size - 1)
    w1 = np.where(low | high, np.float32(0), w1)
    i1 = np.minimum(i0 + 1, in_size - 1)
  return i0, i1, (np.float32(1) - w1).astype(np.float32), w1


def _bilinear(x: np.ndarray, out_hw: Sequence[int], rule: str, scale=None) -> np.ndarray:
  """Separable bilinear resize of float32 [h, w] in the official order: each source row
  interpolated along x, then the two rows combined along y."""
  x = np.asarray(x, np.float32)
  (h, w), (oh, ow) = x.shape, out_hw
  sy, sx = (scale, scale) if scale is not None else (h / oh, w / ow)
  r0, r1, a0, a1 = _taps(h, oh, sy, rule)
  c0, c1, b0, b1 = _taps(w, ow, sx, rule)
  row = lambda rows: rows[:, c0] * b0 + rows[:, c1] * b1
  return row(x[r0]) * a0[:, None] + row(x[r1]) * a1[:, None]


@functools.partial(jax.jit, static_argnames=('image_hw', 'patch_size'))
def upsample_logits(grid_logits, image_hw: tuple[int, int], patch_size: int = 8) -> jax.Array:
  """torch ``F.interpolate(scale_factor=P, mode='bilinear', align_corners=False)`` of the
  logits [gh, gw] (float32, same operation order), cropped to the first H rows and W columns
  (the zero padding dropped): [H, W]. ``image_hw`` and ``patch_size`` are static."""
  x = jnp.asarray(grid_logits, jnp.float32)
  (gh, gw), (h, w), p = x.shape, image_hw, int(patch_size)
  r0, r1, a0, a1 = (t[:h] for t in _taps(gh, gh * p, 1.0 / p, 'torch'))
  c0, c1, b0, b1 = (t[:w] for t in _taps(gw, gw * p, 1.0 / p, 'torch'))
  row = lambda rows: rows[:, c0] * b0 + rows[:, c1] * b1
  return row(x[r0]) * a0[:, None] + row(x[r1]) * a1[:, None]


def multi_mask(upsampled) -> np.ndarray:
  """sigmoid(logits) > 0.5 in float32 (the official binarisation, ``multi`` mode): bool."""
  return np.asarray(jax.nn.sigmoid(jnp.asarray(upsampled, jnp.float32)) > 0.5)


def _sizes_order(labeled: np.ndarray, n: int) -> np.ndarray:
  """Labels 0..n ordered by increasing pixel count with numpy's default argsort (the
  official ``np.argsort([np.sum(labeled == i) ...])``, ties included)."""
  return np.argsort(np.bincount(labeled.ravel(), minlength=n + 1))


def single_mask(mask) -> np.ndarray:
  """``single`` mode: the largest 4-connected component of the mask after removing the one
  that overlaps most with the unselected pixels (label 0 in practice); sizes ordered with
  ``np.argsort`` (ties: its order, the lowest label for ≤ 16 labels), overlap ties: first in
  that order. No component: the (empty) mask itself. Returns bool [H, W]."""
  mask = np.asarray(mask, bool)
  labeled, n = ndimage.label(mask)
  if n == 0:
    return mask.copy()
  order = _sizes_order(labeled, n)
  overlap = np.bincount(labeled[~mask], minlength=n + 1)[order]
  order = np.delete(order, int(np.argmax(overlap)))
  return labeled == order[-1]


def bilateral_postprocess(output, mode: str) -> np.ndarray:
  """FOUND's post-processing of the solver output: holes of ``output > 0.5`` filled,
  4-connected labels ordered by size (label 0 included); ``multi``: every label but the
  largest (which may be an object, leaving the background in: official quirk); ``single``:
  the second-largest label, all ones if there is no object. Returns bool [H, W]."""
  _check_mode(mode)
  binary = ndimage.binary_fill_holes(np.asarray(output) > 0.5)
  labeled, n = ndimage.label(binary)
  order = _sizes_order(labeled, n)
  if mode == 'multi':
    return np.isin(labeled, order[::-1][1:])
  if n == 0:  # official: pixel_order[-2] raises, the except gives all ones
    return np.ones(labeled.shape, bool)
  return labeled == order[-2]


def mask_iou(a, b) -> float:
  """The official gate's IoU of ``a > 0.5`` and ``b > 0.5`` in float32; 0/0 is NaN."""
  a, b = np.asarray(a) > 0.5, np.asarray(b) > 0.5
  with np.errstate(invalid='ignore', divide='ignore'):
    return float(np.float32(np.sum(a & b)) / np.float32(np.sum(a | b)))


def _check_mode(mode: str) -> None:
  if mode not in MODES:
    raise ValueError(f'FOUND evaluation mode {mode!r}: use one of {MODES}')


def refine(image, target, mode: str, output: Optional[np.ndarray] = None) -> dict[str, Any]:
  """The "+BS" refinement (§3) of a mask with the photo as reference.

  Args:
    image: uint8 [H, W, 3], the solver's reference (evaluation: the photo itself, which the
      official ToTensor/ToPILImage round trip reproduces exactly; training:
      :func:`unnormalised_reference`).
    target: [H, W] the mask to refine (evaluation: the multi-mode mask, in both modes; training:
      a soft cv2-resized mask), values in [0, 1].
    mode: 'multi' (official get_all_cc=True) or 'single' post-processing.
    output: a previous call's ``output`` for the same image and target, to skip the solver.

  Returns dict: ``output`` float64 [H, W] (solver, σ 16/16/8, λ 256, 25 CG iterations),
  ``binary`` bool (:func:`bilateral_postprocess`), ``iou`` (:func:`mask_iou` of target and
  binary), ``used`` (iou > 0.5) and ``mask`` bool: ``binary`` if used, else ``target > 0.5``.
  """
  _check_mode(mode)
  target = np.asarray(target, np.float32)
  if output is None:
    output, _ = bilateral.solve(image, target, **BS_SIGMAS)
  binary = bilateral_postprocess(output, mode)
  iou = mask_iou(target, binary)
  used = bool(iou > BS_IOU)
  mask = binary if used else target > 0.5
  return dict(output=output, binary=binary, iou=iou, used=used, mask=mask)


def prediction(
  grid_logits,
  image: np.ndarray,
  mode: str = 'multi',
  refine_with: str = 'none',
  patch_size: int = 8,
) -> dict[str, Any]:
  """The evaluation's mask of one image (§2-§3).

  Args:
    grid_logits: [gh, gw] decoder logits of the padded image.
    image: uint8 [H, W, 3] (the solver's reference).
    mode: 'multi' (official default) or 'single'.
    refine_with: 'none' or 'bilateral'.

  Returns dict: ``upsampled`` float32 [H, W] logits, ``mask`` bool [H, W] (what the
  evaluation scores as a binary mask), ``multi`` (the multi-mode mask), ``score``
  (:func:`mask_score` of ``mask``) and, with 'bilateral', ``bs_used`` and ``bs_iou``.
  """
  _check_mode(mode)
  if refine_with not in ('none', 'bilateral'):
    raise ValueError(f"refine {refine_with!r}: use 'none' or 'bilateral'")
  hw = tuple(int(s) for s in np.shape(image)[:2])
  up = np.asarray(upsample_logits(grid_logits, hw, int(patch_size)))
  multi = multi_mask(up)
  out = dict(upsampled=up, multi=multi)
  if refine_with == 'bilateral':
    r = refine(image, multi, mode)
    out.update(mask=r['mask'], bs_used=r['used'], bs_iou=r['iou'])
  else:
    out['mask'] = single_mask(multi) if mode == 'single' else multi
  out['score'] = mask_score(up, out['mask'])
  return out


def discovery_box(grid_logits, image_hw: Sequence[int], patch_size: int = 8):
  """Object-discovery box (§4): sigmoid(logits) > 0.5 at patch resolution, its largest
  4-connected component (``bincount.argmax``: ties → lowest label), [x0, y0, x1, y1] pixels,
  exclusive max, clipped to (W, H): int64 [4]. None for an empty mask (the official crashes)."""
  labeled, n = ndimage.label(multi_mask(grid_logits))
  if n == 0:
    return None
  largest = np.bincount(labeled[labeled != 0]).argmax()
  return tokencut.box_from_mask(labeled == largest, patch_size, image_hw)


def mask_score(upsampled, mask) -> float:
  """A confidence per image (not in the official code): the mean sigmoid probability of
  the upsampled logits inside ``mask``; 0.0 for an empty mask."""
  mask = np.asarray(mask, bool)
  if not mask.any():
    return 0.0
  prob = np.asarray(jax.nn.sigmoid(jnp.asarray(upsampled, jnp.float32)))
  return float(prob[mask].mean())
