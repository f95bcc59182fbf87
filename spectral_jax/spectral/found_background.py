"""FOUND's training targets (protocol §5): the 224 × 224 training input, the background
discovery from the last block's CLS attention and keys, and the bilateral-solver pseudo-mask on
the 28 × 28 grid. Inference lives in :mod:`spectral_jax.spectral.found`."""

from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from spectral_jax.models import vit
from spectral_jax.spectral.found import (
  BKG_TH,
  BLUR_P,
  BLUR_SIGMA,
  CROP_SIZE,
  SCALE_RANGE,
  _bilinear,
  refine,
)


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
