"""--mode=discover (spectral_jax/tasks/discover.py) against the official MaskCut instances.

tests/data/maskcut/instances_{crf,nocrf}.json are the official pseudo-label files of the parity
photos with the parity checkpoint (tests/data/maskcut/README.md). Objects are matched per image
(by file stem) one to one by mask IoU, at the bound tests/test_maskcut.py uses (≥ 0.999, same
count); a faithful port reproduces them pixel for pixel, which is checked as well.
"""

import copy
import json
from pathlib import Path
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
from scipy.optimize import linear_sum_assignment

from spectral_jax import coco
from spectral_jax.results import objects as objects_lib
from spectral_jax.tasks import common, discover
from tests.conftest import PARITY

REPO = Path(__file__).parent.parent
MASKCUT = Path(__file__).parent / 'data' / 'maskcut'


def _config(root, crf=False, **data):
  from configs import folder  # pylint: disable=import-outside-toplevel

  config = folder.get_config()
  config.data.root = str(root)
  config.model.checkpoint = str(PARITY / 'checkpoint.pth')
  config.output.num_panels = 1
  config.discover.crf = crf
  for key, value in data.items():
    config.data[key] = value
  return config


def _by_stem(instances):
  """file stem → list of (bool mask [H, W], annotation)."""
  names = {im['id']: Path(im['file_name']).stem for im in instances['images']}
  out = {stem: [] for stem in names.values()}
  for a in instances['annotations']:
    out[names[a['image_id']]].append((coco.decode(a['segmentation']), a))
  return out


def _check_against_official(ours, official_path):
  ref = _by_stem(json.loads(official_path.read_text()))
  mine = _by_stem(ours)
  assert sorted(mine) == sorted(ref)
  for stem, objects in ref.items():
    pred = mine[stem]
    assert len(pred) == len(objects), stem
    iou = np.array([[(p & r).sum() / (p | r).sum() for r, _ in objects] for p, _ in pred])
    rows, cols = linear_sum_assignment(-iou)
    assert iou[rows, cols].min() >= 0.999, (stem, iou)
    for (p, a), (r, b) in zip(pred, objects):  # discovery order, pixel for pixel
      np.testing.assert_array_equal(p, r)
      assert a['bbox'] == b['bbox'] and a['area'] == b['area']
      assert a['segmentation']['counts'] == b['segmentation']['counts']


def _check_file_format(path):
  from pycocotools.coco import COCO  # pylint: disable=import-outside-toplevel

  data = json.loads(Path(path).read_text())
  assert data['categories'] == [coco.FG_CATEGORY]
  for im in data['images']:
    assert set(im) >= {'id', 'file_name', 'height', 'width'}
  for a in data['annotations']:
    assert isinstance(a['segmentation']['counts'], str) and a['iscrowd'] == 0
    assert a['category_id'] == 1 and np.isfinite(a['score'])
    assert a['bbox'] == coco.bbox(a['segmentation']) and a['area'] == coco.area(a['segmentation'])
  gt = COCO(str(path))  # loadable as instances …
  assert len(gt.getAnnIds()) == len(data['annotations'])
  dets = gt.loadRes(copy.deepcopy(data['annotations']))  # … and as results (it edits them)
  assert len(dets.getAnnIds()) == len(data['annotations'])
  return data


@pytest.fixture(scope='module')
def nocrf_run(tmp_path_factory):
  out = tmp_path_factory.mktemp('discover_nocrf')
  discover.run(_config(PARITY / 'images'), out)
  return out


def test_parity_without_crf(nocrf_run):
  data = _check_file_format(nocrf_run / 'instances.json')
  # True sizes (not the official swap), paths relative to the data root.
  sizes = {im['file_name']: (im['height'], im['width']) for im in data['images']}
  assert sizes == {'astronaut.png': (512, 512), 'chelsea.png': (300, 451), 'coffee.png': (400, 600)}
  _check_against_official(data, MASKCUT / 'instances_nocrf.json')
  # Instance maps agree with the annotations; one panel (num_panels=1).
  for stem, objects in _by_stem(data).items():
    image = Image.open(nocrf_run / 'instance_maps' / f'{stem}.png')
    assert image.mode == 'P' and image.getpalette()[3:6] == [128, 0, 0]  # VOC colours: visible
    labels = np.asarray(image)
    assert labels.max() == len(objects)
    for i, (mask, _) in enumerate(objects):
      np.testing.assert_array_equal(labels == i + 1, mask)
  assert [p.name for p in (nocrf_run / 'panels').iterdir()] == ['discover_astronaut.png']
  # Scores: 1 − Ncut, finite and at most 1.
  assert all(a['score'] <= 1 for a in data['annotations'])


