"""Reference implementation of the official per-image localization steps (torch + scipy).

Used ONLY by ``benchmarks/bench_localize.py`` as the baseline to time against; the
``spectral_jax`` package never imports it and torch is not a requirement of the package.

It follows ``official_protocol.md`` sections 1, 2 and 5 (the code paths of
``extract.py extract_features`` → ``extract_eigs`` → ``object-localization/main.py --eigenseg``):

* :class:`DinoViT`: a plain-torch rewrite of DINO's ``vision_transformer.py`` (PatchEmbed conv,
  CLS token, bicubic positional-embedding interpolation through ``F.interpolate`` with
  ``scale_factor=((h + 0.1) / G, (w + 0.1) / G)``, pre-norm blocks with LayerNorm eps 1e-6, qkv
  bias, exact GELU, final norm). ``get_intermediate_layers`` runs every block (and the final
  norm) like DINO's; the keys are read from the last block's ``qkv`` output (what the official
  forward hook captures), CLS dropped.
* :func:`preprocess`: ToTensor + ImageNet Normalize, top-left crop to multiples of P, no resize.
* :func:`official_eigs`: L2-normalise, ``W = F Fᵀ``, keep ``> 0``, ``/ max``, degrees
  (``W @ 1``, ``< 1e-12 → 1``), dense ``D``, ``eigsh(D − W, k, sigma=0, which='LM', M=D)``
  (retry ``which='SM'`` on any error), transpose, sign rule.
* :func:`official_box`: Fiedler ``> 0``, invert if ``0.5 < mean < 1``, all-ones if empty,
  largest ``skimage.measure.label`` component (8-connectivity), box ``× P`` clipped to the image.

Images are decoded with PIL (OpenCV is not installed here; for PNG files the decoded pixels are
identical). Nothing is written to disk (the official code saves features and eigenvectors to
``.pth`` files between stages; that I/O is not counted, which only favours the reference).
"""

from __future__ import annotations

import math
import time
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import scipy.sparse
import scipy.sparse.linalg
import skimage.measure
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: How many ``eigsh`` shift-invert calls raised and were retried with ``which='SM'``.
FALLBACKS = {'count': 0}


# ------------------------------------------------------------------------------------------------
# DINO ViT (vision_transformer.py, rewritten)
# ------------------------------------------------------------------------------------------------


class PatchEmbed(nn.Module):
  def __init__(self, patch_size: int, embed_dim: int):
    super().__init__()
    self.patch_size = patch_size
    self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)

  def forward(self, x):
    return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
  def __init__(self, dim: int, num_heads: int):
    super().__init__()
    self.num_heads = num_heads
    self.scale = (dim // num_heads) ** -0.5
    self.qkv = nn.Linear(dim, 3 * dim, bias=True)
    self.proj = nn.Linear(dim, dim)
    self.last_qkv: Optional[torch.Tensor] = None  # what the official forward hook captures

  def forward(self, x):
    b, n, c = x.shape
    qkv_out = self.qkv(x)
    self.last_qkv = qkv_out
    qkv = qkv_out.reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    attn = (q @ k.transpose(-2, -1)) * self.scale
    attn = attn.softmax(dim=-1)
    x = (attn @ v).transpose(1, 2).reshape(b, n, c)
    return self.proj(x)


class Mlp(nn.Module):
  def __init__(self, dim: int, hidden: int):
    super().__init__()
    self.fc1 = nn.Linear(dim, hidden)
    self.act = nn.GELU()  # exact erf GELU
    self.fc2 = nn.Linear(hidden, dim)

  def forward(self, x):
    return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
  def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
    super().__init__()
    self.norm1 = nn.LayerNorm(dim, eps=1e-6)
    self.attn = Attention(dim, num_heads)
    self.norm2 = nn.LayerNorm(dim, eps=1e-6)
    self.mlp = Mlp(dim, int(dim * mlp_ratio))

  def forward(self, x):
    x = x + self.attn(self.norm1(x))
    return x + self.mlp(self.norm2(x))


class DinoViT(nn.Module):
  """DINO's VisionTransformer (num_classes=0, eval mode, no dropout / drop-path)."""

  def __init__(
    self,
    patch_size: int = 16,
    embed_dim: int = 384,
    depth: int = 12,
    num_heads: int = 6,
    num_pos: int = 196,
  ):
    super().__init__()
    self.patch_embed = PatchEmbed(patch_size, embed_dim)
    self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
    self.pos_embed = nn.Parameter(torch.zeros(1, num_pos + 1, embed_dim))
    self.blocks = nn.ModuleList([Block(embed_dim, num_heads) for _ in range(depth)])
    self.norm = nn.LayerNorm(embed_dim, eps=1e-6)

  def interpolate_pos_encoding(self, x, w, h):
    # DINO names: w is the image HEIGHT and h the WIDTH (x.shape = B, C, w, h).
    npatch = x.shape[1] - 1
    n = self.pos_embed.shape[1] - 1
    if npatch == n and w == h:
      return self.pos_embed
    class_pos_embed = self.pos_embed[:, 0]
    patch_pos_embed = self.pos_embed[:, 1:]
    dim = x.shape[-1]
    p = self.patch_embed.patch_size
    w0, h0 = w // p + 0.1, h // p + 0.1
    g = int(math.sqrt(n))
    patch_pos_embed = F.interpolate(
      patch_pos_embed.reshape(1, g, g, dim).permute(0, 3, 1, 2),
      scale_factor=(w0 / math.sqrt(n), h0 / math.sqrt(n)),
      mode='bicubic',
    )
    assert int(w0) == patch_pos_embed.shape[-2] and int(h0) == patch_pos_embed.shape[-1]
    patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1)

  def prepare_tokens(self, x):
    b, _, w, h = x.shape
    x = self.patch_embed(x)
    x = torch.cat((self.cls_token.expand(b, -1, -1), x), dim=1)
    return x + self.interpolate_pos_encoding(x, w, h)

  def get_intermediate_layers(self, x, n: int = 1):
    x = self.prepare_tokens(x)
    output = []
    for i, blk in enumerate(self.blocks):
      x = blk(x)
      if len(self.blocks) - i <= n:
        output.append(self.norm(x))
    return output


