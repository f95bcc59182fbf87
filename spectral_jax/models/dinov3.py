"""DINOv3 ViT in Flax, numerically equal to the official model (``backbones_protocol.md`` §3).

Tokens ``[CLS, 4 storage tokens, patches]`` with no absolute position embedding; positions
enter through RoPE on the queries and keys of the patch tokens only. The key third of the
qkv bias is masked to zero (``bias_mask``; folded into the parameters at load time), the
LayerNorms use eps 1e-5, LayerScale on both branches, exact GELU MLP (S/B/L) or a three-layer
SwiGLU (the "plus" models).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from spectral_jax.models import vit
from spectral_jax.models.dinov2 import LayerScale
from spectral_jax.models.vit import (
  Mlp,
  TorchLayerNorm,
  dense,
  embed_patches,
  final_normed,
  patch_input,
  run_blocks,
)


@dataclasses.dataclass(frozen=True)
class DinoV3Arch:
  """Static architecture of a DINOv3 ViT; depth and widths come from the checkpoint."""

  patch_size: int = 16
  embed_dim: int = 384
  num_heads: int = 6
  depth: int = 12
  num_storage: int = 4
  ffn: str = 'mlp'  # 'mlp' (fc1 → GELU → fc2) or 'swiglu' (w3(SiLU(w1 x) ⊙ w2 x))
  ffn_hidden: int = 1536
  norm_eps: float = 1e-5
  rope_base: float = 100.0  # only for the periods' initial value: files carry their own

  @property
  def num_prefix_tokens(self) -> int:
    return 1 + self.num_storage

  @property
  def head_dim(self) -> int:
    return self.embed_dim // self.num_heads


def swiglu_hidden(embed_dim: int, ratio: float, align: int = 8) -> int:
  """DINOv3's SwiGLU width: 2/3 of int(D·ratio), rounded up to ``align``."""
  d = int(int(embed_dim * ratio) * 2 / 3)
  return (d + align - 1) // align * align


def hub_arch(embed_dim: int, depth: int, num_heads: int, plus: bool) -> DinoV3Arch:
  """The hub builders' settings (the "plus" models use SwiGLU with ratio 6)."""
  return DinoV3Arch(
    embed_dim=embed_dim,
    num_heads=num_heads,
    depth=depth,
    ffn='swiglu' if plus else 'mlp',
    ffn_hidden=swiglu_hidden(embed_dim, 6) if plus else 4 * embed_dim,
  )


class SwiGLU(nn.Module):
  hidden: int
  precision: Any = 'highest'

  @nn.compact
  def __call__(self, x):
    gate = dense(self.hidden, self.precision, 'w1')(x)
    value = dense(self.hidden, self.precision, 'w2')(x)
    return dense(x.shape[-1], self.precision, 'w3')(jax.nn.silu(gate) * value)


def patch_coords(grid_hw: tuple[int, int]) -> jnp.ndarray:
  """Patch-centre coordinates [h·w, 2] (row, col) in [-1, 1], each axis by its own length."""
  h, w = grid_hw
  rows = jnp.arange(0.5, h, dtype=jnp.float32) / h
  cols = jnp.arange(0.5, w, dtype=jnp.float32) / w
  coords = jnp.stack(jnp.meshgrid(rows, cols, indexing='ij'), axis=-1).reshape(h * w, 2)
  return 2.0 * coords - 1.0


def rope_cos_sin(coords, periods):
  """coords [..., L, 2], periods [hd/4] → cos, sin [..., L, hd]: all row angles, then all
  column angles, the 32 repeated twice (pairs (m, m + hd/2) rotate together)."""
  angles = 2 * math.pi * coords[..., :, None] / periods  # [..., L, 2, hd/4]
  angles = angles.reshape(*angles.shape[:-2], -1)
  angles = jnp.concatenate([angles, angles], axis=-1)
  return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x, cos, sin):
  """x [B, L, heads, hd]; cos/sin [B or 1, L, hd] → x·cos + [-x₂, x₁]·sin."""
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  return x * cos[:, :, None] + rotated * sin[:, :, None]


