"""Token batching: images grouped by bucketed token count into bounded batches, so a folder of
many sizes compiles a few shapes."""

from __future__ import annotations

import collections
import math
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from spectral_jax.pipeline.methods import input_grid

# data.bucket_tokens = -1 (the default): token counts go up to the next rung of a geometric
# ladder, LADDER_RUNGS per octave from LADDER_START tokens (64, 96, 112, 128, 176, 208, 256,
# ..., 816, 1024, ..., 5168, 6512: ×1.26, multiples of 16), the top rung capped at the
# image limit (data.max_tokens, where downscaled images land), and batches are padded to a
# power of two images. A folder of 50 sizes from 200 to 1600 px runs as ~13 compiled shapes
# instead of ~42 at 32-token steps, for +20 % padded tokens (benchmarks/bench_first_result.py).
GEOMETRIC = -1
LADDER_START = 64
LADDER_RUNGS = 3
LADDER_MULTIPLE = 16


def ladder_length(n: int, cap: int = 0) -> int:
  """The smallest ladder rung ≥ ``n`` tokens, at most ``cap`` (if > 0) but never below ``n``."""
  k = 0
  while True:
    rung = LADDER_START * 2 ** (k / LADDER_RUNGS)
    rung = -(-math.ceil(rung - 1e-9) // LADDER_MULTIPLE) * LADDER_MULTIPLE
    if rung >= n:
      break
    k += 1
  return max(n, min(rung, cap)) if cap > 0 else rung


def bucket_length(grid: tuple[int, int], step: int, cap: int = 0) -> int:
  """A grid's token count h·w rounded up to a multiple of ``step`` (0 = exact; ``GEOMETRIC``
  = the next ladder rung, ``ladder_length``, capped at ``cap`` tokens)."""
  n = grid[0] * grid[1]
  if step == GEOMETRIC:
    return ladder_length(n, cap)
  return -(-n // step) * step if step > 0 else n


def padded_count(count: int, capacity: int) -> int:
  """Images a batch of ``count`` runs as under geometric buckets: the next power of two, at
  most ``capacity`` (``batch_capacity``), so a bucket compiles for a few batch sizes only."""
  return max(count, min(1 << (count - 1).bit_length(), capacity))


# Largest B·N² of a batch's affinity matrices (float32: 256 MiB per copy).
MAX_BATCH_PAIRS = 1 << 26


def batch_capacity(length: int, batch_size: int, batch_tokens: int) -> int:
  """Images per batch at ``length`` tokens: ≤ batch_size, B·L ≤ batch_tokens, B·L² bounded."""
  return max(1, min(batch_size, batch_tokens // length, MAX_BATCH_PAIRS // (length * length)))


def size_batches(
  items: Iterable[tuple[Any, np.ndarray, Any]],
  patch_size: int,
  batch_size: int,
  bucket_tokens: int = 0,
  same_grid: bool = False,
  batch_tokens: int = 1 << 15,
  spectral_k: int = 0,
  preprocess: str = 'crop',
  max_tokens: int = 0,
) -> Iterator[list[tuple[Any, np.ndarray, Any]]]:
  """Groups images by bucketed token count (or by exact patch grid if ``same_grid``) of their
  model input (``input_grid`` for ``preprocess``).

  A group is emitted when its token budget is full (``batch_capacity``), the rest at the
  end; memory stays bounded by (number of buckets) × one batch. Images with no more than
  ``spectral_k`` patches group by their exact count (their K is clamped to count − 1).
  ``max_tokens`` caps the geometric buckets (``bucket_length``).
  """
  groups: dict[Any, list] = collections.defaultdict(list)
  for item in items:
    grid = input_grid(item[1].shape[:2], patch_size, preprocess)
    n = grid[0] * grid[1]
    if same_grid:
      key, length = grid, n
    elif spectral_k and n <= spectral_k:
      key, length = ('exact', n), n
    else:
      key = length = bucket_length(grid, bucket_tokens, max_tokens)
    groups[key].append(item)
    if len(groups[key]) >= batch_capacity(length, batch_size, batch_tokens):
      yield groups.pop(key)
  yield from groups.values()


def cls_batch(extractor, crops: Sequence[np.ndarray], bucket_tokens: int = 64) -> np.ndarray:
  """Final-normed CLS tokens [n, D] of uint8 crops [h, w, 3] (multiples of the patch size) from
  a ViT extractor (DINO, DINOv2 or DINOv3).

  Crops share token-count buckets (the CLS token attends only to real patches, so the
  result equals the unpadded forward) and group sizes are padded to powers of two, so
  boxes of every size and count compile a bounded number of shapes.
  """
  p = extractor.arch.patch_size
  out = np.zeros((len(crops), extractor.arch.embed_dim), np.float32)
  groups = collections.defaultdict(list)
  for i, crop in enumerate(crops):
    groups[bucket_length((crop.shape[0] // p, crop.shape[1] // p), bucket_tokens)].append(i)
  for length, members in groups.items():
    size = 1 << (len(members) - 1).bit_length()
    group = [crops[i] for i in members] + [crops[members[-1]]] * (size - len(members))
    cls = extractor(group, length, with_cls=True)['cls']
    out[members] = np.asarray(cls)[: len(members)]
  return out
