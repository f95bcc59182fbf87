"""The main object's box of one pipeline result, and each method's pipeline arguments."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from spectral_jax import pipeline
from spectral_jax.errors import SettingError
from spectral_jax.models.weights import downloads
from spectral_jax.models.weights.errors import CheckpointError
from spectral_jax.settings import MethodSettings
from spectral_jax.spectral import found, segments


def eigenvector_index(which_matrix: str) -> int:
  """The official 'infer' rule: Fiedler vector for the Laplacian, the top one for W."""
  return {'laplacian': 1, 'affinity': 0}[which_matrix]


def decoder_file(decoder: str, cache_dir: str = '') -> Path:
  """FOUND's decoder file of ``found.decoder``: '' = the official file (downloaded once into
  the weights cache), a URL (downloaded), else a local path. Offline: SettingError
  'found.decoder'."""
  try:
    if not decoder:
      return downloads.official_file('found_decoder', cache_dir or None, setting='found.decoder')
    if downloads.is_url(decoder):
      return downloads.download(decoder, cache_dir or None, setting='found.decoder')
  except CheckpointError as e:
    raise SettingError('found.decoder', decoder, str(e)) from e
  return Path(decoder).expanduser()


@functools.lru_cache(maxsize=8)
def _decoder_params(path: str, size: int, mtime_ns: int) -> tuple[tuple, float]:
  del size, mtime_ns  # the cache key: a rewritten file is read again
  weight, bias = found.read_decoder(path, pipeline.FOUND_ARCH[1])
  return tuple(float(v) for v in weight), float(bias)


def found_params(decoder: str, cache_dir: str = '') -> dict:
  """The device parameters of method 'found': the decoder's weight (a tuple of floats, hashable
  for the jitted step's cache) and bias. A missing, unreadable or wrong file raises
  SettingError 'found.decoder' (from found.DecoderFileError, which says what was expected)."""
  path = decoder_file(decoder, cache_dir)
  try:
    st = path.stat() if path.is_file() else None
    weight, bias = _decoder_params(
      str(path.absolute()), st.st_size if st else -1, st.st_mtime_ns if st else -1
    )
  except found.DecoderFileError as e:
    raise SettingError('found.decoder', decoder, e.reason) from e
  return dict(weight=weight, bias=bias)


def method_args(method: MethodSettings, segment: bool = False, cache_dir: str = '') -> dict:
  """``pipeline.run_images`` keywords of a method: its input for object discovery (or for its
  mask with ``segment``) and its parameters (FOUND: its decoder, read here; ``cache_dir``:
  where the official one is downloaded, '' = the default weights cache)."""
  if method.name not in pipeline.METHODS:
    raise SettingError('method', method.name, f'use one of {sorted(pipeline.METHODS)}')
  spec = pipeline.METHODS[method.name]
  preprocess = spec.segment_preprocess if segment else spec.preprocess
  params = method.params()
  if method.name == 'found':
    params = found_params(method.found.decoder, cache_dir)
  return dict(method=method.name, preprocess=preprocess, method_params=params)


def localization(r, which_matrix: str = 'laplacian') -> tuple[np.ndarray, np.ndarray, float]:
  """(box in original pixels, box in working pixels, score) of one pipeline result.

  Boxes are [x0, y0, x1, y1] with exclusive max. ``score`` is 1 − λ₁, λ₁ the Fiedler
  eigenvalue of the normalized Laplacian (DSM, TokenCut): near 1 for a clean cut, near 0 (or
  below) when the graph has no separable object, so a low score flags "no object here".
  LOST and the affinity variant have no such eigenvalue: their score is 1 (uninformative).
  FOUND: the box of its largest foreground component (the official object-discovery rule) and
  the mean probability of that component's patches; a ValueError if no patch is foreground.
  """
  if r.outputs is not None and pipeline.FOUND_LOGITS in r.outputs:  # FOUND
    if r.outputs['box'] is None:
      raise ValueError(
        f'{r.example.label}: FOUND finds no foreground patch (every probability <= 0.5), '
        'hence no box'
      )
    working_box = np.asarray(r.outputs['box'])
    return np.asarray(r.box_to_original(working_box)), working_box, float(r.outputs['score'])
  if r.outputs is not None:  # TokenCut / LOST: the seed component's box
    working_box = np.asarray(r.outputs['box'])
  else:
    working_box = segments.localization_box(
      r.eigenvectors,
      r.patch_grid,
      r.patch_size,
      r.image.shape[:2],
      index=eigenvector_index(which_matrix),
    )
  values = r.eigenvalues
  laplacian = which_matrix == 'laplacian' or r.outputs is not None
  score = 1.0 - float(values[1]) if laplacian and values is not None and len(values) > 1 else 1.0
  return np.asarray(r.box_to_original(working_box)), working_box, score
