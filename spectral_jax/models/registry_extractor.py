"""The pipeline's feature extractor for the registry backbones that are not DINO v1 ViTs.

DINOv2 (± registers) and DINOv3 run batches of patch sequences like the DINO ViT; the DINO
ResNet-50 runs same-size crops together, its rows padded to the batch's sequence length. The
pipeline's spectral and method steps take them all alike. The ResNet's 'k' is its layer4 map
flattened row-major.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from pathlib import Path
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from spectral_jax import parallel
from spectral_jax.models import backbones, dinov2, dinov3, resnet, vit, weights_cache

# Position tables kept per extractor (as pipeline.POSITION_TABLES: bounded memory).
POSITION_TABLES = 64
# Arrays besides 'k' that the forward returns and the extract stage writes.
EXTRAS = ('x_norm_patchtokens', 'k_rope', 'low_level')


def is_registry_only(name: str) -> bool:
  """A registry backbone that the DINO ViT extractor does not cover."""
  return name in backbones.BACKBONES and backbones.BACKBONES[name].family != 'dino'


def require_vit(name: str, mode: str) -> None:
  """Modes that need a ViT (CLS tokens of crops, the ViT segmenter) refuse the ResNet."""
  entry = backbones.BACKBONES.get(name)
  if entry is not None and entry.family == 'resnet':
    raise ValueError(
        f'--mode={mode} with model.name={name!r}: this mode needs a ViT backbone (DINO, '
        f'DINOv2 or DINOv3); {name} runs with --mode=extract, localize and segment'
    )


@dataclasses.dataclass
class RegistryExtractor:
  """``FeatureExtractor``'s interface for DINOv2 / DINOv3 / ResNet-50, data-parallel over the
  local devices.

  The ViTs run any mix of sizes as one batch of patch sequences, as the DINO ViT does: each
  image's h·w patches first, zero patches after, its own position rows (DINOv2's resampled
  table, DINOv3's RoPE coordinates) and a token mask that keeps padded tokens out of
  attention, so real tokens equal the single-image forward. The ResNet's convolutions see
  padding, so it runs same-size crops together.
  """

  name: str
  arch: Any
  params: Any  # the model's variables: {'params': ...} (+ 'batch_stats' for the ResNet)
  precision: str = 'highest'
  feature_block: int = -1
  compiled_shapes: set = dataclasses.field(default_factory=set)

  def __post_init__(self):
    self.mesh = parallel.local_mesh()
    self.params = jax.device_put(self.params, parallel.replicated(self.mesh))
    self._model = backbones.build_model(self.arch, self.precision)
    self._is_resnet = isinstance(self.arch, resnet.ResNetArch)
    if isinstance(self.arch, dinov2.DinoV2Arch):  # patch grid → its resampled table
      pos_embed = np.asarray(self.params['params']['pos_embed'])
      self._position_table = functools.lru_cache(maxsize=POSITION_TABLES)(
          lambda grid: np.asarray(dinov2.resample_pos_embed(self.arch, pos_embed, grid))[0]
      )
    self._forward = jax.jit(self._features, static_argnames=('with_cls',))

  def _features(self, variables, images, inputs, with_cls=False):
    x = vit.normalize(images) if images.dtype == jnp.uint8 else images
    if self._is_resnet:
      out = self._model.apply(variables, x)
      rows = lambda m: m.reshape(len(x), -1, m.shape[-1])
      return {'k': rows(out['features']), 'low_level': rows(out['low_level'])}
    out = self._model.apply(variables, x, feature_block=self.feature_block, **inputs)
    result = {key: value for key, value in out.items() if key == 'k' or key in EXTRAS}
    if with_cls:
      result['cls'] = out['x_norm_clstoken']
    return result

  def _position_inputs(self, grids, length) -> dict[str, np.ndarray]:
    """The family's per-sequence position inputs and token mask (see the models)."""
    if isinstance(self.arch, dinov3.DinoV3Arch):
      coords, mask = dinov3.sequence_coords(grids, length)
      return {'rope_coords': coords, 'token_mask': mask}
    d, r = self.arch.embed_dim, self.arch.num_registers
    tables = np.zeros((len(grids), 1 + length, d), np.float32)
    mask = np.zeros((len(grids), 1 + r + length), bool)
    for i, grid in enumerate(grids):
      tables[i, : 1 + grid[0] * grid[1]] = self._position_table(grid)
      mask[i, : 1 + r + grid[0] * grid[1]] = True
    return {'pos_tables': tables, 'token_mask': mask}

  def _run(self, images: np.ndarray, inputs: dict, with_cls: bool) -> dict[str, jax.Array]:
    key = (images.shape, with_cls)
    if key not in self.compiled_shapes:
      self.compiled_shapes.add(key)
      shape = images.shape[:2] if images.ndim == 5 else images.shape[:3]
      logging.info(
          'compiling the %s forward for %s (%d shapes so far)',
          self.name, shape, len(self.compiled_shapes),
      )  # fmt: skip
    shard = functools.partial(parallel.shard_batch, mesh=self.mesh)
    inputs = {name: shard(value) for name, value in inputs.items()}
    return self._forward(self.params, shard(images), inputs, with_cls=with_cls)

  def __call__(
      self, crops: Sequence[np.ndarray], length: Optional[int] = None, with_cls: bool = False
  ) -> dict[str, jax.Array]:
    """'k' [B', length, D] with each crop's h·w rows first (row-major), and the extras
    present ('x_norm_patchtokens', 'k_rope' [B', length, D]; the ResNet's 'low_level'
    [B', 4·length, 256]), zero-padded; 'cls' [B', D] (``x_norm_clstoken``) if ``with_cls``.
    B' is len(crops) padded to a multiple of the device count. Crops: uint8, or float32
    already normalised."""
    p = self.arch.patch_size
    dtype = crops[0].dtype
    if any(c.dtype != dtype for c in crops) or dtype not in (np.uint8, np.float32):
      raise ValueError('a batch mixes input dtypes: use uint8 or normalised float32 crops')
    grids = [(c.shape[0] // p, c.shape[1] // p) for c in crops]
    length = length or max(h * w for h, w in grids)
    if any(h * w > length for h, w in grids):
      raise ValueError(f'a crop has more than {length} patches')
    if self._is_resnet:
      return self._resnet_batch(crops, grids, length, with_cls)
    patches = np.zeros((len(crops), length, p, p, 3), dtype)
    for i, crop in enumerate(crops):
      patches[i, : grids[i][0] * grids[i][1]] = vit.patchify(crop[None], p)[0]
    return self._run(patches, self._position_inputs(grids, length), with_cls)

  def _resnet_batch(self, crops, grids, length, with_cls) -> dict[str, jax.Array]:
    if with_cls:
      raise NotImplementedError(f'{self.name}: a ResNet has no CLS token')
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


def load(
    name: str,
    checkpoint: str = '',
    cache_dir: str = '',
    precision: str = 'highest',
    feature_block: int = -1,
) -> RegistryExtractor:
  """A registry backbone from a local ``.pth`` / Hugging Face folder, a URL, or (non-gated
  weights) the official download."""
  b = backbones.get_backbone(name)
  source: Optional[Path] = None
  if checkpoint and weights_cache.is_url(checkpoint):
    source = weights_cache.download(checkpoint, cache_dir or None)
  elif checkpoint:
    source = Path(checkpoint).expanduser()
  elif b.gated:
    raise backbones.gated_error(name)
  else:
    source = weights_cache.download(b.url, cache_dir or None)
  arch, variables = backbones.load_backbone_params(name, source)
  if not isinstance(arch, resnet.ResNetArch) and not -arch.depth <= feature_block < arch.depth:
    raise ValueError(f'model.feature_block={feature_block} is outside a {arch.depth}-block model')
  return RegistryExtractor(name, arch, variables, precision, feature_block)
