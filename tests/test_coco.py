"""spectral_jax.coco: RLE against a brute-force codec, the official instances file, hand-made AP."""

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO

from spectral_jax import coco

DATA = Path(__file__).parent / 'data' / 'maskcut'
IDS = ('astronaut', 'chelsea', 'coffee')


def brute_runs(mask):
  """Run lengths of the column-major mask, starting with a (possibly empty) run of zeros."""
  flat = np.asarray(mask, bool).T.reshape(-1)
  runs, value, count = [], False, 0
  for v in flat:
    if v == value:
      count += 1
    else:
      runs.append(count)
      value, count = v, 1
  runs.append(count)
  return runs


def brute_string_to_runs(s):
  """COCO's compressed-counts codec, decoded independently (5 bits a char, sign bit, deltas)."""
  runs, i = [], 0
  while i < len(s):
    x, k, more = 0, 0, True
    while more:
      c = ord(s[i]) - 48
      x |= (c & 0x1F) << (5 * k)
      more = bool(c & 0x20)
      i += 1
      k += 1
      if not more and c & 0x10:
        x |= -1 << (5 * k)
    if len(runs) > 2:
      x += runs[-2]
    runs.append(x)
  return runs


def brute_bbox(mask):
  ys, xs = np.nonzero(mask)
  if not len(xs):
    return [0.0, 0.0, 0.0, 0.0]
  x0, y0 = xs.min(), ys.min()
  return [float(x0), float(y0), float(xs.max() - x0 + 1), float(ys.max() - y0 + 1)]


