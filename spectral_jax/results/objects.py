"""Discovered objects of one image: the discover method table (MaskCut, ProMerge), each method's
batch step on keys and its per-image post-processing (back to pixels, optional CRF, COCO RLE),
and the instance map. The post-processing functions are module-level so CRF worker processes
can run them."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from spectral_jax import coco, errors
from spectral_jax.settings import PromergeSettings
from spectral_jax.spectral import maskcut, promerge, promerge_images


def instance_map(masks: np.ndarray, image_hw: tuple[int, int]) -> np.ndarray:
  """Disjoint bool [K, H, W] → uint8 [H, W] with 0 = background, i = object i (1-based)."""
  out = np.zeros(image_hw, np.uint8)
  for i, m in enumerate(masks):
    out[m & (out == 0)] = i + 1  # masks are disjoint by construction; first one wins anyway
  return out


def image_objects(
  patch_masks: np.ndarray,
  scores: np.ndarray,
  original_hw: tuple[int, int],
  image_s: np.ndarray,
  crf: bool,
) -> tuple[list[dict], np.ndarray]:
  """One image's host post-processing (what a CRF worker process runs).

  Kept patch masks bool [T, h, w] and scores [T] → (objects: ``{'segmentation': RLE, 'score',
  'iteration'}`` per non-empty final mask in discovery order, instance map uint8 [H, W]).
  """
  final, _ = maskcut.to_image_masks(patch_masks, original_hw, image_s.shape[:2], image_s, crf)
  keep = np.flatnonzero(final.reshape(len(final), -1).any(1))
  if not np.isfinite(scores[keep]).all():
    raise ValueError(f'non-finite object scores {scores[keep]}')
  objects = [
    {'segmentation': coco.encode(final[t]), 'score': float(scores[t]), 'iteration': int(t)}
    for t in keep
  ]
  return objects, instance_map(final[keep], original_hw)


def promerge_objects(
  clusters: np.ndarray,
  scores: np.ndarray,
  settings: PromergeSettings,
  original_hw: tuple[int, int],
  image_s: np.ndarray,
  crf: bool,
) -> tuple[list[dict], np.ndarray]:
  """``image_objects`` for ProMerge: clusters bool [C, h, w] (they may overlap) back to pixels
  (MaskCut's CRF with ProMerge's IoU filter, or none), empty ones dropped. Where masks overlap
  the instance map shows the earlier object."""
  final, _, _ = promerge_images.to_image_masks(
    clusters, original_hw, image_s.shape[:2], image_s, crf, settings
  )
  keep = np.flatnonzero([m.any() for m in final]).astype(int)  # an image may have no cluster
  if not np.isfinite(scores[keep]).all():
    raise ValueError(f'non-finite object scores {scores[keep]}')
  objects = [
    {'segmentation': coco.encode(final[t]), 'score': float(scores[t]), 'iteration': int(t)}
    for t in keep
  ]
  return objects, instance_map(final[keep], original_hw)


def _maskcut_chunk(keys: np.ndarray, grid, run_settings) -> list[tuple[Any, tuple]]:
  """MaskCut on a batch of keys [B, N, D]: per image (post-processing, its first arguments)."""
  d = run_settings.discover
  results = maskcut.discover(
    keys, grid, d.max_objects, d.tau, eps=d.eps, dtype=d.dtype, solver=d.solver
  )
  return [(image_objects, (res.patch_masks, res.scores)) for res in results]


def _promerge_chunk(keys: np.ndarray, grid, run_settings) -> list[tuple[Any, tuple]]:
  """ProMerge on a batch of keys: the prompt step batched on the device, the rest per image."""
  ps = run_settings.promerge
  seeds = promerge.seed_positions(grid, ps.stride)
  g, aff, masks = promerge.prompt_masks(keys, grid, seeds, ps.bipartition_tau)
  out = []
  for i in range(len(keys)):
    res = promerge.promerge(keys[i], grid, ps, prompts=(g[i], aff[i], masks[i]))
    scores = res.scores if res.scores is not None else np.zeros(0)
    out.append((promerge_objects, (res.clusters, scores, ps)))
  return out


@dataclasses.dataclass(frozen=True)
class DiscoverMethod:
  """One entry of the discover method table: its square input size and its batch step."""

  fixed_size: Any  # Settings → int
  chunk: Any  # (keys [B, N, D], grid, Settings) → [(post-processing fn, its first args)]
  check: Any = None  # extractor → None, or raises a SettingError


def _check_promerge_backbone(extractor, model_name: str) -> None:
  p, width = extractor.arch.patch_size, getattr(extractor.arch, 'embed_dim', 0)
  if (p, width) != (promerge.PATCH_SIZE, promerge.FEATURE_DIM):
    raise errors.SettingError(
      'model.name',
      model_name,
      f'ProMerge runs DINO ViT-B/8 only (patch 8, width 768, as the official); this backbone '
      f'has patch {p}, width {width}: use model.name=dino_vitb8',
    )


METHODS = {
  'maskcut': DiscoverMethod(lambda s: s.discover.fixed_size, _maskcut_chunk),
  'promerge': DiscoverMethod(
    lambda s: s.promerge.fixed_size, _promerge_chunk, _check_promerge_backbone
  ),
}
