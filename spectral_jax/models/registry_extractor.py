"""The pipeline's feature extractor for the registry backbones that are not DINO v1 ViTs.

DINOv2 (± registers), DINOv3 and the DINO ResNet-50 run image by image through the full-image
forward of ``backbones`` (one compiled shape per crop size), then their rows are padded to the
batch's sequence length, so the pipeline's spectral and method steps take them as they take
the DINO ViT's patch sequences. The ResNet's 'k' is its layer4 map flattened row-major.
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

from spectral_jax.models import backbones, resnet, vit, weights_cache

# Arrays besides 'k' that the forward returns and the extract stage writes.
EXTRAS = ('x_norm_patchtokens', 'k_rope', 'low_level')


def is_registry_only(name: str) -> bool:
  """A registry backbone that the DINO ViT extractor does not cover."""
  return name in backbones.BACKBONES and backbones.BACKBONES[name].family != 'dino'


def require_dino_vit(name: str, mode: str, allow_vits: bool = False) -> None:
  """Modes built on the DINO ViT (the segmenter's backbone) refuse the others; with
  ``allow_vits`` (CLS features of crops) only the ResNet is refused."""
  if allow_vits and is_registry_only(name) and backbones.BACKBONES[name].family != 'resnet':
    return
  if is_registry_only(name):
    dino = sorted(n for n, b in backbones.BACKBONES.items() if b.family == 'dino')
    raise ValueError(
        f'--mode={mode} with model.name={name!r}: this mode needs a DINO ViT backbone '
        f'({", ".join(dino)}); {name} runs with --mode=extract, localize and segment'
    )


@dataclasses.dataclass
class RegistryExtractor:
  """``FeatureExtractor``'s interface for DINOv2 / DINOv3 / ResNet-50 (no CLS crops)."""

  name: str
  arch: Any
  params: Any  # the model's variables: {'params': ...} (+ 'batch_stats' for the ResNet)
  precision: str = 'highest'
  feature_block: int = -1
  compiled_shapes: set = dataclasses.field(default_factory=set)

  def __post_init__(self):
    self.params = jax.device_put(self.params)
    self._forward = _forward(self.arch, self.precision, self.feature_block)

  def __call__(
      self, crops: Sequence[np.ndarray], length: Optional[int] = None, with_cls: bool = False
  ) -> dict[str, jax.Array]:
    """'k' [B, length, D] with each crop's h·w rows first (row-major), and the extras
    present ('x_norm_patchtokens', 'k_rope' [B, length, D]; 'low_level' [B, 4·length,
    256]), zero-padded. Crops: uint8 or float32 already normalised."""
    if with_cls:
      raise NotImplementedError(f'{self.name}: CLS features of crops are DINO ViT only')
    p = self.arch.patch_size
    length = length or max((c.shape[0] // p) * (c.shape[1] // p) for c in crops)
    rows: dict[str, list] = {}
    for crop in crops:
      if crop.dtype == np.uint8:
        x = vit.normalize(crop)
      elif crop.dtype == np.float32:
        x = jnp.asarray(crop)
      else:
        raise ValueError('use uint8 or normalised float32 crops')
      if crop.shape not in self.compiled_shapes:
        self.compiled_shapes.add(crop.shape)
        logging.info('compiling the %s forward for a %s crop', self.name, crop.shape[:2])
      out = self._forward(self.params, x[None])
      if isinstance(self.arch, resnet.ResNetArch):
        out = {'k': out['features'], 'low_level': out['low_level']}
      for key, value in out.items():
        if key == 'k' or key in EXTRAS:
          rows.setdefault(key, []).append(np.asarray(value[0]).reshape(-1, value.shape[-1]))
    result = {}
    for key, values in rows.items():
      # low_level has 4 rows per feature cell: pad by the same ratio.
      ratio = len(values[0]) // _cells(crops[0], p)
      padded = np.zeros((len(values), ratio * length, values[0].shape[-1]), np.float32)
      for i, v in enumerate(values):
        padded[i, : len(v)] = v
      result[key] = jnp.asarray(padded)
    return result

  def cls_batch(self, crops: Sequence[np.ndarray], bucket_tokens: int = 64) -> np.ndarray:
    """Final-normed CLS tokens [n, D] (``x_norm_clstoken``) of uint8 crops, one forward each
    (semantic mode's box features). The ResNet has no CLS token."""
    del bucket_tokens  # one compiled shape per crop size here
    if isinstance(self.arch, resnet.ResNetArch):
      raise NotImplementedError(f'{self.name}: a ResNet has no CLS token for box features')
    rows = []
    for crop in crops:
      if crop.shape not in self.compiled_shapes:
        self.compiled_shapes.add(crop.shape)
      out = _cls_forward(self.arch, self.precision)(self.params, vit.normalize(crop)[None])
      rows.append(np.asarray(out[0], np.float32))
    return np.stack(rows) if rows else np.zeros((0, self.arch.embed_dim), np.float32)


def _cells(crop: np.ndarray, p: int) -> int:
  return (crop.shape[0] // p) * (crop.shape[1] // p)


@functools.lru_cache(maxsize=16)
def _forward(arch: Any, precision: str, feature_block: int):
  model = backbones.build_model(arch, precision)
  if isinstance(arch, resnet.ResNetArch):
    return jax.jit(model.apply)
  return jax.jit(lambda v, x: model.apply(v, x, feature_block=feature_block))


@functools.lru_cache(maxsize=16)
def _cls_forward(arch: Any, precision: str):
  model = backbones.build_model(arch, precision)
  return jax.jit(lambda v, x: model.apply(v, x)['x_norm_clstoken'])


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
