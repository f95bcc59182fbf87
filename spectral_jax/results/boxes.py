"""The main object's box of one pipeline result, and each method's pipeline arguments."""

from __future__ import annotations

import numpy as np

from spectral_jax import pipeline
from spectral_jax.errors import SettingError
from spectral_jax.settings import MethodSettings
from spectral_jax.spectral import segments


def eigenvector_index(which_matrix: str) -> int:
  """The official 'infer' rule: Fiedler vector for the Laplacian, the top one for W."""
  return {'laplacian': 1, 'affinity': 0}[which_matrix]


def method_args(method: MethodSettings, segment: bool = False) -> dict:
  """``pipeline.run_images`` keywords of a method: its input for object discovery (or for its
  mask with ``segment``) and its parameters."""
  if method.name not in pipeline.METHODS:
    raise SettingError('method', method.name, f'use one of {sorted(pipeline.METHODS)}')
  spec = pipeline.METHODS[method.name]
  preprocess = spec.segment_preprocess if segment else spec.preprocess
  return dict(method=method.name, preprocess=preprocess, method_params=method.params())


def localization(r, which_matrix: str = 'laplacian') -> tuple[np.ndarray, np.ndarray, float]:
  """(box in original pixels, box in working pixels, score) of one pipeline result.

  Boxes are [x0, y0, x1, y1] with exclusive max. ``score`` is 1 − λ₁, λ₁ the Fiedler
  eigenvalue of the normalized Laplacian (DSM, TokenCut): near 1 for a clean cut, near 0 (or
  below) when the graph has no separable object, so a low score flags "no object here".
  LOST and the affinity variant have no such eigenvalue: their score is 1 (uninformative).
  """
  if r.outputs is not None:  # TokenCut / LOST: the seed component's box
    working_box = np.asarray(r.outputs['box'])
  else:
    working_box = segments.localization_box(
        r.eigenvectors, r.patch_grid, r.patch_size, r.image.shape[:2],
        index=eigenvector_index(which_matrix),
    )
  values = r.eigenvalues
  laplacian = which_matrix == 'laplacian' or r.outputs is not None
  score = 1.0 - float(values[1]) if laplacian and values is not None and len(values) > 1 else 1.0
  return np.asarray(r.box_to_original(working_box)), working_box, score