def test_resume_gives_the_same_file(nocrf_run, tmp_path):
  out = tmp_path / 'resumed'
  discover.run(_config(PARITY / 'images', limit=1), out)
  first = json.loads((out / 'instances.json').read_text())
  assert len(first['images']) == 1
  records = out / 'discover' / 'records.jsonl'
  with open(records, 'a') as f:  # killed while writing chelsea's record: a torn last line
    f.write('{"id": "chelsea", "file_na')
  discover.run(_config(PARITY / 'images'), out)  # the first image is not recomputed
  assert sum(line.endswith('}') for line in records.read_text().splitlines()) == 3
  assert (out / 'instances.json').read_bytes() == (nocrf_run / 'instances.json').read_bytes()


def test_main_with_crf_default(tmp_path):
  """Once through main.py (CRF on by default, the official pseudo-label path), with the CRF
  in 2 worker processes."""
  out = tmp_path / 'out'
  cmd = [
      sys.executable, 'main.py', '--config=configs/folder.py', '--mode=discover',
      f'--config.data.root={PARITY / "images"}', '--config.model.name=dino_vits16',
      f'--config.model.checkpoint={PARITY / "checkpoint.pth"}', f'--workdir={out}',
      '--config.discover.workers=2',
  ]  # fmt: skip
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  data = _check_file_format(out / 'instances.json')
  _check_against_official(data, MASKCUT / 'instances_crf.json')


def _generated(root):
  """Photos with known instances (a red and a blue box on grass), a corrupt and a tiny file."""
  images, masks = root / 'images', root / 'masks'
  images.mkdir(parents=True)
  masks.mkdir()
  rng = np.random.default_rng(0)
  for i in range(4):
    h, w = 240, 320
    im = (np.array([40, 120, 40]) + rng.integers(0, 20, (h, w, 3))).astype(np.uint8)
    lab = np.zeros((h, w), np.uint8)
    y, x = rng.integers(20, 100), rng.integers(20, 160)
    im[y : y + 110, x : x + 130] = (230, 30, 30)
    lab[y : y + 110, x : x + 130] = 1
    Image.fromarray(im).save(images / f'g{i}.png')
    Image.fromarray(lab).save(masks / f'g{i}.png')
  (images / 'broken.png').write_bytes(b'not a png')
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(images / 'tiny.png')
  return images, masks


