"""crf.py against a brute-force dense CRF (exact Gaussian kernels, same mean-field updates)."""

import sys

import numpy as np
import pytest

from spectral_jax import errors
from spectral_jax.imaging import crf
from spectral_jax.spectral import maskcut


def brute_force_crf(image, labels, num_classes, p: crf.CRFParams):
  h, w = labels.shape
  ys, xs = np.mgrid[:h, :w]
  pos = np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float64)
  rgb = image.reshape(-1, 3).astype(np.float64)
  d_pos = ((pos[:, None] - pos[None]) ** 2).sum(-1)
  d_rgb = ((rgb[:, None] - rgb[None]) ** 2).sum(-1)
  kernels = [
    (p.w1, np.exp(-d_pos / (2 * p.alpha**2) - d_rgb / (2 * p.beta**2))),
    (p.w2, np.exp(-d_pos / (2 * p.gamma**2))),
  ]
  unary = -np.log(np.clip(np.eye(num_classes)[labels.ravel()], 0.01, 0.99))
  q = np.exp(-unary)
  q /= q.sum(1, keepdims=True)
  for _ in range(p.iterations):
    energy = -unary
    for weight, k in kernels:
      norm = 1 / np.sqrt(k.sum(1) + 1e-20)
      energy = energy + weight * norm[:, None] * (k @ (norm[:, None] * q))
    q = np.exp(energy - energy.max(1, keepdims=True))
    q /= q.sum(1, keepdims=True)
  return q.argmax(1).reshape(h, w)


@pytest.mark.parametrize('shift', [-3, 3])
def test_boundary_snaps_to_the_colour_edge_like_the_exact_crf(shift):
  rng = np.random.default_rng(0)
  h, w = 16, 24
  image = np.zeros((h, w, 3), np.uint8)
  image[:, :12] = (200, 40, 40)
  image[:, 12:] = (40, 60, 210)
  image = np.clip(image + rng.integers(-10, 10, image.shape), 0, 255).astype(np.uint8)
  truth = np.zeros((h, w), np.int32)
  truth[:, 12:] = 1
  labels = np.zeros((h, w), np.int32)
  labels[:, 12 + shift :] = 1  # a patch-accurate mask, a few pixels off
  params = crf.CRFParams()  # the official parameters
  exact = brute_force_crf(image, labels, 2, params)
  ours = crf.refine_labels(image, labels, 2, params)
  assert (exact == truth).mean() > (labels == truth).mean()  # the oracle does fix it
  assert (ours == exact).mean() >= 0.99
  assert (ours == truth).mean() >= 0.99


def test_refine_mask_shapes_and_errors():
  image = np.zeros((8, 9, 3), np.uint8)
  out = crf.refine_mask(image, np.ones((8, 9), bool))
  assert out.dtype == bool and out.shape == (8, 9)
  with pytest.raises(ValueError, match='differ in size'):
    crf.refine_mask(image, np.ones((8, 8), bool))


def test_read_only_images_are_refined_like_writable_ones():
  """Images decoded through PIL (np.asarray of a resized image) are read-only arrays; the
  CRF must not refuse them (pydensecrf needs a writable buffer)."""
  rng = np.random.default_rng(2)
  image = rng.integers(0, 255, (12, 14, 3)).astype(np.uint8)
  mask = np.zeros((12, 14), bool)
  mask[3:9, 4:11] = True
  frozen = image.copy()
  frozen.setflags(write=False)
  np.testing.assert_array_equal(crf.refine_mask(frozen, mask), crf.refine_mask(image, mask))


def test_missing_pydensecrf_names_the_pip_command_only(monkeypatch):
  """A library message: the pip command, no front-end flag (front-ends say how to turn the CRF
  off); an ImportError subclass the front-ends can catch by type."""
  monkeypatch.setitem(sys.modules, 'pydensecrf.densecrf', None)  # import → ImportError
  with pytest.raises(errors.MissingDependencyError) as info:
    crf.refine_mask(np.zeros((4, 5, 3), np.uint8), np.ones((4, 5), bool))
  assert isinstance(info.value, ImportError)
  assert 'pip install pydensecrf2' in str(info.value) and '--config' not in str(info.value)
  with pytest.raises(ImportError, match='pip install pydensecrf2'):
    maskcut.crf_refine(np.zeros((4, 5, 3), np.uint8), np.ones((4, 5), bool))


def test_maskcut_setup_through_the_one_wrapper():
  """MaskCut's parameter names map onto the wrapper's, and its unary is the softmax of the
  0/1 mask's two logits (1 − m, m), clipped at 1e-5 before the log."""
  assert maskcut.CRF_PARAMS.pairwise == crf.MASKCUT_PARAMS
  p = crf.MASKCUT_PARAMS
  assert (p.w1, p.alpha, p.beta, p.w2, p.gamma, p.iterations) == (10, 50, 5, 7, 3, 10)
  mask = np.array([[True, False, True]])
  on = -np.log(np.e / (np.e + 1))  # −log softmax of the larger logit
  off = -np.log(1 / (np.e + 1))
  want = np.array([[off, on, off], [on, off, on]], np.float32)
  np.testing.assert_allclose(crf.unary_softmax(mask), want, rtol=1e-6)
  assert crf.unary_softmax(mask).dtype == np.float32
