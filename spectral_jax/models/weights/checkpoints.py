"""Loading DINO ViT checkpoints into Flax parameter trees, without torch: the public façade.

The pipeline is ``resolve_checkpoint`` (local path, URL or registry name ->
local file) -> ``read_state_dict`` (PyTorch zip / legacy / safetensors file ->
``{name: np.ndarray}``) -> ``state_dict_to_params`` (torch names and layouts ->
the nested dict used by ``spectral_jax.models.vit``). ``load_params`` runs the
whole pipeline once and caches the converted tree (an ``.npz``), so later runs
need neither the ``.pth`` file nor the conversion.

The parts live in their own modules: ``torch_pickle`` (the restricted ``.pth``
reader, which never runs code from the file and checks every declared size before
allocating), ``safetensors_reader``, and ``downloads`` (URL registry, downloads
and their verification) and ``cache`` (the converted-parameters cache). This module maps DINO's
torch names to ours and ties the pieces together.
"""

from __future__ import annotations

import os
import re
import struct
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from absl import logging

from spectral_jax.models.weights import safetensors_reader
from spectral_jax.models.weights import torch_pickle
from spectral_jax.models.weights import cache
from spectral_jax.models.weights.errors import CheckpointError, missing_file
from spectral_jax.models.weights.cache import flatten, restore_params, save_params, unflatten
from spectral_jax.models.weights.downloads import (
  WEIGHTS,
  default_cache_dir,
  download,
  resolve_checkpoint,
)

__all__ = [
  'CheckpointError',
  'WEIGHTS',
  'default_cache_dir',
  'download',
  'resolve_checkpoint',
  'read_state_dict',
  'unwrap_state_dict',
  'infer_arch',
  'state_dict_to_params',
  'check_params',
  'save_params',
  'restore_params',
  'load_params',
]


# --------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------


def _sniff_format(path: Path) -> str:
  if zipfile.is_zipfile(path):
    return 'zip'
  with open(path, 'rb') as f:
    head = f.read(9)
  if (
    len(head) == 9 and head[8:9] == b'{' and struct.unpack('<Q', head[:8])[0] < path.stat().st_size
  ):
    return 'safetensors'
  if head[:1] == b'\x80':  # pickle PROTO opcode starting the legacy magic number
    return 'legacy'
  raise CheckpointError(
    f'{path}: not a PyTorch (.pth) or safetensors checkpoint (unknown format or truncated file)'
  )


_WRAPPER_KEYS = ('teacher', 'student', 'state_dict', 'model')
_PREFIXES = ('module.', 'backbone.')


