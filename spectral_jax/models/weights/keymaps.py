"""Checkpoint key maps: official ``.pth`` and Hugging Face names → Flax parameter trees.

Official files (protocol §2.4, §3.5, §4.3) map directly; Hugging Face folders
(``config.json`` + ``model.safetensors``, protocol §5) are first renamed to the official
names (``hf_to_official``), so one converter per family serves both. Architectures are read
from the tensors (depth, width, registers, FFN kind and width, ResNet blocks per stage).
Every conversion is strict: unknown tensors are errors, and ``check_tree`` compares the
result with the model's own parameter shapes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from spectral_jax.models import dinov2, dinov3, resnet, vit
from spectral_jax.models.weights.checkpoints import CheckpointError, read_state_dict

_CONV_PERM = (2, 3, 1, 0)  # torch (O, I, kh, kw) -> flax (kh, kw, I, O)
_HEAD_DIM = 64  # every DINO / DINOv2 / DINOv3 ViT in the registry


def _set(tree: dict, path: tuple[str, ...], value: np.ndarray) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = np.ascontiguousarray(value, np.float32)


def _blocks(sd: Mapping[str, Any], pattern: str) -> list[int]:
  return sorted({int(m.group(1)) for k in sd if (m := re.match(pattern, k))})


# --------------------------------------------------------------------------
# ViTs: official names
# --------------------------------------------------------------------------

_TOP_TOKENS = ('cls_token', 'pos_embed', 'register_tokens', 'storage_tokens')
_DENSE = ('attn.qkv', 'attn.proj', 'mlp.fc1', 'mlp.fc2', 'mlp.w12', 'mlp.w1', 'mlp.w2', 'mlp.w3')
# Used only in training: masked-image modelling, and DINOv3's separate local-crop CLS norm.
_IGNORED = re.compile(r'mask_token|local_cls_norm\..*')


def vit_to_flax(sd: Mapping[str, np.ndarray], mask_k_bias: bool = False) -> dict[str, Any]:
  """Official DINO / DINOv2 / DINOv3 ViT state dict → Flax params (vit.py / dinov2 / dinov3).

  ``attn.qkv.bias_mask`` buffers are folded into the bias (the official layer multiplies
  them); with ``mask_k_bias`` (DINOv3) a missing mask means the key third is zeroed anyway.
  """
  params: dict[str, Any] = {}
  unknown = []
  for name, value in sd.items():
    value = np.asarray(value)
    if _IGNORED.fullmatch(name) or name.endswith('attn.qkv.bias_mask'):
      continue
    if name in _TOP_TOKENS:
      _set(params, (name,), value)
    elif name == 'rope_embed.periods':
      _set(params, ('rope_periods',), value)
    elif name == 'patch_embed.proj.weight':
      _set(params, ('patch_embed', 'kernel'), value.transpose(_CONV_PERM))
    elif name == 'patch_embed.proj.bias':
      _set(params, ('patch_embed', 'bias'), value)
    elif m := re.fullmatch(r'norm\.(weight|bias)', name):
      _set(params, ('norm', 'scale' if m.group(1) == 'weight' else 'bias'), value)
    elif m := re.fullmatch(r'blocks\.(\d+)\.(.+)\.(weight|bias|gamma)', name):
      block, module, kind = f'blocks_{m.group(1)}', m.group(2), m.group(3)
      if module in ('norm1', 'norm2') and kind != 'gamma':
        _set(params, (block, module, 'scale' if kind == 'weight' else 'bias'), value)
      elif module in ('ls1', 'ls2') and kind == 'gamma':
        _set(params, (block, module, 'gamma'), value)
      elif module in _DENSE and kind == 'weight':
        _set(params, (block, *module.split('.'), 'kernel'), value.T)
      elif module in _DENSE and kind == 'bias':
        if module == 'attn.qkv':
          value = value * _qkv_bias_mask(sd, m.group(1), value.shape[0], mask_k_bias)
        _set(params, (block, *module.split('.'), 'bias'), value)
      else:
        unknown.append(name)
    else:
      unknown.append(name)
  if unknown:
    raise CheckpointError(f'checkpoint has tensors this ViT does not have: {", ".join(unknown)}')
  return params


def _qkv_bias_mask(sd, block: str, size: int, mask_k_bias: bool) -> np.ndarray:
  mask = sd.get(f'blocks.{block}.attn.qkv.bias_mask')
  if mask is not None:
    return np.asarray(mask, np.float32)
  mask = np.ones(size, np.float32)
  if mask_k_bias:
    mask[size // 3 : 2 * size // 3] = 0.0
  return mask


def _vit_dims(sd: Mapping[str, np.ndarray]) -> tuple[int, int, int]:
  try:
    patch = int(sd['patch_embed.proj.weight'].shape[-1])
    dim = int(sd['cls_token'].shape[-1])
  except KeyError as e:
    raise CheckpointError(f'not a ViT state dict: no {e}') from e
  return patch, dim, len(_blocks(sd, r'blocks\.(\d+)\.'))


def dino_arch(sd: Mapping[str, np.ndarray]) -> vit.ViTArch:
  """DINO (v1) ViT architecture of an official state dict."""
  patch, dim, depth = _vit_dims(sd)
  return vit.ViTArch(patch, dim, dim // _HEAD_DIM, depth, int(sd['pos_embed'].shape[1]) - 1)


def dinov2_arch(sd: Mapping[str, np.ndarray], num_heads: int | None = None) -> dinov2.DinoV2Arch:
  """DINOv2 architecture of an official state dict, with the hub's resampling settings."""
  patch, dim, depth = _vit_dims(sd)
  registers = int(sd['register_tokens'].shape[1]) if 'register_tokens' in sd else 0
  grid = int(round(np.sqrt(sd['pos_embed'].shape[1] - 1)))
  if 'blocks.0.mlp.w12.weight' in sd:
    ffn, hidden = 'swiglufused', int(sd['blocks.0.mlp.w12.weight'].shape[0]) // 2
  else:
    ffn, hidden = 'mlp', int(sd['blocks.0.mlp.fc1.weight'].shape[0])
  return dinov2.DinoV2Arch(
    patch_size=patch,
    embed_dim=dim,
    num_heads=num_heads or dim // _HEAD_DIM,
    depth=depth,
    num_registers=registers,
    ffn=ffn,
    ffn_hidden=hidden,
    pos_grid=grid,
    interpolate_antialias=registers > 0,
    interpolate_offset=0.0 if registers else 0.1,
  )


