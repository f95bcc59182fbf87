"""Tests for spectral_jax.metrics: hand-computed cases and independent oracles."""

import itertools

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from spectral_jax import metrics

# ---------------------------------------------------------------- CorLoc


def test_box_iou_by_hand():
  gt = np.array([[0, 0, 10, 10], [5, 5, 15, 15], [20, 20, 30, 30]])
  iou = metrics.box_iou(np.array([0, 0, 10, 10]), gt)
  assert iou.dtype == np.float32  # integer boxes -> float32, as torch in the official code
  np.testing.assert_allclose(iou, [1.0, 25 / 175, 0.0], rtol=1e-6)


def test_box_iou_eps_formula_float64():
  box = np.array([1.0, 2.0, 4.0, 7.0])
  gt = np.array([[2.0, 3.0, 6.0, 5.0]])
  inter = (4 - 2) * (5 - 3)
  a1 = 3 * (5 + 1e-7)
  a2 = 4 * (2 + 1e-7)
  expect = inter / (a1 + a2 - inter + 1e-7)
  assert metrics.box_iou(box, gt)[0] == pytest.approx(expect, rel=1e-15)


def test_box_iou_exact_half_is_a_hit_with_int_boxes():
  pred = np.array([0, 0, 10, 10])
  gt = np.array([[0, 0, 20, 10]])
  assert metrics.box_iou(pred, gt)[0] == np.float32(0.5)
  assert metrics.corloc_hit(pred, gt)
  # In float64 the eps terms survive and the same boxes fall just below 0.5.
  assert not metrics.corloc_hit(pred.astype(np.float64), gt.astype(np.float64))


def test_box_iou_dtype_promotion_like_torch():
  assert (
    metrics.box_iou(np.array([0, 0, 4, 4], np.float32), np.array([[0, 0, 4, 4]])).dtype
    == np.float32
  )
  assert (
    metrics.box_iou(np.array([0.0, 0, 4, 4]), np.array([[0, 0, 4, 4]], np.float32)).dtype
    == np.float64
  )
  assert metrics.box_iou([0, 0, 4, 4], np.zeros((0, 4), np.int64)).shape == (0,)


def test_corloc_hit_and_corloc():
  assert not metrics.corloc_hit([0, 0, 10, 10], np.zeros((0, 4)))
  assert metrics.corloc_hit([0, 0, 10, 10], [[50, 50, 60, 60], [1, 1, 10, 10]])
  assert metrics.corloc([True, False, True, True]) == 75.0
  with pytest.raises(ValueError):
    metrics.corloc([])


# ---------------------------------------------------------------- object segmentation


def test_mask_accuracy_and_iou_by_hand():
  pred = np.array([[1, 1, 0], [0, 0, 0]], bool)
  gt = np.array([[1, 0, 0], [1, 0, 0]], bool)
  assert metrics.mask_accuracy(pred, gt) == pytest.approx(4 / 6)
  assert metrics.mask_iou(pred, gt) == pytest.approx(1 / 3)
  empty = np.zeros((2, 3), bool)
  assert metrics.mask_iou(empty, empty) == 0.0  # official: NaN -> 0
  assert metrics.mask_accuracy(empty, empty) == 1.0
  with pytest.raises(ValueError):
    metrics.mask_iou(np.zeros((2, 2)), np.zeros((3, 2)))


def test_official_thresholds():
  t = metrics.official_fmax_thresholds()
  assert t.shape == (254,)
  np.testing.assert_allclose(t, np.arange(1, 255) / 255, rtol=1e-12)


def _oracle_pr(soft, gt, thresholds):
  """Literal loop spelling of the official compute_prs / precision_recall."""
  p, r = [], []
  for t in thresholds:
    m = soft > t
    tp = np.sum(gt & m)
    p.append(1.0 if m.sum() == 0 else tp / m.sum())
    r.append(1.0 if gt.sum() == 0 else tp / gt.sum())
  return np.array(p), np.array(r)


def _oracle_fmax(softs, gts, beta2=0.3):
  t = np.arange(0.0, 1.0, 1.0 / 255)[1:]
  fs = []
  for s, g in zip(softs, gts):
    p, r = _oracle_pr(s, g, t)
    with np.errstate(invalid='ignore'):
      f = (1 + beta2) * p * r / (beta2 * p + r)
    fs.append(np.nan_to_num(f))
  return np.max(np.mean(fs, axis=0))


