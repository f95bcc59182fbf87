"""The pipeline's feature extractor: any registry backbone, batched and data-parallel.

The ViTs (DINO, DINOv2 ± registers, DINOv3) run any mix of sizes as one batch of patch
sequences: each image's h·w patches first, zero patches after, its own position inputs (DINO's
interpolated table, DINOv2's resampled table, DINOv3's RoPE coordinates) and a token mask that
keeps padded tokens out of attention, so real tokens equal the single-image forward. The
DINO ResNet-50's convolutions see padding, so it runs same-size crops together. The pipeline's
spectral and method steps take them all alike; the ResNet's 'k' is its layer4 map, row-major.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from spectral_jax import compile_cache, parallel
from spectral_jax.models import backbones, dinov2, dinov3, resnet, vit
from spectral_jax.models.weights import checkpoints
from spectral_jax.models.weights import downloads

# Position rows kept per extractor (most recent grids): a 6,400-token table of a 1,024-wide
# model is 26 MB, and a dataset can have hundreds of sizes.
POSITION_TABLES = 64
# Arrays besides 'k' that the forward returns and the extract stage writes.
EXTRAS = ('x_norm_patchtokens', 'k_rope', 'low_level')

Grid = tuple[int, int]
# /proc/cpuinfo flags of bfloat16 matmul units (x86 AMX and AVX512-BF16, Arm BF16).
BF16_CPU_FLAGS = frozenset({'amx_bf16', 'avx512_bf16', 'bf16'})


def grid_positions(arch: Any, params: Any) -> Callable[[Grid], dict[str, np.ndarray]]:
  """The family's position rows of one patch grid: {'pos_tables': [1 + h·w, D]} (CLS, then
  the patches; DINO interpolates, DINOv2 resamples) or {'rope_coords': [h·w, 2]} (DINOv3)."""
  if isinstance(arch, dinov3.DinoV3Arch):
    return lambda grid: {'rope_coords': _patch_coords(grid)}
  pos_embed = np.asarray(params['pos_embed'])
  if isinstance(arch, dinov2.DinoV2Arch):
    table = lambda grid: dinov2.resample_pos_embed(arch, pos_embed, grid)
  else:
    table = lambda grid: vit.interpolate_pos_embed(pos_embed, grid, arch.pretrained_grid)
  return lambda grid: {'pos_tables': np.asarray(table(grid), np.float32)[0]}


def _patch_coords(grid: Grid) -> np.ndarray:
  """``dinov3.patch_coords`` on the host (no compile per grid)."""
  h, w = grid
  rows = np.arange(0.5, h, dtype=np.float32) / np.float32(h)
  cols = np.arange(0.5, w, dtype=np.float32) / np.float32(w)
  coords = np.stack(np.meshgrid(rows, cols, indexing='ij'), axis=-1).reshape(h * w, 2)
  return np.float32(2.0) * coords - np.float32(1.0)


def pack_positions(
  rows: Sequence[dict[str, np.ndarray]], grids: Sequence[Grid], length: int, prefix: int
) -> dict[str, np.ndarray]:
  """Each image's position rows (``grid_positions``) zero-padded to ``length`` patches, and
  ``token_mask`` [B, prefix + length], True on the ``prefix`` tokens (CLS, registers) and
  the image's h·w patches."""
  out: dict[str, np.ndarray] = {'token_mask': np.zeros((len(grids), prefix + length), bool)}
  for i, ((h, w), image_rows) in enumerate(zip(grids, rows)):
    if h * w > length:
      raise ValueError(f'grid {(h, w)} has more than {length} patches')
    out['token_mask'][i, : prefix + h * w] = True
    for key, value in image_rows.items():
      if key not in out:  # rows before the patches (CLS) stay before them
        extra = value.shape[0] - h * w
        out[key] = np.zeros((len(grids), extra + length, *value.shape[1:]), value.dtype)
      out[key][i, : len(value)] = value
  return out


