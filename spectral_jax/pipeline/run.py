"""The per-image pipeline shared by every mode: decode → ViT features → eigenvectors.

Images are decoded in background threads while the device computes, grouped by
cropped size (one compiled forward per size) and run in batches. Task runners
consume ``ImageResult`` records and decide what to write; nothing here knows
about workdirs or configs beyond the plain arguments it is given.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator, Optional, Sequence

import jax
import numpy as np
from absl import logging

from spectral_jax.models.extractor import FeatureExtractor
from spectral_jax.pipeline.batching import (
  GEOMETRIC,
  batch_capacity,
  bucket_length,
  padded_count,
  size_batches,
)
from spectral_jax.pipeline.decoding import decoded
from spectral_jax.pipeline.geometry import resize_mask, scale_box
from spectral_jax.pipeline.methods import (
  METHODS,
  PREPROCESS,
  Method,
  get_method,
  method_outputs,
  prepare_input,
  spectral_decomposition,
)
from spectral_jax.settings import MIN_TOKENS, ImageLimits


@dataclasses.dataclass
class ImageResult:
  """What the pipeline knows about one image. Arrays are numpy, on the host."""

  example: Any  # datasets.Example
  image: np.ndarray  # uint8 [H', W', 3], uncropped, at working resolution (see fit_tokens)
  patch_size: int
  patch_grid: tuple[int, int]
  features: Optional[np.ndarray] = None  # [h·w, D]
  eigenvalues: Optional[np.ndarray] = None  # [K'], K' = min(K, h·w − 1)
  eigenvectors: Optional[np.ndarray] = None  # [K', h·w]
  original_hw: Optional[tuple[int, int]] = None  # (H, W) of the file; None = image.shape
  # Object-discovery outputs of method 'tokencut' / 'lost' (see METHODS): 'patch_mask' bool
  # [h, w] (the seed's component), 'box' int64 [4] in working pixels, 'seed' (flat index);
  # LOST adds 'M' [h·w], its seed-expansion map; FOUND has no seed but 'found_logits' [h, w]
  # and 'score' (its box is None when no patch is foreground).
  outputs: Optional[dict] = None
  # Other arrays of the backbone, rows like ``features`` (see models.extractor):
  # 'x_norm_patchtokens', 'k_rope' [h·w, D]; 'low_level' [(2h)·(2w), 256].
  extras: Optional[dict] = None

  @property
  def image_hw(self) -> tuple[int, int]:
    """(H, W) of the original image: the frame every output is given in."""
    return self.original_hw or (int(self.image.shape[0]), int(self.image.shape[1]))

  @property
  def resized(self) -> bool:
    return tuple(self.image_hw) != tuple(self.image.shape[:2])

  def box_to_original(self, box_xyxy) -> np.ndarray:
    """A box [x0, y0, x1, y1] (exclusive max) in working pixels → pixels of the original."""
    return scale_box(box_xyxy, self.image.shape[:2], self.image_hw)

  def mask_to_original(self, mask: np.ndarray) -> np.ndarray:
    """A mask [H', W'] at working resolution → [H, W] (nearest)."""
    return resize_mask(mask, self.image_hw)


@dataclasses.dataclass
class _InFlight:
  """A batch whose device work has been dispatched but not waited for."""

  batch: list
  grids: list
  feats: jax.Array
  vals: Optional[jax.Array]
  vecs: Optional[jax.Array]
  outputs: Optional[dict] = None  # a method's device outputs (Method.device)
  extras: Optional[dict] = None  # the extractor's other arrays [B, r·length, C]


def _dispatch(
  extractor: FeatureExtractor,
  batch: list,
  bucket_tokens: int,
  spectral_k: int,
  color_lambda: float,
  which_matrix: str,
  solver: str,
  method: Method = METHODS['dsm'],
  preprocess: str = 'crop',
  method_params: Optional[dict] = None,
  budget: tuple[int, int, int] = (8, 1 << 15, 0),
) -> _InFlight:
  """``budget``: (batch_size, batch_tokens, max_tokens) of the run (geometric buckets pad
  the batch to ``padded_count`` images: repeats of its last crop, dropped by ``_collect``)."""
  p = extractor.arch.patch_size
  crops = [prepare_input(item[1], p, preprocess) for item in batch]
  grids = [(c.shape[0] // p, c.shape[1] // p) for c in crops]
  tokens = [h * w for h, w in grids]
  length = max(bucket_length(grids[0], bucket_tokens, budget[2]), max(tokens))
  if min(tokens) <= spectral_k:  # tiny images: one exact token count (see size_batches)
    length = max(tokens)
  elif bucket_tokens == GEOMETRIC:
    size = padded_count(len(crops), batch_capacity(length, budget[0], budget[1]))
    crops += [crops[-1]] * (size - len(crops))
  out = extractor(crops, length)
  feats = out['k']
  extras = {key: value for key, value in out.items() if key != 'k'} or None
  vals = vecs = None
  if method.device is not None:
    outputs = method_outputs(method, feats, np.array(tokens), solver, method_params)
    return _InFlight(batch, grids, feats, None, None, outputs, extras)
  if spectral_k:
    # Tiny images (no more patches than K) come in batches of one token count: K' = N − 1.
    k = min(spectral_k, min(tokens) - 1)
    if k < spectral_k:
      logging.info(
        '%s: %d patches, so %d eigenvectors instead of spectral.K=%d',
        ', '.join(str(item[0].id) for item in batch),
        min(tokens),
        k,
        spectral_k,
      )
    vals, vecs = spectral_decomposition(
      feats,
      np.array(tokens),
      [item[1] for item in batch],
      grids[0],
      k,
      color_lambda,
      which_matrix,
      solver,
    )
  return _InFlight(batch, grids, feats, vals, vecs, extras=extras)


def _nonfinite(result: ImageResult) -> str:
  for name in ('features', 'eigenvalues', 'eigenvectors'):
    value = getattr(result, name)
    if value is not None and not np.isfinite(value).all():
      return name
  return ''


def _collect(
  job: _InFlight, patch_size: int, on_error=None, method: Method = METHODS['dsm']
) -> Iterator[ImageResult]:
  feats = np.asarray(job.feats)
  outputs = None
  if job.outputs is not None:
    outputs = {key: np.asarray(value) for key, value in job.outputs.items()}
    job.vals, job.vecs = outputs.pop('eigenvalues', None), outputs.pop('eigenvectors', None)
  vals = None if job.vals is None else np.asarray(job.vals)
  vecs = None if job.vecs is None else np.asarray(job.vecs)
  extras = {key: np.asarray(value) for key, value in (job.extras or {}).items()}
  for i, (example, image, original) in enumerate(job.batch):
    n = job.grids[i][0] * job.grids[i][1]
    result = ImageResult(
      example,
      image,
      patch_size,
      job.grids[i],
      feats[i, :n],
      None if vals is None else vals[i],
      None if vecs is None else vecs[i, :, :n],
      original,
    )
    if extras:  # r rows per feature cell (4 for the ResNet's stride-4 low_level)
      result.extras = {
        key: value[i, : n * (value.shape[1] // feats.shape[1])] for key, value in extras.items()
      }
    bad = _nonfinite(result)
    if bad:  # NaN weights or an overflow: never a box from NaN eigenvectors
      error = FloatingPointError(f'non-finite {bad} (NaN or inf) for {example.label}')
      logging.warning('skipping %s: %s', example.id, error)
      if on_error is not None:
        on_error(example, error)
      continue
    if outputs is not None:
      try:
        mine = {key: value[i] for key, value in outputs.items()}
        result.outputs = method.host(mine, job.grids[i], patch_size, image.shape[:2])
      except ValueError as error:  # e.g. a seed outside its own side: never a made-up box
        logging.warning('skipping %s: %s', example.id, error)
        if on_error is not None:
          on_error(example, error)
        continue
    yield result


def run_images(
  extractor: FeatureExtractor,
  examples: Sequence[Any],
  *,
  batch_size: int,
  limits: ImageLimits = ImageLimits(),
  spectral_k: int = 0,
  color_lambda: float = 0.0,
  which_matrix: str = 'laplacian',
  solver: str = 'auto',
  bucket_tokens: int = 32,
  batch_tokens: int = 1 << 15,
  on_error: Optional[Callable[[Any, Exception], None]] = None,
  method: str = 'dsm',
  preprocess: str = '',
  method_params: Optional[dict] = None,
) -> Iterator[ImageResult]:
  """Features (and eigenpairs if spectral_k > 0) for every readable image.

  ``method`` (see METHODS): 'dsm' (Deep Spectral Methods: cropped input, ``spectral_k``
  eigenpairs), 'tokencut' (eigenpairs λ0..λ2 and ``outputs``), 'lost' or 'found' (``outputs``
  only), with ``method_params`` (tokencut: tau, eps; lost: k_patches; found: the decoder's
  weight tuple and bias, see ``results.boxes.method_args``); ``preprocess`` overrides the
  method's input ('crop' | 'pad' | 'resize', see ``prepare_input``). Every method shares the
  batching, token budget, working resolution and error handling below.

  Images above ``limits.max_tokens`` patches run downscaled (``fit_tokens``; results carry
  ``original_hw`` to map outputs back). Images run as patch sequences padded to token counts
  rounded up to ``bucket_tokens``, so a dataset with many sizes compiles a few shapes
  (500×375 and 375×500 share one); batches hold at most ``batch_size`` images and
  ``batch_tokens`` tokens. ``bucket_tokens=-1`` (``GEOMETRIC``): the token ladder of
  ``batching.ladder_length`` capped at ``limits.max_tokens``, batches padded to powers of two
  images. The colour and affinity variants batch images of the same grid
  only. Decoding runs in threads ahead of the device, and the next batch is dispatched before
  the previous one's results are handed out, so host work overlaps device work. Unreadable,
  too small or non-finite images go to ``on_error`` and are not yielded.
  """
  p = extractor.arch.patch_size
  spec = get_method(method)
  if spec.check is not None:
    spec.check(extractor)
  preprocess = preprocess or spec.preprocess
  if preprocess not in PREPROCESS:
    raise ValueError(f'preprocess={preprocess!r}: use one of {PREPROCESS}')
  if spec.device is not None:  # the method's own graph: no DSM eigenpairs or colour term
    spectral_k, color_lambda, which_matrix = 0, 0.0, 'laplacian'
  same_grid = color_lambda > 0 or which_matrix != 'laplacian'
  if same_grid:
    bucket_tokens = 0
  if spectral_k or spec.device is not None:
    limits = dataclasses.replace(limits, min_tokens=max(limits.min_tokens, MIN_TOKENS))
  items = decoded(examples, p, limits, on_error=on_error)
  in_flight = None
  batches = size_batches(
    items,
    p,
    batch_size,
    bucket_tokens,
    same_grid,
    batch_tokens,
    spectral_k,
    preprocess,
    limits.max_tokens,
  )
  for batch in batches:
    job = _dispatch(
      extractor,
      batch,
      bucket_tokens,
      spectral_k,
      color_lambda,
      which_matrix,
      solver,
      spec,
      preprocess,
      method_params,
      (batch_size, batch_tokens, limits.max_tokens),
    )
    if in_flight is not None:
      yield from _collect(in_flight, p, on_error, spec)
    in_flight = job
  if in_flight is not None:
    yield from _collect(in_flight, p, on_error, spec)