def test_max_f_beta_matches_loop_oracle():
  rng = np.random.default_rng(0)
  softs, gts = [], []
  for i in range(5):
    h, w = rng.integers(5, 20, 2)
    gt = rng.random((h, w)) < 0.4
    soft = np.clip(gt * 0.6 + rng.random((h, w)) * 0.5, 0, 1)
    if i == 3:
      gt[:] = False  # empty GT: recall = 1
    if i == 4:
      soft[:] = 0.0  # never positive: precision = 1
    softs.append(soft)
    gts.append(gt)
  for s, g in zip(softs, gts):
    p, r = metrics.precision_recall_curve(s, g)
    po, ro = _oracle_pr(s, g, metrics.official_fmax_thresholds())
    np.testing.assert_allclose(p, po, rtol=1e-12)
    np.testing.assert_allclose(r, ro, rtol=1e-12)
  assert metrics.max_f_beta(softs, gts) == pytest.approx(_oracle_fmax(softs, gts), rel=1e-12)


def test_max_f_beta_perfect_and_uint8():
  gt = np.zeros((4, 4), bool)
  gt[1:3, 1:3] = True
  assert metrics.max_f_beta([gt.astype(np.float64)], [gt]) == pytest.approx(1.0)
  u8 = np.where(gt, 200, 3).astype(np.uint8)
  p, r = metrics.precision_recall_curve(u8, gt)
  # v > k for k = 1..254: threshold 3 is the first where the background (3) drops out
  assert p[1] < 1.0 and p[2] == 1.0 and r[198] == 1.0 and r[199] == 0.0


def test_f_beta_handles_zero():
  assert metrics.f_beta(np.array([0.0]), np.array([0.0]))[0] == 0.0
  assert metrics.f_beta(np.array([1.0]), np.array([1.0]))[0] == pytest.approx(1.0)


def test_object_seg_meter_means_per_image():
  meter = metrics.ObjectSegMeter()
  a = np.array([[1, 0], [0, 0]], bool)
  b = np.array([[1, 1], [0, 0]], bool)
  s1 = meter.update(a, b, soft_pred=a.astype(np.float32))
  meter.update(b, b, soft_pred=b.astype(np.float32))
  assert s1 == {'acc': 0.75, 'iou': 0.5}
  res = meter.result()
  assert res['acc'] == pytest.approx((0.75 + 1.0) / 2)
  assert res['iou'] == pytest.approx((0.5 + 1.0) / 2)
  assert res['n'] == 2
  assert res['max_f'] == pytest.approx(
    metrics.max_f_beta([a.astype(np.float32), b.astype(np.float32)], [b, b])
  )
  with pytest.raises(ValueError):
    meter.update(a, b)  # soft maps for some images only
  hard_only = metrics.ObjectSegMeter()
  hard_only.update(a, b)
  assert 'max_f' not in hard_only.result()


# ---------------------------------------------------------------- semantic segmentation


def test_confusion_matrix_vs_sklearn_and_ignore():
  rng = np.random.default_rng(1)
  pred = rng.integers(0, 4, (30, 40))
  gt = rng.integers(0, 5, (30, 40))
  gt[rng.random(gt.shape) < 0.2] = 255
  cm = metrics.confusion_matrix(pred, gt, 4, 5)
  keep = gt != 255
  # sklearn rows are y_true, columns y_pred: transpose to (pred, gt)
  expect = sk_confusion_matrix(gt[keep], pred[keep], labels=range(5)).T[:4, :]
  np.testing.assert_array_equal(cm, expect)
  assert cm.sum() == keep.sum() and cm.dtype == np.int64
  # accumulable
  cm2 = metrics.confusion_matrix(pred[:10], gt[:10], 4, 5) + metrics.confusion_matrix(
    pred[10:], gt[10:], 4, 5
  )
  np.testing.assert_array_equal(cm2, cm)
  with pytest.raises(ValueError):
    metrics.confusion_matrix(np.array([4]), np.array([0]), 4, 5)
  with pytest.raises(ValueError):
    metrics.confusion_matrix(np.array([0]), np.array([7]), 4, 5)


