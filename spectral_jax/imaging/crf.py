"""Dense CRF refinement of label maps and masks: the one wrapper of pydensecrf.

Two official set-ups share one inference (:func:`infer`: a spatial Potts term (w2, γ), a
bilateral Potts term (w1, α, β) on pixel coordinates and raw RGB, symmetric normalisation,
``iterations`` mean-field steps) and differ in their unary and parameters:

* Deep Spectral Methods (:func:`refine_labels`, :func:`refine_mask`, ``CRFParams()``). The
  official code calls SimpleCRF, which does not build against NumPy 2. We call ``pydensecrf2``
  (the same Krähenbühl–Koltun permutohedral implementation, NumPy-2 compatible), set up exactly
  as SimpleCRF does: one-hot probabilities clipped to [0.01, 0.99], unary = −log p
  (:func:`unary_clipped`).
* MaskCut (``spectral.maskcut.crf_refine``, :data:`MASKCUT_PARAMS`): unary = −log of the
  softmax of the 0/1 mask's two logits (:func:`unary_softmax`), 10 iterations.

A missing pydensecrf raises :class:`spectral_jax.errors.MissingDependencyError` (an
ImportError) naming the pip command; front-ends add how to run without the CRF.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class CRFParams:
  """Pairwise terms and iterations (SimpleCRF's names); the defaults are DSM's official ones."""

  w1: float = 10.0  # bilateral weight
  alpha: float = 80.0  # bilateral spatial std (pixels)
  beta: float = 13.0  # bilateral colour std (0–255 RGB)
  w2: float = 3.0  # spatial weight
  gamma: float = 3.0  # spatial std (pixels)
  iterations: int = 5


#: MaskCut's official CRF: bilateral (sxy 50, srgb 5, compat 10), gaussian (sxy 3, compat 7).
MASKCUT_PARAMS = CRFParams(w1=10.0, alpha=50.0, beta=5.0, w2=7.0, gamma=3.0, iterations=10)


def densecrf():
  """The ``pydensecrf.densecrf`` module, or MissingDependencyError naming the pip command."""
  try:
    import pydensecrf.densecrf as module  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    from spectral_jax import errors  # pylint: disable=import-outside-toplevel

    raise errors.MissingDependencyError(
      'dense CRF refinement', 'pip install pydensecrf2 (it compiles a small C++ extension)'
    ) from e
  return module


def unary_clipped(labels: np.ndarray, num_classes: int) -> np.ndarray:
  """SimpleCRF's unary of a hard label map int [H, W]: −log(clip(one-hot, 0.01, 0.99)),
  float32 [C, H·W]."""
  probs = np.eye(num_classes, dtype=np.float32)[labels.reshape(-1)].T  # [C, H·W] one-hot
  return -np.log(np.clip(probs, 0.01, 0.99))


def unary_softmax(mask: np.ndarray) -> np.ndarray:
  """MaskCut's unary of a 0/1 mask [H, W]: −log(max(softmax([1 − m, m]), 1e-5)), computed in
  float64, float32 [2, H·W]."""
  m = np.asarray(mask, np.float64)
  logits = np.stack([1.0 - m, m]).reshape(2, -1)
  p = np.exp(logits) / np.exp(logits).sum(0, keepdims=True)
  return (-np.log(np.maximum(p, 1e-5))).astype(np.float32)


def infer(image: np.ndarray, unary: np.ndarray, params: CRFParams = CRFParams()) -> np.ndarray:
  """Mean-field marginals float32 [C, H·W] of image uint8 [H, W, 3] and unary [C, H·W]."""
  h, w = image.shape[:2]
  crf = densecrf().DenseCRF2D(w, h, unary.shape[0])
  crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
  crf.addPairwiseGaussian(sxy=params.gamma, compat=params.w2)
  crf.addPairwiseBilateral(
    sxy=params.alpha,
    srgb=params.beta,
    rgbim=np.array(image, dtype=np.uint8, order='C'),  # a writable copy: pydensecrf needs one
    compat=params.w1,
  )
  return np.asarray(crf.inference(int(params.iterations)), dtype=np.float32)


def refine_labels(
  image: np.ndarray, labels: np.ndarray, num_classes: int, params: CRFParams = CRFParams()
) -> np.ndarray:
  """image uint8 [H, W, 3], labels int [H, W] in [0, num_classes) → refined int [H, W]."""
  if image.shape[:2] != labels.shape:
    raise ValueError(f'image {image.shape[:2]} and labels {labels.shape} differ in size')
  q = infer(image, unary_clipped(labels, num_classes), params)
  return q.argmax(0).reshape(labels.shape).astype(labels.dtype)


def refine_mask(image: np.ndarray, mask: np.ndarray, params: CRFParams = CRFParams()) -> np.ndarray:
  """Binary version: bool [H, W] → bool [H, W]."""
  return refine_labels(image, mask.astype(np.int32), 2, params).astype(bool)