def position_inputs(arch: Any, params: Any, grids: Sequence[Grid], length: int) -> dict:
  """The model's position keyword arguments for patch sequences of ``length`` tokens."""
  rows = grid_positions(arch, params)
  return pack_positions([rows(g) for g in grids], grids, length, prefix_tokens(arch))


def prefix_tokens(arch: Any) -> int:
  """Tokens before the patches: CLS (+ registers / storage tokens)."""
  return getattr(arch, 'num_prefix_tokens', 1)


_COMPILING_SAID = set()


def _in_words(shape: tuple) -> str:
  """A forward's input shape: (B, L) patch sequences or (B, H, W) ResNet crops."""
  if len(shape) == 2:
    return f'{shape[0]} × {shape[1]} tokens'
  return f'{shape[0]} × {shape[1]}×{shape[2]} px'


def _say_compiled_once(name: str, shape: str, compiles: compile_cache.Compiles) -> None:
  """One line per process and model, after the first real compile of a new input shape (not
  when JAX's persistent cache answered): what the wait was, and that it is paid once."""
  if not compiles.compiled or name in _COMPILING_SAID:
    return
  _COMPILING_SAID.add(name)
  logging.info(
    '%s: compiled for a new image size (%s) in %.1f s; %s',
    name,
    shape,
    compiles.seconds,
    compile_cache.where(),
  )


def cpu_has_bf16_units(cpuinfo: str = '/proc/cpuinfo') -> Optional[bool]:
  """Whether the host CPU multiplies bfloat16 in hardware; None where it cannot tell."""
  try:
    lines = Path(cpuinfo).read_text(errors='replace').splitlines()
  except OSError:
    return None
  flags = {
    flag
    for line in lines
    if line.split(':')[0].strip() in ('flags', 'Features')
    for flag in line.split(':', 1)[-1].split()
  }
  return bool(flags & BF16_CPU_FLAGS) if flags else None


def warn_if_bf16_is_emulated(precision: str) -> None:
  """bfloat16 on a CPU without bf16 units goes through float32 in XLA: slower than float32
  on every such CPU measured (benchmarks/README.md) and less exact, so say so."""
  if vit.is_bfloat16(precision) and jax.default_backend() == 'cpu':
    if cpu_has_bf16_units() is False:
      logging.warning(
        'model.precision=bfloat16 on a CPU without bfloat16 units (no AMX or AVX512-BF16 '
        'in /proc/cpuinfo): XLA computes it through float32 here, which measured slower than '
        'float32 and is less exact; use model.precision=float32 on this machine'
      )


def require_vit(name: str, mode: str) -> None:
  """Modes that need a ViT (CLS tokens of crops, the ViT segmenter) refuse the ResNet."""
  entry = backbones.BACKBONES.get(name)
  if entry is not None and entry.family == 'resnet':
    raise ValueError(
      f'--mode={mode} with model.name={name!r}: this mode needs a ViT backbone (DINO, '
      f'DINOv2 or DINOv3); {name} runs with --mode=extract, localize and segment'
    )


