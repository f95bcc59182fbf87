"""COCO formats for discovered objects: RLE masks, instances files, results, class-agnostic AP.

Masks are encoded with ``pycocotools.mask`` (compressed RLE, column-major, ``counts`` as an
ASCII str so the dict is JSON-ready); ``bbox`` and ``area`` are pycocotools' own ``toBbox``
(``[x, y, w, h]`` floats, ``x + w`` exclusive) and ``area`` (pixel count), as in CutLER's
pseudo-label files (maskcut_protocol.md §5–6). Unlike the official file, image entries carry the
true ``height``/``width`` and annotations a finite ``score`` (so the file also loads as results
with ``COCO.loadRes``).

Evaluation is class-agnostic as in CutLER: every ground-truth and detected category is
collapsed into one, then pycocotools' ``COCOeval`` runs silently (its prints are swallowed).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np
from pycocotools import mask as mask_utils

__all__ = [
  'FG_CATEGORY',
  'encode',
  'decode',
  'bbox',
  'area',
  'annotation',
  'instances_json',
  'detections_json',
  'write_json',
  'evaluate_class_agnostic',
]

FG_CATEGORY = {'id': 1, 'name': 'fg', 'supercategory': 'fg'}


def encode(mask: np.ndarray) -> Dict[str, Any]:
  """bool [H, W] → ``{'size': [H, W], 'counts': str}`` (compressed RLE, column-major)."""
  m = np.asfortranarray(np.asarray(mask, dtype=np.uint8))
  if m.ndim != 2:
    raise ValueError(f'mask must be [H, W], got {m.shape}')
  rle = mask_utils.encode(m)
  return {'size': [int(s) for s in rle['size']], 'counts': rle['counts'].decode('ascii')}


def _rle_bytes(rle: Mapping[str, Any]) -> Dict[str, Any]:
  counts = rle['counts']
  if isinstance(counts, list):  # uncompressed RLE → compressed
    return mask_utils.frPyObjects(dict(rle), *rle['size'])
  if isinstance(counts, str):
    counts = counts.encode('ascii')
  return {'size': list(rle['size']), 'counts': counts}


def decode(rle: Mapping[str, Any]) -> np.ndarray:
  """RLE dict (str/bytes counts, or uncompressed list counts) → bool [H, W]."""
  return mask_utils.decode(_rle_bytes(rle)).astype(bool)


def bbox(rle: Mapping[str, Any]) -> List[float]:
  """pycocotools ``toBbox``: ``[x, y, w, h]`` floats of the mask (zeros when empty)."""
  return [float(v) for v in mask_utils.toBbox(_rle_bytes(rle))]


def area(rle: Mapping[str, Any]) -> int:
  """Pixel count of the RLE mask."""
  return int(mask_utils.area(_rle_bytes(rle)))


def annotation(
  ann_id: int, image_id: int, mask: np.ndarray, score: float = 1.0, category_id: int = 1
) -> Dict[str, Any]:
  """One instances-file annotation of a bool [H, W] mask (RLE, its bbox and area, iscrowd 0)."""
  rle = encode(mask)
  score = float(score)
  if not np.isfinite(score):
    raise ValueError(f'score must be finite, got {score}')
  return {
    'id': int(ann_id),
    'image_id': int(image_id),
    'category_id': int(category_id),
    'segmentation': rle,
    'bbox': bbox(rle),
    'area': area(rle),
    'iscrowd': 0,
    'score': score,
  }


def instances_json(
  images: Sequence[Mapping[str, Any]],
  annotations: Iterable[Mapping[str, Any]],
  categories: Optional[Sequence[Mapping[str, Any]]] = None,
) -> Dict[str, Any]:
  """A COCO instances dict.

  Args:
    images: per image ``{'file_name', 'height', 'width'}`` and optionally ``'id'`` (default:
      running from 1 in list order). Images without objects must be listed too.
    annotations: either finished annotations (with ``'segmentation'``) or
      ``{'image_id', 'mask': bool [H, W], 'score'}`` records, turned into annotations with
      :func:`annotation`; ids run from 1 in order unless given; empty masks are skipped.
    categories: default one foreground class ``[{'id': 1, 'name': 'fg', ...}]``.

  Returns:
    ``{'images', 'categories', 'annotations'}`` (JSON-ready; see :func:`write_json`).
  """
  out_images = []
  for i, im in enumerate(images):
    out_images.append(
      {
        'id': int(im.get('id', i + 1)),
        'file_name': str(im['file_name']),
        'height': int(im['height']),
        'width': int(im['width']),
      }
    )
  out_anns = []
  for ann in annotations:
    ann_id = int(ann.get('id', len(out_anns) + 1))
    if 'mask' in ann:
      if not np.asarray(ann['mask']).any():
        continue
      a = annotation(
        ann_id, ann['image_id'], ann['mask'], ann.get('score', 1.0), ann.get('category_id', 1)
      )
    else:
      a = dict(ann)
      a.setdefault('id', ann_id)
      a.setdefault('iscrowd', 0)
      a.setdefault('category_id', 1)
      a.setdefault('score', 1.0)
      a.setdefault('bbox', bbox(a['segmentation']))
      a.setdefault('area', area(a['segmentation']))
    out_anns.append(a)
  return {
    'images': out_images,
    'categories': [dict(c) for c in (categories or [FG_CATEGORY])],
    'annotations': out_anns,
  }


def detections_json(
  image_ids: Sequence[int],
  scores: Sequence[float],
  masks: Optional[Sequence[np.ndarray]] = None,
  boxes: Optional[Sequence[Sequence[float]]] = None,
  category_id: int = 1,
  file_names: Optional[Sequence[str]] = None,
) -> List[Dict[str, Any]]:
  """COCO results list: ``{image_id, category_id, bbox, score[, segmentation][, file_name]}``
  per detection.

  Give ``masks`` (bool [H, W] each; bbox from the mask, RLE segmentation added) or ``boxes``
  (``[x, y, w, h]``, box-only results); ``file_names`` joins each to its image without the
  ground-truth file (COCO tools ignore the extra key).
  """
  if (masks is None) == (boxes is None):
    raise ValueError('give exactly one of masks and boxes')
  out = []
  for i, (image_id, score) in enumerate(zip(image_ids, scores)):
    det = {'image_id': int(image_id), 'category_id': int(category_id), 'score': float(score)}
    if masks is not None:
      rle = encode(masks[i])
      det['segmentation'] = rle
      det['bbox'] = bbox(rle)
    else:
      det['bbox'] = [float(v) for v in boxes[i]]
    if file_names is not None:
      det['file_name'] = file_names[i]
    out.append(det)
  return out


def write_json(path: str, data: Any) -> None:
  with open(path, 'w') as f:
    json.dump(data, f)


def evaluate_class_agnostic(
  gt: Mapping[str, Any], detections: Sequence[Mapping[str, Any]], iou_type: str = 'segm'
) -> Dict[str, float]:
  """Class-agnostic COCO AP of detections against a ground-truth instances dict.

  Args:
    gt: a COCO instances dict (any categories; all are collapsed into one).
    detections: a results list (:func:`detections_json`, or annotations carrying a score).
    iou_type: 'segm' (mask IoU; detections need 'segmentation') or 'bbox'.

  Returns:
    ``{'AP': AP@[.5:.95], 'AP50': AP@.5, 'AR100': AR@[.5:.95] with 100 detections}``, all
    areas; 0.0 for no detections (pycocotools cannot load an empty results list).
  """
  from pycocotools.coco import COCO  # pylint: disable=import-outside-toplevel
  from pycocotools.cocoeval import COCOeval  # pylint: disable=import-outside-toplevel

  gt = copy.deepcopy(dict(gt))
  gt['categories'] = [dict(FG_CATEGORY)]
  for ann in gt.get('annotations', []):
    ann['category_id'] = 1
    ann.setdefault('iscrowd', 0)
    if 'area' not in ann:  # COCOeval's area ranges need it
      box = ann.get('bbox', [0, 0, 0, 0])
      ann['area'] = area(ann['segmentation']) if 'segmentation' in ann else box[2] * box[3]
  gt.setdefault('info', {})
  dets = []
  for d in detections:
    d = {k: v for k, v in d.items() if k not in ('id', 'area')}  # loadRes recomputes them
    d['category_id'] = 1
    if iou_type == 'bbox':
      d.pop('segmentation', None)  # loadRes would take the mask's box otherwise
    dets.append(d)
  if not dets:
    return {'AP': 0.0, 'AP50': 0.0, 'AR100': 0.0}
  with contextlib.redirect_stdout(io.StringIO()):
    coco_gt = COCO()
    coco_gt.dataset = gt
    coco_gt.createIndex()
    coco_dt = coco_gt.loadRes(dets)
    ev = COCOeval(coco_gt, coco_dt, iou_type)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
  # stats: 0 AP, 1 AP50, 8 AR@100 (all areas); -1 means "no ground truth" → 0.
  return {name: max(float(ev.stats[i]), 0.0) for name, i in (('AP', 0), ('AP50', 1), ('AR100', 8))}
