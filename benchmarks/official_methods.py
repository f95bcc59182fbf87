"""Reference implementation of the official TokenCut and LOST object-discovery steps per image.

Used ONLY by ``benchmarks/bench_localize.py --method tokencut|lost`` as the baseline to time
against (``spectral_jax`` never imports it). It follows ``methods_protocol.md`` §1.1, §2.1–2.3
and §3, the code paths of TokenCut's ``main_tokencut.py`` and LOST's ``main_lost.py``:

* :func:`padded_input`: ToTensor + ImageNet Normalize, THEN zero-pad bottom/right to
  ⌈H/P⌉·P × ⌈W/P⌉·P (no crop).
* :func:`tokencut_box`: keys (CLS dropped) L2-normalised, ``S = F̂ F̂ᵀ`` in float32,
  ``W = 1 if S > τ else ε`` (float64), dense ``D``, ``scipy.linalg.eigh(D − W, D,
  subset_by_index=[1, 2])``, threshold at the mean, seed ``argmax |v|``, flip to the seed's
  side, the seed's 4-connected ``scipy.ndimage.label`` component, its box (max side clipped).
* :func:`lost_box`: raw keys, ``A = F Fᵀ`` (float32), degree = #{j ≠ i: A_ij > 0}, order by
  increasing degree (torch's unstable ``argsort`` when torch is importable, as the official
  code; else a stable numpy sort), seed = first, expansion over the first ``k_patches``,
  ``M`` = row sums of the similars, the seed's 4-connected component of ``M > 0``, its box.

The graph/box part is numpy + scipy (torch only for LOST's sort, when present), so it can be
checked against the parity keys without torch; the ViT forward is ``official_reference``'s
torch DINO ViT (:func:`extract_padded_keys`, needs torch).
"""

from __future__ import annotations

import time
from typing import Dict, Optional, Tuple

import numpy as np
import scipy.linalg
from scipy import ndimage

from common import patch_box

try:
  import torch
except ImportError:  # the graph part still runs; the ViT forward does not
  torch = None

IMAGENET_MEAN = np.array((0.485, 0.456, 0.406), np.float32)
IMAGENET_STD = np.array((0.229, 0.224, 0.225), np.float32)


def padded_input(image: np.ndarray, patch_size: int) -> np.ndarray:
  """uint8 [H, W, 3] → float32 [3, ⌈H/P⌉·P, ⌈W/P⌉·P]: normalised, then zeros bottom/right."""
  x = (image.astype(np.float32) / np.float32(255.0) - IMAGENET_MEAN) / IMAGENET_STD
  h, w = image.shape[:2]
  p = patch_size
  out = np.zeros((3, -(-h // p) * p, -(-w // p) * p), np.float32)
  out[:, :h, :w] = x.transpose(2, 0, 1)
  return out


def extract_padded_keys(model, image: np.ndarray, device: str = 'cpu') -> np.ndarray:
  """Keys of the last block for the padded input, CLS first: float32 [1 + N, D] (torch)."""
  if torch is None:
    raise RuntimeError('torch is not installed: the reference ViT forward cannot run')
  with torch.no_grad():
    x = torch.from_numpy(padded_input(image, model.patch_embed.patch_size))[None].to(device)
    model.get_intermediate_layers(x)
    qkv = model.blocks[-1].attn.last_qkv
    b, t, c3 = qkv.shape
    heads = model.blocks[-1].attn.num_heads
    qkv = qkv.reshape(b, t, 3, heads, c3 // 3 // heads).permute(2, 0, 3, 1, 4)
    k = qkv[1].transpose(1, 2).reshape(b, t, -1)
    model.blocks[-1].attn.last_qkv = None
    return k[0].cpu().numpy()


def _seed_box(mask: np.ndarray, seed: int, patch_size: int, image_hw) -> np.ndarray:
  labels, _ = ndimage.label(mask)  # default structure: 4-connectivity
  comp = labels == labels.ravel()[seed]
  ys, xs = np.nonzero(comp)
  return patch_box(ys, xs, patch_size, image_hw)


def tokencut_box(
  keys_cls: np.ndarray,
  grid: Tuple[int, int],
  patch_size: int,
  image_hw,
  tau: float = 0.2,
  eps: float = 1e-5,
) -> Dict[str, np.ndarray]:
  """TokenCut on keys [1 + N, D] (CLS first, as its ``ncut`` receives them)."""
  f = np.asarray(keys_cls[1:], np.float32)
  f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), np.float32(1e-12))
  s = f @ f.T  # float32, as torch
  w = np.where(s > tau, 1.0, eps).astype(np.float64)
  d = np.diag(w.sum(axis=1))
  vals, vecs = scipy.linalg.eigh(d - w, d, subset_by_index=[1, 2])
  v = vecs[:, 0]
  part = v > np.sum(v) / len(v)
  seed = int(np.argmax(np.abs(v)))
  if not part[seed]:
    part = ~part
  box = _seed_box(part.reshape(grid), seed, patch_size, image_hw)
  return {'box': box, 'seed': np.int64(seed), 'eigenvalues': vals}


def lost_box(
  keys_cls: np.ndarray, grid: Tuple[int, int], patch_size: int, image_hw, k_patches: int = 100
) -> Dict[str, np.ndarray]:
  """LOST on keys [1 + N, D] (CLS first; LOST drops it and does not normalise)."""
  f = np.asarray(keys_cls[1:], np.float32)
  a = f @ f.T
  pos = a > 0
  np.fill_diagonal(pos, False)
  deg = pos.sum(axis=1)
  if torch is not None:  # the official unstable sort
    order = torch.argsort(torch.from_numpy(-deg), descending=True).numpy()
  else:
    order = np.argsort(deg, kind='stable')
  seed = int(order[0])
  potentials = order[:k_patches]
  similars = potentials[a[seed, potentials] > 0]
  m = a[similars].sum(axis=0)
  box = _seed_box((m > 0).reshape(grid), seed, patch_size, image_hw)
  return {'box': box, 'seed': np.int64(seed)}


def localize(
  model, path: str, method: str, device: str = 'cpu', timers: Optional[Dict[str, float]] = None
) -> Dict[str, np.ndarray]:
  """The official per-image loop: decode → padded keys → TokenCut / LOST box."""
  from PIL import Image  # pylint: disable=import-outside-toplevel

  t0 = time.perf_counter()
  with Image.open(path) as im:
    image = np.array(im.convert('RGB'))
  t1 = time.perf_counter()
  keys = extract_padded_keys(model, image, device)
  t2 = time.perf_counter()
  p = model.patch_embed.patch_size
  grid = (-(-image.shape[0] // p), -(-image.shape[1] // p))
  fn = tokencut_box if method == 'tokencut' else lost_box
  out = fn(keys, grid, p, image.shape[:2])
  t3 = time.perf_counter()
  if timers is not None:
    for name, dt in (('decode', t1 - t0), ('vit', t2 - t1), (method, t3 - t2)):
      timers[name] = timers.get(name, 0.0) + dt
  return out
