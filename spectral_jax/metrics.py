"""Evaluation metrics of the official Deep Spectral Methods protocols (numpy, host side).

Three families, each reproducing the official code's numerics (see
`official_protocol.md` sections 5.3, 6 and 7.2):

* Object localisation: `box_iou`, `corloc_hit`, `corloc` (LOST's YOLOv5-style IoU).
* Object segmentation: `mask_accuracy`, `mask_iou`, `precision_recall_curve`, `max_f_beta`
  and the dataset-level `ObjectSegMeter` (mean of per-image values).
* Semantic segmentation: `confusion_matrix` (accumulable by `+`), `iou_matrix`,
  `hungarian_match`, `majority_match`, `miou_from_confusion`.

All functions are pure; none reads files or configs.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

__all__ = [
  'box_iou',
  'corloc_hit',
  'corloc',
  'mask_accuracy',
  'mask_iou',
  'official_fmax_thresholds',
  'precision_recall_curve',
  'f_beta',
  'max_f_beta',
  'ObjectSegMeter',
  'confusion_matrix',
  'iou_matrix',
  'hungarian_match',
  'majority_match',
  'miou_from_confusion',
]

# ----------------------------------------------------------------------------------------------
# Object localisation (CorLoc)
# ----------------------------------------------------------------------------------------------


def box_iou(box: np.ndarray | Sequence[float], gt_boxes: np.ndarray) -> np.ndarray:
  """IoU of one box with each of `gt_boxes`, exactly LOST's `bbox_iou` (YOLOv5 formula).

  Boxes are xyxy in continuous pixel coordinates (no +1):
    inter = clamp(min x2 - max x1, 0) * clamp(min y2 - max y1, 0)
    area  = (x2 - x1) * (y2 - y1 + 1e-7)
    iou   = inter / (area_p + area_g - inter + 1e-7)

  Dtype follows torch's promotion in the official code: integer boxes (the official case:
  int64 predictions and int64 GT) are computed in float32; otherwise the widest float dtype
  of the two inputs is used (an int array does not widen a float32 one).
  This matters for exact ties: an IoU of exactly 1/2 is 0.5 in float32 (a CorLoc hit) but
  just below 0.5 in float64 because the eps terms survive there.

  Args:
    box: [4] predicted box.
    gt_boxes: [n, 4] ground-truth boxes (n may be 0).
  Returns:
    [n] IoUs.
  """
  b = np.asarray(box)
  g = np.asarray(gt_boxes).reshape(-1, 4)
  floats = [d for d in (b.dtype, g.dtype) if np.issubdtype(d, np.floating)]
  # torch promotion: float beats int without widening; int-only + python float -> float32
  dtype = np.result_type(*floats) if floats else np.dtype(np.float32)
  b = b.astype(dtype)
  g = g.astype(dtype)
  eps = dtype.type(1e-7)
  zero = dtype.type(0)
  inter = np.maximum(np.minimum(b[2], g[:, 2]) - np.maximum(b[0], g[:, 0]), zero) * np.maximum(
    np.minimum(b[3], g[:, 3]) - np.maximum(b[1], g[:, 1]), zero
  )
  w1, h1 = b[2] - b[0], b[3] - b[1] + eps
  w2, h2 = g[:, 2] - g[:, 0], g[:, 3] - g[:, 1] + eps
  union = w1 * h1 + w2 * h2 - inter + eps
  return inter / union


def corloc_hit(
  pred_box: np.ndarray | Sequence[float], gt_boxes: np.ndarray, thr: float = 0.5
) -> bool:
  """True if the predicted box has IoU >= `thr` with any GT box (False when there is none)."""
  ious = box_iou(pred_box, gt_boxes)
  return bool(np.any(ious >= thr))


def corloc(hits: Iterable[bool]) -> float:
  """CorLoc in percent: 100 * #hits / #evaluated images."""
  h = np.asarray(list(hits), dtype=bool)
  if h.size == 0:
    raise ValueError('corloc: no evaluated images')
  return 100.0 * float(h.sum()) / h.size


