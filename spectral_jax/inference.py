"""The per-image pipeline on a given list of images: what the Python API and the HTTP server
call (the CLI's runners call the same pipeline and per-image functions on whole datasets).

Images are ``datasets.Example`` records: decoded pixels held in memory (``pixels``, never
written to disk or re-encoded) or files. Results come back in input order. An unusable image
raises the library's own error (``BadImageError``, ``ImageTooLargeError`` naming the
``Example.name`` the caller gave it); each front-end words it for its caller.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from spectral_jax import pipeline
from spectral_jax.data import datasets
from spectral_jax.models import extractor as extractor_lib
from spectral_jax.results import boxes, cutout, masks
from spectral_jax.results.types import Eigen, Localization, Objects, mask_box
from spectral_jax.settings import (
  PRECISIONS,
  BatchSettings,
  DiscoverSettings,
  EditSettings,
  ImageLimits,
  MethodSettings,
  ModelSettings,
  PromergeSettings,
  RefineSettings,
  SpectralSettings,
)
from spectral_jax.errors import SettingError
from spectral_jax.spectral import maskcut, promerge_images


def bucket_tokens(batching: BatchSettings) -> int:
  """data.bucket_tokens as the pipeline takes it: -1 = ``pipeline.GEOMETRIC``.

  Padding a patch sequence to a shared length lets images of similar size batch and compile
  once, for more FLOPs on padded tokens. The default (-1, every backend) rounds token counts
  up a geometric ladder (×1.26) and batches up to powers of two: a folder of mixed sizes
  compiles a handful of shapes (benchmarks/bench_first_result.py); a step (32 was the CPU
  default before, 64 the accelerators') pads less on sizes that repeat (VOC-like sets).
  """
  if batching.bucket_tokens >= 0:
    return batching.bucket_tokens
  return pipeline.GEOMETRIC


@dataclasses.dataclass
class Backbone:
  """A loaded backbone: the jitted model and its parameters, reused across calls.

  Compiled shapes are kept, so later calls on images of similar sizes run without compiling.
  """

  name: str
  extractor: extractor_lib.FeatureExtractor
  checkpoint: Optional[str] = None
  precision: str = 'float32'
  # The memory policy (data.max_tokens): larger images run downscaled.
  max_tokens: int = ImageLimits().max_tokens
  # Files above this many pixels are refused before decoding (data.max_pixels).
  max_pixels: int = ImageLimits().max_pixels
  # Where other official files (FOUND's decoder) are downloaded; None = the default cache.
  cache_dir: Optional[str] = None

  @property
  def patch_size(self) -> int:
    return self.extractor.arch.patch_size

  @property
  def limits(self) -> ImageLimits:
    return ImageLimits(max_pixels=int(self.max_pixels), max_tokens=int(self.max_tokens))

  def __repr__(self) -> str:
    a = self.extractor.arch  # ViT archs have depth and width; a ResNet's differ
    shape = ''.join(
      f'{k}={getattr(a, f)}, '
      for k, f in (('depth', 'depth'), ('dim', 'embed_dim'))
      if hasattr(a, f)
    )
    return (
      f'Backbone({self.name!r}, {shape}patch={a.patch_size}, '
      f'precision={self.precision!r}, checkpoint={self.checkpoint!r})'
    )


def load_backbone(model: ModelSettings, precision_name: str = '') -> Backbone:
  """Loads ``model`` (a registry name; its checkpoint file or URL, or the official weights
  through the cache). ``precision_name`` is how the caller spelled the precision."""
  checkpoint = model.checkpoint
  if checkpoint and '://' not in checkpoint:
    checkpoint = str(Path(checkpoint).expanduser())
  extractor = extractor_lib.load(
    model.name, checkpoint, model.cache_dir, PRECISIONS[model.precision], model.feature_block
  )
  return Backbone(
    model.name,
    extractor,
    checkpoint or None,
    precision_name or model.precision,
    cache_dir=model.cache_dir or None,
  )


def in_memory(pixels: np.ndarray, name: str, index: int = 0) -> datasets.Example:
  """An Example of an RGB uint8 [H, W, 3] image held in memory, called ``name`` in errors."""
  return datasets.Example(id=f'{index:06d}', path=None, pixels=pixels, name=name)


def from_file(path: os.PathLike | str, name: str, index: int = 0) -> datasets.Example:
  """An Example of an image file (decoded by the data layer, EXIF applied)."""
  return datasets.Example(id=f'{index:06d}', path=os.fspath(path), name=name)


def _raise(example, error: Exception) -> None:
  raise error


def results(
  backbone: Backbone,
  examples: Sequence[datasets.Example],
  spectral: SpectralSettings,
  method: MethodSettings = MethodSettings(),
  *,
  segment: bool = False,
  which_matrix: str = '',
  batching: BatchSettings = BatchSettings(),
  progress: Optional[pipeline.Progress] = None,
) -> list[pipeline.ImageResult]:
  """``pipeline.ImageResult`` per example, in input order (the pipeline yields by size
  bucket); the CLI's pipeline call (its method input rule as ``--mode=localize`` or, with
  ``segment``, ``--mode=segment``). The first unusable image raises its error. ``progress``
  is advanced once per image."""
  index = {ex.id: i for i, ex in enumerate(examples)}
  stream = pipeline.run_images(
    backbone.extractor,
    examples,
    batch_size=batching.batch_size,
    limits=backbone.limits,
    spectral_k=spectral.K,
    color_lambda=spectral.color_lambda,
    which_matrix=which_matrix or spectral.which_matrix,
    solver=spectral.solver,
    bucket_tokens=bucket_tokens(batching),
    batch_tokens=batching.batch_tokens,
    on_error=_raise,
    **boxes.method_args(method, segment=segment, cache_dir=backbone.cache_dir or ''),
  )
  out: list = [None] * len(examples)
  for r in stream:
    out[index[r.example.id]] = r
    if progress is not None:
      progress.update()
  return out


def eigenpairs(
  backbone: Backbone,
  examples: Sequence[datasets.Example],
  spectral: SpectralSettings,
  progress: Optional[pipeline.Progress] = None,
) -> list[Eigen]:
  """The K smallest eigenpairs of each image's patch graph (``--mode=extract``'s eigs)."""
  return [eigen_of(r) for r in results(backbone, examples, spectral, progress=progress)]


def localize(
  backbone: Backbone,
  examples: Sequence[datasets.Example],
  method: MethodSettings,
  spectral: SpectralSettings = SpectralSettings(K=5),
  progress: Optional[pipeline.Progress] = None,
) -> list[Localization]:
  """The main object's box per image (``--mode=localize``)."""
  rs = results(backbone, examples, spectral, method, progress=progress)
  return [localization_of(r, spectral) for r in rs]