def test_iou_matrix_by_hand():
  cm = np.array([[3, 1], [0, 2]])
  m = metrics.iou_matrix(cm)
  # pred0 vs gt0: tp 3, pred0 total 4, gt0 total 3 -> 3/4 ; pred0 vs gt1: 1/(4+3-1)=1/6
  np.testing.assert_allclose(m, [[3 / 4, 1 / 6], [0 / 5, 2 / 3]])
  assert metrics.iou_matrix(np.zeros((2, 2)))[0, 0] == 0.0


def _brute_force_best(iou):
  k = iou.shape[0]
  return max(sum(iou[i, p[i]] for i in range(k)) for p in itertools.permutations(range(k)))


def test_hungarian_vs_brute_force():
  rng = np.random.default_rng(2)
  for k in (2, 3, 4, 5, 6):
    for _ in range(4):
      cm = rng.integers(0, 50, (k, k)) * (rng.random((k, k)) < 0.7)
      match = metrics.hungarian_match(cm)
      assert sorted(match[:, 0]) == list(range(k)) and sorted(match[:, 1]) == list(range(k))
      iou = metrics.iou_matrix(cm)
      got = iou[match[:, 0], match[:, 1]].sum()
      assert got == pytest.approx(_brute_force_best(iou), abs=1e-12)


def test_hungarian_vs_scipy_on_21_classes():
  rng = np.random.default_rng(3)
  for _ in range(3):
    cm = rng.integers(0, 1000, (21, 21))
    match = metrics.hungarian_match(cm)
    iou = metrics.iou_matrix(cm)
    r, c = linear_sum_assignment(iou, maximize=True)
    assert iou[match[:, 0], match[:, 1]].sum() == pytest.approx(iou[r, c].sum(), abs=1e-12)
  with pytest.raises(ValueError):
    metrics.hungarian_match(np.ones((3, 4)))


def test_hungarian_recovers_a_permutation():
  perm = np.array([2, 0, 3, 1])
  cm = np.zeros((4, 4), np.int64)
  cm[np.arange(4), perm] = [10, 20, 30, 40]
  cm += 1
  np.testing.assert_array_equal(metrics.hungarian_match(cm), np.stack([np.arange(4), perm], 1))
  miou, per_class = metrics.miou_from_confusion(cm, metrics.hungarian_match(cm))
  assert per_class.shape == (4,)
  assert miou == pytest.approx(np.mean(per_class))


def test_majority_match_by_hand():
  cm = np.array([[5, 1, 0], [4, 0, 0], [0, 0, 7], [0, 3, 1]])  # 4 clusters, 3 classes
  match = metrics.majority_match(cm)
  np.testing.assert_array_equal(match, [[0, 0], [1, 0], [2, 2], [3, 1]])


def test_miou_from_confusion_by_hand():
  # clusters 0,1 -> class 0; cluster 2 -> class 2; cluster 3 -> class 1
  cm = np.array([[5, 1, 0], [4, 0, 0], [0, 0, 7], [0, 3, 1]])
  miou, per = metrics.miou_from_confusion(cm, metrics.majority_match(cm))
  # remapped rows: class0 = [9,1,0], class1 = [0,3,1], class2 = [0,0,7]
  # IoU0 = 9/(10+9-9)=0.9 ; IoU1 = 3/(4+4-3)=0.6 ; IoU2 = 7/(7+8-7)=0.875
  np.testing.assert_allclose(per, [0.9, 0.6, 0.875])
  assert miou == pytest.approx((0.9 + 0.6 + 0.875) / 3)


def test_miou_unmatched_clusters_go_to_background_and_absent_classes_count_zero():
  cm = np.array([[2, 0, 0], [0, 3, 0], [1, 0, 0]])
  miou, per = metrics.miou_from_confusion(cm, np.array([[0, 0], [1, 1]]))  # cluster 2 unmatched
  np.testing.assert_allclose(per, [3 / 3, 1.0, 0.0])
  assert miou == pytest.approx(2 / 3)
  with pytest.raises(ValueError):
    metrics.miou_from_confusion(cm, np.array([[0, 0], [0, 1]]))