# ----------------------------------------------------------------------------------------------
# Object segmentation
# ----------------------------------------------------------------------------------------------


def _check_same_shape(pred: np.ndarray, gt: np.ndarray) -> None:
  if pred.shape != gt.shape:
    raise ValueError(f'prediction shape {pred.shape} != ground-truth shape {gt.shape}')


def mask_accuracy(pred: np.ndarray, gt: np.ndarray) -> float:
  """Pixel accuracy mean(pred == gt) of two binary masks [H, W]."""
  p, g = np.asarray(pred).astype(bool), np.asarray(gt).astype(bool)
  _check_same_shape(p, g)
  return float(np.mean(p == g))


def mask_iou(pred: np.ndarray, gt: np.ndarray) -> float:
  """|pred & gt| / |pred | gt| of two binary masks; an empty union gives 0 (as official:
  NaN -> 0)."""
  p, g = np.asarray(pred).astype(bool), np.asarray(gt).astype(bool)
  _check_same_shape(p, g)
  union = int(np.count_nonzero(p | g))
  if union == 0:
    return 0.0
  return float(np.count_nonzero(p & g)) / union


def official_fmax_thresholds() -> np.ndarray:
  """The official max-F thresholds: `np.arange(0, 1, 1/255)` without 0, i.e. 254 values ~i/255."""
  return np.arange(0.0, 1.0, 1.0 / 255)[1:]