def dinov3_arch(
  sd: Mapping[str, np.ndarray], num_heads: int | None = None, norm_eps: float = 1e-5
) -> dinov3.DinoV3Arch:
  """DINOv3 architecture of an official state dict."""
  patch, dim, depth = _vit_dims(sd)
  if 'blocks.0.mlp.w1.weight' in sd:
    ffn, hidden = 'swiglu', int(sd['blocks.0.mlp.w1.weight'].shape[0])
  else:
    ffn, hidden = 'mlp', int(sd['blocks.0.mlp.fc1.weight'].shape[0])
  heads = num_heads or dim // _HEAD_DIM
  if 'rope_embed.periods' in sd and sd['rope_embed.periods'].shape[0] * 4 * heads != dim:
    raise CheckpointError('rope_embed.periods does not fit head_dim / 4 for this width')
  return dinov3.DinoV3Arch(
    patch_size=patch,
    embed_dim=dim,
    num_heads=heads,
    depth=depth,
    num_storage=int(sd['storage_tokens'].shape[1]),
    ffn=ffn,
    ffn_hidden=hidden,
    norm_eps=norm_eps,
  )


# --------------------------------------------------------------------------
# ResNet
# --------------------------------------------------------------------------


def resnet_arch(sd: Mapping[str, np.ndarray]) -> resnet.ResNetArch:
  """Blocks per stage from the keys (the dilation is DSM's output stride 8)."""
  layers = tuple(len(_blocks(sd, rf'layer{s}\.(\d+)\.')) for s in range(1, 5))
  if 0 in layers:
    raise CheckpointError(f'not a ResNet state dict (blocks per stage {layers})')
  return resnet.ResNetArch(layers)


_BN_FIELDS = {
  'weight': ('params', 'scale'),
  'bias': ('params', 'bias'),
  'running_mean': ('batch_stats', 'mean'),
  'running_var': ('batch_stats', 'var'),
}


def resnet_to_flax(sd: Mapping[str, np.ndarray]) -> dict[str, Any]:
  """torchvision ResNet state dict → ``{'params', 'batch_stats'}`` for ``resnet.ResNet``.

  ``fc.*`` (absent from DINO's file) and ``num_batches_tracked`` are ignored; anything else
  unknown is an error (the official hub loads non-strictly and would keep random weights).
  """
  variables: dict[str, Any] = {'params': {}, 'batch_stats': {}}
  unknown = []
  for name, value in sd.items():
    value = np.asarray(value)
    if name.startswith('fc.') or name.endswith('num_batches_tracked'):
      continue
    m = re.fullmatch(r'(?:layer(\d)\.(\d+)\.)?(.+)\.(weight|bias|running_mean|running_var)', name)
    if m is None:
      unknown.append(name)
      continue
    stage, block, module, field = m.groups()
    prefix = (f'layer{stage}_{block}',) if stage else ()
    module = {'downsample.0': 'downsample_conv', 'downsample.1': 'downsample_bn'}.get(
      module, module
    )
    if not re.fullmatch(r'conv[123]|bn[123]|downsample_(conv|bn)', module) or (
      stage is None and module not in ('conv1', 'bn1')
    ):
      unknown.append(name)
    elif 'conv' in module and field == 'weight':
      _set(variables['params'], (*prefix, module, 'kernel'), value.transpose(_CONV_PERM))
    elif 'bn' in module:
      collection, leaf = _BN_FIELDS[field]
      _set(variables[collection], (*prefix, module, leaf), value)
    else:
      unknown.append(name)
  if unknown:
    raise CheckpointError(f'checkpoint has tensors a ResNet does not have: {", ".join(unknown)}')
  return variables


