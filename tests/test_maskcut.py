"""spectral_jax.spectral.maskcut against the official MaskCut outputs (tests/data/maskcut).

The parity set (see tests/data/maskcut/README.md) holds the official keys, every per-iteration
array, the cut masks at 480², the CRF stages and the final masks at the original size, with and
without CRF. The protocol's bound is a per-image Hungarian match of final masks at IoU ≥ 0.999
with the same object count; a faithful port reproduces them pixel for pixel, which is tested.
"""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.optimize import linear_sum_assignment

from spectral_jax.spectral import maskcut

from tests.conftest import PARITY

DATA = Path(__file__).parent / 'data' / 'maskcut'
MANIFEST = json.loads((DATA / 'manifest.json').read_text())
IDS = ('astronaut', 'chelsea', 'coffee')
GRID = (30, 30)


def _data(name):
  return np.load(DATA / f'{name}.npz')


def _image(name):
  # The maskcut photos are the parity photos (same bytes).
  return np.asarray(Image.open(PARITY / 'images' / f'{name}.png').convert('RGB'))


@pytest.fixture(scope='module')
def results():
  """One batched discover() over the three images, on the official keys."""
  keys = np.stack([_data(name)['k'] for name in IDS])
  return dict(zip(IDS, maskcut.discover(keys, GRID, max_objects=3, tau=0.15)))


def matched_ious(pred, ref):
  """Hungarian one-to-one match of non-empty masks by IoU → (counts equal, matched IoUs)."""
  pred = [m for m in pred if m.any()]
  ref = [m for m in ref if m.any()]
  if len(pred) != len(ref):
    return False, []
  iou = np.array([[(p & r).sum() / (p | r).sum() for r in ref] for p in pred]).reshape(
    len(pred), len(ref)
  )
  rows, cols = linear_sum_assignment(-iou)
  return True, list(iou[rows, cols])


@pytest.mark.parametrize('name', IDS)
def test_preprocess_is_the_official_lanczos_resize(name):
  image_s, image_vit, grid = maskcut.preprocess(_image(name), 480, 16)
  digest = hashlib.sha256(np.ascontiguousarray(image_s).tobytes()).hexdigest()
  assert image_s.shape == (480, 480, 3) and image_s.dtype == np.uint8
  assert digest == str(_data(name)['image480_sha256'])
  assert image_vit is image_s and grid == GRID


def test_preprocess_snaps_to_the_patch_grid():
  image = np.zeros((50, 70, 3), np.uint8)
  image_s, image_vit, grid = maskcut.preprocess(image, fixed_size=100, patch_size=16)
  # round(100 / 16) = 6: the ViT sees 96², the CRF and the upsampling keep 100².
  assert image_s.shape == (100, 100, 3) and image_vit.shape == (96, 96, 3) and grid == (6, 6)


@pytest.mark.parametrize('name', IDS)
def test_graph_and_eigenpairs(name, results):
  data, res = _data(name), results[name]
  # Edges are cosines thresholded in float32: allow a flip or two of a near-tau entry.
  np.testing.assert_allclose(res.edges, data['iter_edges'], atol=4)
  np.testing.assert_allclose(res.eigenvalues, data['iter_eigenvalues'], atol=1e-6)
  for t in range(3):
    x, ref = res.eigenvectors[t], data['iter_eigenvector'][t]
    sign = np.sign(x @ ref)
    np.testing.assert_allclose(sign * x, ref, atol=1e-6 * np.abs(ref).max())


@pytest.mark.parametrize('name', IDS)
def test_per_iteration_rules(name, results):
  """Bipartition, corners, side and seed with the official sign; components with either."""
  data, res = _data(name), results[name]
  for t in range(3):
    sign = np.sign(res.eigenvectors[t] @ data['iter_eigenvector'][t])
    bip, corners, rev, seed = maskcut.choose_side(sign * res.eigenvectors[t], GRID)
    np.testing.assert_array_equal(bip.reshape(GRID), data['iter_bipartition'][t])
    assert corners == data['iter_corners'][t] and rev == data['iter_reversed'][t]
    if data['iter_seed_ties'][t] == 1:  # tied seeds are decided by rounding (README)
      assert seed == data['iter_seed'][t]
  # The recorded (solver-sign) run: side, component and kept masks are sign-free here.
  np.testing.assert_array_equal(res.masked, data['iter_masked_patches'])
  np.testing.assert_array_equal(res.foreground, data['iter_foreground'])
  np.testing.assert_array_equal(res.component, data['iter_component'])
  np.testing.assert_array_equal(res.kept, data['iter_kept'])
  np.testing.assert_array_equal(res.patch_masks, data['iter_pseudo_mask'])
  for t in range(3):
    assert res.component[t].reshape(-1)[res.seed[t]]  # the seed is in its component
  assert res.scores.shape == (3,) and np.isfinite(res.scores).all()
  assert (res.scores <= 1).all()


