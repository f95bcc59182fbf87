"""DINO's Vision Transformer in Flax, numerically equal to ``vision_transformer.py``.

Differences from stock Flax that matter for parity with the PyTorch model:
LayerNorm computes the variance as mean((x - mean)²) (Flax's fast variance
differs in float32), GELU is the exact erf form, and every matmul runs at the
precision given by ``precision`` ('highest' = true float32 on GPU/TPU).

``precision='bfloat16'`` runs every ViT matmul on bfloat16 operands (weights and activations,
cast in the forward) with float32 accumulation and float32 outputs; LayerNorm, softmax, GELU,
position tables and the returned features stay float32.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from spectral_jax.models import posembed

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


@dataclasses.dataclass(frozen=True)
class ViTArch:
  """Static architecture of a DINO ViT; depth comes from the checkpoint."""

  patch_size: int = 16
  embed_dim: int = 384
  num_heads: int = 6
  depth: int = 12
  num_pos: int = 196  # pretrained patch positions (14×14 for /16, 28×28 for /8)

  @property
  def pretrained_grid(self) -> int:
    return int(round(np.sqrt(self.num_pos)))


# The four official DINO backbones (depth 12; a checkpoint may override it).
ARCHS = {
  'dino_vits16': ViTArch(16, 384, 6, 12, 196),
  'dino_vits8': ViTArch(8, 384, 6, 12, 784),
  'dino_vitb16': ViTArch(16, 768, 12, 12, 196),
  'dino_vitb8': ViTArch(8, 768, 12, 12, 784),
}


# ``precision`` value for bfloat16 matmuls (any other value is a lax matmul precision).
BFLOAT16 = 'bfloat16'


def is_bfloat16(precision) -> bool:
  return isinstance(precision, str) and precision == BFLOAT16


def _bf16_dot_general(lhs, rhs, dimension_numbers, precision=None, **kwargs):
  """``lax.dot_general`` on bfloat16 operands, accumulated and returned in float32."""
  del precision, kwargs  # bf16 operands take the native bf16 pass (AMX / tensor cores / MXU)
  return jax.lax.dot_general(
    lhs.astype(jnp.bfloat16),
    rhs.astype(jnp.bfloat16),
    dimension_numbers,
    preferred_element_type=jnp.float32,
  )


def einsum(subscripts: str, a, b, precision):
  """``jnp.einsum`` at ``precision``; 'bfloat16': bf16 operands, float32 accumulation."""
  if is_bfloat16(precision):
    return jnp.einsum(
      subscripts,
      a.astype(jnp.bfloat16),
      b.astype(jnp.bfloat16),
      preferred_element_type=jnp.float32,
    )
  return jnp.einsum(subscripts, a, b, precision=precision)


def dense(features: int, precision, name: str) -> nn.Dense:
  """``nn.Dense`` at ``precision`` (same parameters either way; float32 output)."""
  if is_bfloat16(precision):
    return nn.Dense(features, dot_general=_bf16_dot_general, name=name)
  return nn.Dense(features, precision=precision, name=name)


def table_precision(precision):
  """Position tables are interpolated in true float32 under 'bfloat16' (tiny, and shared with
  the host-side tables of ``models.extractor``)."""
  return 'highest' if is_bfloat16(precision) else precision


class TorchLayerNorm(nn.Module):
  """LayerNorm with PyTorch's two-pass variance and eps."""

  eps: float = 1e-6

  @nn.compact
  def __call__(self, x):
    dim = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (dim,))
    bias = self.param('bias', nn.initializers.zeros, (dim,))
    mean = jnp.mean(x, axis=-1, keepdims=True)
    centred = x - mean
    var = jnp.mean(centred * centred, axis=-1, keepdims=True)
    return centred / jnp.sqrt(var + self.eps) * scale + bias


# Attention logits above this many bytes run in query chunks (memory B·heads·chunk·T instead
# of B·heads·T²): a 12 MP photo at patch 16 would otherwise need 157 GB per block.
ATTENTION_CHUNK_BYTES = 1 << 28


