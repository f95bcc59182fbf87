"""ProMerge's official per-image loop, transcribed literally from ``promerge_protocol.md``.

Used ONLY by ``benchmarks/bench_discover.py --method promerge`` as the baseline to time against
(``spectral_jax`` never imports it). The official code is CC-BY-NC and was not read: this is the
protocol's description written as the official structures it (one prompt at a time, Python
loops over components, candidates and clusters, float32 like the official torch tensors):

* §1 :func:`preprocess`: Pillow LANCZOS to 480 × 480, ToTensor + ImageNet Normalize; the ViT
  forward is DINO's ``get_last_selfattention`` with the last block's qkv hooked (torch, batch 1:
  :func:`torch_keys`) or, without torch, our jitted ViT at batch 1 (:func:`jax_keys`).
* §2 :func:`prompts`: per seed (stride 4, row outer) the cosine map of the seed's key with every
  normalised key (one mat-vec), ``> 0.2``, the side test (``round`` half to even of each border
  line's fraction), background prompts kept aside, else ``scipy.ndimage.label`` and the
  components, largest first, while ≥ 0.5 × the seed's own.
* §3–§5 :func:`vote_filter_merge`: the background vote, the smallest-first cascade filter with a
  running union, the largest-first merge over a list of clusters.
* §6–§7 :func:`to_image`: each cluster upsampled (nearest, 8 × 8 blocks), MaskCut's dense CRF +
  hole filling + IoU ≥ 0.5 filter (with ``crf``; the same ``maskcut.crf_refine`` as ours: the
  CRF is pydensecrf on both sides), Pillow bicubic back to the photo's size.
"""

from __future__ import annotations

import time
from typing import Dict, List, Optional, Tuple

import numpy as np
from PIL import Image
from scipy import ndimage

from spectral_jax.spectral import maskcut

try:
  import torch
except ImportError:
  torch = None

FIXED_SIZE, PATCH, STRIDE = 480, 8, 4
TAU, CC_TAU, FILTER_TAU, INCLUDE_TAU = 0.2, 0.5, 0.8, 0.1
MERGE_TAU, MERGE_IOA_TAU, DINO_MERGE_TAU, CRF_IOU_TAU = 0.5, 0.1, 0.1, 0.5
MEAN = np.array((0.485, 0.456, 0.406), np.float32)
STD = np.array((0.229, 0.224, 0.225), np.float32)


