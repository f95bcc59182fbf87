"""The result types of one image, shared by the Python API and the HTTP server."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class Eigen:
  """Eigenpairs of one image's patch graph (the Laplacian of the DINO-key affinity).

  eigenvalues: float32 [K'] ascending (K' = K, or h·w − 1 for a tiny image).
  eigenvectors: float32 [K', h, w] on the patch grid, D-orthonormal and sign-fixed as the
    official code; eigenvectors[1] is the Fiedler vector.
  patch_grid: (h, w). patch_size: P (pixels per patch side, at working resolution).
  image_size: (H, W) of the original image. working_size: (H', W') the model saw (smaller
    than image_size only when the image had more than data.max_tokens patches); patch (i, j)
    covers rows i·P..(i+1)·P and columns j·P..(j+1)·P of it.
  """

  eigenvalues: np.ndarray
  eigenvectors: np.ndarray
  patch_grid: tuple[int, int]
  patch_size: int
  image_size: tuple[int, int]
  working_size: tuple[int, int]


@dataclasses.dataclass
class Localization:
  """The main object's box.

  box_xyxy: (x0, y0, x1, y1) in pixels of the original image, exclusive max (the CLI's
    predictions.jsonl).
  score: 1 − λ₁, λ₁ the Fiedler eigenvalue of the normalized Laplacian (it relaxes the
    normalized cut; TokenCut: of its own graph; LOST: 1, uninformative): near 1 for a clean
    cut, lower otherwise. Uncalibrated; for ranking, not thresholding. FOUND: the mean
    decoder probability of the box's component (in (0.5, 1]).
  image_size: (H, W) of the original image.
  """

  box_xyxy: tuple[int, int, int, int]
  score: float
  image_size: tuple[int, int]


@dataclasses.dataclass
class Objects:
  """The objects discovered in one image, in discovery order (n ≤ max_objects, 0 if none).

  masks: bool [n, H, W], disjoint, at the original size.
  boxes: int64 [n, 4], (x0, y0, x1, y1) of each mask, exclusive max.
  scores: float64 [n], 1 − Ncut of the cut that found each object (uncalibrated; near or
    below 0 means the cut separated nothing).
  image_size: (H, W).
  """

  masks: np.ndarray
  boxes: np.ndarray
  scores: np.ndarray
  image_size: tuple[int, int]


def mask_box(mask: np.ndarray) -> list[int]:
  """[x0, y0, x1, y1] (exclusive max) of a non-empty bool mask."""
  ys, xs = np.nonzero(mask)
  return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