@dataclasses.dataclass
class FeatureExtractor:
  """A registry backbone with its variables and one jitted forward, data-parallel over the
  local devices. ``compiled_shapes`` records the input shapes compiled so far."""

  name: str
  arch: Any
  variables: Any  # {'params': ...} (+ 'batch_stats' for the ResNet)
  precision: str = 'highest'  # lax matmul precision, or vit.BFLOAT16
  feature_block: int = -1
  compiled_shapes: set = dataclasses.field(default_factory=set)

  def __post_init__(self):
    self.mesh = parallel.local_mesh()
    self.variables = jax.device_put(self.variables, parallel.replicated(self.mesh))
    self._model = backbones.build_model(self.arch, self.precision)
    self._is_resnet = isinstance(self.arch, resnet.ResNetArch)
    if not self._is_resnet:  # patch grid → its position rows; bounded (many sizes)
      rows = grid_positions(self.arch, self.variables['params'])
      self._grid_positions = functools.lru_cache(maxsize=POSITION_TABLES)(rows)
    self._forward = jax.jit(self._features, static_argnames=('with_cls',))

  def _features(self, variables, images, inputs, with_cls=False):
    # uint8 is normalised here; float32 arrives normalised (and zero-padded after
    # normalisation: TokenCut's and LOST's input, see ``tokencut.padded_input``).
    x = vit.normalize(images) if images.dtype == jnp.uint8 else images
    if self._is_resnet:
      out = self._model.apply(variables, x)
      rows = lambda m: m.reshape(len(x), -1, m.shape[-1])
      return {'k': rows(out['features']), 'low_level': rows(out['low_level'])}
    if isinstance(self.arch, vit.ViTArch):  # DINO runs the blocks after feature_block for CLS
      inputs = dict(inputs, with_cls=with_cls)
    out = self._model.apply(variables, x, feature_block=self.feature_block, **inputs)
    result = {key: value for key, value in out.items() if key == 'k' or key in EXTRAS}
    if with_cls:
      result['cls'] = out['cls'] if 'cls' in out else out['x_norm_clstoken']
    return result

  def sequence_inputs(
    self, crops: Sequence[np.ndarray], length: int
  ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Patches [B, length, P, P, 3] (uint8, or float32 if the crops are) and the model's
    position inputs (cached per grid) with the token mask."""
    if self._is_resnet:
      raise TypeError(f'{self.name} is a ResNet: it runs whole crops, not patch sequences')
    p = self.arch.patch_size
    grids = _check_crops(crops, p, length)
    patches = np.zeros((len(crops), length, p, p, 3), crops[0].dtype)
    for i, crop in enumerate(crops):
      patches[i, : grids[i][0] * grids[i][1]] = vit.patchify(crop[None], p)[0]
    rows = [self._grid_positions(g) for g in grids]
    return patches, pack_positions(rows, grids, length, prefix_tokens(self.arch))

  def _run(self, images: np.ndarray, inputs: dict, with_cls: bool) -> dict[str, jax.Array]:
    shard = functools.partial(parallel.shard_batch, mesh=self.mesh)
    inputs = {name: shard(value) for name, value in inputs.items()}
    images = shard(images)
    key = (images.shape, images.dtype.name, with_cls)
    if key in self.compiled_shapes:
      return self._forward(self.variables, images, inputs, with_cls=with_cls)
    self.compiled_shapes.add(key)
    with compile_cache.watch() as compiles:  # the call returns once compiled (runs async)
      out = self._forward(self.variables, images, inputs, with_cls=with_cls)
    shape = images.shape[:2] if images.ndim == 5 else images.shape[:3]
    _say_compiled_once(self.name, _in_words(shape), compiles)
    logging.debug(
      'new input shape for the %s forward: %s, %s in %.1f s (%d shapes so far)',
      self.name,
      shape,
      'compiled' if compiles.compiled else 'loaded from the compilation cache',
      compiles.seconds,
      len(self.compiled_shapes),
    )
    return out

  def __call__(
    self, crops: Sequence[np.ndarray], length: Optional[int] = None, with_cls: bool = False
  ) -> dict[str, jax.Array]:
    """Features of crops [h_i·P, w_i·P, 3] (uint8, normalised on the device, or float32
    already normalised) run as one batch.

    Returns 'k' [B', length, D] with each crop's h_i·w_i rows first (row-major), the extras
    present ('x_norm_patchtokens', 'k_rope' [B', length, D]; the ResNet's 'low_level'
    [B', 4·length, 256]), zero-padded, and 'cls' [B', D] (final-normed) if ``with_cls``.
    ``length`` defaults to the largest crop's h·w; B' is len(crops) padded to a multiple of
    the device count.
    """
    p = self.arch.patch_size
    length = length or max((c.shape[0] // p) * (c.shape[1] // p) for c in crops)
    if self._is_resnet:
      return self._resnet_batch(crops, length, with_cls)
    return self._run(*self.sequence_inputs(crops, length), with_cls)

  def _resnet_batch(self, crops, length, with_cls) -> dict[str, jax.Array]:
    if with_cls:
      raise NotImplementedError(f'{self.name}: a ResNet has no CLS token')
    _check_crops(crops, self.arch.patch_size, length)
    ratios = {'k': 1, 'low_level': 4}  # layer1 has 2 × 2 rows per layer4 cell
    out: dict[str, np.ndarray] = {}
    by_shape: dict = {}
    for i, crop in enumerate(crops):
      by_shape.setdefault(crop.shape, []).append(i)
    for members in by_shape.values():
      result = self._run(np.stack([crops[i] for i in members]), {}, False)
      for key, value in result.items():
        value = np.asarray(value)[: len(members)]
        if key not in out:
          out[key] = np.zeros((len(crops), ratios[key] * length, value.shape[-1]), np.float32)
        out[key][members, : value.shape[1]] = value
    return {key: jnp.asarray(value) for key, value in out.items()}


def _check_crops(crops: Sequence[np.ndarray], patch_size: int, length: int) -> list[Grid]:
  """The crops' patch grids; one dtype (uint8, or float32 already normalised) and at most
  ``length`` patches each, else a ValueError."""
  dtype = crops[0].dtype
  if any(c.dtype != dtype for c in crops) or dtype not in (np.uint8, np.float32):
    raise ValueError('a batch mixes input dtypes: use uint8 or normalised float32 crops')
  grids = [(c.shape[0] // patch_size, c.shape[1] // patch_size) for c in crops]
  for crop, (h, w) in zip(crops, grids):
    if h * w > length:
      raise ValueError(f'a {crop.shape[:2]} crop has more than {length} patches')
  return grids


def load(
  name: str,
  checkpoint: str = '',
  cache_dir: str = '',
  precision: str = 'highest',
  feature_block: int = -1,
) -> FeatureExtractor:
  """Loads a registry backbone: a local ``.pth`` / Hugging Face folder, a URL, or (weights
  that are not gated) the official download. DINO ViTs go through the converted-params
  cache of ``checkpoints.load_params``."""
  if name not in backbones.BACKBONES:
    raise ValueError(f'model.name={name!r}: use one of {sorted(backbones.BACKBONES)}')
  b = backbones.BACKBONES[name]
  if vit.is_bfloat16(precision) and b.family == 'resnet':
    raise ValueError(
      f"model.precision='bfloat16' is implemented for the ViT backbones, not {name!r} "
      '(its convolutions run in float32): use float32'
    )
  if b.family == 'dino':
    params, found = checkpoints.load_params(name, checkpoint or None, cache_dir or None)
    # Width, heads and patch size come from the name; depth and the pretrained grid from the file.
    arch = dataclasses.replace(vit.ARCHS[name], depth=found['depth'], num_pos=found['num_pos'])
    checkpoints.check_params(params, vit.abstract_params(arch))
    variables = {'params': params}
  else:
    arch, variables = backbones.load_backbone_params(name, _source(b, checkpoint, cache_dir))
  if b.family != 'resnet' and not -arch.depth <= feature_block < arch.depth:
    raise ValueError(f'model.feature_block={feature_block} is outside a {arch.depth}-block model')
  warn_if_bf16_is_emulated(precision)
  return FeatureExtractor(name, arch, variables, precision, feature_block)


def _source(b: backbones.Backbone, checkpoint: str, cache_dir: str) -> Path:
  if checkpoint and downloads.is_url(checkpoint):
    return downloads.download(checkpoint, cache_dir or None)
  if checkpoint:
    return Path(checkpoint).expanduser()
  if b.gated:
    raise backbones.gated_error(b.name)
  return downloads.download(b.url, cache_dir or None)
