"""DINOv2 ViT (with and without registers) in Flax, numerically equal to the official model.

Follows ``facebookresearch/dinov2`` (``DinoVisionTransformer`` as built by the hub entries
``dinov2_vit{s,b,l,g}14[_reg]``), as specified in ``backbones_protocol.md`` §2:
pre-norm blocks with LayerScale, LayerNorm eps 1e-6, exact GELU (fused SwiGLU for ViT-g),
tokens ``[CLS, registers, patches]`` where the position embedding is added to CLS and the
patches *before* the registers are inserted, and two different rules to resample the 37×37
position table: PyTorch bicubic (a = -0.75) with the +0.1 scale offset for the plain models,
PyTorch's antialiased bicubic (a = -0.5) by output size for the register models.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from spectral_jax.models import posembed
from spectral_jax.models.vit import (
  Attention,
  Mlp,
  TorchLayerNorm,
  dense,
  embed_patches,
  final_normed,
  patch_input,
  resample_table,
  run_blocks,
  table_precision,
)

NORM_EPS = 1e-6


@dataclasses.dataclass(frozen=True)
class DinoV2Arch:
  """Static architecture of a DINOv2 ViT; depth and widths come from the checkpoint."""

  patch_size: int = 14
  embed_dim: int = 384
  num_heads: int = 6
  depth: int = 12
  num_registers: int = 0
  ffn: str = 'mlp'  # 'mlp' (fc1 → GELU → fc2) or 'swiglufused' (ViT-g: w12, SiLU gate, w3)
  ffn_hidden: int = 1536
  pos_grid: int = 37  # the pretrained position table is pos_grid × pos_grid (518 / 14)
  # Hub settings: register models resample by size with antialias, the others with offset 0.1.
  interpolate_antialias: bool = False
  interpolate_offset: float = 0.1

  @property
  def num_prefix_tokens(self) -> int:
    return 1 + self.num_registers


def swiglu_fused_hidden(embed_dim: int, mlp_ratio: float = 4.0) -> int:
  """Hidden width of DINOv2's fused SwiGLU: 2/3 of the MLP width, rounded up to 8."""
  return (int(int(embed_dim * mlp_ratio) * 2 / 3) + 7) // 8 * 8


def hub_arch(embed_dim: int, depth: int, num_heads: int, registers: bool) -> DinoV2Arch:
  """The hub builders' settings for a width (ViT-g, 1536 wide, uses the fused SwiGLU)."""
  giant = embed_dim == 1536
  return DinoV2Arch(
    patch_size=14,
    embed_dim=embed_dim,
    num_heads=num_heads,
    depth=depth,
    num_registers=4 if registers else 0,
    ffn='swiglufused' if giant else 'mlp',
    ffn_hidden=swiglu_fused_hidden(embed_dim) if giant else 4 * embed_dim,
    interpolate_antialias=registers,
    interpolate_offset=0.0 if registers else 0.1,
  )


class LayerScale(nn.Module):
  """Per-channel scale ``gamma ⊙ x`` on a residual branch."""

  @nn.compact
  def __call__(self, x):
    return x * self.param('gamma', nn.initializers.ones, (x.shape[-1],))


class SwiGLUFused(nn.Module):
  """DINOv2's ViT-g FFN: one ``w12`` layer, first half gated by SiLU, times the second half."""

  hidden: int
  precision: Any = 'highest'

  @nn.compact
  def __call__(self, x):
    ab = dense(2 * self.hidden, self.precision, 'w12')(x)
    a, b = ab[..., : self.hidden], ab[..., self.hidden :]
    return dense(x.shape[-1], self.precision, 'w3')(jax.nn.silu(a) * b)


def make_ffn(kind: str, hidden: int, precision: Any, name: str = 'mlp') -> nn.Module:
  if kind == 'mlp':
    return Mlp(hidden, precision, name=name)
  if kind == 'swiglufused':
    return SwiGLUFused(hidden, precision, name=name)
  raise ValueError(f'unknown FFN kind {kind!r}')


class Block(nn.Module):
  """``x + ls1(attn(norm1 x))``, then ``x + ls2(ffn(norm2 x))``; returns (x, qkv [B, T, 3D])."""

  arch: DinoV2Arch
  precision: Any = 'highest'

  @nn.compact
  def __call__(self, x, key_mask=None):
    a = self.arch
    attn_out, qkv, _ = Attention(a.num_heads, self.precision, name='attn')(
      TorchLayerNorm(NORM_EPS, name='norm1')(x), key_mask
    )
    x = x + LayerScale(name='ls1')(attn_out)
    ffn = make_ffn(a.ffn, a.ffn_hidden, self.precision)
    x = x + LayerScale(name='ls2')(ffn(TorchLayerNorm(NORM_EPS, name='norm2')(x)))
    return x, qkv


