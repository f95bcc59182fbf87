"""spectral_jax.imaging.resample against independent oracles, on odd sizes, up and down.

PIL's rule is checked against PIL itself; the cv2 and torch rules (neither library is a test
dependency) against brute-force loops of the formula each library's kernel evaluates; the exact
rules against rational arithmetic.
"""

import math
from fractions import Fraction

import numpy as np
import pytest
from PIL import Image

from spectral_jax.imaging import resample

# (n_in, n_out) along one axis: odd sizes, up and down, the grids the methods use (30 → 480,
# 37 → 518) and the sizes where the rules part ways (2 → 7, 82, 98).
PAIRS = [
    (1, 1), (1, 7), (3, 7), (7, 3), (5, 13), (13, 5), (17, 23), (23, 17), (2, 7), (7, 2),
    (2, 82), (2, 98), (30, 480), (480, 30), (37, 518), (11, 11), (60, 29), (29, 60),
]  # fmt: skip


def _floor_oracle(n_out, n_in):
  return [min(math.floor(Fraction(d * n_in, n_out)), n_in - 1) for d in range(n_out)]


def _half_pixel_oracle(n_out, n_in):
  return [min(math.floor(Fraction(2 * d + 1, 2) * n_in / n_out), n_in - 1) for d in range(n_out)]


def _cv2_oracle(n_out, n_in):
  """OpenCV resizeNN: ifx = 1 / fx with fx = (double) dsize / ssize; sx = cvFloor(x * ifx)."""
  ifx = 1.0 / (float(n_out) / float(n_in))
  return [min(math.floor(d * ifx), n_in - 1) for d in range(n_out)]


def _torch_oracle(n_out, n_in):
  """torch's nearest_idx (CPU): float scale = (float) in / out; floorf(dst * scale)."""
  out = []
  for d in range(n_out):
    if n_out == n_in:
      out.append(d)
    elif n_out == 2 * n_in:
      out.append(d >> 1)
    else:
      scale = np.float32(n_in) / np.float32(n_out)
      out.append(min(int(np.floor(np.float32(d) * scale)), n_in - 1))
  return out


def _pil_resize(array, hw, box=None):
  return np.asarray(Image.fromarray(array).resize((hw[1], hw[0]), Image.NEAREST, box=box))


@pytest.mark.parametrize('n_in, n_out', PAIRS)
def test_index_rules_against_their_oracles(n_in, n_out):
  np.testing.assert_array_equal(resample.floor_index(n_out, n_in), _floor_oracle(n_out, n_in))
  np.testing.assert_array_equal(resample.cv2_index(n_out, n_in), _cv2_oracle(n_out, n_in))
  np.testing.assert_array_equal(resample.torch_index(n_out, n_in), _torch_oracle(n_out, n_in))
  np.testing.assert_array_equal(
    resample.half_pixel_index(n_out, n_in), _half_pixel_oracle(n_out, n_in)
  )
  row = np.arange(n_in, dtype=np.int32)[None]  # PIL mode 'I': the pixel value is its index
  np.testing.assert_array_equal(resample.pil_index(n_out, n_in), _pil_resize(row, (1, n_out))[0])


def test_index_rules_over_a_sweep():
  """Every size pair up to 40 → 120: the oracles hold everywhere, not only on chosen sizes."""
  for n_in in range(1, 41):
    row = np.arange(n_in, dtype=np.int32)[None]
    for n_out in range(1, 121):
      assert list(resample.floor_index(n_out, n_in)) == _floor_oracle(n_out, n_in)
      assert list(resample.cv2_index(n_out, n_in)) == _cv2_oracle(n_out, n_in)
      assert list(resample.torch_index(n_out, n_in)) == _torch_oracle(n_out, n_in)
      assert list(resample.half_pixel_index(n_out, n_in)) == _half_pixel_oracle(n_out, n_in)
      np.testing.assert_array_equal(
        resample.pil_index(n_out, n_in), _pil_resize(row, (1, n_out))[0]
      )


def test_the_rules_are_distinct():
  """The named variants are not interchangeable: each pair differs somewhere (docstrings)."""
  assert list(resample.torch_index(82, 2)) != list(resample.floor_index(82, 2))
  assert list(resample.cv2_index(98, 2)) != list(resample.floor_index(98, 2))
  assert list(resample.half_pixel_index(7, 2)) != list(resample.pil_index(7, 2))
  assert list(resample.half_pixel_index(7, 3)) != list(resample.floor_index(7, 3))


def test_integer_factors_give_blocks_under_every_rule():
  for n_in in range(1, 31):
    for f in range(1, 33):
      blocks = np.arange(n_in * f) // f
      for rule in (
        resample.floor_index,
        resample.torch_index,
        resample.cv2_index,
        resample.half_pixel_index,
        resample.pil_index,
      ):
        np.testing.assert_array_equal(rule(n_in * f, n_in), blocks)


@pytest.mark.parametrize(
  'hw_in, hw_out', [((7, 5), (23, 13)), ((23, 13), (7, 5)), ((3, 9), (9, 3))]
)
def test_two_dimensional_resizes(hw_in, hw_out):
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 21, hw_in + (2,)).astype(np.uint8)  # trailing axes follow
  (h, w), (hi, wi) = hw_out, hw_in
  for fn, oracle in (
    (resample.nearest_floor, _floor_oracle),
    (resample.nearest_cv2, _cv2_oracle),
    (resample.nearest_torch, _torch_oracle),
    (resample.nearest_half_pixel, _half_pixel_oracle),
  ):
    rows, cols = oracle(h, hi), oracle(w, wi)
    want = np.array([[labels[rows[y], cols[x]] for x in range(w)] for y in range(h)])
    out = fn(labels, hw_out)
    assert out.shape == hw_out + (2,) and out.dtype == labels.dtype
    np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize('mode_dtype', [np.uint8, np.int32])