def load_dino(path: str, device: str = 'cpu') -> DinoViT:
  """A :class:`DinoViT` from a DINO-format state dict (``torch.load``); arch read from shapes."""
  sd = torch.load(path, map_location='cpu', weights_only=True)
  if isinstance(sd, dict) and 'state_dict' in sd and isinstance(sd['state_dict'], dict):
    sd = sd['state_dict']
  sd = {k.replace('module.', '').replace('backbone.', ''): v for k, v in sd.items()}
  embed_dim = sd['cls_token'].shape[-1]
  patch_size = sd['patch_embed.proj.weight'].shape[-1]
  depth = 1 + max(int(k.split('.')[1]) for k in sd if k.startswith('blocks.'))
  num_pos = sd['pos_embed'].shape[1] - 1
  num_heads = embed_dim // 64  # DINO ViT-S/B: head dim 64
  model = DinoViT(patch_size, embed_dim, depth, num_heads, num_pos)
  missing, unexpected = model.load_state_dict(sd, strict=False)
  unexpected = [k for k in unexpected if not k.startswith('head')]
  if missing or unexpected:
    raise ValueError(f'{path}: missing {missing}, unexpected {unexpected}')
  return model.eval().to(device)


# ------------------------------------------------------------------------------------------------
# Per-image steps
# ------------------------------------------------------------------------------------------------


def read_image(path: str) -> np.ndarray:
  """RGB uint8 [H, W, 3] (the official code uses cv2.imread + BGR2RGB; PIL here)."""
  with Image.open(path) as im:
    return np.array(im.convert('RGB'))


def preprocess(image: np.ndarray, patch_size: int) -> torch.Tensor:
  """ToTensor + Normalize(ImageNet), then top-left crop to multiples of P → [1, 3, H', W']."""
  x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div(255.0)
  mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
  std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
  x = ((x - mean) / std)[None]
  h, w = x.shape[-2] // patch_size, x.shape[-1] // patch_size
  return x[:, :, : h * patch_size, : w * patch_size]