# --------------------------------------------------------------------------
# Hugging Face folders
# --------------------------------------------------------------------------

HF_MODEL_TYPES = {
  'dinov2': 'dinov2',
  'dinov2_with_registers': 'dinov2',
  'dinov3_vit': 'dinov3',
  'vit': 'dino',
}
# Prefixes of task models (e.g. Dinov2ForImageClassification) around the backbone.
_HF_PREFIXES = ('dinov2.', 'dinov2_with_registers.', 'dinov3_vit.', 'vit.', 'model.')


def is_hf_folder(path: str | Path) -> bool:
  return Path(path).is_dir() and (Path(path) / 'config.json').is_file()


def read_hf_folder(path: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """(config, state dict) of a Hugging Face model folder, as saved by ``save_pretrained``."""
  path = Path(path)
  config = json.loads((path / 'config.json').read_text())
  index = path / 'model.safetensors.index.json'
  if index.is_file():  # sharded (large models)
    files = sorted(set(json.loads(index.read_text())['weight_map'].values()))
  elif (path / 'model.safetensors').is_file():
    files = ['model.safetensors']
  elif (path / 'pytorch_model.bin').is_file():
    files = ['pytorch_model.bin']
  else:
    raise CheckpointError(f'{path}: no model.safetensors (or pytorch_model.bin) beside config.json')
  sd: dict[str, np.ndarray] = {}
  for name in files:
    sd.update(_read_weights(path / name))
  return config, sd


def _read_weights(file: Path) -> dict[str, np.ndarray]:
  if file.suffix == '.safetensors':
    from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel

    try:
      return {k: np.asarray(v, np.float32) for k, v in load_file(str(file)).items()}
    except (TypeError, ValueError):  # bfloat16 has no numpy dtype: the local reader widens it
      pass
  return dict(read_state_dict(file))


def _strip_hf_prefix(name: str) -> str:
  for prefix in _HF_PREFIXES:
    if name.startswith(prefix):
      return name[len(prefix) :]
  return name


def _concat_qkv(sd, layer: str, names: tuple[str, str, str], dim: int, kind: str) -> np.ndarray:
  parts = []
  for n in names:
    t = sd.pop(f'{layer}.{n}.{kind}', None)
    if t is None and kind == 'bias':  # e.g. DINOv3's k_proj has no bias: zero is the same
      t = np.zeros(dim, np.float32)
    elif t is None:
      raise CheckpointError(f'Hugging Face checkpoint lacks {layer}.{n}.{kind}')
    parts.append(np.asarray(t, np.float32))
  return np.concatenate(parts, axis=0)


# (HF module under a layer, official module under blocks.N) per model type
_HF_LAYER_MODULES = {
  'dinov2': {
    'norm1': 'norm1',
    'norm2': 'norm2',
    'attention.output.dense': 'attn.proj',
    'layer_scale1': 'ls1',
    'layer_scale2': 'ls2',
    'mlp.fc1': 'mlp.fc1',
    'mlp.fc2': 'mlp.fc2',
    'mlp.weights_in': 'mlp.w12',
    'mlp.weights_out': 'mlp.w3',
  },
  'dino': {
    'layernorm_before': 'norm1',
    'layernorm_after': 'norm2',
    'attention.output.dense': 'attn.proj',
    'intermediate.dense': 'mlp.fc1',
    'output.dense': 'mlp.fc2',
  },
  'dinov3': {
    'norm1': 'norm1',
    'norm2': 'norm2',
    'attention.o_proj': 'attn.proj',
    'layer_scale1': 'ls1',
    'layer_scale2': 'ls2',
  },
}
_HF_EMBEDDINGS = {
  'embeddings.cls_token': 'cls_token',
  'embeddings.mask_token': 'mask_token',
  'embeddings.position_embeddings': 'pos_embed',
  'embeddings.patch_embeddings.projection.weight': 'patch_embed.proj.weight',
  'embeddings.patch_embeddings.projection.bias': 'patch_embed.proj.bias',
  'embeddings.patch_embeddings.weight': 'patch_embed.proj.weight',  # DINOv3
  'embeddings.patch_embeddings.bias': 'patch_embed.proj.bias',
  'layernorm.weight': 'norm.weight',
  'layernorm.bias': 'norm.bias',
  'norm.weight': 'norm.weight',  # DINOv3
  'norm.bias': 'norm.bias',
}


def hf_to_official(config: Mapping[str, Any], hf_sd: Mapping[str, np.ndarray]) -> dict[str, Any]:
  """Rename a Hugging Face ViT state dict to the official names (protocol §5).

  q/k/v (``query/key/value`` or DINOv3's ``q_proj/k_proj/v_proj``) are concatenated into
  ``qkv``; DINOv3's RoPE periods, not saved by transformers, are recomputed from
  ``rope_theta`` as the official model does at construction.
  """
  model_type = config.get('model_type')
  family = HF_MODEL_TYPES.get(model_type)
  if family is None:
    raise CheckpointError(
      f'Hugging Face model_type {model_type!r} is not supported; expected one of '
      f'{sorted(HF_MODEL_TYPES)}'
    )
  sd = {_strip_hf_prefix(k): v for k, v in hf_sd.items()}
  dim = int(config['hidden_size'])
  out: dict[str, Any] = {}
  layer_prefix = 'layer.' if family == 'dinov3' else 'encoder.layer.'
  layer_re = re.escape(layer_prefix) + r'(\d+)\.'
  modules = dict(_HF_LAYER_MODULES[family])
  if family == 'dinov3':
    gated = any('.mlp.gate_proj.' in k for k in sd)
    modules.update(
      {'mlp.gate_proj': 'mlp.w1', 'mlp.up_proj': 'mlp.w2', 'mlp.down_proj': 'mlp.w3'}
      if gated
      else {'mlp.up_proj': 'mlp.fc1', 'mlp.down_proj': 'mlp.fc2'}
    )
    qkv_names = ('attention.q_proj', 'attention.k_proj', 'attention.v_proj')
  else:
    qkv_names = tuple(f'attention.attention.{n}' for n in ('query', 'key', 'value'))
  for n in _blocks(sd, layer_re):
    layer = f'{layer_prefix}{n}'
    for kind in ('weight', 'bias'):
      out[f'blocks.{n}.attn.qkv.{kind}'] = _concat_qkv(sd, layer, qkv_names, dim, kind)
  unknown = []
  for name, value in sd.items():
    if name in _HF_EMBEDDINGS:
      out[_HF_EMBEDDINGS[name]] = value
    elif name == 'embeddings.register_tokens':
      out['storage_tokens' if family == 'dinov3' else 'register_tokens'] = value
    elif name.startswith(('pooler.', 'classifier.')):
      continue
    elif m := re.fullmatch(layer_re + r'(.+)\.(weight|bias|lambda1)', name):
      module = modules.get(m.group(2))
      if module is None:
        unknown.append(name)
      else:
        kind = 'gamma' if m.group(3) == 'lambda1' else m.group(3)
        out[f'blocks.{m.group(1)}.{module}.{kind}'] = value
    else:
      unknown.append(name)
  if unknown:
    raise CheckpointError(f'unknown tensors in the Hugging Face checkpoint: {", ".join(unknown)}')
  if family == 'dinov3':
    hd = dim // int(config['num_attention_heads'])
    base = float(config.get('rope_theta', 100.0))
    out['rope_embed.periods'] = (
      base ** (2 * np.arange(hd // 4, dtype=np.float32) / (hd // 2))
    ).astype(np.float32)
  return out


# --------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------


def _flatten(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      flat.update(_flatten(value, prefix + (key,)))
    else:
      flat[prefix + (key,)] = value
  return flat


def check_tree(got: Mapping[str, Any], expected: Mapping[str, Any], what: str = 'checkpoint'):
  """Raise CheckpointError listing missing, unexpected and mis-shaped leaves (Flax paths)."""
  got_flat, exp_flat = _flatten(got), _flatten(expected)
  problems = []
  for path, shape in exp_flat.items():
    shape = tuple(getattr(shape, 'shape', shape))
    if path not in got_flat:
      problems.append(f'{"/".join(path)}: missing, model expects {shape}')
    elif tuple(np.shape(got_flat[path])) != shape:
      problems.append(
        f'{"/".join(path)}: {what} has {np.shape(got_flat[path])}, model expects {shape}'
      )
  for path in got_flat.keys() - exp_flat.keys():
    problems.append(f'{"/".join(path)}: unexpected in {what}')
  if problems:
    raise CheckpointError(f'{what} does not match the model:\n  ' + '\n  '.join(sorted(problems)))
