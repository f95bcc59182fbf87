"""Decoding ahead of the device: images are read (or taken from memory) in background threads,
in order, a bounded window ahead, and brought to working resolution there."""

from __future__ import annotations

import collections
import concurrent.futures
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
from absl import logging

from spectral_jax.data import datasets
from spectral_jax.errors import BadImageError
from spectral_jax.pipeline.geometry import fit_tokens
from spectral_jax.settings import ImageLimits


def _decode(example, patch_size: int, limits: ImageLimits):
  """(example, working image, original (H, W), error) — errors are returned, never raised."""
  try:
    image = datasets.load_image(example, min_side=patch_size, max_pixels=limits.max_pixels)
    original = (int(image.shape[0]), int(image.shape[1]))
    name = example.label
    image = fit_tokens(image, patch_size, limits.max_tokens, limits.resize_large, name)
    tokens = (image.shape[0] // patch_size) * (image.shape[1] // patch_size)
    if tokens < limits.min_tokens:
      size = f'{image.shape[1]}x{image.shape[0]}'
      if (image.shape[0], image.shape[1]) != original:  # too elongated to downscale
        size = (
          f'{original[1]}x{original[0]}, downscaled to {size} for '
          f'data.max_tokens={limits.max_tokens},'
        )
      raise BadImageError(
        name,
        f'{size} has {tokens} patches of {patch_size} px; at least {limits.min_tokens} are needed',
      )
    return example, image, original, None
  except (OSError, ValueError, MemoryError) as e:  # one bad image must not stop a dataset run
    return example, None, None, e


def decoded(
  examples: Sequence[Any],
  patch_size: int,
  limits: ImageLimits = ImageLimits(),
  workers: int = 4,
  on_error: Optional[Callable[[Any, Exception], None]] = None,
) -> Iterator[tuple[Any, np.ndarray, tuple[int, int]]]:
  """(example, working image, original (H, W)) per readable image, decoded in background
  threads, in order, a bounded window ahead (large images are downscaled in the thread, so
  the window holds working-size images only)."""
  window = max(2 * workers, 8)
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    pending = collections.deque()
    it = iter(examples)
    for ex in it:
      pending.append(pool.submit(_decode, ex, patch_size, limits))
      if len(pending) >= window:
        yield from _finish(pending.popleft(), on_error)
    while pending:
      yield from _finish(pending.popleft(), on_error)


def _finish(future, on_error):
  example, image, original, error = future.result()
  if error is not None:
    # A BadImageError names its image already: its reason only, after the name.
    logging.warning('skipping %s: %s', example.label, getattr(error, 'reason', error))
    if on_error is not None:
      on_error(example, error)
    return
  yield example, image, original
