"""DeepLabV3+ on a DINO ViT: the self-training network of the official code (§7.3, ViT option).

Backbone: the DINO ViT (parameters named exactly as ``vit.VisionTransformer``,
so pretrained DINO params drop into ``params['backbone']``). Features are the
outputs of two blocks, each passed through the final LayerNorm with CLS
dropped, as DINO's ``get_intermediate_layers`` returns them: ``low_level`` =
block 8 of 12 (1-based; ``round(2·depth/3)`` in general) and ``out`` = the last
block. Both have stride P (16), so the ASPP rates are the output-stride-16
ones (6, 12, 18), i.e. the official (12, 24, 36) halved.

Head (torchvision/VainF DeepLabV3+): low-level 1×1 conv → 48 + BN + ReLU;
ASPP (1×1, three dilated 3×3, image pooling; 256 each; concat → 1×1 → 256 + BN
+ ReLU + dropout 0.5); concat [low, aspp] → 3×3 conv 256 + BN + ReLU → 1×1
conv → classes; logits bilinearly upsampled (half-pixel, = align_corners=False)
to the input. Head convs use PyTorch's ``kaiming_normal_`` (fan-in, gain √2).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from spectral_jax.models import vit

KAIMING = nn.initializers.variance_scaling(2.0, 'fan_in', 'normal')


def default_low_level_block(depth: int) -> int:
  """0-based index of the low-level block: block 8 of 12, i.e. round(2·depth/3) − 1."""
  return max(int(round(2 * depth / 3)) - 1, 0)


class ViTBackbone(nn.Module):
  """DINO ViT returning the final-normed patch tokens [B, h, w, D] of the given blocks."""

  arch: vit.ViTArch
  blocks: tuple[int, ...]
  precision: Any = 'highest'

  @nn.compact
  def __call__(self, images: jax.Array) -> list[jax.Array]:
    a = self.arch
    b, height, width, _ = images.shape
    p = a.patch_size
    grid = (height // p, width // p)
    patches = vit.patchify(images, p)  # raises for sizes that are not multiples of p
    # Parameter names and order match vit.VisionTransformer (DINO checkpoints load as-is).
    x = vit.PatchEmbed(p, a.embed_dim, self.precision, name='patch_embed')(patches)
    cls_token = self.param('cls_token', nn.initializers.zeros, (1, 1, a.embed_dim))
    pos_embed = self.param('pos_embed', nn.initializers.zeros, (1, 1 + a.num_pos, a.embed_dim))
    x = jnp.concatenate([jnp.broadcast_to(cls_token, (b, 1, a.embed_dim)), x], axis=1)
    x = x + vit.interpolate_pos_embed(pos_embed, grid, a.pretrained_grid, self.precision)
    norm = vit.TorchLayerNorm(name='norm')
    outs = {}
    for i in range(a.depth):  # all blocks exist so the parameter tree is the full DINO tree
      x, _, _ = vit.Block(a.num_heads, self.precision, name=f'blocks_{i}')(x)
      if i in self.blocks:
        outs[i] = norm(x)[:, 1:].reshape(b, grid[0], grid[1], a.embed_dim)
    return [outs[i] for i in self.blocks]


class ConvBNReLU(nn.Module):
  features: int
  kernel: int = 1
  dilation: int = 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = nn.Conv(
        self.features,
        (self.kernel, self.kernel),
        kernel_dilation=self.dilation,
        padding='SAME',
        use_bias=False,
        kernel_init=KAIMING,
    )(x)
    # PyTorch BatchNorm2d defaults: momentum 0.1 (= Flax 0.9), eps 1e-5.
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(x)
    return nn.relu(x)


class ASPP(nn.Module):
  rates: Sequence[int]
  features: int = 256
  dropout: float = 0.5

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    branches = [ConvBNReLU(self.features, 1)(x, train)]
    branches += [ConvBNReLU(self.features, 3, r)(x, train) for r in self.rates]
    pooled = ConvBNReLU(self.features, 1)(jnp.mean(x, axis=(1, 2), keepdims=True), train)
    branches.append(jnp.broadcast_to(pooled, x.shape[:3] + (self.features,)))  # 1×1 → h×w
    y = ConvBNReLU(self.features, 1)(jnp.concatenate(branches, -1), train)
    return nn.Dropout(self.dropout, deterministic=not train)(y)


class DeepLabV3Plus(nn.Module):
  """images [B, H, W, 3] (ImageNet-normalised, H, W multiples of P) → logits [B, H, W, C]."""

  arch: vit.ViTArch
  num_classes: int = 21
  aspp_rates: tuple[int, ...] = (6, 12, 18)
  channels: int = 256
  low_level_channels: int = 48
  dropout: float = 0.5
  low_level_block: Optional[int] = None  # 0-based; None = default_low_level_block(depth)
  precision: Any = 'highest'

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    depth = self.arch.depth
    low_block = (
        default_low_level_block(depth)
        if self.low_level_block is None
        else self.low_level_block % depth
    )
    low, out = ViTBackbone(self.arch, (low_block, depth - 1), self.precision, name='backbone')(
        images
    )
    x = ASPP(self.aspp_rates, self.channels, self.dropout, name='aspp')(out, train)
    low = ConvBNReLU(self.low_level_channels, 1, name='project')(low, train)
    # ViT features share one stride, so the official resize of x to low's size is a no-op.
    x = jnp.concatenate([low, x], -1)
    x = ConvBNReLU(self.channels, 3, name='classifier_conv')(x, train)
    logits = nn.Conv(self.num_classes, (1, 1), kernel_init=KAIMING, name='classifier')(x)
    b, height, width, _ = images.shape
    return jax.image.resize(logits, (b, height, width, self.num_classes), 'bilinear')


def model_spec(model: DeepLabV3Plus) -> dict[str, Any]:
  """JSON-able description saved with checkpoints (to say which model wrote them)."""
  spec = {
      f.name: getattr(model, f.name)
      for f in dataclasses.fields(model)
      if f.name not in ('parent', 'name')
  }
  spec['arch'] = dataclasses.asdict(model.arch)
  spec['aspp_rates'] = list(model.aspp_rates)
  return spec


@functools.partial(jax.jit, static_argnums=(0, 2))
def init_variables(model: DeepLabV3Plus, key: jax.Array, image_size: int = 224) -> dict:
  """Random variables {'params', 'batch_stats'} (input size only shapes the init trace)."""
  dummy = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  return dict(model.init({'params': key}, dummy, train=False))


def abstract_variables(model: DeepLabV3Plus, image_size: Optional[int] = None) -> Any:
  """Shape tree of ``init_variables`` without compute."""
  size = image_size or model.arch.patch_size
  return jax.eval_shape(init_variables, model, jax.random.PRNGKey(0), size)


def with_backbone(params: Mapping[str, Any], backbone_params: Mapping[str, Any]) -> dict:
  """``params`` with its backbone replaced by pretrained DINO params (shapes checked)."""
  check_compatible(shape_tree(backbone_params), shape_tree(params['backbone']), 'backbone')
  out = dict(params)
  out['backbone'] = jax.tree.map(jnp.asarray, backbone_params)
  return out


def shape_tree(tree: Any) -> Any:
  """Leaves → shape tuples (arrays, ShapeDtypeStructs and orbax metadata all have .shape)."""
  return jax.tree.map(lambda x: tuple(x.shape) if hasattr(x, 'shape') else np.shape(x), tree)


def _flat(tree: Any, prefix: str) -> dict[str, tuple[int, ...]]:
  leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: isinstance(x, tuple))[0]
  return {
      prefix + ''.join(f'/{getattr(k, "key", k)}' for k in path): tuple(v) for path, v in leaves
  }


def check_compatible(found: Any, expected: Any, prefix: str = 'params') -> None:
  """Raises ValueError naming every parameter whose shape (or presence) differs.

  ``found``/``expected``: trees of shape tuples (checkpoint vs model).
  """
  f, e = _flat(found, prefix), _flat(expected, prefix)
  problems = [
      f'{k}: checkpoint has shape {f[k]}, model expects {e[k]}'
      for k in sorted(f.keys() & e.keys())
      if f[k] != e[k]
  ]
  problems += [
      f'{k}: missing from checkpoint (model expects {e[k]})' for k in sorted(e.keys() - f.keys())
  ]
  problems += [
      f'{k}: in checkpoint {f[k]} but not in the model' for k in sorted(f.keys() - e.keys())
  ]
  if problems:
    shown = problems[:10] + ([f'… and {len(problems) - 10} more'] if len(problems) > 10 else [])
    raise ValueError('checkpoint was written by a different architecture:\n  ' + '\n  '.join(shown))
