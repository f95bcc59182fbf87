"""Tests for spectral_jax.training.augment: torchvision / OpenCV formulas as brute-force oracles."""

import numpy as np

from spectral_jax.training import augment
from spectral_jax.training import loop
from tests.test_train import synthetic


def test_random_resized_crop_box_is_valid():
  rng = np.random.default_rng(0)
  for _ in range(200):
    top, left, h, w = augment.random_resized_crop_box(rng, 50, 80, (0.08, 1.0), (3 / 4, 4 / 3))
    assert 0 <= top and top + h <= 50 and 0 <= left and left + w <= 80 and h > 0 and w > 0
  # Impossible scale → torchvision's fallback: central crop clamped to the ratio range.
  box = augment.random_resized_crop_box(rng, 40, 100, (2.0, 3.0), (3 / 4, 4 / 3))
  assert box == (0, 23, 40, 53)


def test_augment_keeps_labels_and_is_reproducible():
  image, gt = synthetic(1)[0]
  cfg = loop.TrainConfig(crop_size=32)
  a = augment.augment(image, gt, np.random.default_rng(5), cfg)
  b = augment.augment(image, gt, np.random.default_rng(5), cfg)
  assert a[0].shape == (32, 32, 3) and a[0].dtype == np.uint8 and a[1].shape == (32, 32)
  np.testing.assert_array_equal(a[0], b[0])
  assert set(np.unique(a[1])) <= set(np.unique(gt))  # nearest: no interpolated labels
  # Whole-image crop, no jitter: the output is the input or its mirror image.
  plain = loop.TrainConfig(
    crop_size=64, scale=(1, 1), ratio=(1, 1), jitter_p=0.0, gray_p=0.0, blur_p=0.0
  )
  flips = set()
  for seed in range(6):
    img, lab = augment.augment(image, gt, np.random.default_rng(seed), plain)
    flipped = np.array_equal(lab, gt[:, ::-1])
    np.testing.assert_array_equal(lab, gt[:, ::-1] if flipped else gt)
    np.testing.assert_array_equal(img, image[:, ::-1] if flipped else image)
    flips.add(flipped)
  assert flips == {True, False}


def test_to_gray_is_the_luma_formula_on_every_channel():
  image = np.random.default_rng(0).integers(0, 256, (9, 7, 3)).astype(np.uint8)
  got = augment.to_gray(image)
  luma = image.astype(np.float64) @ [0.299, 0.587, 0.114]
  assert got.dtype == np.uint8 and (got == got[..., :1]).all()
  assert np.abs(got[..., 0] - luma).max() <= 0.51


def test_gaussian_blur_equals_a_brute_force_convolution():
  """Oracle: explicit 2-D sum over the kernel window with numpy's reflect (= reflect-101)."""
  image = np.random.default_rng(1).integers(0, 256, (12, 10, 3)).astype(np.uint8)
  for seed in range(6):
    ksize = int(np.random.default_rng(seed).choice([3, 5, 7]))
    got = augment.gaussian_blur(image, np.random.default_rng(seed))
    sigma = 0.3 * ((ksize - 1) * 0.5 - 1) + 0.8
    r = ksize // 2
    padded = np.pad(image.astype(np.float64), ((r, r), (r, r), (0, 0)), mode='reflect')
    want = np.zeros(image.shape)
    total = 0.0
    for dy in range(-r, r + 1):
      for dx in range(-r, r + 1):
        w = np.exp(-(dy * dy + dx * dx) / (2 * sigma**2))
        want += w * padded[r + dy : r + dy + 12, r + dx : r + dx + 10]
        total += w
    assert np.abs(got - np.round(want / total)).max() <= 1, ksize


def test_color_jitter_brightness_formula_and_identity():
  image = synthetic(1)[0][0]
  np.testing.assert_array_equal(
    augment.color_jitter(image, np.random.default_rng(0), (0, 0, 0, 0)), image
  )
  rng = np.random.default_rng(3)
  rng.permutation(4)
  factor = rng.uniform(0.6, 1.4)
  want = np.round(np.clip(image / 255.0 * factor, 0, 1) * 255).astype(np.uint8)
  got = augment.color_jitter(image, np.random.default_rng(3), (0.4, 0, 0, 0))
  assert np.abs(got.astype(int) - want).max() <= 1