def _attend(q, k, v, key_mask, precision):
  """softmax(q kᵀ / √c) v for q [B, Q, H, C], k, v [B, T, H, C] → ([B, Q, H, C], [B, H, Q, T])."""
  logits = einsum('bqhc,bkhc->bhqk', q, k, precision) * q.shape[-1] ** -0.5
  if key_mask is not None:  # padded tokens: exp(-inf) = 0, so real tokens never see them
    logits = jnp.where(key_mask[:, None, None, :], logits, -jnp.inf)
  attn = jax.nn.softmax(logits, axis=-1)
  return einsum('bhqk,bkhc->bqhc', attn, v, precision), attn


def query_chunk(batch: int, heads: int, tokens: int, budget: int | None = None) -> int:
  """Queries per chunk so that float32 logits [B, H, chunk, T] fit ``budget`` (default
  ``ATTENTION_CHUNK_BYTES``), or T if they all do."""
  budget = ATTENTION_CHUNK_BYTES if budget is None else budget
  full = batch * heads * tokens * tokens * 4
  if full <= budget:
    return tokens
  return max(budget // (batch * heads * tokens * 4), 64)


def map_query_chunks(attend, q, chunk: int, axis: int):
  """``attend(q)`` computed over query chunks of ``chunk`` rows along ``axis``, one chunk at a
  time (``lax.map``; the last chunk zero-padded): the same values, with the memory of one
  chunk's logits."""
  t = q.shape[axis]
  n_chunks = -(-t // chunk)
  if n_chunks == 1:
    return attend(q)
  pad = [(0, 0)] * q.ndim
  pad[axis] = (0, n_chunks * chunk - t)
  q = jnp.pad(q, pad)
  q = jnp.moveaxis(q.reshape(q.shape[:axis] + (n_chunks, chunk) + q.shape[axis + 1 :]), axis, 0)
  out = jnp.moveaxis(jax.lax.map(attend, q), 0, axis)
  out = out.reshape(out.shape[:axis] + (n_chunks * chunk,) + out.shape[axis + 2 :])
  return jax.lax.slice_in_dim(out, 0, t, axis=axis)


def chunked_attention(q, k, v, key_mask, precision, chunk: int):
  """``_attend`` over query chunks of ``chunk`` rows: the same values, with peak memory
  B·H·chunk·T instead of B·H·T²."""
  attend = lambda qc: _attend(qc, k, v, key_mask, precision)[0]
  return map_query_chunks(attend, q, chunk, axis=1)


def _attend_one_head(q, k, v, key_mask, precision):
  """softmax(q kᵀ / √c) v of one head: q [Q, C], k, v [T, C], key_mask [T] → [Q, C]."""
  logits = einsum('qc,kc->qk', q, k, precision) * q.shape[-1] ** -0.5
  logits = jnp.where(key_mask[None], logits, -jnp.inf)
  return einsum('qk,kc->qc', jax.nn.softmax(logits, axis=-1), v, precision)


def head_by_head_attention(q, k, v, key_mask, precision):
  """``_attend``'s output, one (image, head) pair at a time (``lax.map`` over B·H), queries in
  chunks only when one head's logits exceed ``ATTENTION_CHUNK_BYTES``: peak memory T² (or
  chunk·T) instead of B·H·T². On CPU this is faster than the batched einsum (plain 2-D
  matmuls, one head's logits in cache; ``bench_localize.py --attention``)."""
  b, t, h, c = q.shape
  heads = lambda x: x.transpose(0, 2, 1, 3).reshape(b * h, x.shape[1], c)
  mask = jnp.ones((b, k.shape[1]), bool) if key_mask is None else key_mask
  masks = jnp.repeat(mask, h, axis=0)  # [B·H, T]
  chunk = query_chunk(1, 1, t)

  def one_head(args):
    qh, kh, vh, mh = args
    attend = lambda qc: _attend_one_head(qc, kh, vh, mh, precision)
    return map_query_chunks(attend, qh, chunk, axis=0)

  out = jax.lax.map(one_head, (heads(q), heads(k), heads(v), masks))  # [B·H, T, C]
  return out.reshape(b, h, t, c).transpose(0, 2, 1, 3)


def attention(q, k, v, key_mask, precision):
  """Multi-head attention output [B, T, H, C] of q, k, v [B, T, H, C] (probabilities not
  returned): head by head on CPU; batched elsewhere (accelerators run all heads at once),
  in query chunks when the logits exceed ``ATTENTION_CHUNK_BYTES``."""
  if jax.default_backend() == 'cpu':
    return head_by_head_attention(q, k, v, key_mask, precision)
  chunk = query_chunk(q.shape[0], q.shape[2], q.shape[1])
  if chunk >= q.shape[1]:
    return _attend(q, k, v, key_mask, precision)[0]
  return chunked_attention(q, k, v, key_mask, precision, chunk)


class Attention(nn.Module):
  """Multi-head self-attention; returns (output, qkv, attention probabilities or None).

  The probabilities are materialised only ``with_attention`` and when the logits fit
  ``ATTENTION_CHUNK_BYTES``; otherwise ``attention`` runs (head by head on CPU, in query
  chunks above the budget) and they are None.
  """

  num_heads: int
  precision: Any = 'highest'

  @nn.compact
  def __call__(self, x, key_mask=None, with_attention=False):
    b, t, d = x.shape
    hd = d // self.num_heads
    qkv = dense(3 * d, self.precision, 'qkv')(x)
    q, k, v = (qkv[..., i * d : (i + 1) * d].reshape(b, t, self.num_heads, hd) for i in range(3))
    if with_attention and query_chunk(b, self.num_heads, t) >= t:
      out, attn = _attend(q, k, v, key_mask, self.precision)
    else:
      out, attn = attention(q, k, v, key_mask, self.precision), None
    out = dense(d, self.precision, 'proj')(out.reshape(b, t, d))
    return out, qkv, attn


class Mlp(nn.Module):
  hidden: int
  precision: Any = 'highest'

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    x = dense(self.hidden, self.precision, 'fc1')(x)
    x = jax.nn.gelu(x, approximate=False)
    return dense(d, self.precision, 'fc2')(x)


class Block(nn.Module):
  num_heads: int
  precision: Any = 'highest'

  @nn.compact
  def __call__(self, x, key_mask=None, with_attention=False):
    attn_out, qkv, attn = Attention(self.num_heads, self.precision, name='attn')(
      TorchLayerNorm(name='norm1')(x), key_mask, with_attention
    )
    x = x + attn_out
    x = x + Mlp(4 * x.shape[-1], self.precision, name='mlp')(TorchLayerNorm(name='norm2')(x))
    return x, qkv, attn


def patchify(images, patch_size: int):
  """[B, H, W, C] → [B, h·w, P, P, C] patches in row-major grid order (numpy or jax)."""
  b, height, width, c = images.shape
  p = patch_size
  if height % p or width % p:
    raise ValueError(
      f'image size {(height, width)} is not a multiple of patch size {p}; '
      'crop with crop_to_patches() first'
    )
  patches = images.reshape(b, height // p, p, width // p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return patches.reshape(b, (height // p) * (width // p), p, p, c)


class PatchEmbed(nn.Module):
  """Conv2d(kernel = stride = P) as a matmul over patches [B, L, P, P, C] → [B, L, D]."""

  patch_size: int
  embed_dim: int
  precision: Any = 'highest'

  @nn.compact
  def __call__(self, patches):
    p, c = self.patch_size, patches.shape[-1]
    kernel = self.param('kernel', nn.initializers.lecun_normal(), (p, p, c, self.embed_dim))
    bias = self.param('bias', nn.initializers.zeros, (self.embed_dim,))
    return einsum('blijc,ijcd->bld', patches, kernel, self.precision) + bias


# ----------------------------------------------------------------------------------------------
# The forward the ViT family shares (DINO here, DINOv2, DINOv3)
# ----------------------------------------------------------------------------------------------


def patch_input(images, patch_size: int, positions, positions_name: str, crop: bool = False):
  """A forward's input → (patches [B, L, P, P, C], grid (h, w) or None).

  Images [B, H, W, C] are cut into their h·w patches (``crop``: the bottom/right remainder is
  dropped first, as a stride-P convolution does, instead of raising). Patch sequences
  [B, L, P, P, C] pass as they are, with grid None: their grids are not in the shape, so they
  need ``positions`` (the argument named ``positions_name``: tables or RoPE coordinates).
  """
  p = patch_size
  if images.ndim == 4:
    grid = (images.shape[1] // p, images.shape[2] // p)
    if crop:
      images = images[:, : grid[0] * p, : grid[1] * p]
    return patchify(images, p), grid
  if positions is None:
    raise ValueError(f'patch sequences need {positions_name} (their grids are not in the shape)')
  return images, None


def embed_patches(module: nn.Module, patches, patch_size: int, dim: int, precision):
  """``patch_embed`` of the patches and ``module``'s ``cls_token`` parameter (created in that
  order, inside ``module``'s compact call): (x [B, L, D], cls [B, 1, D] broadcast)."""
  x = PatchEmbed(patch_size, dim, precision, name='patch_embed')(patches)
  cls_token = module.param('cls_token', nn.initializers.zeros, (1, 1, dim))
  return x, jnp.broadcast_to(cls_token, (x.shape[0], 1, dim))


def run_blocks(x, block, n_blocks: int, block_index: int, prefix: int, norm, norm_blocks=()):
  """The block loop: ``x, tokens, extras = block(i, x)`` for i < ``n_blocks``.

  At ``block_index`` the ``tokens`` arrays [B, T, ...] go into the output without the
  ``prefix`` tokens (CLS, registers), and ``extras`` as they are; each block in
  ``norm_blocks`` (0-based) adds its patch tokens through the final ``norm`` (DINO's
  ``get_intermediate_layers(norm=True)``), listed as ``normed``. Returns (x, output dict).
  """
  out, normed = {}, {}
  for i in range(n_blocks):
    x, tokens, extras = block(i, x)
    if i == block_index:
      out.update({k: v[:, prefix:] for k, v in tokens.items()}, **extras)
    if i in norm_blocks:
      normed[i] = norm(x)[:, prefix:]
  if norm_blocks:
    out['normed'] = [normed[i] for i in norm_blocks]
  return x, out


def final_normed(out: dict, x, norm, prefix: int) -> dict:
  """DINOv2/v3's ``forward_features`` outputs: the final-normed patch tokens
  (``x_norm_patchtokens``, prefix dropped) and CLS token (``x_norm_clstoken``), added to out."""
  x = norm(x)
  out['x_norm_patchtokens'] = x[:, prefix:]
  out['x_norm_clstoken'] = x[:, 0]
  return out


def resample_table(pos_embed, rows, cols, precision='highest'):
  """[1, 1 + G², D] → [1, 1 + h·w, D]: the G × G patch table through ``rows [h, G]`` and
  ``cols [w, G]`` (separable resampling), the CLS row kept."""
  g, d = rows.shape[1], pos_embed.shape[-1]
  if all(isinstance(a, np.ndarray) for a in (pos_embed, rows, cols)):
    # On the host (the extractor's per-grid tables): numpy, in float64, so that no image size
    # compiles anything (eager jnp ops would compile per grid).
    table = pos_embed[0, 1:].reshape(g, g, d).astype(np.float64)
    table = np.einsum('wk,hkd->hwd', cols, np.einsum('hg,gkd->hkd', rows, table))
    return np.concatenate([pos_embed[:, :1], table.reshape(1, -1, d).astype(pos_embed.dtype)], 1)
  table = pos_embed[0, 1:].reshape(g, g, d)
  table = jnp.einsum('hg,gkd->hkd', rows, table, precision=precision)
  table = jnp.einsum('wk,hkd->hwd', cols, table, precision=precision)
  return jnp.concatenate([pos_embed[:, :1], table.reshape(1, -1, d)], axis=1)


class VisionTransformer(nn.Module):
  """DINO ViT. Input: normalised images [B, H, W, 3], H and W multiples of the patch size,
  or patch sequences [B, L, P, P, 3] (see ``patchify``) with ``pos_tables``.

  Returns a dict for ``feature_block`` (negative indices count from the end):
    q, k, v:  [B, L, D] qkv output of that block, heads concatenated, CLS dropped,
              row-major over the patch grid (DSM uses ``k`` of the last block);
    tokens:   [B, L, D] the block's output tokens, CLS dropped;
    attn:     [B, heads, 1 + L, 1 + L] the block's attention probabilities if
              ``with_attention`` and they fit ``ATTENTION_CHUNK_BYTES``, else None;
    cls:      [B, D] final-normed CLS token of the whole network (only if with_cls;
              blocks after ``feature_block`` run only then);
    normed:   the patch tokens [B, L, D] of each block in ``norm_blocks`` (0-based) through
              the final LayerNorm, as DINO's ``get_intermediate_layers`` (segmenter input).

  Images of any sizes share one compiled shape as patch sequences: each image's h·w patches
  first, zero patches after, ``pos_tables`` [B, 1 + L, D] (each image's own interpolated
  table; see ``models.extractor.position_inputs``) and ``token_mask`` [B, 1 + L] (True for
  CLS and real patches). Real tokens then equal the unpadded computation: attention is the
  only place tokens meet, and padded keys are masked out of it.
  """

  arch: ViTArch
  precision: Any = 'highest'

  @nn.compact
  def __call__(
    self,
    images,
    feature_block: int = -1,
    with_cls: bool = False,
    pos_tables=None,
    token_mask=None,
    norm_blocks: tuple[int, ...] = (),
    with_attention: bool = False,
  ):
    a = self.arch
    p = a.patch_size
    images, grid = patch_input(images, p, pos_tables, 'pos_tables')
    block_index = feature_block % a.depth

    x, cls_token = embed_patches(self, images, p, a.embed_dim, self.precision)
    pos_embed = self.param('pos_embed', nn.initializers.zeros, (1, 1 + a.num_pos, a.embed_dim))
    x = jnp.concatenate([cls_token, x], axis=1)
    if pos_tables is None:
      x = x + interpolate_pos_embed(
        pos_embed, grid, a.pretrained_grid, table_precision(self.precision)
      )
    else:
      x = x + pos_tables

    d = a.embed_dim
    last = a.depth - 1 if with_cls or norm_blocks else block_index
    norm = TorchLayerNorm(name='norm') if with_cls or norm_blocks else None

    def block(i, x):
      x, qkv, attn = Block(a.num_heads, self.precision, name=f'blocks_{i}')(
        x, token_mask, with_attention and i == block_index
      )
      tokens = dict(q=qkv[..., :d], k=qkv[..., d : 2 * d], v=qkv[..., 2 * d :], tokens=x)
      return x, tokens, dict(attn=attn)

    x, out = run_blocks(x, block, last + 1, block_index, 1, norm, norm_blocks)
    if with_cls:
      out['cls'] = norm(x)[:, 0]
    return out


def interpolate_pos_embed(pos_embed, grid_hw, pretrained_grid: int, precision='highest'):
  """DINO's ``interpolate_pos_encoding``: [1, 1+G², D] → [1, 1+h·w, D]."""
  if not posembed.needs_interpolation(grid_hw, pretrained_grid):
    return pos_embed
  rows, cols = posembed.interpolation_matrices(grid_hw, pretrained_grid)
  return resample_table(pos_embed, rows, cols, precision)


def crop_to_patches(image: np.ndarray, patch_size: int) -> np.ndarray:
  """Top-left crop [H, W, C] to multiples of the patch size (the official code crops)."""
  h = image.shape[0] // patch_size * patch_size
  w = image.shape[1] // patch_size * patch_size
  if h == 0 or w == 0:
    raise ValueError(f'image {image.shape[:2]} is smaller than one {patch_size}px patch')
  return image[:h, :w]


def normalize(image_uint8) -> jnp.ndarray:
  """ToTensor + Normalize(ImageNet) in float32, in torchvision's order of operations."""
  x = jnp.asarray(image_uint8, jnp.float32) / 255.0
  return (x - IMAGENET_MEAN) / IMAGENET_STD


def abstract_params(arch: ViTArch) -> Any:
  """Shapes of the parameter tree (no compute), for checkpoint validation."""
  model = VisionTransformer(arch)
  p = arch.patch_size
  dummy = jax.ShapeDtypeStruct((1, p, p, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, with_cls=True), dummy)
  return jax.tree.map(lambda s: tuple(s.shape), variables['params'])