def segment(
  backbone: Backbone,
  examples: Sequence[datasets.Example],
  method: MethodSettings,
  refine: RefineSettings,
  spectral: SpectralSettings = SpectralSettings(K=2),
  progress: Optional[pipeline.Progress] = None,
) -> list[np.ndarray]:
  """The main object's mask per image, bool [H, W] at the original size (``--mode=segment``;
  FOUND: in ``method.found.evaluation_mode``)."""
  rs = results(
    backbone, examples, spectral, method, segment=True, which_matrix='laplacian', progress=progress
  )
  return [mask_of(r, method, refine) for r in rs]


def remove_background(
  backbone: Backbone,
  example: datasets.Example,
  opts: EditSettings,
  background: cutout.Background,
  spectral: SpectralSettings = SpectralSettings(K=5),
  seed: int = 0,
) -> np.ndarray:
  """The cutout (uint8 [H, W, 4]) or, with a background, the composite (uint8 [H, W, 3])."""
  (r,) = results(backbone, [example], spectral)
  return cutout_of(r, backbone, opts, background, seed)


# Each output from one pipeline result: the functions above and the server (which shares one
# result between a request's box, cutout and heat maps) build their answers with these.


def eigen_of(r: pipeline.ImageResult) -> Eigen:
  """The eigenpairs of a result, eigenvectors on the patch grid."""
  return Eigen(
    r.eigenvalues,
    r.eigenvectors.reshape(len(r.eigenvectors), *r.patch_grid),
    tuple(r.patch_grid),
    r.patch_size,
    tuple(int(v) for v in r.image_hw),
    (int(r.image.shape[0]), int(r.image.shape[1])),
  )