def unwrap_state_dict(obj: Any, source: str | os.PathLike = 'checkpoint') -> dict[str, np.ndarray]:
  """Reduce a loaded checkpoint object to a flat ViT backbone state dict.

  Takes ``teacher`` (preferred, as DINO evaluates the teacher), ``student``,
  ``state_dict`` or ``model`` from full training checkpoints, strips the
  ``module.`` (DDP) and ``backbone.`` (MultiCropWrapper) prefixes and drops
  the DINO projection head and any non-tensor entries.
  """
  if not isinstance(obj, Mapping):
    raise CheckpointError(f'{source}: holds a {type(obj).__name__}, not a state dict')
  for key in _WRAPPER_KEYS:
    if isinstance(obj.get(key), Mapping):
      obj = obj[key]
      break
  out: dict[str, np.ndarray] = {}
  for name, value in obj.items():
    if not isinstance(value, np.ndarray) or type(name) not in (str, int):
      continue
    name = str(name)
    while name.startswith(_PREFIXES):
      name = name.split('.', 1)[1]
    if name.startswith('head.'):
      continue
    out[name] = value
  return out


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Read a torch ``.pth`` (zip or legacy) or safetensors file into numpy arrays.

  Floating tensors become float32 (bfloat16/float16 are widened); integer
  tensors keep their dtype. Full DINO checkpoints are unwrapped, see
  ``unwrap_state_dict``. Nothing in the file is ever executed, and hostile sizes
  are refused (CheckpointError naming the file) before anything is allocated.
  """
  path = Path(path).expanduser()
  if not path.is_file():
    raise missing_file(path)
  fmt = _sniff_format(path)
  if fmt == 'safetensors':
    return unwrap_state_dict(safetensors_reader.read_safetensors(path), path)
  return unwrap_state_dict(torch_pickle.read_pth(path, legacy=fmt == 'legacy'), path)


# --------------------------------------------------------------------------
# torch state dict -> Flax parameter tree
# --------------------------------------------------------------------------

_LINEARS = ('attn.qkv', 'attn.proj', 'mlp.fc1', 'mlp.fc2')
_NORMS = ('norm1', 'norm2')
_CONV_PERM = (2, 3, 1, 0)  # torch (D, 3, P, P) -> flax (P, P, 3, D)


def _torch_to_flax(
  name: str, shape: tuple[int, ...]
) -> tuple[tuple[str, ...], tuple[int, ...]] | None:
  """Map a torch parameter name to (flax path, axis permutation), or None if unknown."""
  ident = tuple(range(len(shape)))
  if name in ('cls_token', 'pos_embed'):
    return (name,), ident
  if name == 'patch_embed.proj.weight':
    return ('patch_embed', 'kernel'), _CONV_PERM
  if name == 'patch_embed.proj.bias':
    return ('patch_embed', 'bias'), ident
  if name in ('norm.weight', 'norm.bias'):
    return ('norm', 'scale' if name.endswith('weight') else 'bias'), ident
  m = re.fullmatch(r'blocks\.(\d+)\.(.+)\.(weight|bias)', name)
  if m is None:
    return None
  block, module, kind = f'blocks_{m.group(1)}', m.group(2), m.group(3)
  if module in _NORMS:
    return (block, module, 'scale' if kind == 'weight' else 'bias'), ident
  if module in _LINEARS:
    path = (block, *module.split('.'), 'kernel' if kind == 'weight' else 'bias')
    return path, (1, 0) if kind == 'weight' else ident
  return None


def _flax_to_torch_name(path: tuple[str, ...]) -> str:
  """Inverse of ``_torch_to_flax`` for error messages."""
  name = '.'.join(path)
  name = re.sub(r'^blocks_(\d+)', r'blocks.\1', name)
  name = re.sub(r'^patch_embed\.', 'patch_embed.proj.', name)
  return re.sub(r'\.(kernel|scale)$', '.weight', name)


def _torch_shape(flax_shape: tuple[int, ...], perm: tuple[int, ...]) -> tuple[int, ...]:
  # flax_shape[i] == torch_shape[perm[i]]
  out = [0] * len(perm)
  for i, p in enumerate(perm):
    out[p] = flax_shape[i]
  return tuple(out)


def state_dict_to_params(
  state_dict: Mapping[str, np.ndarray], expected_shapes: Mapping[str, Any] | None = None
) -> dict[str, Any]:
  """Convert a DINO ViT torch state dict to the nested Flax parameter dict.

  With ``expected_shapes`` (same nesting as the params, leaves = shape tuples
  or anything with a ``.shape``, e.g. the output of ``jax.eval_shape``)
  every expected leaf must be present with that shape and nothing else may be
  left over; errors name the torch tensor and both shapes in torch layout.
  """
  flat: dict[tuple[str, ...], np.ndarray] = {}
  perms: dict[tuple[str, ...], tuple[int, ...]] = {}
  unknown = []
  for name, value in state_dict.items():
    if name.startswith('head.'):
      continue
    value = np.asarray(value)
    mapped = _torch_to_flax(name, value.shape)
    if mapped is None or len(mapped[1]) != value.ndim:
      unknown.append(f'{name} {tuple(value.shape)}')
      continue
    path, perm = mapped
    flat[path] = np.ascontiguousarray(np.transpose(value, perm).astype(np.float32))
    perms[path] = perm
  if unknown:
    raise CheckpointError(
      f'checkpoint has tensors that do not belong to a DINO ViT: {", ".join(unknown)}'
    )
  if expected_shapes is not None:
    _check_shapes(flat, perms, flatten(expected_shapes))
  return unflatten(flat)


def _check_shapes(
  flat: Mapping[tuple[str, ...], np.ndarray],
  perms: Mapping[tuple[str, ...], tuple[int, ...]],
  expected: Mapping[tuple[str, ...], Any],
) -> None:
  problems = []
  for path, shape in expected.items():
    shape = tuple(getattr(shape, 'shape', shape))  # also accept jax.ShapeDtypeStruct leaves
    name = _flax_to_torch_name(path)
    if path not in flat:
      problems.append(f'{name}: missing from checkpoint, model expects {shape}')
    elif flat[path].shape != shape:
      perm = perms[path]
      problems.append(
        f'{name}: checkpoint has {_torch_shape(flat[path].shape, perm)}, '
        f'model expects {_torch_shape(shape, perm)}'
      )
  for path in flat.keys() - expected.keys():
    problems.append(
      f'{_flax_to_torch_name(path)}: unexpected in checkpoint (model has no such parameter)'
    )
  if problems:
    raise CheckpointError('checkpoint does not match the model:\n  ' + '\n  '.join(problems))


def check_params(params: Mapping[str, Any], expected_shapes: Mapping[str, Any]) -> None:
  """Checks converted (or cached) params against a model; errors use torch names and layout."""
  flat = flatten(params)
  perms = {}
  for path, value in flat.items():
    mapped = _torch_to_flax(_flax_to_torch_name(path), np.shape(value))
    perms[path] = mapped[1] if mapped else tuple(range(np.ndim(value)))
  _check_shapes(flat, perms, flatten(expected_shapes))


def infer_arch(state_dict: Mapping[str, np.ndarray]) -> dict[str, int]:
  """ViT hyper-parameters implied by a DINO state dict (head dim is always 64 in DINO).

  The keys match ``spectral_jax.models.vit.ViTArch``; ``num_pos`` counts the
  pretrained patch positions, excluding the CLS position.
  """
  try:
    patch_weight = state_dict['patch_embed.proj.weight']
    embed_dim = int(state_dict['cls_token'].shape[-1])
    num_pos = int(state_dict['pos_embed'].shape[1]) - 1
  except (KeyError, IndexError) as e:
    raise CheckpointError(f'not a DINO ViT state dict: missing or malformed {e}') from e
  blocks = {int(m.group(1)) for k in state_dict if (m := re.match(r'blocks\.(\d+)\.', k))}
  return {
    'patch_size': int(patch_weight.shape[-1]),
    'embed_dim': embed_dim,
    'num_heads': embed_dim // 64,
    'depth': len(blocks),
    'num_pos': num_pos,
  }


# --------------------------------------------------------------------------
# The whole pipeline, cached
# --------------------------------------------------------------------------


def load_params(
  model_name: str,
  checkpoint: str | os.PathLike | None = None,
  cache_dir: str | os.PathLike | None = None,
) -> tuple[dict[str, Any], dict[str, int]]:
  """Flax params and arch for a DINO ViT, converting once and caching the result.

  The cache lives in ``<cache_dir>/params/<name>-<hash>/`` (``params.npz`` +
  ``arch.json``; an entry with both is complete). It is keyed on the URL for
  downloads and on path, size and mtime for local files. An unreadable entry is
  rebuilt from its source with a warning; temporaries of killed runs are removed.
  """
  cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
  cache_root = cache_dir.absolute() / 'params'
  cache.remove_stale_temporaries(cache_dir.absolute())
  entry, source = cache.lookup(model_name, checkpoint, cache_root)
  corrupt = None
  if (
    entry is not None
    and source
    and cache.converted_from_another_copy(entry, source, cache_dir.absolute())
  ):
    logging.info('%s changed since it was converted: converting it again', checkpoint or model_name)
    cache.discard_entry(entry)
  if entry is not None and cache.complete(entry):
    try:
      return cache.read_entry(entry)
    except CheckpointError as e:
      corrupt = e
    if source is None:  # a local file that is gone: nothing to rebuild from
      raise CheckpointError(
        f'{corrupt}, and its source {checkpoint} is gone so it cannot be rebuilt: '
        f'delete {entry} and pass the checkpoint file again'
      ) from corrupt
    logging.warning('%s; rebuilding it from %s', corrupt, checkpoint or model_name)
    cache.discard_entry(entry)
  try:
    path = resolve_checkpoint(model_name, checkpoint, cache_dir)
  except (CheckpointError, FileNotFoundError) as e:
    if corrupt is None:
      raise
    raise CheckpointError(
      f'{corrupt}, and rebuilding it failed ({e}); delete {entry} once the source is '
      'reachable again'
    ) from e
  state_dict = read_state_dict(path)
  arch = infer_arch(state_dict)
  params = state_dict_to_params(state_dict)
  if source is None:
    source = cache.local_source(path)
    entry = cache.entry_path(source, path.name, cache_root)
  assert entry is not None
  try:
    cache.write_entry(entry, params, arch, source, path)
  except OSError as e:  # keeping the conversion saves time later; it is not needed now
    logging.warning(
      'could not keep the converted weights in %s (%s): they will be converted again next '
      'time; point $SPECTRAL_JAX_CACHE at a writable folder to keep them',
      cache_root,
      e.strerror or e,
    )
  return params, arch