@pytest.mark.parametrize(
  'solver, dtype', [('jax', 'float32'), ('jax', 'float64'), ('lapack', 'float64')]
)
def test_other_solvers_on_one_graph(solver, dtype):
  """The other routes (the fixture ran 'auto', i.e. ARPACK on a CPU host) on one official graph.

  Chelsea's 2nd iteration (171 patches painted, the side rule reverses). The README: even a
  float32 solve reproduces every mask of the set.
  """
  data, t = _data('chelsea'), 1
  edges, lam, x = maskcut.cut_graphs(
    data['k'][None], data['iter_masked_patches'][t].reshape(1, -1), dtype=dtype, solver=solver
  )
  assert abs(int(edges.sum()) - int(data['iter_edges'][t])) <= 4
  f64 = dtype == 'float64'
  np.testing.assert_allclose(lam[0], data['iter_eigenvalues'][t], atol=1e-12 if f64 else 1e-4)
  ref = data['iter_eigenvector'][t]
  sign = np.sign(x[0] @ ref)
  np.testing.assert_allclose(sign * x[0], ref, atol=(1e-9 if f64 else 1e-3) * np.abs(ref).max())
  bip, _, rev, seed = maskcut.choose_side(x[0], GRID)
  fg = (~bip if rev else bip).reshape(GRID)
  np.testing.assert_array_equal(fg, data['iter_foreground'][t])
  np.testing.assert_array_equal(maskcut.seed_component(fg, seed), data['iter_component'][t])


@pytest.mark.parametrize('name', IDS)
def test_final_masks_without_crf(name, results):
  data, res = _data(name), results[name]
  info = MANIFEST['images'][name]
  image_hw = (info['height'], info['width'])
  final, masks_s = maskcut.to_image_masks(res.patch_masks, image_hw, (480, 480))
  np.testing.assert_array_equal(masks_s, data['mask480'])
  np.testing.assert_array_equal(final, data['mask_nocrf'])
  same_count, ious = matched_ious(final, data['mask_nocrf'])
  assert same_count and sum(m.any() for m in final) == info['objects_nocrf']
  assert min(ious) >= 0.999


@pytest.mark.parametrize('name', IDS)
def test_final_masks_with_crf(name):
  data = _data(name)
  info = MANIFEST['images'][name]
  image_s = maskcut.preprocess(_image(name))[0]
  for t in range(3):
    crf_map, filled, refined, iou = maskcut.crf_refine(image_s, data['mask480'][t])
    np.testing.assert_array_equal(crf_map, data['crf_map'][t])
    np.testing.assert_array_equal(filled, data['crf_filled'][t])
    np.testing.assert_allclose(iou, data['crf_iou'][t], rtol=1e-6, equal_nan=True)
    assert refined.any() == (bool(data['crf_kept'][t]) and filled.any())
  final, _ = maskcut.to_image_masks(
    data['iter_pseudo_mask'], (info['height'], info['width']), image_s=image_s, crf=True
  )
  np.testing.assert_array_equal(final, data['mask_crf'])
  same_count, ious = matched_ious(final, data['mask_crf'])
  assert same_count and sum(m.any() for m in final) == info['objects_crf']
  assert min(ious) >= 0.999


def test_run_end_to_end_from_the_photos():
  """ViT keys → cuts → original size, on the three photos, against the official masks."""
  from spectral_jax import pipeline  # pylint: disable=import-outside-toplevel

  extractor = pipeline.load_extractor('dino_vits16', str(PARITY / 'checkpoint.pth'))
  found = maskcut.run(extractor, [_image(name) for name in IDS], crf=False)
  for name, item in zip(IDS, found):
    data = _data(name)
    kept = [t for t in range(3) if data['mask_nocrf'][t].any()]
    assert list(item.iterations) == kept
    np.testing.assert_array_equal(item.masks, data['mask_nocrf'][kept])
    np.testing.assert_allclose(item.scores, item.result.scores[kept])
    np.testing.assert_array_equal(item.masks_s, data['mask480'])


