"""One registry of the feature backbones: DINO ViTs, DINOv2 (± registers), DINOv3, ResNet-50.

``BACKBONES[name]`` says how to build the model, how many pixels make a feature cell, how
wide the features are, how many prefix tokens to drop and where the official weights live.
``load_backbone_params(name, checkpoint)`` reads an official ``.pth`` (or a Hugging Face
folder) into ``(arch, variables)``; ``features(arch, variables, image)`` runs the model on
one uint8 image the way DSM does (top-left crop to a multiple of the cell size, ImageNet
normalisation, no resize).
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from spectral_jax.models import dinov2, dinov3, resnet, vit
from spectral_jax.models.weights import keymaps
from spectral_jax.models.weights.checkpoints import CheckpointError, read_state_dict

__all__ = [
  'Backbone',
  'BACKBONES',
  'get_backbone',
  'build_model',
  'gated_error',
  'load_backbone_params',
  'features',
]

_APACHE = 'Apache-2.0 (code and weights)'
_DINOV3_LICENCE = (
  'DINOv3 License (code and weights; not an open-source licence: redistribution only under '
  'the same agreement, publications must acknowledge the DINO Materials)'
)
DINOV3_ACCESS_PAGE = 'https://ai.meta.com/resources/models-and-libraries/dinov3-downloads/'


@dataclasses.dataclass(frozen=True)
class Backbone:
  """A registry entry. ``arch`` is the full-size architecture; a checkpoint's own depth (and
  ResNet blocks per stage) replace it when loading."""

  name: str
  family: str  # 'dino' | 'dinov2' | 'dinov3' | 'resnet'
  constructor: Callable[[Any], nn.Module]  # arch -> Flax module
  arch: Any
  patch_size: int  # pixels per feature cell: images are cropped to a multiple of it
  embed_dim: int  # feature channels (keys of the last block; layer4 for the ResNet)
  num_heads: int  # 0 for the ResNet
  depth: int  # transformer blocks; bottleneck blocks for the ResNet
  num_prefix_tokens: int  # CLS + registers / storage tokens dropped from the features
  filename: str  # official file name
  url: str
  licence: str
  gated: bool = False  # weights need an access request: never downloaded automatically
  feature_key: str = 'k'  # the array DSM uses as features


def _dino(name, arch, filename):
  return Backbone(
      name, 'dino', vit.VisionTransformer, arch, arch.patch_size, arch.embed_dim,
      arch.num_heads, arch.depth, 1, filename,
      f'https://dl.fbaipublicfiles.com/dino/{filename[:-4]}/{filename}', _APACHE,
  )  # fmt: skip


def _dinov2(size, dim, depth, heads, registers):
  base = f'dinov2_vit{size}14'
  filename = f'{base}{"_reg4" if registers else ""}_pretrain.pth'
  arch = dinov2.hub_arch(dim, depth, heads, registers)
  return Backbone(
      base + ('_reg' if registers else ''), 'dinov2', dinov2.DinoV2, arch, 14, dim, heads,
      depth, arch.num_prefix_tokens, filename,
      f'https://dl.fbaipublicfiles.com/dinov2/{base}/{filename}', _APACHE,
  )  # fmt: skip


def _dinov3(size, dim, depth, heads, digest):
  plus = size.endswith('plus')
  name = f'dinov3_vit{size}'
  filename = f'{name}_pretrain_lvd1689m-{digest}.pth'
  arch = dinov3.hub_arch(dim, depth, heads, plus)
  return Backbone(
      name, 'dinov3', dinov3.DinoV3, arch, 16, dim, heads, depth, arch.num_prefix_tokens,
      filename, f'https://dl.fbaipublicfiles.com/dinov3/{name}/{filename}', _DINOV3_LICENCE,
      gated=True,
  )  # fmt: skip


_RESNET50 = Backbone(
    'dino_resnet50', 'resnet', resnet.ResNet, resnet.ResNetArch(), 8, 2048, 0, 16, 0,
    'dino_resnet50_pretrain.pth',
    'https://dl.fbaipublicfiles.com/dino/dino_resnet50_pretrain/dino_resnet50_pretrain.pth',
    _APACHE, feature_key='features',
)  # fmt: skip

BACKBONES: dict[str, Backbone] = {
    b.name: b
    for b in [
        _dino('dino_vits16', vit.ARCHS['dino_vits16'], 'dino_deitsmall16_pretrain.pth'),
        _dino('dino_vits8', vit.ARCHS['dino_vits8'], 'dino_deitsmall8_pretrain.pth'),
        _dino('dino_vitb16', vit.ARCHS['dino_vitb16'], 'dino_vitbase16_pretrain.pth'),
        _dino('dino_vitb8', vit.ARCHS['dino_vitb8'], 'dino_vitbase8_pretrain.pth'),
        *(
            _dinov2(size, dim, depth, heads, reg)
            for size, dim, depth, heads in [
                ('s', 384, 12, 6), ('b', 768, 12, 12), ('l', 1024, 24, 16), ('g', 1536, 40, 24)
            ]
            for reg in (False, True)
        ),
        _dinov3('s16', 384, 12, 6, '08c60483'),
        _dinov3('s16plus', 384, 12, 6, '4057cbaa'),
        _dinov3('b16', 768, 12, 12, '73cec8be'),
        _dinov3('l16', 1024, 24, 16, '8aa4cbdd'),
        _RESNET50,
    ]
}  # fmt: skip


def get_backbone(name: str) -> Backbone:
  try:
    return BACKBONES[name]
  except KeyError:
    raise ValueError(f'unknown backbone {name!r}; known: {", ".join(BACKBONES)}') from None


def build_model(arch: Any, precision: Any = 'highest', **module_kwargs) -> nn.Module:
  """The Flax module for an architecture object of any family (``module_kwargs``: e.g. the
  submodule ``name`` inside a parent module)."""
  for cls, module in (
    (vit.ViTArch, vit.VisionTransformer),
    (dinov2.DinoV2Arch, dinov2.DinoV2),
    (dinov3.DinoV3Arch, dinov3.DinoV3),
    (resnet.ResNetArch, resnet.ResNet),
  ):
    if isinstance(arch, cls):
      return module(arch, precision=precision, **module_kwargs)
  raise TypeError(f'not a backbone architecture: {arch!r}')


def gated_error(name: str) -> CheckpointError:
  """How to obtain gated weights (DINOv3): they are never downloaded or bundled."""
  b = get_backbone(name)
  return CheckpointError(
    f'{name}: the DINOv3 weights are gated and are not downloaded automatically. '
    f"Request access on Meta's DINOv3 page ({DINOV3_ACCESS_PAGE}, or the download form "
    'linked from github.com/facebookresearch/dinov3); the weights are under the '
    f'{b.licence}, not an open licence, so they cannot be re-hosted. Once accepted, '
    f'download {b.filename} from the link in the e-mail and pass the local file (a Hugging '
    'Face folder with config.json + model.safetensors also works).',
    'model.checkpoint',
    b.filename,
  )


def load_backbone_params(name: str, checkpoint: str | Path | None) -> tuple[Any, dict[str, Any]]:
  """Read an official ``.pth`` or a Hugging Face folder into ``(arch, variables)``.

  ``variables`` is what ``build_model(arch).apply`` takes: ``{'params': ...}`` (plus
  ``'batch_stats'`` for the ResNet). Depth, widths and registers come from the file and must
  agree with the registry entry (width, registers), so a wrong file for a name is an error.
  """
  b = get_backbone(name)
  if checkpoint is None:
    if b.gated:
      raise gated_error(name)
    raise CheckpointError(
      f'{name}: no checkpoint given; download {b.url} and pass it',
      'model.checkpoint',
      b.filename,
    )
  checkpoint = Path(checkpoint).expanduser()
  config = None
  if keymaps.is_hf_folder(checkpoint):
    config, hf_sd = keymaps.read_hf_folder(checkpoint)
    family = keymaps.HF_MODEL_TYPES.get(config.get('model_type'))
    if family != b.family:
      raise CheckpointError(
        f'{checkpoint}: Hugging Face model_type {config.get("model_type")!r} is not a '
        f'{b.family} model (backbone {name})'
      )
    sd = keymaps.hf_to_official(config, hf_sd)
  else:
    sd = read_state_dict(checkpoint)
  heads = int(config['num_attention_heads']) if config else None
  try:
    if b.family == 'resnet':
      arch, variables = keymaps.resnet_arch(sd), keymaps.resnet_to_flax(sd)
    elif b.family == 'dino':
      arch, variables = keymaps.dino_arch(sd), {'params': keymaps.vit_to_flax(sd)}
    elif b.family == 'dinov2':
      arch, variables = keymaps.dinov2_arch(sd, heads), {'params': keymaps.vit_to_flax(sd)}
    else:
      eps = float(config.get('layer_norm_eps', 1e-5)) if config else 1e-5
      arch = keymaps.dinov3_arch(sd, heads, eps)
      variables = {'params': keymaps.vit_to_flax(sd, mask_k_bias=True)}
  except KeyError as e:
    raise CheckpointError(f'{checkpoint}: not a {b.family} checkpoint (no {e})') from e
  _check_entry(b, arch, checkpoint)
  keymaps.check_tree(variables, _abstract_variables(arch), str(checkpoint))
  return arch, variables


def _check_entry(b: Backbone, arch: Any, source: Path) -> None:
  if b.family == 'resnet':
    return
  width = arch.embed_dim
  prefix = getattr(arch, 'num_prefix_tokens', 1)
  if (width, prefix, arch.patch_size) != (b.embed_dim, b.num_prefix_tokens, b.patch_size):
    raise CheckpointError(
      f'{source}: holds a ViT with width {width}, {prefix} prefix tokens and patch '
      f'{arch.patch_size}, but {b.name} has {b.embed_dim}, {b.num_prefix_tokens} and '
      f'{b.patch_size}: wrong file for this backbone name?'
    )


@functools.lru_cache(maxsize=32)
def _abstract_variables(arch: Any) -> dict[str, Any]:
  model = build_model(arch)
  p = cell_size(arch)
  dummy = jax.ShapeDtypeStruct((1, 2 * p, 2 * p, 3), jnp.float32)
  kwargs = {'with_cls': True} if isinstance(arch, vit.ViTArch) else {}
  shapes = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, **kwargs), dummy)
  return jax.tree.map(lambda s: tuple(s.shape), dict(shapes))


def cell_size(arch: Any) -> int:
  """Pixels per feature cell: the patch size, or the ResNet's output stride."""
  return arch.patch_size


