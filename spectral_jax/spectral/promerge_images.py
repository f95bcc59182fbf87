"""ProMerge on photos: each cluster back to pixels (upsampling, MaskCut's dense CRF with
ProMerge's IoU filter, or none: protocol §7), boxes, and the batched run from uint8 photos and a
DINO ViT-B/8 extractor (``--mode=discover --config.discover.method=promerge``). The stages
themselves live in :mod:`spectral_jax.spectral.promerge`."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from spectral_jax.spectral import maskcut
from spectral_jax.spectral.promerge import (
  FEATURE_DIM,
  PATCH_SIZE,
  PromergeResult,
  PromergeSettings,
  promerge,
  prompt_masks,
  seed_positions,
)


@dataclasses.dataclass
class Discovery:
  """Final objects of one image: non-empty masks at the original size, clusters' order.

  ``clusters`` indexes ``result.clusters`` / ``masks_s`` / ``crf_iou``; clusters the CRF filter
  dropped (or whose resized mask vanished) are left out.
  """

  masks: np.ndarray  # bool [K, H, W]
  boxes: np.ndarray  # int64 [K, 4]: (x0, y0, x1, y1), exclusive max
  scores: np.ndarray  # float64 [K]: see the module doc
  clusters: np.ndarray  # int [K]
  result: PromergeResult
  image_s: np.ndarray  # uint8 [S, S, 3]: the resized image (ViT and CRF input)
  masks_s: np.ndarray  # bool [C, S, S]: each cluster upsampled (before the CRF)
  crf_iou: np.ndarray  # float64 [C]: IoU(upsampled, CRF filled) (NaN without CRF)


# ----------------------------------------------------------------------------------------------
# Back to pixels
# ----------------------------------------------------------------------------------------------


def crf_params(settings: PromergeSettings = PromergeSettings()) -> maskcut.MaskCutCRF:
  """MaskCut's CRF (the protocol: identical settings) with ProMerge's IoU filter threshold."""
  return dataclasses.replace(maskcut.CRF_PARAMS, min_iou=float(settings.crf_iou_tau))


def to_image_masks(
  clusters: np.ndarray,
  image_hw: tuple[int, int],
  size_s: tuple[int, int] = (480, 480),
  image_s: np.ndarray | None = None,
  crf: bool = True,
  settings: PromergeSettings = PromergeSettings(),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Clusters [C, h, w] → (final bool [C, H, W], upsampled bool [C, S, S], crf_iou [C]).

  Each cluster is upsampled on its own (clusters may overlap; nothing is subtracted). With
  ``crf`` (the official path, ``image_s`` required) :func:`maskcut.crf_refine` refines it,
  fills holes and empties it when IoU < ``crf_iou_tau``; without, it goes straight to the
  resize (protocol §7; ``crf_iou`` is NaN). Dropped or vanished masks are all-false planes.
  """
  c = np.asarray(clusters, bool)
  if crf and image_s is None:
    raise ValueError('crf=True needs image_s, the resized image')
  masks_s = np.zeros((len(c),) + tuple(size_s), bool)
  final = np.zeros((len(c),) + tuple(image_hw), bool)
  ious = np.full(len(c), np.nan)
  params = crf_params(settings)
  for t in range(len(c)):
    m = masks_s[t] = maskcut.upsample_masks(c[t : t + 1], size_s)[0]
    if crf:
      _, _, m, ious[t] = maskcut.crf_refine(image_s, m, params)
    final[t] = maskcut.resize_to_original(m, image_hw)
  return final, masks_s, ious


def mask_boxes(masks: np.ndarray) -> np.ndarray:
  """int64 [K, 4]: (x0, y0, x1, y1), exclusive max, of non-empty bool masks [K, H, W]."""
  m = np.asarray(masks, bool)
  rows, cols = m.any(2), m.any(1)
  y0, y1 = rows.argmax(1), rows.shape[1] - rows[:, ::-1].argmax(1)
  x0, x1 = cols.argmax(1), cols.shape[1] - cols[:, ::-1].argmax(1)
  return np.stack([x0, y0, x1, y1], 1).astype(np.int64).reshape(-1, 4)


# ----------------------------------------------------------------------------------------------
# End to end
# ----------------------------------------------------------------------------------------------


def _check_extractor(extractor: Any) -> None:
  p = extractor.arch.patch_size
  d = getattr(extractor.arch, 'embed_dim', FEATURE_DIM)
  if p != PATCH_SIZE or d != FEATURE_DIM:
    raise ValueError(
      f'ProMerge runs DINO ViT-B/8 only (patch 8, width 768, as the official asserts); '
      f'{extractor.name} has patch {p}, width {d}'
    )


def run_iter(
  extractor: Any,
  images: Iterable[np.ndarray],
  settings: PromergeSettings = PromergeSettings(),
  batch_size: int = 8,
  crf: bool | None = None,
) -> Iterator[Discovery]:
  """Photos → objects, streamed: yields one :class:`Discovery` per image, in order.

  Args:
    extractor: a ``pipeline.FeatureExtractor`` of ``dino_vitb8`` (keys of the last block:
      ``feature_block=-1``).
    images: uint8 [H_i, W_i, 3] photos (any sizes: all are resized to ``fixed_size``²).
    settings: the official knobs and the CRF switch.
    batch_size: images per ViT forward and per batched prompt step.
    crf: overrides ``settings.crf`` when given.
  """
  _check_extractor(extractor)
  if crf is not None:
    settings = dataclasses.replace(settings, crf=bool(crf))
  chunk = []
  for image in itertools.chain(images, [None]):
    if image is not None:
      chunk.append(np.asarray(image))
    if not chunk or (image is not None and len(chunk) < batch_size):
      continue
    prepped = [maskcut.preprocess(im, settings.fixed_size, PATCH_SIZE) for im in chunk]
    grid = prepped[0][2]
    n = grid[0] * grid[1]
    keys = np.asarray(extractor([pr[1] for pr in prepped], n)['k'])[: len(chunk), :n]
    seeds = seed_positions(grid, settings.stride)
    g, aff, masks = prompt_masks(keys, grid, seeds, settings.bipartition_tau)
    for i, (im, (image_s, _, _)) in enumerate(zip(chunk, prepped)):
      res = promerge(keys[i], grid, settings, prompts=(g[i], aff[i], masks[i]))
      final, masks_s, ious = to_image_masks(
        res.clusters, im.shape[:2], image_s.shape[:2], image_s, settings.crf, settings
      )
      keep = np.flatnonzero(final.any((1, 2)))
      scores = res.scores if res.scores is not None else np.zeros(0)
      yield Discovery(
        masks=final[keep],
        boxes=mask_boxes(final[keep]),
        scores=scores[keep],
        clusters=keep,
        result=res,
        image_s=image_s,
        masks_s=masks_s,
        crf_iou=ious,
      )
    chunk = []


def run(extractor: Any, images: Sequence[np.ndarray], **kwargs) -> list[Discovery]:
  """:func:`run_iter` as a list: one :class:`Discovery` per image, in order."""
  return list(run_iter(extractor, images, **kwargs))