def test_ap_on_generated_instances_and_skips(tmp_path):
  images, masks = _generated(tmp_path / 'data')
  out = tmp_path / 'out'
  discover.run(_config(images, masks=str(masks)), out)
  data = _check_file_format(out / 'instances.json')
  assert sorted(im['file_name'] for im in data['images']) == [f'g{i}.png' for i in range(4)]
  skipped = {r['id'] for r in map(json.loads, (out / 'skipped.jsonl').read_text().splitlines())}
  assert skipped == {'broken', 'tiny'}
  metrics = json.loads((out / 'metrics.json').read_text())
  # The keys every mode's metrics.json starts with: 6 files, the corrupt and the tiny one failed.
  assert {k: metrics[k] for k in ('mode', 'method', 'model')} == {
    'mode': 'discover',
    'method': 'maskcut',
    'model': 'dino_vits16',
  }
  assert (metrics['num_images'], metrics['num_processed'], metrics['num_failed']) == (6, 4, 2)
  assert metrics['num_scored'] == 4 and metrics['num_gt_objects'] == 4
  # detections.json names each detection's file; the best one per file covers that file's box.
  detections = json.loads((out / 'detections.json').read_text())
  assert {d['file_name'] for d in detections} == {f'g{i}.png' for i in range(4)}
  for i in range(4):
    mine = [d for d in detections if d['file_name'] == f'g{i}.png']
    assert set(mine[0]) == {'image_id', 'category_id', 'bbox', 'score', 'segmentation', 'file_name'}
    x, y, w, h = max(mine, key=lambda d: d['score'])['bbox']
    ys, xs = np.nonzero(np.asarray(Image.open(masks / f'g{i}.png')))
    gt = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    inter = max(0, min(x + w, gt[2]) - max(x, gt[0])) * max(0, min(y + h, gt[3]) - max(y, gt[1]))
    assert inter / (w * h + (gt[2] - gt[0]) * (gt[3] - gt[1]) - inter) > 0.5, (i, mine)
  # Each box is found (an untrained 2-block ViT: edges follow colour), its mask nearly exact.
  assert metrics['segm']['AP50'] == 100.0 and metrics['bbox']['AP50'] == 100.0
  assert metrics['segm']['AP'] > 70 and metrics['segm']['AR100'] > 70
  # Evaluating the ground truth against itself gives 100 (the evaluation path is sound).
  truth = [np.asarray(Image.open(masks / im['file_name'])) > 0 for im in data['images']]
  gt = {
    'images': data['images'],
    'annotations': [
      coco.annotation(i + 1, im['id'], m) for i, (im, m) in enumerate(zip(data['images'], truth))
    ],
  }
  assert coco.evaluate_class_agnostic(gt, gt['annotations'])['AP'] == pytest.approx(1.0)
  # The same ground truth as a COCO JSON (segm + bbox) and as VOC XML boxes (bbox only).
  records = discover.read_records(out)
  gt_json = tmp_path / 'gt.json'
  gt_json.write_text(json.dumps(gt))
  examples = common.examples_from_config(_config(images, boxes=str(gt_json)).data, out)
  by_json = discover.evaluate(_config(images, boxes=str(gt_json)), examples, records, data)
  assert by_json['segm'] == metrics['segm'] and by_json['bbox'] == metrics['bbox']
  xml_dir = tmp_path / 'xml'
  xml_dir.mkdir()
  for im, m in zip(data['images'], truth):
    ys, xs = np.nonzero(m)
    corners = (xs.min() + 1, ys.min() + 1, xs.max() + 1, ys.max() + 1)  # VOC: 1-based, inclusive
    box = ''.join(f'<{k}>{v}</{k}>' for k, v in zip(('xmin', 'ymin', 'xmax', 'ymax'), corners))
    (xml_dir / im['file_name'].replace('.png', '.xml')).write_text(
      f'<annotation><object><name>box</name><bndbox>{box}</bndbox></object></annotation>'
    )
  config = _config(images, boxes=str(xml_dir))
  examples = common.examples_from_config(config.data, out)
  by_xml = discover.evaluate(config, examples, records, data)
  assert 'segm' not in by_xml and by_xml['bbox'] == metrics['bbox']


def test_instance_map_and_config_errors():
  masks = np.zeros((2, 4, 5), bool)
  masks[0, :2] = True
  masks[1, 3, 1:] = True
  labels = objects_lib.instance_map(masks, (4, 5))
  assert labels.dtype == np.uint8 and set(np.unique(labels)) == {0, 1, 2}
  config = _config(PARITY / 'images')
  config.discover.solver = 'magic'
  with pytest.raises(ValueError, match='discover.solver'):
    discover.run(config, '/nonexistent-never-created')


def test_mask_instances(tmp_path):
  voc = np.zeros((6, 6), np.uint8)
  voc[:2, :2], voc[4:, 4:], voc[3, :] = 1, 2, 255  # two objects and VOC's void border
  Image.fromarray(voc).save(tmp_path / 'voc.png')
  binary = np.where(voc == 1, 255, 0).astype(np.uint8)
  Image.fromarray(binary).save(tmp_path / 'binary.png')
  assert [m.sum() for m in discover.mask_instances(tmp_path / 'voc.png')] == [4, 4]
  assert [m.sum() for m in discover.mask_instances(tmp_path / 'binary.png')] == [4]
