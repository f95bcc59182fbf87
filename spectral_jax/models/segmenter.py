"""DeepLabV3+ for self-training (official §7.3) on a DINO ViT or on DINO's dilated ResNet-50.

ResNet-50 backbone (the official default, ``model.name: resnet50``): torchvision's ResNet-50
with ``replace_stride_with_dilation=[False, True, True]`` and DINO's weights; ``low_level`` =
layer1 (256 channels, stride 4), ``out`` = layer4 (2048 channels, stride 8), ASPP rates
(12, 24, 36). Parameters and BatchNorm statistics are named exactly as ``resnet.ResNet``
(so ``backbones.load_backbone_params('dino_resnet50', ...)`` drops into
``params['backbone']`` / ``batch_stats['backbone']``). In train mode every BatchNorm, frozen
stages included, normalises with batch statistics and updates its running statistics, as
PyTorch's ``model.train()`` does; the optimiser leaves the frozen stages' parameters alone
(``frozen_backbone_modules``: conv1, bn1, layer1–3 for ``unfrozen_backbone_layers=1``). The
ASPP output (stride 8) is bilinearly resized to the low-level size (stride 4) before the
decoder. Any input size works (as in PyTorch); the ViT needs multiples of its patch size.

ViT backbone: a DINO, DINOv2 or DINOv3 ViT (parameters named exactly as the registry's
model, so pretrained params drop into ``params['backbone']``). Features are the outputs of
two blocks, each passed through the final LayerNorm with the prefix tokens (CLS, registers,
storage tokens) dropped, as ``get_intermediate_layers(norm=True)`` returns them:
``low_level`` = block 8 of 12 (1-based; ``round(2·depth/3)`` in general) and ``out`` = the
last block. Both have stride P (14 or 16), so the ASPP rates are the output-stride-16 ones
(6, 12, 18), i.e. the official (12, 24, 36) halved.

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

from spectral_jax.models import backbones, resnet

KAIMING = nn.initializers.variance_scaling(2.0, 'fan_in', 'normal')
# The backbone's children in torchvision order (what IntermediateLayerGetter keeps): the
# official freezing rule counts them from the end, parameter-free ones included.
RESNET_CHILDREN = ('conv1', 'bn1', 'relu', 'maxpool', 'layer1', 'layer2', 'layer3', 'layer4')


def default_low_level_block(depth: int) -> int:
  """0-based index of the low-level block: block 8 of 12, i.e. round(2·depth/3) − 1."""
  return max(int(round(2 * depth / 3)) - 1, 0)


def vit_features(arch: Any, precision: Any, images: jax.Array, blocks: tuple[int, ...]):
  """Final-normed patch tokens [B, h, w, D] of ``blocks`` (prefix tokens dropped), from the
  backbone module named 'backbone' (parameters named exactly as the registry's DINO, DINOv2
  or DINOv3 model, so their pretrained params drop into ``params['backbone']``). Call inside a
  compact module."""
  b, height, width, _ = images.shape
  p = arch.patch_size
  grid = (height // p, width // p)
  model = backbones.build_model(arch, precision, name='backbone')  # raises for other sizes
  normed = model(images, norm_blocks=blocks)['normed']
  return [x.reshape(b, grid[0], grid[1], x.shape[-1]) for x in normed]


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


def default_aspp_rates(arch: Any) -> tuple[int, ...]:
  """Official rates by output stride: (12, 24, 36) at 8 (the ResNet), (6, 12, 18) at 16.

  The ViT head keeps (6, 12, 18) for every patch size (its stride-16 default).
  """
  if isinstance(arch, resnet.ResNetArch) and arch.output_stride == 8:
    return (12, 24, 36)
  return (6, 12, 18)


class DeepLabV3Plus(nn.Module):
  """images [B, H, W, 3] (ImageNet-normalised) → logits [B, H, W, C].

  ``arch``: a ViT architecture of the registry (``vit.ViTArch``, ``dinov2.DinoV2Arch``,
  ``dinov3.DinoV3Arch``; H, W multiples of P) or a ``resnet.ResNetArch`` (any H, W).
  """

  arch: Any  # a registry ViT architecture | resnet.ResNetArch
  num_classes: int = 21
  aspp_rates: tuple[int, ...] = (6, 12, 18)
  channels: int = 256
  low_level_channels: int = 48
  dropout: float = 0.5
  low_level_block: Optional[int] = None  # ViT, 0-based; None = default_low_level_block(depth)
  precision: Any = 'highest'
  unfrozen_backbone_layers: int = 1  # ResNet: trained last children (< 0: all); ViT: ignored

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    if isinstance(self.arch, resnet.ResNetArch):
      maps = resnet.ResNet(self.arch, self.precision, name='backbone')(images, train)
      low, out = maps['low_level'], maps['features']
    else:
      depth = self.arch.depth
      low_block = (
        default_low_level_block(depth)
        if self.low_level_block is None
        else self.low_level_block % depth
      )
      low, out = vit_features(self.arch, self.precision, images, (low_block, depth - 1))
    x = ASPP(self.aspp_rates, self.channels, self.dropout, name='aspp')(out, train)
    low = ConvBNReLU(self.low_level_channels, 1, name='project')(low, train)
    if x.shape[1:3] != low.shape[1:3]:  # ResNet: stride 8 → 4 (ViT: one stride, no-op)
      x = jax.image.resize(x, x.shape[:1] + low.shape[1:3] + x.shape[3:], 'bilinear')
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
  spec['backbone'] = 'dino_resnet50' if is_resnet(model) else 'vit'
  spec['aspp_rates'] = list(model.aspp_rates)
  return spec


def is_resnet(model: DeepLabV3Plus) -> bool:
  return isinstance(model.arch, resnet.ResNetArch)


def input_multiple(model: DeepLabV3Plus) -> int:
  """Evaluation crops images top-left to multiples of this: P for the ViT, 1 for the ResNet
  (which, as officially, runs at the original resolution)."""
  return 1 if is_resnet(model) else model.arch.patch_size


def frozen_backbone_modules(model: DeepLabV3Plus) -> tuple[str, ...]:
  """Top-level names in ``params['backbone']`` that the optimiser never changes.

  Official rule (``unfrozen_backbone_layers``, default 1): every backbone child but the last
  n is frozen. ResNet children: conv1, bn1, relu, maxpool, layer1–4, so n = 1 freezes
  conv1, bn1 and layer1–3 (n < 0 freezes nothing, 0 everything). The ViT wrapper is a single
  child: nothing frozen. Their BatchNorm statistics still update in train mode.
  """
  if not is_resnet(model) or model.unfrozen_backbone_layers < 0:
    return ()
  children = RESNET_CHILDREN[: max(len(RESNET_CHILDREN) - model.unfrozen_backbone_layers, 0)]
  names: list[str] = []
  for child in children:
    if child in ('conv1', 'bn1'):
      names.append(child)
    elif child.startswith('layer'):
      stage = int(child[5:])
      names += [f'{child}_{i}' for i in range(model.arch.layers[stage - 1])]
  return tuple(names)


@functools.partial(jax.jit, static_argnums=(0, 2))
def _init_jit(model: DeepLabV3Plus, key: jax.Array, image_size: int) -> dict:
  dummy = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  return dict(model.init({'params': key}, dummy, train=False))


def init_variables(model: DeepLabV3Plus, key: jax.Array, image_size: int = 224) -> dict:
  """Random variables {'params', 'batch_stats'} (input size only shapes the init trace).

  The ResNet model is initialised on the host (``_host_init``): XLA's CPU compile of ~60
  fused random initialisers takes minutes, numpy takes a second.
  """
  if is_resnet(model):
    return _host_init(abstract_variables(model, image_size), key)
  return _init_jit(model, key, image_size)


def _host_init(shapes: Mapping[str, Any], key: jax.Array) -> dict:
  """PyTorch's initialisation of the official ResNet DeepLabV3+, drawn with numpy.

  Head convs: ``kaiming_normal_`` (fan-in, gain √2; the official ``_init_weight``), their
  biases PyTorch's default U(±1/√fan_in); backbone convs: torchvision's ResNet init
  (kaiming normal, fan-out); BatchNorm scale 1, bias 0, running mean 0, var 1. The
  backbone values only matter without pretrained weights. ``key``: a PRNGKey (uint32[2]).
  """
  rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())

  def init(path, leaf):
    keys = [str(getattr(k, 'key', k)) for k in path]
    shape, name = tuple(leaf.shape), keys[-1]
    if keys[0] == 'batch_stats':
      value = np.zeros(shape) if name == 'mean' else np.ones(shape)
    elif name == 'kernel':
      fan_in, fan_out = int(np.prod(shape[:-1])), shape[-1] * int(np.prod(shape[:-2]))
      fan = fan_out if keys[1] == 'backbone' else fan_in
      value = rng.normal(0.0, np.sqrt(2.0 / fan), shape)
    elif name == 'scale':
      value = np.ones(shape)
    else:  # bias: of a conv (beside a kernel) or of a BatchNorm (beside a scale)
      value = np.zeros(shape)
      parent = shapes[keys[0]]
      for k in keys[1:-1]:
        parent = parent[k]
      if 'kernel' in parent:
        bound = 1.0 / np.sqrt(np.prod(parent['kernel'].shape[:-1]))
        value = rng.uniform(-bound, bound, shape)
    return jnp.asarray(value, leaf.dtype)

  return dict(jax.tree_util.tree_map_with_path(init, dict(shapes)))


def abstract_variables(model: DeepLabV3Plus, image_size: Optional[int] = None) -> Any:
  """Shape tree of ``init_variables`` without compute."""
  size = image_size or model.arch.patch_size
  return jax.eval_shape(_init_jit, model, jax.random.PRNGKey(0), size)


def with_backbone(params: Mapping[str, Any], backbone_params: Mapping[str, Any]) -> dict:
  """``params`` with its backbone replaced by pretrained DINO params (shapes checked)."""
  check_compatible(shape_tree(backbone_params), shape_tree(params['backbone']), 'backbone')
  out = dict(params)
  out['backbone'] = jax.tree.map(jnp.asarray, backbone_params)
  return out


def with_backbone_variables(
  variables: Mapping[str, Any], backbone_variables: Mapping[str, Any]
) -> dict:
  """``variables`` {'params', 'batch_stats'} with every backbone collection replaced by the
  pretrained one (``backbone_variables``: {'params'} for a ViT, + 'batch_stats' for the
  ResNet, as ``backbones.load_backbone_params`` returns them); shapes checked."""
  expected = {c for c, tree in variables.items() if 'backbone' in tree}
  if set(backbone_variables) != expected:
    raise ValueError(
      f"pretrained backbone has collections {sorted(backbone_variables)}, the segmenter's "
      f'backbone {sorted(expected)}'
    )
  out = {c: dict(tree) for c, tree in variables.items()}
  for collection, tree in backbone_variables.items():
    check_compatible(
      shape_tree(tree), shape_tree(out[collection]['backbone']), f'{collection}/backbone'
    )
    out[collection]['backbone'] = jax.tree.map(jnp.asarray, tree)
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