@pytest.mark.parametrize(
  'hw_in, hw_out', [((7, 5), (23, 13)), ((23, 13), (7, 5)), ((31, 29), (31, 29))]
)
def test_nearest_pil_is_pils_resize(mode_dtype, hw_in, hw_out):
  rng = np.random.default_rng(1)
  labels = rng.integers(0, 200, hw_in).astype(mode_dtype)
  np.testing.assert_array_equal(resample.nearest_pil(labels, hw_out), _pil_resize(labels, hw_out))
  rgb = rng.integers(0, 256, hw_in + (3,)).astype(np.uint8)
  np.testing.assert_array_equal(resample.nearest_pil(rgb, hw_out), _pil_resize(rgb, hw_out))


def test_nearest_pil_with_a_crop_box():
  """The random-resized-crop call: integer boxes inside the image, square outputs."""
  rng = np.random.default_rng(2)
  for _ in range(200):
    h, w = rng.integers(5, 60, 2)
    label = rng.integers(0, 21, (h, w)).astype(np.uint8)
    top, left = rng.integers(0, h - 1), rng.integers(0, w - 1)
    bottom, right = rng.integers(top + 1, h + 1), rng.integers(left + 1, w + 1)
    box = (int(left), int(top), int(right), int(bottom))
    size = int(rng.integers(1, 70))
    np.testing.assert_array_equal(
      resample.nearest_pil(label, (size, size), box=box), _pil_resize(label, (size, size), box)
    )
  with pytest.raises(ValueError, match='not inside'):
    resample.nearest_pil(np.zeros((4, 4)), (2, 2), box=(0, 0, 5, 4))


def test_nearest_half_pixel_returns_the_input_at_its_size():
  mask = np.zeros((4, 6), bool)
  assert resample.nearest_half_pixel(mask, (4, 6)) is mask


@pytest.mark.parametrize('factor', [1, 3, 14])
def test_repeat_blocks(factor):
  rng = np.random.default_rng(3)
  m = rng.integers(0, 5, (3, 5))
  out = resample.repeat_blocks(m, factor)
  h, w = out.shape
  assert (h, w) == (3 * factor, 5 * factor)
  want = np.array([[m[y // factor, x // factor] for x in range(w)] for y in range(h)])
  np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize(
  'grid, hw, patch', [((3, 4), (53, 70), 16), ((2, 3), (31, 45), 14), ((5, 5), (40, 40), 8)]
)
def test_upsample_patches_cv2_is_the_official_two_resizes(grid, hw, patch):
  """Literal recipe: cv2-nearest to (H, W), then the patch area by cv2-nearest to (h·P, w·P)."""
  rng = np.random.default_rng(4)
  m = rng.random(grid) > 0.5
  (gh, gw), (H, W) = grid, hw
  rows, cols = _cv2_oracle(H, gh), _cv2_oracle(W, gw)
  want = np.array([[m[rows[y], cols[x]] for x in range(W)] for y in range(H)])
  brows, bcols = _cv2_oracle(gh * patch, gh), _cv2_oracle(gw * patch, gw)
  for y in range(gh * patch):
    for x in range(gw * patch):
      want[y, x] = m[brows[y], bcols[x]]
  np.testing.assert_array_equal(resample.upsample_patches_cv2(m, hw, patch), want)
  with pytest.raises(ValueError, match='does not fit'):
    resample.upsample_patches_cv2(m, (gh * patch - 1, W), patch)


def _bilinear_matrix(n_in, n_out):
  """Pillow's antialiased BILINEAR weights [out, in] (triangle filter widened on shrinking)."""
  scale = n_in / n_out
  fscale = max(scale, 1.0)
  mat = np.zeros((n_out, n_in))
  for o in range(n_out):
    centre = (o + 0.5) * scale
    lo = max(int(centre - fscale + 0.5), 0)
    hi = min(int(centre + fscale + 0.5), n_in)
    taps = np.arange(lo, hi)
    wts = np.maximum(1 - np.abs((taps - centre + 0.5) / fscale), 0)
    mat[o, lo:hi] = wts / wts.sum()
  return mat


@pytest.mark.parametrize(
  'hw_in, hw_out', [((37, 29), (11, 13)), ((11, 13), (37, 29)), ((40, 40), (7, 9))]
)
def test_vote_bilinear_is_a_majority_vote(hw_in, hw_out):
  """The area-weighted share of True pixels > ½, in float, wherever PIL's 8-bit rounding cannot
  decide it (more than 3/255 from the threshold)."""
  rng = np.random.default_rng(5)
  mask = rng.random(hw_in) > 0.5
  mask[: hw_in[0] // 2] = True  # a solid part and a noisy part
  share = _bilinear_matrix(hw_in[0], hw_out[0]) @ mask @ _bilinear_matrix(hw_in[1], hw_out[1]).T
  out = resample.vote_bilinear(mask, hw_out)
  assert out.shape == hw_out and out.dtype == bool
  clear = np.abs(share * 255 - 127.5) > 3
  assert clear.mean() > 0.5
  np.testing.assert_array_equal(out[clear], share[clear] > 0.5)
  assert resample.vote_bilinear(mask, hw_in) is mask