def _random_masks():
  rng = np.random.default_rng(0)
  yield np.zeros((5, 7), bool)
  yield np.ones((6, 4), bool)
  for shape in ((1, 1), (13, 9), (40, 31), (64, 64)):
    yield rng.random(shape) < 0.5
    blob = np.zeros(shape, bool)
    blob[shape[0] // 4 : 3 * shape[0] // 4 + 1, shape[1] // 3 :] = True
    yield blob


@pytest.mark.parametrize('mask', list(_random_masks()))
def test_rle_round_trip_against_brute_force(mask):
  rle = coco.encode(mask)
  assert isinstance(rle['counts'], str) and rle['size'] == list(mask.shape)
  json.dumps(rle)  # JSON-ready
  runs = brute_string_to_runs(rle['counts'])
  ref = brute_runs(mask)
  assert runs == ref
  np.testing.assert_array_equal(coco.decode(rle), mask)
  assert coco.area(rle) == mask.sum()
  assert coco.bbox(rle) == brute_bbox(mask)
  # Uncompressed (list) counts decode to the same mask.
  np.testing.assert_array_equal(coco.decode({'size': list(mask.shape), 'counts': ref}), mask)


def _official(kind):
  return json.loads((DATA / f'instances_{kind}.json').read_text())


def _ours(kind):
  """Our instances dict built from the official final masks (npz) in the official order."""
  official = _official(kind)
  images, anns = [], []
  for image_id, name in enumerate(IDS, 1):
    masks = np.load(DATA / f'{name}.npz')[f'mask_{kind}']
    h, w = masks.shape[1:]
    images.append({'file_name': f'images/{name}.png', 'height': h, 'width': w})
    anns += [{'image_id': image_id, 'mask': m, 'score': 0.5} for m in masks]  # empties skipped
  assert [im['file_name'] for im in official['images']] == [im['file_name'] for im in images]
  return coco.instances_json(images, anns)


@pytest.mark.parametrize('kind', ('crf', 'nocrf'))
def test_instances_equal_the_official_file(kind, tmp_path):
  official, ours = _official(kind), _ours(kind)
  assert ours['categories'] == [{'id': 1, 'name': 'fg', 'supercategory': 'fg'}]
  assert ours['categories'][0] == official['categories'][0]
  for mine, ref in zip(ours['images'], official['images'], strict=True):
    assert set(mine) == {'id', 'file_name', 'height', 'width'}
    assert (mine['id'], mine['file_name']) == (ref['id'], ref['file_name'])
    # The official file swaps them; ours carries the true size.
    assert (mine['height'], mine['width']) == (ref['width'], ref['height'])
  assert len(ours['annotations']) == len(official['annotations'])
  for mine, ref in zip(ours['annotations'], official['annotations'], strict=True):
    assert set(mine) == {
      'id',
      'image_id',
      'category_id',
      'segmentation',
      'bbox',
      'area',
      'iscrowd',
      'score',
    }
    for key in ('id', 'image_id', 'category_id', 'segmentation', 'bbox', 'area', 'iscrowd'):
      assert mine[key] == ref[key], key
    assert type(mine['area']) is int and np.isfinite(mine['score'])
  path = tmp_path / 'instances.json'
  coco.write_json(str(path), ours)
  with contextlib.redirect_stdout(io.StringIO()):
    gt = COCO(str(path))
    res = gt.loadRes(json.loads(path.read_text())['annotations'])
  assert len(gt.getImgIds()) == 3 and len(res.getAnnIds()) == len(ours['annotations'])
  for ann in ours['annotations']:
    decoded = coco.decode(ann['segmentation'])
    np.testing.assert_array_equal(gt.annToMask(gt.anns[ann['id']]), decoded)


# --- class-agnostic AP on a generated dataset ---------------------------------------------------


def _square(shape, y, x, side=10):
  m = np.zeros(shape, bool)
  m[y : y + side, x : x + side] = True
  return m


def _gt_dataset():
  """Two 40×60 images, three 10×10 squares; the ground truth has two different categories."""
  objects = [(1, 2, 3), (1, 20, 30), (2, 5, 40)]  # image_id, y, x
  images = [{'id': i, 'file_name': f'{i}.png', 'height': 40, 'width': 60} for i in (1, 2)]
  anns = [
    {'image_id': i, 'mask': _square((40, 60), y, x), 'category_id': 1 + n % 2}
    for n, (i, y, x) in enumerate(objects)
  ]
  categories = [{'id': 1, 'name': 'a'}, {'id': 2, 'name': 'b'}]
  return coco.instances_json(images, anns, categories), objects


def _detections(objects, scores, shift=None):
  masks = [_square((40, 60), y, x) for _, y, x in objects]
  if shift is not None:
    i, dx = shift
    masks[i] = _square((40, 60), objects[i][1], objects[i][2] + dx)
  return coco.detections_json([o[0] for o in objects], scores, masks=masks, category_id=7)


def test_perfect_predictions_give_ap_one(capsys):
  gt, objects = _gt_dataset()
  out = coco.evaluate_class_agnostic(gt, _detections(objects, [0.9, 0.8, 0.7]))
  assert out == {'AP': 1.0, 'AP50': 1.0, 'AR100': 1.0}
  box = coco.evaluate_class_agnostic(gt, _detections(objects, [0.9, 0.8, 0.7]), iou_type='bbox')
  assert box == {'AP': 1.0, 'AP50': 1.0, 'AR100': 1.0}
  assert capsys.readouterr().out == ''  # silent


def test_shifted_prediction_ap_by_hand():
  """The lowest-scored detection is shifted by 2 px: IoU = 8·10 / (12·10) = 2/3.

  It matches at the thresholds .50 .55 .60 .65 (AP = 1 there) and is a false positive at the
  six others, where the precision is 1 up to recall 2/3 and recall 2/3 is never passed: of the
  101 recall points 0, .01, …, 1 the 67 points ≤ .66 get precision 1 → AP = 67/101.
  """
  gt, objects = _gt_dataset()
  out = coco.evaluate_class_agnostic(gt, _detections(objects, [0.9, 0.8, 0.7], shift=(2, 2)))
  assert out['AP50'] == pytest.approx(1.0)
  assert out['AP'] == pytest.approx((4 * 1.0 + 6 * 67 / 101) / 10)
  assert out['AR100'] == pytest.approx((4 * 1.0 + 6 * 2 / 3) / 10)


def test_missing_prediction_and_ranking_by_hand():
  gt, objects = _gt_dataset()
  # One object never detected: precision 1 up to recall 2/3 at every threshold.
  out = coco.evaluate_class_agnostic(gt, _detections(objects[:2], [0.9, 0.8]))
  assert out == pytest.approx({'AP': 67 / 101, 'AP50': 67 / 101, 'AR100': 2 / 3})
  # The shifted (false at IoU .5 when shifted by 4: IoU 6/14) detection ranked first: the
  # precision at recall 1/3 and 2/3 is 1/2 and 2/3, interpolated to 2/3 for recall ≤ 2/3.
  out = coco.evaluate_class_agnostic(gt, _detections(objects, [0.9, 0.8, 0.95], shift=(2, 4)))
  assert out['AP50'] == pytest.approx(67 * (2 / 3) / 101)
  assert coco.evaluate_class_agnostic(gt, []) == {'AP': 0.0, 'AP50': 0.0, 'AR100': 0.0}