def localization_of(r: pipeline.ImageResult, spectral: SpectralSettings) -> Localization:
  """The main object's box of a result (``results(..., method)``)."""
  box, _, score = boxes.localization(r, spectral.which_matrix)
  return Localization(tuple(int(v) for v in box), score, tuple(int(v) for v in r.image_hw))


def mask_of(r: pipeline.ImageResult, method: MethodSettings, refine: RefineSettings) -> np.ndarray:
  """The main object's mask of a result (``results(..., segment=True)``), bool [H, W]."""
  preprocess = pipeline.get_method(method.name).segment_preprocess
  mask = masks.final_mask(r, refine, preprocess, method.found.evaluation_mode)[1]
  return np.asarray(mask, bool)


def cutout_of(
  r: pipeline.ImageResult,
  backbone: Backbone,
  opts: EditSettings,
  background: cutout.Background,
  seed: int = 0,
) -> np.ndarray:
  """The cutout (RGBA) or composite (RGB) of a result, at the image's original size."""
  original = (
    datasets.load_image(r.example, max_pixels=backbone.max_pixels) if r.resized else r.image
  )
  _, out = cutout.image_cutout(
    original,
    r.eigenvectors,
    r.patch_size,
    tuple(r.patch_grid),
    r.image.shape[:2],
    opts,
    background,
    seed,
    r.example.label,
  )
  return out['composite'] if background is not None else out['cutout']


def discover(
  backbone: Backbone,
  examples: Sequence[datasets.Example],
  settings: DiscoverSettings,
  batching: BatchSettings = BatchSettings(),
  promerge_settings: PromergeSettings = PromergeSettings(),
  progress: Optional[pipeline.Progress] = None,
) -> list[Objects]:
  """The objects of each image: MaskCut (up to ``settings.max_objects``) or ProMerge
  (``settings.method='promerge'``, DINO ViT-B/8 only). Images are decoded and run a few
  batches at a time (memory stays bounded on long lists), ``progress`` advanced after each."""
  chunk = max(1, batching.batch_size) * 4
  out: list[Objects] = []
  for start in range(0, len(examples), chunk):
    part = examples[start : start + chunk]
    out += _discover(backbone, part, settings, batching, promerge_settings)
    if progress is not None:
      progress.update(len(part))
  return out


def _discover(
  backbone: Backbone,
  examples: Sequence[datasets.Example],
  settings: DiscoverSettings,
  batching: BatchSettings,
  promerge_settings: PromergeSettings,
) -> list[Objects]:
  arrays = [
    datasets.load_image(ex, min_side=backbone.patch_size, max_pixels=backbone.max_pixels)
    for ex in examples
  ]
  if settings.method == 'promerge':
    arch = backbone.extractor.arch
    if (arch.patch_size, getattr(arch, 'embed_dim', 0)) != (8, 768):
      raise SettingError(
        'model.name',
        backbone.name,
        'ProMerge runs DINO ViT-B/8 only (patch 8, width 768, as the official): load dino_vitb8',
      )
    found = promerge_images.run(
      backbone.extractor,
      arrays,
      settings=promerge_settings,
      crf=settings.crf,
      batch_size=batching.batch_size,
    )
  else:
    found = maskcut.run(
      backbone.extractor,
      arrays,
      max_objects=settings.max_objects,
      crf=settings.crf,
      batch_size=batching.batch_size,
      tau=settings.tau,
      fixed_size=settings.fixed_size,
      dtype=settings.dtype,
      solver=settings.solver,
    )
  out = []
  for image, objects in zip(arrays, found):
    box_list = np.array([mask_box(m) for m in objects.masks], np.int64).reshape(-1, 4)
    out.append(
      Objects(
        np.asarray(objects.masks, bool),
        box_list,
        np.asarray(objects.scores, np.float64),
        (int(image.shape[0]), int(image.shape[1])),
      )
    )
  return out