def precision_recall_curve(
  soft_pred: np.ndarray, gt: np.ndarray, thresholds: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
  """Per-threshold precision and recall of `soft_pred > t` against a binary `gt` (one image).

  Official conventions: precision = 1 when the thresholded prediction is empty, recall = 1 when
  the GT is empty. Float predictions are compared with the thresholds cast to their dtype
  (torch compares a float32 tensor with a python float in float32). uint8 predictions are
  read as v/255 and compared in integers (v > k for the threshold k/255).

  Args:
    soft_pred: [H, W] probabilities in [0, 1] (float) or 0..255 (uint8).
    gt: [H, W] binary mask.
    thresholds: [T]; default `official_fmax_thresholds()`.
  Returns:
    (precision [T], recall [T]) float64.
  """
  s = np.asarray(soft_pred)
  g = np.asarray(gt).astype(bool)
  _check_same_shape(s, g)
  t = official_fmax_thresholds() if thresholds is None else np.asarray(thresholds, np.float64)
  if s.dtype == np.uint8:
    # v/255 > k/255  <=>  v > k ; exact, no float rounding at the bin edges.
    values, t_cmp = s.ravel(), np.rint(t * 255.0)
  elif np.issubdtype(s.dtype, np.floating):
    values, t_cmp = s.ravel(), t.astype(s.dtype)
  else:
    raise TypeError(f'soft predictions must be float or uint8, got {s.dtype}')
  # Counts of values strictly above each threshold via sorted search (O(N log N), no [T, N]).
  all_sorted = np.sort(values)
  fg_sorted = np.sort(values[g.ravel()])
  pred_area = all_sorted.size - np.searchsorted(all_sorted, t_cmp, side='right')
  tp = fg_sorted.size - np.searchsorted(fg_sorted, t_cmp, side='right')
  gt_area = fg_sorted.size
  with np.errstate(divide='ignore', invalid='ignore'):
    precision = np.where(pred_area == 0, 1.0, tp / np.maximum(pred_area, 1))
    recall = np.full(t.shape, 1.0) if gt_area == 0 else tp / gt_area
  return precision.astype(np.float64), np.asarray(recall, np.float64)


def f_beta(precision: np.ndarray, recall: np.ndarray, beta2: float = 0.3) -> np.ndarray:
  """F_beta = (1 + b2) P R / (b2 P + R), with 0/0 -> 0 (official NaN handling)."""
  p = np.asarray(precision, np.float64)
  r = np.asarray(recall, np.float64)
  with np.errstate(divide='ignore', invalid='ignore'):
    f = (1.0 + beta2) * p * r / (beta2 * p + r)
  return np.nan_to_num(f, nan=0.0)


def max_f_beta(
  soft_preds: Sequence[np.ndarray],
  gts: Sequence[np.ndarray],
  beta2: float = 0.3,
  thresholds: np.ndarray | None = None,
) -> float:
  """Max-F_beta over a dataset: F per image per threshold, averaged over images, then max.

  Thresholds default to the official 254 values (`official_fmax_thresholds`). Computed in
  float64 (the official code uses float32 tensors; differences are ~1e-7).
  """
  if len(soft_preds) != len(gts):
    raise ValueError(f'{len(soft_preds)} predictions for {len(gts)} ground truths')
  if len(gts) == 0:
    raise ValueError('max_f_beta: no images')
  curves = [precision_recall_curve(s, g, thresholds) for s, g in zip(soft_preds, gts)]
  p = np.stack([c[0] for c in curves])
  r = np.stack([c[1] for c in curves])
  return float(np.max(np.mean(f_beta(p, r, beta2), axis=0)))


class ObjectSegMeter:
  """Dataset-level object-segmentation scores: mean of per-image accuracy and IoU (official),
  plus max-F_beta when soft predictions are given for every image.

  Usage: `m = ObjectSegMeter(); m.update(pred, gt); ...; m.result()`.
  """

  def __init__(self, beta2: float = 0.3, thresholds: np.ndarray | None = None):
    self.beta2 = beta2
    self.thresholds = official_fmax_thresholds() if thresholds is None else np.asarray(thresholds)
    self.acc: list[float] = []
    self.iou: list[float] = []
    self._precision: list[np.ndarray] = []
    self._recall: list[np.ndarray] = []

  def __len__(self) -> int:
    return len(self.acc)

  def update(
    self, pred: np.ndarray, gt: np.ndarray, soft_pred: np.ndarray | None = None
  ) -> dict[str, float]:
    """Adds one image (binary `pred`, binary `gt`, optional soft map); returns its scores."""
    if self.acc and bool(self._precision) != (soft_pred is not None):
      raise ValueError('give soft predictions for every image or for none')
    scores = {'acc': mask_accuracy(pred, gt), 'iou': mask_iou(pred, gt)}
    self.acc.append(scores['acc'])
    self.iou.append(scores['iou'])
    if soft_pred is not None:
      p, r = precision_recall_curve(soft_pred, gt, self.thresholds)
      self._precision.append(p)
      self._recall.append(r)
    return scores

  def result(self) -> dict[str, float]:
    """{'acc', 'iou', 'n'} (+ 'max_f' when soft maps were given); means over images."""
    if not self.acc:
      raise ValueError('ObjectSegMeter: no images')
    out = {
      'acc': float(np.mean(self.acc)),
      'iou': float(np.mean(self.iou)),
      'n': float(len(self.acc)),
    }
    if self._precision:
      f = f_beta(np.stack(self._precision), np.stack(self._recall), self.beta2)
      out['max_f'] = float(np.max(np.mean(f, axis=0)))
    return out


# ----------------------------------------------------------------------------------------------
# Semantic segmentation
# ----------------------------------------------------------------------------------------------


def confusion_matrix(
  pred: np.ndarray, gt: np.ndarray, n_pred: int, n_gt: int, ignore: int | None = 255
) -> np.ndarray:
  """Pixel counts C[p, g] over pixels whose GT is not `ignore`; int64 [n_pred, n_gt].

  Accumulate over a dataset with `total += confusion_matrix(...)`. Values outside
  [0, n_pred) / [0, n_gt) (other than ignored GT) raise: the official code would silently
  count them as background.
  """
  p = np.asarray(pred).ravel()
  g = np.asarray(gt).ravel()
  if p.shape != g.shape:
    raise ValueError(f'pred has {p.size} pixels, gt has {g.size}')
  if ignore is not None:
    keep = g != ignore
    p, g = p[keep], g[keep]
  p = p.astype(np.int64)
  g = g.astype(np.int64)
  if p.size and (p.min() < 0 or p.max() >= n_pred):
    raise ValueError(f'predicted labels must lie in [0, {n_pred}); got [{p.min()}, {p.max()}]')
  if g.size and (g.min() < 0 or g.max() >= n_gt):
    raise ValueError(
      f'GT labels must lie in [0, {n_gt}) or be {ignore}; got [{g.min()}, {g.max()}]'
    )
  return np.bincount(p * n_gt + g, minlength=n_pred * n_gt).reshape(n_pred, n_gt).astype(np.int64)


def iou_matrix(confusion: np.ndarray) -> np.ndarray:
  """M[p, g] = TP / max(TP + FP + FN, 1e-8) between predicted cluster p and class g (float64)."""
  c = np.asarray(confusion, np.float64)
  tp = c
  denom = c.sum(axis=1, keepdims=True) + c.sum(axis=0, keepdims=True) - tp
  return tp / np.maximum(denom, 1e-8)


def hungarian_match(confusion: np.ndarray) -> np.ndarray:
  """One-to-one matching maximising the summed IoU (official: 21 labels incl. background).

  Solved as the official code does, `linear_sum_assignment(N_pixels - IoU)`.
  Returns int64 [K, 2] rows (pred cluster, GT class), sorted by cluster.
  """
  c = np.asarray(confusion)
  if c.ndim != 2 or c.shape[0] != c.shape[1]:
    raise ValueError(f'Hungarian matching needs a square confusion matrix, got {c.shape}')
  cost = float(c.sum()) - iou_matrix(c)
  rows, cols = linear_sum_assignment(cost)
  return np.stack([rows, cols], axis=1).astype(np.int64)


def majority_match(confusion: np.ndarray) -> np.ndarray:
  """Many-to-one matching: each predicted cluster -> its argmax-IoU class (first on ties).

  Returns int64 [n_pred, 2] rows (pred cluster, GT class).
  """
  m = iou_matrix(confusion)
  return np.stack([np.arange(m.shape[0]), np.argmax(m, axis=1)], axis=1).astype(np.int64)


def miou_from_confusion(confusion: np.ndarray, matching: np.ndarray) -> tuple[float, np.ndarray]:
  """Remaps clusters with `matching` ([K, 2] (pred, gt) pairs) and scores them.

  Clusters absent from `matching` become class 0 (the official remap starts from zeros).
  IoU_c = TP / max(TP + FP + FN, 1e-8); mIoU is the mean over all GT classes (absent classes
  count as 0, as official).

  Returns:
    (mIoU, per-class IoU [n_gt] float64).
  """
  c = np.asarray(confusion, np.int64)
  n_pred, n_gt = c.shape
  pairs = np.asarray(matching, np.int64).reshape(-1, 2)
  if len(np.unique(pairs[:, 0])) != len(pairs):
    raise ValueError('matching assigns a predicted cluster twice')
  if pairs.size and (pairs[:, 0].max() >= n_pred or pairs[:, 1].max() >= n_gt or pairs.min() < 0):
    raise ValueError(f'matching out of range for a {c.shape} confusion matrix')
  target = np.zeros(n_pred, np.int64)
  target[pairs[:, 0]] = pairs[:, 1]
  remapped = np.zeros((n_gt, n_gt), np.int64)
  np.add.at(remapped, target, c)
  tp = np.diag(remapped).astype(np.float64)
  denom = remapped.sum(axis=1) + remapped.sum(axis=0) - tp
  per_class = tp / np.maximum(denom, 1e-8)
  return float(np.mean(per_class)), per_class