def arch_for(name: str, variables: dict[str, Any]) -> Any:
  """The registry architecture of ``name`` with the depth of a converted parameter tree."""
  b = get_backbone(name)
  params = variables['params']
  if b.family == 'resnet':
    layers = tuple(sum(1 for k in params if k.startswith(f'layer{s}_')) for s in range(1, 5))
    return dataclasses.replace(b.arch, layers=layers)
  return dataclasses.replace(b.arch, depth=sum(1 for k in params if k.startswith('blocks_')))


@functools.lru_cache(maxsize=32)
def _forward(arch: Any, feature_block: int):
  model = build_model(arch)
  if isinstance(arch, vit.ViTArch):
    fn = lambda v, x: model.apply(v, x, feature_block=feature_block, with_cls=True)
  elif isinstance(arch, resnet.ResNetArch):
    fn = model.apply
  else:
    fn = lambda v, x: model.apply(v, x, feature_block=feature_block)
  return jax.jit(fn)


def features(
  backbone: str | Any, variables: dict[str, Any], image_uint8: np.ndarray, feature_block: int = -1
) -> dict[str, np.ndarray]:
  """Run a backbone on one RGB uint8 image [H, W, 3] as DSM does.

  Crops top-left to a multiple of the cell size (14 DINOv2, 16 DINOv3, 8 ResNet, the patch
  size for DINO), normalises with the ImageNet mean/std, and returns numpy arrays without
  the batch axis, rows row-major over the feature grid:
    ViTs:   k [h·w, D] (keys of ``feature_block``, prefix tokens dropped) and
            x_norm_patchtokens [h·w, D] (DINOv2/v3), k_rope [h·w, D] (DINOv3),
            q, v, tokens [h·w, D] (DINO), cls / x_norm_clstoken [D];
    ResNet: features [h·w, 2048] (layer4) and low_level [(2h)·(2w), 256] (layer1);
  plus grid (h, w).
  """
  arch = arch_for(backbone, variables) if isinstance(backbone, str) else backbone
  p = cell_size(arch)
  image = vit.crop_to_patches(np.asarray(image_uint8), p)
  x = vit.normalize(image)[None]
  out = _forward(arch, feature_block)(variables, x)
  result = {}
  for key, value in out.items():
    if key == 'attn':
      continue
    value = np.asarray(value[0])
    if value.ndim == 3:  # ResNet maps [h, w, C] → rows
      value = value.reshape(-1, value.shape[-1])
    result[key] = value
  result['grid'] = (image.shape[0] // p, image.shape[1] // p)
  return result
