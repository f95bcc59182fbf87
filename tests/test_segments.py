"""Tests for spectral_jax.spectral.segments (single-object part)."""

import numpy as np
import pytest
from skimage.measure import label as sk_label

from spectral_jax.spectral import segments

from tests.conftest import MANIFEST, PARITY

IMAGES = sorted(MANIFEST['images'])


@pytest.mark.parametrize('name', IMAGES)
def test_localization_box_matches_parity(name):
  data = np.load(PARITY / f'{name}.npz')
  info = MANIFEST['images'][name]
  grid = tuple(info['patch_grid'])
  image_hw = (info['height'], info['width'])
  box = segments.localization_box(data['loc_eigenvectors'], grid, 16, image_hw)
  assert box.dtype == np.int64
  np.testing.assert_array_equal(box, data['loc_box_xyxy'])
  np.testing.assert_array_equal(box, info['loc_box_xyxy'])


@pytest.mark.parametrize('name', IMAGES)
def test_fiedler_mask_matches_parity(name):
  data = np.load(PARITY / f'{name}.npz')
  grid = tuple(MANIFEST['images'][name]['patch_grid'])
  mask = segments.fiedler_mask(data['seg_eigenvectors'], grid)
  assert mask.dtype == bool and mask.shape == grid
  np.testing.assert_array_equal(mask, data['seg_mask'] > 0)


@pytest.mark.parametrize('name', IMAGES)
def test_infer_patch_grid_on_parity_sizes(name):
  info = MANIFEST['images'][name]
  n = info['patch_grid'][0] * info['patch_grid'][1]
  assert segments.infer_patch_grid(n, (info['height'], info['width'])) == (
    16,
    tuple(info['patch_grid']),
  )


def test_infer_patch_grid_rules():
  assert segments.infer_patch_grid((100 // 8) * (70 // 8), (100, 70)) == (8, (12, 8))
  assert segments.infer_patch_grid(4 * (100 // 16) * (70 // 16), (100, 70)) == (8, (12, 8))
  assert segments.infer_patch_grid(16 * (100 // 32) * (70 // 32), (100, 70)) == (8, (12, 8))
  with pytest.raises(ValueError):
    segments.infer_patch_grid(7, (100, 70))


def test_fiedler_mask_shape_check():
  with pytest.raises(ValueError):
    segments.fiedler_mask(np.zeros((2, 10)), (3, 4))


def _oracle_largest(mask):
  """skimage (independent library) + argmax, exactly the official get_largest_cc_box path."""
  labels = sk_label(mask)  # default: full (8-) connectivity
  idx = np.argmax(np.bincount(labels.ravel())[1:]) + 1
  return labels == idx


def test_largest_component_matches_skimage_random():
  rng = np.random.default_rng(0)
  for trial in range(300):
    h, w = rng.integers(1, 12, size=2)
    mask = rng.random((h, w)) < rng.uniform(0.1, 0.7)
    if not mask.any():
      continue
    np.testing.assert_array_equal(
      segments.largest_component(mask), _oracle_largest(mask), err_msg=str(trial)
    )


def test_largest_component_is_8_connected_and_breaks_ties_in_raster_order():
  diag = np.eye(4, dtype=bool)  # one component with 8-connectivity
  assert segments.largest_component(diag).sum() == 4
  ties = np.zeros((3, 7), bool)
  ties[2, 0:2] = True  # second in raster order... (first pixel at row 2)
  ties[0, 5:7] = True  # first in raster order (row 0)
  np.testing.assert_array_equal(np.nonzero(segments.largest_component(ties)), ([0, 0], [5, 6]))


def test_box_rules_by_hand():
  m = np.zeros((4, 6), bool)
  m[1:3, 2:4] = True
  np.testing.assert_array_equal(segments.box_from_patch_mask(m, 16, (64, 96)), [32, 16, 64, 48])
  # majority foreground (15/24 > 0.5) -> inverted: the 9 background cells form the object
  m = np.ones((4, 6), bool)
  m[0:3, 0:3] = False
  np.testing.assert_array_equal(segments.box_from_patch_mask(m, 16, (64, 96)), [0, 0, 48, 48])
  # all ones (mean == 1) is kept; empty -> whole image; clipping to the image size
  np.testing.assert_array_equal(
    segments.box_from_patch_mask(np.ones((4, 6), bool), 16, (70, 90)), [0, 0, 90, 64]
  )
  np.testing.assert_array_equal(
    segments.box_from_patch_mask(np.zeros((4, 6), bool), 16, (70, 90)), [0, 0, 90, 64]
  )
  # exactly half stays as is
  m = np.zeros((2, 2), bool)
  m[0] = True
  np.testing.assert_array_equal(segments.box_from_patch_mask(m, 8, (16, 16)), [0, 0, 16, 8])


def _official_upsample(mask, H, W, P):
  """Independent spelling of the official cv2 recipe with exact integer floors."""
  h, w = mask.shape
  rows = np.minimum((np.arange(H) * h) // H, h - 1)
  cols = np.minimum((np.arange(W) * w) // W, w - 1)
  full = mask[rows][:, cols]
  up = np.kron(mask.astype(np.int64), np.ones((P, P), np.int64)).astype(mask.dtype)
  full[: h * P, : w * P] = up
  return full


@pytest.mark.parametrize('hw,P', [((18, 28), 16), ((25, 37), 16), ((3, 5), 8), ((4, 4), 16)])
def test_upsample_patch_mask(hw, P):
  rng = np.random.default_rng(hw[0] * 100 + hw[1])
  mask = rng.random(hw) < 0.5
  H, W = hw[0] * P + P - 3, hw[1] * P + 5
  out = segments.upsample_patch_mask(mask, (H, W), P)
  assert out.shape == (H, W) and out.dtype == bool
  np.testing.assert_array_equal(out, _official_upsample(mask, H, W, P))
  # the covered area is a x P block replication; the last pixel row/col repeat the last patch
  np.testing.assert_array_equal(out[: hw[0] * P : P, : hw[1] * P : P], mask)
  np.testing.assert_array_equal(out[-1, -1], mask[-1, -1])
  # the bottom strip repeats the last patch row (its columns follow the plain nearest resize)
  bottom = out[hw[0] * P :]
  assert np.all(bottom == bottom[:1]) and set(np.unique(bottom)) <= set(np.unique(mask[-1]))


def test_upsample_right_strip_uses_plain_nearest_rows():
  # 2x1 grid, P=4, image 9x6: the right strip (x >= 4) takes rows floor(y*2/9), not y//4.
  mask = np.array([[0], [1]], np.uint8)
  out = segments.upsample_patch_mask(mask, (9, 6), 4)
  np.testing.assert_array_equal(out[:, 0], [0, 0, 0, 0, 1, 1, 1, 1, 1])
  np.testing.assert_array_equal(out[:, 5], [0, 0, 0, 0, 0, 1, 1, 1, 1])


def test_upsample_rejects_grid_larger_than_image():
  with pytest.raises(ValueError):
    segments.upsample_patch_mask(np.zeros((3, 3), bool), (40, 48), 16)