def preprocess(image: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
  """uint8 photo → (image_s uint8 [480, 480, 3], normalised float32 [3, 480, 480])."""
  pil = Image.fromarray(image).convert('RGB').resize((FIXED_SIZE, FIXED_SIZE), Image.LANCZOS)
  image_s = np.array(pil)
  x = (image_s.astype(np.float32) / np.float32(255.0) - MEAN) / STD
  return image_s, np.ascontiguousarray(x.transpose(2, 0, 1))


def torch_keys(model, x: np.ndarray) -> np.ndarray:
  """DINO ``get_last_selfattention`` at batch 1, keys hooked: float32 [768, 3600] (F)."""
  with torch.no_grad():
    t = model.prepare_tokens(torch.from_numpy(x)[None])
    for blk in model.blocks[:-1]:
      t = blk(t)
    last = model.blocks[-1]
    qkv = last.attn.qkv(last.norm1(t))
    b, n, c3 = qkv.shape
    heads = last.attn.num_heads
    qkv = qkv.reshape(b, n, 3, heads, c3 // 3 // heads).permute(2, 0, 3, 1, 4)
    ((qkv[0] @ qkv[1].transpose(-2, -1)) * last.attn.scale).softmax(dim=-1)  # returned
    k = qkv[1].transpose(1, 2).reshape(b, n, -1)[0, 1:]
    return k.T.contiguous().numpy()


def jax_keys(extractor, image_s: np.ndarray) -> np.ndarray:
  """Our jitted ViT at batch 1 (without torch): float32 [768, 3600] (F)."""
  n = (FIXED_SIZE // PATCH) ** 2
  return np.asarray(extractor([image_s], n)['k'])[0, :n].T.copy()


def prompts(feats: np.ndarray, grid: Tuple[int, int]):
  """§2, one prompt at a time → (background maps, candidates [(mask, count)], G [D, N])."""
  h, w = grid
  g = feats / (np.linalg.norm(feats, axis=0, keepdims=True) + np.float32(1e-5))
  bg_maps: List[np.ndarray] = []
  candidates: List[Tuple[np.ndarray, int]] = []
  for r in range(0, h, STRIDE):
    for c in range(0, w, STRIDE):
      seed = feats[:, r * w + c]
      seed = seed / (np.linalg.norm(seed) + np.float32(1e-5))
      a = (g.T @ seed).reshape(h, w)
      b = a > np.float32(TAU)
      sides = 0
      for line in (b[0, :], b[:, -1], b[-1, :], b[:, 0]):
        sides += int(np.round(line.mean()))  # half to even: exactly half is 0
      if sides >= 2:
        bg_maps.append(b)
        continue
      labels, n = ndimage.label(b)
      if n == 0:
        continue
      sizes = [int(np.sum(labels == i)) for i in range(1, n + 1)]
      own = int(labels[r, c])
      s0 = sizes[own - 1] if own > 0 else sizes[n - 1]
      for i in sorted(range(n), key=lambda i: -sizes[i]):  # stable, largest first
        if sizes[i] < CC_TAU * s0:
          break
        candidates.append((labels == i + 1, sizes[i]))
  return bg_maps, candidates, g


def vote_filter_merge(bg_maps, candidates, g: np.ndarray, grid) -> List[np.ndarray]:
  """§3–§5 → the clusters (bool [h, w]); [] where the image gets no masks."""
  h, w = grid
  if not candidates or not bg_maps:
    return []
  vote = np.mean(np.stack(bg_maps).astype(np.float32), 0)
  background = vote > 0.5
  if background.sum() / (h * w) < 0.1:
    return []
  b_mean = g[:, background.reshape(-1)].mean(1)
  union = np.zeros((h, w), bool)
  accepted = []
  for m, count in sorted(candidates, key=lambda mc: mc[1]):  # smallest first, stable
    new = m & ~union
    if new.sum() == 0:
      continue  # ratio 0/0 = NaN rejects
    ratio = (new & background).sum() / new.sum()
    sim = g[:, m.reshape(-1)].mean(1) @ b_mean
    if ratio < FILTER_TAU and sim < INCLUDE_TAU:
      accepted.append((m, count))
      union |= m
  clusters: List[np.ndarray] = []
  for m, _ in sorted(accepted, key=lambda mc: -mc[1]):  # largest first, stable
    if not clusters:
      clusters.append(m)
      continue
    matched = []
    for ci, c in enumerate(clusters):
      inter = (c & m).sum()
      if inter == 0:
        continue
      ioa = inter / m.sum()
      if ioa > MERGE_TAU:
        matched.append(ci)
      elif ioa > MERGE_IOA_TAU:
        sim = g[:, m.reshape(-1)].mean(1) @ g[:, c.reshape(-1)].mean(1)
        if sim >= DINO_MERGE_TAU:
          matched.append(ci)
    if not matched:
      clusters.append(m)
      continue
    merged = m.copy()
    for ci in matched:
      merged |= clusters[ci]
    clusters = [c for ci, c in enumerate(clusters) if ci not in matched] + [merged]
  return clusters


def to_image(clusters, image_s: np.ndarray, image_hw, crf: bool) -> List[np.ndarray]:
  """§6–§7 → non-empty bool masks at the photo's size."""
  params = maskcut.CRF_PARAMS
  out = []
  for c in clusters:
    m = np.repeat(np.repeat(c, PATCH, 0), PATCH, 1)
    if crf:
      _, _, m, _ = maskcut.crf_refine(image_s, m, params)
    final = maskcut.resize_to_original(m, image_hw)
    if final.any():
      out.append(final)
  return out


def discover(
  image: np.ndarray,
  crf: bool,
  model=None,
  extractor=None,
  timers: Optional[Dict[str, float]] = None,
):
  """The official loop for one uint8 photo → (clusters [h, w], final masks [H, W])."""
  grid = (FIXED_SIZE // PATCH,) * 2
  t0 = time.perf_counter()
  image_s, x = preprocess(image)
  t1 = time.perf_counter()
  feats = torch_keys(model, x) if model is not None else jax_keys(extractor, image_s)
  t2 = time.perf_counter()
  bg_maps, candidates, g = prompts(feats, grid)
  t3 = time.perf_counter()
  clusters = vote_filter_merge(bg_maps, candidates, g, grid)
  t4 = time.perf_counter()
  masks = to_image(clusters, image_s, image.shape[:2], crf)
  t5 = time.perf_counter()
  if timers is not None:
    for name, dt in (
      ('resize', t1 - t0),
      ('vit', t2 - t1),
      ('prompts', t3 - t2),
      ('vote, filter, merge', t4 - t3),
      ('post', t5 - t4),
    ):
      timers[name] = timers.get(name, 0.0) + dt
  return clusters, masks
