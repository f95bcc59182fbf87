"""tasks/localize.py end to end: boxes equal the official ones; resume; odd inputs."""

import json

import numpy as np
import pytest
from PIL import Image

from spectral_jax import artifacts
from spectral_jax.spectral import segments
from spectral_jax.tasks import localize
from tests.conftest import PARITY_IDS


def test_boxes_equal_official(parity_config, manifest, tmp_path):
  localize.run(parity_config, tmp_path / 'out')
  preds = {r['id']: r for r in artifacts.read_jsonl(tmp_path / 'out' / 'predictions.jsonl')}
  assert sorted(preds) == sorted(PARITY_IDS)
  for image_id in PARITY_IDS:
    info = manifest['images'][image_id]
    assert preds[image_id]['box_xyxy'] == info['loc_box_xyxy']
    assert preds[image_id]['image_size'] == [info['height'], info['width']]
  assert (tmp_path / 'out' / 'panels' / 'astronaut.png').exists()
  assert json.loads((tmp_path / 'out' / 'metrics.json').read_text())['num_images'] == 3


def test_corloc_against_voc_xml_boxes(parity_config, manifest, tmp_path):
  """Two hits (the official box itself, 1-based XML) and one miss (a far-away box)."""
  xml_dir = tmp_path / 'xml'
  xml_dir.mkdir()
  for image_id in PARITY_IDS:
    x0, y0, x1, y1 = manifest['images'][image_id]['loc_box_xyxy']
    if image_id == 'coffee':
      x0, y0, x1, y1 = 1, 300, 60, 390  # IoU with the predicted box is 0
    else:
      x0, y0 = x0 + 1, y0 + 1  # LOST's −1 shift undoes this
    (xml_dir / f'{image_id}.xml').write_text(
      f'<annotation><size><width>1</width><height>1</height></size><object><name>x</name>'
      f'<difficult>0</difficult><truncated>0</truncated><bndbox><xmin>{x0}</xmin>'
      f'<ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object></annotation>'
    )
  parity_config.data.boxes = str(xml_dir)
  localize.run(parity_config, tmp_path / 'out')
  result = json.loads((tmp_path / 'out' / 'metrics.json').read_text())
  assert result['num_scored'] == 3
  assert result['corloc'] == pytest.approx(200 / 3)


def test_killed_run_resumes_without_recomputing(parity_config, tmp_path, monkeypatch):
  parity_config.data.batch_size = 1
  real_box = segments.localization_box
  calls = []

  def box_then_die(*args, **kwargs):
    if len(calls) == 2:
      raise KeyboardInterrupt('killed')
    calls.append(1)
    return real_box(*args, **kwargs)

  monkeypatch.setattr(segments, 'localization_box', box_then_die)
  with pytest.raises(KeyboardInterrupt):
    localize.run(parity_config, tmp_path / 'out')
  assert len(artifacts.read_jsonl(tmp_path / 'out' / 'predictions.jsonl')) == 2
  # A torn last line, as a kill during a write would leave, is ignored.
  with open(tmp_path / 'out' / 'predictions.jsonl', 'a') as f:
    f.write('{"id": "chel')
  calls.clear()
  monkeypatch.setattr(
    segments, 'localization_box', lambda *a, **k: (calls.append(1), real_box(*a, **k))[1]
  )
  localize.run(parity_config, tmp_path / 'out')
  assert len(calls) == 1  # only the unfinished image
  preds = artifacts.read_jsonl(tmp_path / 'out' / 'predictions.jsonl')
  assert sorted(r['id'] for r in preds) == sorted(PARITY_IDS)


def test_bad_images_are_skipped_and_odd_ones_converted(parity_config, image_dir, tmp_path):
  rgb = np.array(Image.open(image_dir / 'chelsea.png'))
  Image.fromarray(rgb).convert('L').save(image_dir / 'gray.png')
  Image.fromarray(rgb).convert('RGBA').save(image_dir / 'rgba.png')
  Image.fromarray((rgb[..., 0].astype(np.uint16) * 257)).save(image_dir / 'sixteen.png')
  (image_dir / 'corrupt.jpg').write_bytes(b'\xff\xd8\xff\xe0 not really a jpeg')
  Image.fromarray(rgb[:8, :8]).save(image_dir / 'tiny.png')
  parity_config.data.root = str(image_dir)
  localize.run(parity_config, tmp_path / 'out')
  preds = {r['id'] for r in artifacts.read_jsonl(tmp_path / 'out' / 'predictions.jsonl')}
  assert preds == set(PARITY_IDS) | {'gray', 'rgba', 'sixteen'}
  skipped = {r['id']: r['error'] for r in artifacts.read_jsonl(tmp_path / 'out' / 'skipped.jsonl')}
  assert set(skipped) == {'corrupt', 'tiny'}
  assert 'tiny' in skipped['tiny'] or '16' in skipped['tiny']


def test_clear_errors_for_bad_paths_and_values(parity_config, tmp_path):
  parity_config.data.root = str(tmp_path / 'nowhere')
  with pytest.raises(FileNotFoundError, match='nowhere'):
    localize.run(parity_config, tmp_path / 'out')
  parity_config.data.root = ''
  with pytest.raises(ValueError, match='data.root'):
    localize.run(parity_config, tmp_path / 'out')


def test_detections_json_scores_with_pycocotools(parity_config, manifest, tmp_path):
  """detections.json takes the image ids of a COCO ground truth and scores with COCOeval:
  ground-truth boxes equal to the official boxes give AP 1 (ours are identical)."""
  from spectral_jax import coco  # pylint: disable=import-outside-toplevel

  images, anns = [], []
  for i, image_id in enumerate(PARITY_IDS):
    info = manifest['images'][image_id]
    x0, y0, x1, y1 = info['loc_box_xyxy']
    images.append(
      {
        'id': 100 + i,
        'file_name': f'{image_id}.png',
        'height': info['height'],
        'width': info['width'],
      }
    )
    anns.append(
      {
        'id': i + 1,
        'image_id': 100 + i,
        'category_id': 7,
        'iscrowd': 0,
        'bbox': [x0, y0, x1 - x0, y1 - y0],
        'area': (x1 - x0) * (y1 - y0),
      }
    )
  gt = {'images': images, 'annotations': anns, 'categories': [{'id': 7, 'name': 'thing'}]}
  (tmp_path / 'gt.json').write_text(json.dumps(gt))
  parity_config.data.boxes = str(tmp_path / 'gt.json')
  localize.run(parity_config, tmp_path / 'out')
  dets = json.loads((tmp_path / 'out' / 'detections.json').read_text())
  assert sorted(d['image_id'] for d in dets) == [100, 101, 102]
  assert all(np.isfinite(d['score']) and d['category_id'] == 1 for d in dets)
  result = coco.evaluate_class_agnostic(gt, dets, iou_type='bbox')
  assert result['AP50'] == pytest.approx(1.0) and result['AP'] == pytest.approx(1.0)
  scores = {r['id']: r['score'] for r in artifacts.read_jsonl(tmp_path / 'out' / 'scores.jsonl')}
  assert sorted(scores) == sorted(PARITY_IDS) and all(0 < v <= 1 for v in scores.values())