def _two_region_keys(obj):
  """Keys on a 6×6 grid: patches of ``obj`` share one direction, the rest an orthogonal one."""
  keys = np.zeros((36, 8), np.float32)
  keys[:, 0] = 1.0
  keys[obj.reshape(-1)] = np.eye(8, dtype=np.float32)[1] * 2.0
  return keys


def test_synthetic_object_and_the_overlap_quirk():
  """Hand oracle of the iteration rules on a graph with one clean object.

  Iteration 1 cuts the object (score ≈ 1: nothing crosses the cut but eps). Iteration 2 sees
  it painted (zero keys): the zeroed patches are all eps-connected, so the cut is the same
  set, dropped for overlap with the previous mask. Iteration 3 sees the same graph but an
  empty ``prev``, so the protocol keeps it — and the pixel subtraction empties it.
  """
  obj = np.zeros((6, 6), bool)
  obj[1:3, 2:5] = True
  (res,) = maskcut.discover(_two_region_keys(obj)[None], (6, 6))
  np.testing.assert_array_equal(res.patch_masks[0], obj)
  assert list(res.kept) == [True, False, True]
  np.testing.assert_array_equal(res.component[1], obj)
  np.testing.assert_array_equal(res.patch_masks[2], obj)
  assert res.scores[0] > 0.99
  final, masks_s = maskcut.to_image_masks(res.patch_masks, (30, 45), (96, 96))
  assert [m.any() for m in masks_s] == [True, False, False]
  assert [m.any() for m in final] == [True, False, False]


def test_degenerate_graph_does_not_break():
  # All keys zero: every affinity is eps, the eigenspace is degenerate; any cut, no NaN.
  (res,) = maskcut.discover(np.zeros((1, 16, 4), np.float32), (4, 4))
  assert np.isfinite(res.eigenvectors).all() and np.isfinite(res.scores).all()
  assert res.kept[0] and res.patch_masks[0].any()


def test_nothing_found_gives_zero_objects():
  final, masks_s = maskcut.to_image_masks(np.zeros((3, 30, 30), bool), (40, 50))
  assert final.shape == (3, 40, 50) and not final.any() and not masks_s.any()


def test_choose_side_rules():
  grid = (3, 3)
  # Corners rule: 4 corners above the mean → the object is the complement, seed = argmin.
  x = np.array([1.0, 0, 1, 0, -5, 0, 1, 0, 1])
  bip, corners, rev, seed = maskcut.choose_side(x, grid)
  assert corners == 4 and rev and seed == 4
  # Otherwise the side holding argmax |x|: here the low side (the seed is argmin).
  x = np.array([1.0, 1, -1, 0, -5, 0, -1, 0, -1])
  bip, corners, rev, seed = maskcut.choose_side(x, grid)
  np.testing.assert_array_equal(bip, x > np.mean(x))
  assert corners == 1 and rev and seed == 4
  # The other sign puts 3 corners above the mean: the complement again, whose extreme is now
  # patch 0 (tied with 1) — the one case where the sign changes the object (protocol §2.7).
  bip, corners, rev, seed = maskcut.choose_side(-x, grid)
  assert corners == 3 and rev and seed == 0


def test_upsample_nearest_rule_and_subtraction():
  pm = np.zeros((2, 3, 3), bool)
  pm[0, 0, 0] = True
  pm[1, :2, :2] = True
  up = maskcut.upsample_masks(pm, (7, 7))
  rows = np.floor(np.arange(7) * 3 / 7).astype(int)  # torch's nearest: floor(dst · g / S)
  ref = pm[:, rows][:, :, rows]
  np.testing.assert_array_equal(up[0], ref[0])
  np.testing.assert_array_equal(up[1], ref[1] & ~ref[0])


def test_resize_threshold_is_relative_to_the_peak():
  mask = np.zeros((480, 480), bool)
  mask[:16, :16] = True  # one patch, shrunk 12×: the bicubic peak stays below 255
  small = maskcut.resize_to_original(mask, (40, 40))
  assert small.any() and not maskcut.resize_to_original(np.zeros_like(mask), (40, 40)).any()
