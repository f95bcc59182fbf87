"""Reference implementation of FOUND's official object-discovery evaluation, one image at a time.

Used ONLY by ``benchmarks/bench_localize.py --method found`` as the baseline to time against
(``spectral_jax`` never imports it). It follows ``found_protocol.md`` §0, §1 and §4, the path of
FOUND's ``evaluation/uod.py`` (single mode) per image:

* :func:`padded_input` (``official_methods.padded_input``): ToTensor + ImageNet Normalize, then
  zero-pad bottom/right to multiples of 8.
* :func:`last_block_keys`: DINO's ``get_last_selfattention`` on the torch ViT of
  ``official_reference`` (every block but the last, then the last block's norm1, qkv and
  softmax attention, which the official returns); the keys are read from the last block's qkv
  output (FOUND's forward hook), heads concatenated, CLS dropped.
* :func:`decoder_logits`: the decoder, ``nn.Conv2d(384, 1, 1)`` loaded from the decoder file
  (CUDA tensors mapped to the CPU), on the keys reshaped to (1, D, gh, gw).
* :func:`uod_box`: ``sigmoid(logits) > 0.5`` at patch resolution (no upsampling: §4), 4-connected
  ``scipy.ndimage.label``, the largest label (``bincount.argmax``: ties → the lowest), box
  [x0, y0, x1 + 1, y1 + 1] × 8 clipped to (W, H); ``None`` for an empty mask (the official
  crashes there).

:func:`localize` runs decode → keys → head → box with per-stage timers.
"""

from __future__ import annotations

import time
from typing import Dict, Optional

import numpy as np
import torch
import torch.nn as nn
from PIL import Image
from scipy import ndimage

import official_methods
from common import patch_box


@torch.no_grad()
def last_block_keys(model, image: np.ndarray, device: str = 'cpu') -> torch.Tensor:
  """Keys of the last block for the padded input, CLS dropped: float32 [N, D] (torch).

  DINO's ``get_last_selfattention``: blocks[:-1] in full, then in the last block only norm1,
  qkv and the softmax attention (returned by the official, unused by the box)."""
  x = torch.from_numpy(official_methods.padded_input(image, model.patch_embed.patch_size))
  x = model.prepare_tokens(x[None].to(device))
  for blk in model.blocks[:-1]:
    x = blk(x)
  last = model.blocks[-1]
  attn = last.attn
  qkv = attn.qkv(last.norm1(x))  # what FOUND's forward hook captures
  b, t, c3 = qkv.shape
  qkv = qkv.reshape(b, t, 3, attn.num_heads, c3 // 3 // attn.num_heads).permute(2, 0, 3, 1, 4)
  q, k = qkv[0], qkv[1]
  ((q @ k.transpose(-2, -1)) * attn.scale).softmax(dim=-1)  # the returned attention
  return k.transpose(1, 2).reshape(b, t, -1)[0, 1:]


def load_decoder(path: str, device: str = 'cpu') -> nn.Conv2d:
  """FOUND's decoder: ``nn.Conv2d(D, 1, 1)`` with the file's weight and bias."""
  state = torch.load(path, map_location='cpu', weights_only=True)['decoder']
  conv = nn.Conv2d(state['weight'].shape[1], 1, 1)
  conv.load_state_dict({'weight': state['weight'].float(), 'bias': state['bias'].float()})
  return conv.eval().to(device)


@torch.no_grad()
def decoder_logits(decoder: nn.Conv2d, keys: torch.Tensor, grid) -> torch.Tensor:
  """The 1×1 convolution on the keys [N, D] as a (1, D, gh, gw) map → logits (1, 1, gh, gw)."""
  feats = keys.T.reshape(1, keys.shape[1], grid[0], grid[1])
  return decoder(feats)


def uod_box(logits: torch.Tensor, image_hw, patch_size: int = 8) -> Optional[np.ndarray]:
  """§4: the largest 4-connected component of sigmoid > 0.5 at patch resolution, its box."""
  mask = (torch.sigmoid(logits) > 0.5)[0, 0].cpu().numpy()
  labeled, n = ndimage.label(mask)
  if n == 0:
    return None
  largest = np.bincount(labeled[labeled != 0]).argmax()
  ys, xs = np.nonzero(labeled == largest)
  return patch_box(ys, xs, patch_size, image_hw)


def localize(
  model, decoder, path: str, device: str = 'cpu', timers: Optional[Dict[str, float]] = None
) -> Dict[str, object]:
  """The official per-image loop: decode → padded keys → decoder → box (``None``: empty)."""
  t0 = time.perf_counter()
  with Image.open(path) as im:
    image = np.array(im.convert('RGB'))
  t1 = time.perf_counter()
  keys = last_block_keys(model, image, device)
  t2 = time.perf_counter()
  p = model.patch_embed.patch_size
  grid = (-(-image.shape[0] // p), -(-image.shape[1] // p))
  logits = decoder_logits(decoder, keys, grid)
  t3 = time.perf_counter()
  box = uod_box(logits, image.shape[:2], p)
  t4 = time.perf_counter()
  if timers is not None:
    for name, dt in (('decode', t1 - t0), ('vit', t2 - t1), ('head', t3 - t2), ('post', t4 - t3)):
      timers[name] = timers.get(name, 0.0) + dt
  return {'box': box, 'logits': logits[0, 0].cpu().numpy(), 'grid': grid}
