"""Host-side augmentation of self-training examples (numpy / PIL), the official intended
albumentations recipe: random resized crop (bicubic image, nearest mask), horizontal flip,
colour jitter, to-gray, Gaussian blur. Each function takes its own ``np.random.Generator``,
so an example's augmentation is a pure function of its seed (see ``train.train_batches``)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage import color as skcolor

from spectral_jax.imaging import resample
from spectral_jax.training.state import TrainConfig


def random_resized_crop_box(
  rng: np.random.Generator,
  height: int,
  width: int,
  scale: Sequence[float],
  ratio: Sequence[float],
) -> tuple[int, int, int, int]:
  """torchvision's RandomResizedCrop.get_params: (top, left, h, w)."""
  area = height * width
  log_ratio = np.log(ratio)
  for _ in range(10):
    target = area * rng.uniform(*scale)
    aspect = np.exp(rng.uniform(*log_ratio))
    w = int(round(np.sqrt(target * aspect)))
    h = int(round(np.sqrt(target / aspect)))
    if 0 < w <= width and 0 < h <= height:
      return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
  in_ratio = width / height  # fallback: central crop at the nearest allowed ratio
  if in_ratio < min(ratio):
    w, h = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    h, w = height, int(round(height * max(ratio)))
  else:
    h, w = height, width
  return (height - h) // 2, (width - w) // 2, h, w


def _gray(x: np.ndarray) -> np.ndarray:
  return x @ np.array([0.299, 0.587, 0.114], np.float32)


def color_jitter(
  image: np.ndarray, rng: np.random.Generator, strength: Sequence[float]
) -> np.ndarray:
  """torchvision ColorJitter(brightness, contrast, saturation, hue): ops in random order."""
  b, c, s, h = strength
  x = image.astype(np.float32) / 255.0
  for op in rng.permutation(4):
    if op == 0 and b:
      x = x * rng.uniform(max(0.0, 1 - b), 1 + b)
    elif op == 1 and c:
      f = rng.uniform(max(0.0, 1 - c), 1 + c)
      x = f * x + (1 - f) * _gray(x).mean()
    elif op == 2 and s:
      f = rng.uniform(max(0.0, 1 - s), 1 + s)
      x = f * x + (1 - f) * _gray(x)[..., None]
    elif op == 3 and h:
      hsv = skcolor.rgb2hsv(x)
      hsv[..., 0] = (hsv[..., 0] + rng.uniform(-h, h)) % 1.0
      x = skcolor.hsv2rgb(hsv).astype(np.float32)
    x = np.clip(x, 0.0, 1.0)
  return np.round(x * 255.0).astype(np.uint8)


def to_gray(image: np.ndarray) -> np.ndarray:
  """ToGray: OpenCV's fixed-point RGB→GRAY (≈ 0.299 R + 0.587 G + 0.114 B), on every channel."""
  r, g, b = (image[..., i].astype(np.int32) for i in range(3))
  y = ((r * 4899 + g * 9617 + b * 1868 + 8192) >> 14).astype(np.uint8)
  return np.repeat(y[..., None], 3, axis=-1)


def gaussian_blur(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """GaussianBlur(blur_limit=(3, 7), sigma from the kernel size as OpenCV does), reflect-101."""
  ksize = int(rng.choice([3, 5, 7]))
  sigma = 0.3 * ((ksize - 1) * 0.5 - 1) + 0.8
  x = np.arange(ksize) - ksize // 2
  kernel = np.exp(-(x**2) / (2 * sigma**2))
  kernel /= kernel.sum()
  out = image.astype(np.float32)
  for axis in (0, 1):
    out = ndimage.correlate1d(out, kernel, axis=axis, mode='mirror')
  return np.clip(np.round(out), 0, 255).astype(np.uint8)


def augment(
  image: np.ndarray, label: np.ndarray, rng: np.random.Generator, cfg: TrainConfig
) -> tuple[np.ndarray, np.ndarray]:
  """Random resized crop → flip → colour jitter → gray → blur; the mask follows (nearest)."""
  if image.shape[:2] != label.shape:
    raise ValueError(f'image {image.shape[:2]} and label {label.shape} differ in size')
  top, left, h, w = random_resized_crop_box(rng, *label.shape, cfg.scale, cfg.ratio)
  box = (left, top, left + w, top + h)
  size = (cfg.crop_size, cfg.crop_size)
  image = np.asarray(Image.fromarray(image).resize(size, Image.BICUBIC, box=box))
  label = resample.nearest_pil(label, size, box=box)
  if rng.random() < cfg.flip_p:
    image, label = image[:, ::-1], label[:, ::-1]
  if rng.random() < cfg.jitter_p:
    image = color_jitter(image, rng, cfg.jitter)
  if rng.random() < cfg.gray_p:
    image = to_gray(image)
  if rng.random() < cfg.blur_p:
    image = gaussian_blur(image, rng)
  return np.ascontiguousarray(image), np.ascontiguousarray(label)