class RopeAttention(nn.Module):
  """Multi-head attention with RoPE on the patch tokens (the last tokens after ``prefix``).

  Returns (output [B, T, D], k [B, T, D] before RoPE, k_rope [B, T, D] after RoPE).
  """

  num_heads: int
  prefix: int
  precision: Any = 'highest'

  @nn.compact
  def __call__(self, x, cos, sin, key_mask=None):
    b, t, d = x.shape
    hd = d // self.num_heads
    qkv = dense(3 * d, self.precision, 'qkv')(x)  # key bias is zero
    q, k, v = (qkv[..., i * d : (i + 1) * d].reshape(b, t, self.num_heads, hd) for i in range(3))
    n = self.prefix
    q = jnp.concatenate([q[:, :n], apply_rope(q[:, n:], cos, sin)], axis=1)
    k_rope = jnp.concatenate([k[:, :n], apply_rope(k[:, n:], cos, sin)], axis=1)
    out = vit.attention(q, k_rope, v, key_mask, self.precision)
    out = dense(d, self.precision, 'proj')(out.reshape(b, t, d))
    return out, qkv[..., d : 2 * d], k_rope.reshape(b, t, d)


class Block(nn.Module):
  arch: DinoV3Arch
  precision: Any = 'highest'

  @nn.compact
  def __call__(self, x, cos, sin, key_mask=None):
    a = self.arch
    attention = RopeAttention(a.num_heads, a.num_prefix_tokens, self.precision, name='attn')
    attn_out, k, k_rope = attention(TorchLayerNorm(a.norm_eps, name='norm1')(x), cos, sin, key_mask)
    x = x + LayerScale(name='ls1')(attn_out)
    if a.ffn == 'mlp':
      ffn = Mlp(a.ffn_hidden, self.precision, name='mlp')
    elif a.ffn == 'swiglu':
      ffn = SwiGLU(a.ffn_hidden, self.precision, name='mlp')
    else:
      raise ValueError(f'unknown FFN kind {a.ffn!r}')
    x = x + LayerScale(name='ls2')(ffn(TorchLayerNorm(a.norm_eps, name='norm2')(x)))
    return x, k, k_rope


def _default_periods(base: float, head_dim: int):
  def init(_key, shape, dtype=jnp.float32):
    return jnp.asarray(base ** (2 * np.arange(head_dim // 4) / (head_dim // 2)), dtype)

  return init


class DinoV3(nn.Module):
  """DINOv3 ViT. Input: normalised images [B, H, W, 3] (H, W multiples of 16), or patch
  sequences [B, L, 16, 16, 3] with ``rope_coords`` [B, L, 2] and ``token_mask`` [B, 5 + L]
  (see ``models.extractor.position_inputs``).

  Returns, prefix tokens (CLS and 4 storage tokens) dropped, rows row-major over the grid:
    k:                  [B, L, D] keys of block ``feature_block`` as the qkv layer outputs
                        them (key bias masked, before RoPE): what DSM's hook records;
    k_rope:             [B, L, D] the same keys after RoPE, as attention uses them;
    x_norm_patchtokens: [B, L, D] final-normed patch tokens of the last block;
    x_norm_clstoken:    [B, D];
    normed:             patch tokens [B, L, D] of each block in ``norm_blocks`` (0-based)
                        through the final norm (``get_intermediate_layers(norm=True)``).
  """

  arch: DinoV3Arch
  precision: Any = 'highest'

  @nn.compact
  def __call__(
    self, images, feature_block: int = -1, rope_coords=None, token_mask=None, norm_blocks=()
  ):
    a = self.arch
    d = a.embed_dim
    images, grid = patch_input(images, a.patch_size, rope_coords, 'rope_coords', crop=True)
    if grid is not None:
      rope_coords = patch_coords(grid)[None]
    x, cls_token = embed_patches(self, images, a.patch_size, d, self.precision)
    storage = self.param('storage_tokens', nn.initializers.zeros, (1, a.num_storage, d))
    periods = self.param(
      'rope_periods', _default_periods(a.rope_base, a.head_dim), (a.head_dim // 4,)
    )
    storage = jnp.broadcast_to(storage, (x.shape[0], a.num_storage, d))
    x = jnp.concatenate([cls_token, storage, x], axis=1)
    cos, sin = rope_cos_sin(jnp.asarray(rope_coords, jnp.float32), periods)

    def block(i, x):
      x, k, k_rope = Block(a, self.precision, name=f'blocks_{i}')(x, cos, sin, token_mask)
      return x, {'k': k, 'k_rope': k_rope}, {}

    n = a.num_prefix_tokens
    norm = TorchLayerNorm(a.norm_eps, name='norm')
    x, out = run_blocks(x, block, a.depth, feature_block % a.depth, n, norm, norm_blocks)
    return final_normed(out, x, norm, n)
