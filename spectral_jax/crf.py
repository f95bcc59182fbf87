"""Dense CRF refinement of label maps, with the official parameters.

The official code calls SimpleCRF, which does not build against NumPy 2. We call
``pydensecrf2`` (the same Krähenbühl–Koltun permutohedral implementation, NumPy-2
compatible), set up exactly as SimpleCRF does: probabilities clipped to
[0.01, 0.99], unary = −log p, a bilateral Potts term (w1, α, β) on pixel
coordinates and raw RGB, a spatial Potts term (w2, γ), symmetric normalisation,
``iterations`` mean-field steps, then argmax.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class CRFParams:
  w1: float = 10.0  # bilateral weight
  alpha: float = 80.0  # bilateral spatial std (pixels)
  beta: float = 13.0  # bilateral colour std (0–255 RGB)
  w2: float = 3.0  # spatial weight
  gamma: float = 3.0  # spatial std (pixels)
  iterations: int = 5


def _densecrf():
  try:
    import pydensecrf.densecrf as densecrf  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(
        'CRF refinement needs pydensecrf2: `pip install pydensecrf2` (it compiles '
        'a small C++ extension), or turn it off with --config.segment.crf=False'
    ) from e
  return densecrf


def refine_labels(
    image: np.ndarray, labels: np.ndarray, num_classes: int, params: CRFParams = CRFParams()
) -> np.ndarray:
  """image uint8 [H, W, 3], labels int [H, W] in [0, num_classes) → refined int [H, W]."""
  if image.shape[:2] != labels.shape:
    raise ValueError(f'image {image.shape[:2]} and labels {labels.shape} differ in size')
  h, w = labels.shape
  probs = np.eye(num_classes, dtype=np.float32)[labels.reshape(-1)].T  # [C, H·W] one-hot
  unary = -np.log(np.clip(probs, 0.01, 0.99))
  crf = _densecrf().DenseCRF2D(w, h, num_classes)
  crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
  crf.addPairwiseGaussian(sxy=params.gamma, compat=params.w2)
  crf.addPairwiseBilateral(
      sxy=params.alpha,
      srgb=params.beta,
      rgbim=np.array(image, dtype=np.uint8, order='C'),  # a writable copy: pydensecrf needs one
      compat=params.w1,
  )
  q = np.asarray(crf.inference(int(params.iterations)), dtype=np.float32)
  return q.argmax(0).reshape(h, w).astype(labels.dtype)


def refine_mask(image: np.ndarray, mask: np.ndarray, params: CRFParams = CRFParams()) -> np.ndarray:
  """Binary version: bool [H, W] → bool [H, W]."""
  return refine_labels(image, mask.astype(np.int32), 2, params).astype(bool)