@torch.no_grad()
def extract_keys(model: DinoViT, image: np.ndarray, device: str = 'cpu') -> np.ndarray:
  """Keys of the last block (qkv output, CLS dropped) → float32 [h·w, D] on the host."""
  x = preprocess(image, model.patch_embed.patch_size).to(device)
  model.get_intermediate_layers(x)  # runs every block; output discarded as in the official code
  qkv = model.blocks[-1].attn.last_qkv
  b, t, c3 = qkv.shape
  heads = model.blocks[-1].attn.num_heads
  qkv = qkv.reshape(b, t, 3, heads, c3 // 3 // heads).permute(2, 0, 3, 1, 4)
  k = qkv[1].transpose(1, 2).reshape(b, t, -1)[:, 1:]
  model.blocks[-1].attn.last_qkv = None
  return k[0].float().cpu().numpy()  # float32 already, or bf16 under autocast


def official_eigs(feats: np.ndarray, k: int = 5) -> Tuple[np.ndarray, np.ndarray]:
  """Official ``_extract_eig`` Laplacian branch (λ_color = 0): → (values [K], vectors [K, N])."""
  f = F.normalize(torch.from_numpy(np.array(feats, np.float32)), p=2, dim=-1)
  w_feat = f @ f.T
  w_feat = w_feat * (w_feat > 0)
  w_feat = w_feat / w_feat.max()
  w = w_feat.numpy()
  d = w.dot(np.ones(w.shape[1], w.dtype))  # pymatting row_sum
  d[d < 1e-12] = 1.0
  dm = np.array(scipy.sparse.diags(d).todense())
  try:
    vals, vecs = scipy.sparse.linalg.eigsh(dm - w, k=k, sigma=0, which='LM', M=dm)
  except Exception:  # the official code's bare except: the slow non-shift-invert retry
    FALLBACKS['count'] += 1
    vals, vecs = scipy.sparse.linalg.eigsh(dm - w, k=k, which='SM', M=dm)
  vals = torch.from_numpy(vals).float()
  vecs = torch.from_numpy(vecs.T).float().clone()
  for i in range(vecs.shape[0]):  # sign rule
    if 0.5 < torch.mean((vecs[i] > 0).float()).item() < 1.0:
      vecs[i] = 0 - vecs[i]
  return vals.numpy(), vecs.numpy()


def official_box(
  vecs: np.ndarray,
  grid_hw: Tuple[int, int],
  patch_size: int,
  image_hw: Tuple[int, int],
  index: int = 1,
) -> np.ndarray:
  """Official CorLoc box from eigenvectors [K, N]: int64 [x1, y1, x2, y2]."""
  h, w = grid_hw
  mask = (vecs[index] > 0).reshape(h, w)
  frac = float(np.mean(mask))
  if 0.5 < frac < 1.0:
    mask = ~mask
  elif not mask.any():
    mask = np.ones_like(mask)
  labels = skimage.measure.label(mask)  # default: full (8-) connectivity in 2-D
  cc = int(np.argmax(np.bincount(labels.ravel())[1:])) + 1
  ys, xs = np.nonzero(labels == cc)
  H, W = image_hw
  p = patch_size
  return np.asarray(
    [xs.min() * p, ys.min() * p, min((xs.max() + 1) * p, W), min((ys.max() + 1) * p, H)], np.int64
  )


def localize(
  model: DinoViT,
  path: str,
  k: int = 5,
  device: str = 'cpu',
  timers: Optional[Dict[str, float]] = None,
  keys_fn: Callable = extract_keys,
) -> Dict[str, np.ndarray]:
  """The whole official per-image loop: decode → keys → eigenvectors → box.

  ``timers`` (optional) accumulates seconds per stage: decode, vit, eigen, box. ``keys_fn``
  (default :func:`extract_keys`) computes the keys from ``(model, image, device)``.
  """
  t0 = time.perf_counter()
  image = read_image(path)
  t1 = time.perf_counter()
  keys = keys_fn(model, image, device)
  t2 = time.perf_counter()
  vals, vecs = official_eigs(keys, k)
  t3 = time.perf_counter()
  p = model.patch_embed.patch_size
  grid = (image.shape[0] // p, image.shape[1] // p)
  box = official_box(vecs, grid, p, image.shape[:2])
  t4 = time.perf_counter()
  if timers is not None:
    stages = (('decode', t1 - t0), ('vit', t2 - t1), ('eigen', t3 - t2), ('box', t4 - t3))
    for name, dt in stages:
      timers[name] = timers.get(name, 0.0) + dt
  return {
    'k': keys,
    'eigenvalues': vals,
    'eigenvectors': vecs,
    'box': box,
    'grid': np.asarray(grid),
    'image_hw': np.asarray(image.shape[:2]),
  }
