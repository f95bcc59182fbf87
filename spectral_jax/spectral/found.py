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
from PIL import Image
from scipy import ndimage

from spectral_jax import errors
from spectral_jax.models import vit
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
  'draw_augmentation',
  'gaussian_blur',
  'train_image',
  'train_input',
  'unnormalised_reference',
  'keys_and_cls_attention',
  'background',
  'resize_bilinear',
  'downsample_any',
  'pseudo_mask',
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


# ----------------------------------------------------------------------------------------------
# Training input (§5)
# ----------------------------------------------------------------------------------------------


def draw_augmentation(
  rng: np.random.Generator,
  scale_range=SCALE_RANGE,
  blur_p: float = BLUR_P,
  blur_sigma=BLUR_SIGMA,
) -> dict[str, Any]:
  """The official draws with a numpy Generator (the official uses Python's and NumPy's global
  RNGs, which this does not reproduce): {'scale': U(scale_range), 'blur_sigma': None, or
  U(blur_sigma) with probability blur_p}. Identity: {'scale': 1.0, 'blur_sigma': None}."""
  scale = float(rng.uniform(*scale_range))
  coin = rng.random()
  sigma = float((blur_sigma[1] - blur_sigma[0]) * rng.random() + blur_sigma[0])
  return dict(scale=scale, blur_sigma=sigma if coin < blur_p else None)


def gaussian_blur(image: np.ndarray, kernel: int, sigma: float) -> np.ndarray:
  """cv2.GaussianBlur(image, (kernel, kernel), sigma) without OpenCV: cv2's kernel formula,
  reflect-101 border, separable float64 filtering, rounded. cv2 filters uint8 in fixed point,
  so a pixel can differ by 1 from it (the references pin the blur off)."""
  r = np.arange(kernel) - (kernel - 1) / 2
  g = np.exp(-(r**2) / (2 * sigma * sigma))
  g /= g.sum()
  x = np.asarray(image, np.float64)
  pad = kernel // 2
  x = np.pad(x, ((pad, pad), (pad, pad), (0, 0)), mode='reflect')  # numpy reflect = cv2 101
  x = sum(g[i] * x[i : i + image.shape[0]] for i in range(kernel))
  x = sum(g[i] * x[:, i : i + image.shape[1]] for i in range(kernel))
  return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _pil_bilinear(image: Image.Image, hw: tuple[int, int]) -> Image.Image:
  """torchvision's resize of a PIL image: PIL BILINEAR, unchanged at its own size."""
  return image if (image.height, image.width) == hw else image.resize(hw[::-1], Image.BILINEAR)