class DinoV2(nn.Module):
  """DINOv2 ViT. Input: normalised images [B, H, W, 3] (H, W multiples of 14), or patch
  sequences [B, L, 14, 14, 3] (see ``vit.patchify``) with ``pos_tables`` [B, 1 + L, D]
  (``models.extractor.position_inputs``) and ``token_mask`` [B, 1 + R + L] (R registers).

  Returns, with prefix tokens (CLS and registers) dropped, rows row-major over the grid:
    k:                  [B, L, D] keys of block ``feature_block`` (qkv output, heads
                        concatenated; DSM's features use the last block);
    x_norm_patchtokens: [B, L, D] last block's output through the final norm;
    x_norm_clstoken:    [B, D] the final-normed CLS token;
    normed:             patch tokens [B, L, D] of each block in ``norm_blocks`` (0-based)
                        through the final norm (``get_intermediate_layers(norm=True)``).
  """

  arch: DinoV2Arch
  precision: Any = 'highest'

  @nn.compact
  def __call__(
    self, images, feature_block: int = -1, pos_tables=None, token_mask=None, norm_blocks=()
  ):
    a = self.arch
    d = a.embed_dim
    images, grid = patch_input(images, a.patch_size, pos_tables, 'pos_tables')
    x, cls_token = embed_patches(self, images, a.patch_size, d, self.precision)
    pos_embed = self.param('pos_embed', nn.initializers.zeros, (1, 1 + a.pos_grid**2, d))
    x = jnp.concatenate([cls_token, x], axis=1)
    if pos_tables is None:
      pos_tables = resample_pos_embed(a, pos_embed, grid, table_precision(self.precision))
    x = x + pos_tables
    if a.num_registers:  # registers go in after the position embedding: they carry none
      b = x.shape[0]
      reg = self.param('register_tokens', nn.initializers.zeros, (1, a.num_registers, d))
      x = jnp.concatenate([x[:, :1], jnp.broadcast_to(reg, (b, a.num_registers, d)), x[:, 1:]], 1)

    def block(i, x):
      x, qkv = Block(a, self.precision, name=f'blocks_{i}')(x, token_mask)
      return x, {'k': qkv[..., d : 2 * d]}, {}

    n = a.num_prefix_tokens
    norm = TorchLayerNorm(NORM_EPS, name='norm')
    x, out = run_blocks(x, block, a.depth, feature_block % a.depth, n, norm, norm_blocks)
    return final_normed(out, x, norm, n)


# --------------------------------------------------------------------------
# position embedding
# --------------------------------------------------------------------------


def _keys_kernel(u: np.ndarray, a: float) -> np.ndarray:
  u = np.abs(u)
  near = ((a + 2) * u - (a + 3)) * u * u + 1
  far = ((a * u - 5 * a) * u + 8 * a) * u - 4 * a
  return np.where(u <= 1, near, np.where(u < 2, far, 0.0))


@functools.lru_cache(maxsize=256)
def antialias_bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
  """Matrix [out, in] of PyTorch's ``interpolate(size=out, mode='bicubic', antialias=True)``.

  Keys kernel a = -0.5 stretched by the shrink factor, taps outside the input dropped and
  the rest renormalised (protocol §2.3); equal to ``jax.image.resize(..., antialias=True)``.
  """
  r = in_size / out_size
  support = 2.0 * r if r >= 1 else 2.0
  stretch = 1.0 / r if r >= 1 else 1.0
  matrix = np.zeros((out_size, in_size), np.float64)
  for o in range(out_size):
    c = r * (o + 0.5)
    lo = max(int(c - support + 0.5), 0)
    hi = min(int(c + support + 0.5), in_size)
    taps = np.arange(lo, hi)
    w = _keys_kernel((taps - c + 0.5) * stretch, -0.5)
    matrix[o, lo:hi] = w / w.sum()
  return matrix.astype(np.float32)


def resample_matrices(arch: DinoV2Arch, grid_hw: tuple[int, int]):
  """(rows [h, G], cols [w, G]) resampling the G×G table, or None when the official model
  uses the table as is (only a square G×G grid: resampling 37 → 37 with the offset is not
  the identity)."""
  g = arch.pos_grid
  if grid_hw[0] == grid_hw[1] == g:
    return None
  if arch.interpolate_antialias:
    if arch.interpolate_offset:
      raise NotImplementedError('antialias with a scale offset is not a hub configuration')
    return antialias_bicubic_matrix(g, grid_hw[0]), antialias_bicubic_matrix(g, grid_hw[1])
  if arch.interpolate_offset != 0.1:
    raise NotImplementedError('plain bicubic is implemented for the hub offset 0.1 only')
  return posembed.interpolation_matrices(tuple(grid_hw), g)


def resample_pos_embed(arch: DinoV2Arch, pos_embed, grid_hw, precision='highest'):
  """[1, 1 + G², D] → [1, 1 + h·w, D] (CLS row kept) with the official rule of ``arch``."""
  mats = resample_matrices(arch, grid_hw)
  if mats is None:
    return pos_embed
  return resample_table(pos_embed, *mats, precision)