def train_image(
  image: np.ndarray,
  crop_size: int = CROP_SIZE,
  scale: float = 1.0,
  blur_sigma: Optional[float] = None,
) -> np.ndarray:
  """FoundDataset's ``random_scale`` preprocessing before ToTensor: uint8 [crop, crop, 3].

  PIL bilinear resize of the shorter edge to ``crop_size`` (the other ``int(other / shorter
  · crop)``), the random scale (bilinear to ``(int(h·s), int(w·s))``; 1 = identity), PIL
  bilinear to crop × crop, then the Gaussian blur (kernel ``int(0.1·crop // 2 · 2) + 1``,
  ``blur_sigma``; None = the coin said no). Draws: :func:`draw_augmentation`.
  """
  pil = Image.fromarray(np.asarray(image, np.uint8)).convert('RGB')
  h, w = pil.height, pil.width
  if w > h:
    hw = (crop_size, int(float(w) / h * crop_size))
  else:
    hw = (int(float(h) / w * crop_size), crop_size)
  pil = _pil_bilinear(pil, hw)
  pil = _pil_bilinear(pil, (int(hw[0] * scale), int(hw[1] * scale)))
  out = np.asarray(_pil_bilinear(pil, (crop_size, crop_size)))
  if blur_sigma is not None:
    out = gaussian_blur(out, int(0.1 * crop_size // 2 * 2) + 1, blur_sigma)
  return out


def train_input(image: np.ndarray) -> np.ndarray:
  """ToTensor + Normalize of a uint8 [H, W, 3] training image in numpy float32, with true
  divisions as torchvision (``vit.normalize`` under XLA may multiply by reciprocals instead,
  one ulp off, which moves pixels of :func:`unnormalised_reference` by one)."""
  x = np.asarray(image, np.uint8).astype(np.float32) / np.float32(255)
  return (x - vit.IMAGENET_MEAN) / vit.IMAGENET_STD


def unnormalised_reference(x) -> np.ndarray:
  """The training solver's reference: the normalised input [H, W, 3] un-normalised in
  float32 (x·std + mean) and turned into 8 bits as ToPILImage does (×255, truncation). With
  ``x = train_input(image)`` many pixels come back one lower than ``image``."""
  x = np.asarray(x, np.float32) * vit.IMAGENET_STD + vit.IMAGENET_MEAN
  return np.clip(x * np.float32(255), 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=8)
def _attention_forward(arch: vit.ViTArch, precision: Any):
  model = vit.VisionTransformer(arch, precision=precision)

  @jax.jit
  def run(variables, x):
    out = model.apply(variables, x, with_attention=True)
    return out['k'], out['attn'][:, :, 0, 1:]

  return run


def keys_and_cls_attention(extractor: Any, x) -> tuple[jax.Array, jax.Array]:
  """The last block's keys [B, N, D] (heads concatenated, CLS dropped) and its CLS → patch
  attention [B, heads, N] of normalised float32 images [B, H, W, 3], cropped to multiples
  of P first (the official training crop). ``extractor``: a DINO ViT
  ``pipeline.FeatureExtractor``; one compilation per input shape."""
  if not isinstance(extractor.arch, vit.ViTArch):
    raise TypeError(f'FOUND runs on a DINO ViT, not {extractor.name}')
  p = extractor.arch.patch_size
  x = jnp.asarray(x, jnp.float32)
  x = x[:, : x.shape[1] // p * p, : x.shape[2] // p * p]  # the official training crop
  tokens = 1 + (x.shape[1] // p) * (x.shape[2] // p)
  if vit.query_chunk(x.shape[0], extractor.arch.num_heads, tokens) < tokens:
    raise ValueError(f'the attention of a batch {x.shape} is too large: use smaller batches')
  return _attention_forward(extractor.arch, extractor.precision)(extractor.variables, x)


# ----------------------------------------------------------------------------------------------
# Background discovery and pseudo-masks (§5)
# ----------------------------------------------------------------------------------------------


def background(cls_attention, keys, bkg_th: float = BKG_TH, eps: float = 1e-10) -> dict:
  """``bkg_seg.compute_img_bkg_seg`` of one image, float32 as the official.

  Args:
    cls_attention: [heads, N] the last block's CLS → patch attention.
    keys: [N, D] the last block's keys (heads concatenated, CLS dropped).
    bkg_th: cosine threshold (official 0.3).

  Returns dict: ``threshold`` (mean attention), ``Q`` [heads] (fraction of patches above it),
  ``beta`` [heads] = log(Σ(Q + eps) / (Q + eps)), ``seed`` (argmin of Σ_h β_h·A_h, first
  index), ``similarity`` [N] (cosine of the β-weighted, L2-normalised keys with the seed's),
  ``background`` bool [N] = similarity > bkg_th. The object mask is ``~background``.
  """
  att = np.asarray(cls_attention, np.float32)
  k = np.asarray(keys, np.float32)
  heads, n = att.shape
  threshold = np.float32(att.astype(np.float64).mean())
  q = (att > threshold).sum(axis=1).astype(np.float32) / np.float32(n)
  qe = q + np.float32(eps)
  beta = np.log(qe.sum(dtype=np.float32) / qe).astype(np.float32)
  d = (k.reshape(n, heads, -1) * beta[None, :, None]).reshape(n, -1)
  d = d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), np.float32(1e-12))
  total = functools.reduce(np.add, att * beta[:, None])  # heads summed one after the other
  seed = int(np.argmin(total))
  similarity = (d @ d[seed]).astype(np.float32)
  return dict(
    threshold=threshold,
    Q=q,
    beta=beta,
    seed=seed,
    similarity=similarity,
    background=similarity > bkg_th,
  )


def resize_bilinear(x, out_hw: Sequence[int]) -> np.ndarray:
  """cv2.resize(x, (W, H)) with INTER_LINEAR (its default) on float32 [h, w] in numpy:
  half-pixel centres, border pixels repeated, the same float32 operations. [H, W] float32."""
  x = np.asarray(x, np.float32)
  if tuple(out_hw) == x.shape:
    return x.copy()
  return _bilinear(x, tuple(out_hw), 'cv2')


def downsample_any(mask, out_hw: Sequence[int]) -> np.ndarray:
  """torch ``F.interpolate(mask, out_hw, mode='bilinear', align_corners=False).bool()``:
  bool [h, w], True where any tap with a positive weight is non-zero (for 224 → 28: pixels
  8i+3, 8i+4 in each direction)."""
  return _bilinear(np.asarray(mask, np.float32), tuple(out_hw), 'torch') != 0


def pseudo_mask(reference: np.ndarray, mask, get_all_cc: bool = True) -> dict[str, Any]:
  """``batch_apply_bilateral_solver`` of one training image (§5): the patch mask [gh, gw]
  resized to the reference's size by cv2 bilinear (``target``, soft), refined (:func:`refine`
  with 'multi' post-processing if ``get_all_cc``, the official default and the background
  pseudo-mask's quirk), and if the gate passes brought back to [gh, gw] by
  :func:`downsample_any`, else the mask itself.

  Returns dict: ``target`` float32 [H, W], ``output``, ``binary``, ``iou``, ``used`` (as
  :func:`refine`) and ``mask`` bool [gh, gw], the training target.
  """
  mask = np.asarray(mask)
  hw = np.shape(reference)[:2]
  target = resize_bilinear(mask.astype(np.float32), hw)
  r = refine(reference, target, 'multi' if get_all_cc else 'single')
  r['target'] = target
  r['mask'] = downsample_any(r['binary'], mask.shape) if r['used'] else mask > 0.5
  return r
