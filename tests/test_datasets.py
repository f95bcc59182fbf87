"""Tests for spectral_jax.data.datasets with tiny fixture datasets generated in tmp_path."""

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spectral_jax.data import datasets, decode, folders

# ---------------------------------------------------------------- helpers


def _jpeg(path, size=(40, 30), color=(120, 30, 200)):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.new('RGB', size, color).save(path, 'JPEG')
  return path


def _png(path, array):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(array).save(path)
  return path


def _voc_xml(path, filename, size_wh, objects):
  objs = ''.join(
    f'<object><name>{n}</name><pose>Unspecified</pose><truncated>{t}</truncated>'
    f'<difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>'
    f'<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>'
    for n, t, d, b in objects
  )
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(
    f'<annotation><folder>VOC2007</folder><filename>{filename}</filename>'
    f'<size><width>{size_wh[0]}</width><height>{size_wh[1]}</height><depth>3</depth></size>'
    f'{objs}</annotation>'
  )


VOC_OBJECTS = {
  '000005': [('chair', 0, 0, (11, 21, 30, 28)), ('chair', 1, 0, (1, 1, 40, 30))],
  '000007': [('car', 0, 1, (2, 3, 20, 20))],  # only a difficult box
  '000009': [('horse', 0, 0, (5, 6, 7, 8))],
}


@pytest.fixture
def voc_root(tmp_path):
  base = tmp_path / 'VOCdevkit' / 'VOC2007'
  for stem, objs in VOC_OBJECTS.items():
    _jpeg(base / 'JPEGImages' / f'{stem}.jpg')
    _voc_xml(base / 'Annotations' / f'{stem}.xml', f'{stem}.jpg', (40, 30), objs)
  (base / 'ImageSets' / 'Main').mkdir(parents=True)
  (base / 'ImageSets' / 'Main' / 'trainval.txt').write_text('000005\n000007\n000009\n')
  (base / 'ImageSets' / 'Main' / 'test.txt').write_text('000009\n')
  return tmp_path


# ---------------------------------------------------------------- VOC devkit


def test_voc_devkit_boxes_and_roots(voc_root):
  for root in (voc_root, voc_root / 'VOCdevkit', voc_root / 'VOCdevkit' / 'VOC2007'):
    ex = datasets.voc_devkit(root, 2007)
    assert [e.id for e in ex] == ['000005', '000007', '000009']
  e = ex[0]
  assert e.path.endswith(os.path.join('JPEGImages', '000005.jpg')) and os.path.isfile(e.path)
  assert e.image_hw == (30, 40) and e.labels == ('chair', 'chair') and not e.apply_exif
  assert e.gt_boxes is e.boxes
  np.testing.assert_array_equal(e.boxes, [[10, 20, 30, 28], [0, 0, 40, 30]])  # xmin-1, ymin-1
  assert e.boxes.dtype == np.float64
  assert [x.id for x in datasets.voc_devkit(voc_root, '2007', 'test')] == ['000009']


def test_voc_devkit_no_hard(voc_root):
  ex = datasets.voc_devkit(voc_root, 2007, no_hard=True)
  assert [e.id for e in ex] == ['000005', '000009']  # 000007 has only a difficult box
  np.testing.assert_array_equal(ex[0].boxes, [[10, 20, 30, 28]])  # truncated box dropped


def test_voc_devkit_errors(voc_root, tmp_path):
  with pytest.raises(FileNotFoundError, match='VOC2012'):
    datasets.voc_devkit(voc_root, 2012)
  with pytest.raises(FileNotFoundError, match='val.txt'):
    datasets.voc_devkit(voc_root, 2007, 'val')


def test_parse_voc_xml_malformed(tmp_path):
  (tmp_path / 'bad.xml').write_text('<annotation><object>')
  with pytest.raises(ValueError, match='bad.xml'):
    datasets.parse_voc_xml(tmp_path / 'bad.xml')


def test_parse_voc_xml_non_integer(tmp_path):
  _voc_xml(tmp_path / 'a.xml', 'a.jpg', (10, 10), [('cat', 0, 0, ('2.5', 3, 9, 10))])
  np.testing.assert_array_equal(
    datasets.parse_voc_xml(tmp_path / 'a.xml')['boxes'], [[1, 2, 9, 10]]
  )


# ---------------------------------------------------------------- COCO20k


def _coco_json(path, images, annotations):
  path.write_text(
    json.dumps(
      {
        'images': images,
        'annotations': annotations,
        'categories': [{'id': 1, 'name': 'person'}],
      }
    )
  )
  return path


COCO_NAMES = ['COCO_train2014_000000000003.jpg', 'COCO_train2014_000000000001.jpg']


@pytest.fixture
def coco_root(tmp_path):
  for n in COCO_NAMES + ['COCO_train2014_000000000002.jpg']:
    _jpeg(tmp_path / 'train2014' / n)
  images = [
    {'id': i, 'file_name': f'COCO_train2014_{i:012d}.jpg', 'width': 40, 'height': 30}
    for i in (1, 2, 3)
  ]
  anns = [
    {'id': 10, 'image_id': 1, 'bbox': [1.5, 2.4, 10.0, 3.5], 'iscrowd': 0, 'category_id': 1},
    {'id': 11, 'image_id': 1, 'bbox': [0, 0, 40, 30], 'iscrowd': 1, 'category_id': 1},
    {'id': 12, 'image_id': 3, 'bbox': [2.5, 0.5, 1.0, 1.0], 'iscrowd': 0, 'category_id': 1},
  ]
  return tmp_path, _coco_json(tmp_path / 'instances_train2014.json', images, anns)


def test_coco20k_boxes_rounding_and_crowd(coco_root):
  root, ann = coco_root
  ex = datasets.coco20k(root, ann, filenames=['train2014/' + n for n in COCO_NAMES])
  assert [e.id for e in ex] == ['COCO_train2014_000000000003', 'COCO_train2014_000000000001']
  # int(round(.)) with Python rounding: 2.5 -> 2, 0.5 -> 0, 3.5 -> 4, 1.5 -> 2
  np.testing.assert_array_equal(ex[0].boxes, [[2, 0, 4, 2]])
  np.testing.assert_array_equal(ex[1].boxes, [[2, 2, 12, 6]])  # crowd box dropped
  assert ex[1].image_hw == (30, 40) and os.path.isfile(ex[1].path)
  # root may also be train2014 itself
  assert datasets.coco20k(root / 'train2014', ann, filenames=COCO_NAMES)[0].path == ex[0].path


def test_coco20k_finds_the_json(coco_root):
  root, ann = coco_root
  assert (
    len(datasets.coco20k(root, None, filenames=COCO_NAMES)) == 2
  )  # root/instances_train2014.json
  ann = ann.rename(root / 'elsewhere.json')
  with pytest.raises(FileNotFoundError, match='instances_train2014.json'):
    datasets.coco20k(root, None, filenames=COCO_NAMES)
  (root / 'annotations').mkdir()
  ann.rename(root / 'annotations' / 'instances_train2014.json')
  assert len(datasets.coco20k(root / 'train2014', None, filenames=COCO_NAMES)) == 2


def test_coco20k_default_list_and_missing(coco_root):
  names = datasets.coco20k_filenames()
  assert len(names) == 19817 and names[0] == 'COCO_train2014_000000560992.jpg'
  root, ann = coco_root
  with pytest.raises(ValueError, match='none of the'):
    datasets.coco20k(root, ann)  # fixture JSON has none of the real 20k ids
  ex = datasets.coco20k(root, ann, filenames=COCO_NAMES + ['COCO_train2014_000000999999.jpg'])
  assert len(ex) == 2


def test_shipped_voc_lists():
  assert len(datasets.read_list('voc2007_trainval_images.txt')) == 5011
  assert len(datasets.read_list('voc2012_all_jpegimages.txt')) == 17125


# ---------------------------------------------------------------- tfds


def _jpeg_bytes(w, h):
  buf = io.BytesIO()
  Image.new('RGB', (w, h), (9, 99, 199)).save(buf, 'JPEG')
  return buf.getvalue()


def _write_prepared(data_dir, name, version, features, split_examples):
  """Writes a genuinely prepared array_record tfds dataset without TensorFlow."""
  from array_record.python import array_record_module
  from tensorflow_datasets.core import dataset_info, file_adapters, naming
  from tensorflow_datasets.core import splits as splits_lib

  ds_name, config = name.split('/')
  d = Path(data_dir) / ds_name / config / version
  d.mkdir(parents=True)
  split_infos = []
  for split, exs in split_examples.items():
    serialized = [features.serialize_example(features.encode_example(e)) for e in exs]
    writer = array_record_module.ArrayRecordWriter(
      str(d / f'{ds_name}-{split}.array_record-00000-of-00001'), 'group_size:1'
    )
    for s in serialized:
      writer.write(s)
    writer.close()
    template = naming.ShardedFileTemplate(
      data_dir=d, dataset_name=ds_name, split=split, filetype_suffix='array_record'
    )
    split_infos.append(
      splits_lib.SplitInfo(
        name=split,
        shard_lengths=[len(exs)],
        num_bytes=sum(map(len, serialized)),
        filename_template=template,
      )
    )
  identity = dataset_info.DatasetIdentity(
    name=ds_name, version=version, data_dir=str(d), module_name='fixture', config_name=config
  )
  info = dataset_info.DatasetInfo(builder=identity, features=features)
  info.set_file_format(file_adapters.FileFormat.ARRAY_RECORD)
  info.set_splits(splits_lib.SplitDict(split_infos))
  info.write_to_directory(d)
  return d


def _voc_record(tfds, stem, w, h, boxes_xml, truncated, difficult):
  return {
    'image': _jpeg_bytes(w, h),
    'image/filename': f'{stem}.jpg',
    'labels': [0] * len(boxes_xml),
    'labels_no_difficult': [0] * len(boxes_xml),
    'objects': {
      'bbox': [tfds.features.BBox(y1 / h, x1 / w, y2 / h, x2 / w) for x1, y1, x2, y2 in boxes_xml],
      'is_truncated': truncated,
      'is_difficult': difficult,
      'label': [0] * len(boxes_xml),
      'pose': [0] * len(boxes_xml),
    },
  }


@pytest.fixture(scope='module')
def tfds_dir(tmp_path_factory):
  tfds = pytest.importorskip('tensorflow_datasets')
  import numpy as onp

  data_dir = tmp_path_factory.mktemp('tfds')
  # The real voc/2007 features (the VOC builder code needs no TensorFlow to describe them).
  voc_features = tfds.builder('voc/2007', data_dir=str(data_dir / 'unused')).info.features
  _write_prepared(
    data_dir,
    'voc/2007',
    '5.0.0',
    voc_features,
    {
      'train': [
        _voc_record(tfds, '000012', 353, 500, [(156, 97, 351, 270)], [False], [False]),
        _voc_record(
          tfds,
          '000007',
          500,
          333,
          [(141, 50, 500, 330), (1, 1, 9, 9)],
          [True, False],
          [False, True],
        ),
      ],
      'validation': [
        _voc_record(tfds, '000005', 500, 375, [(263, 211, 324, 339)], [False], [False])
      ],
    },
  )
  # coco/2014 features as declared in tfds' coco.py (its builder code needs TensorFlow).
  coco_features = tfds.features.FeaturesDict(
    {
      'image': tfds.features.Image(encoding_format='jpeg'),
      'image/filename': tfds.features.Text(),
      'image/id': onp.int64,
      'objects': tfds.features.Sequence(
        {
          'id': onp.int64,
          'area': onp.int64,
          'bbox': tfds.features.BBoxFeature(),
          'label': tfds.features.ClassLabel(num_classes=80),
          'is_crowd': onp.bool_,
        }
      ),
    }
  )
  in20k = datasets.coco20k_filenames()[0]  # COCO_train2014_000000560992.jpg

  def coco_rec(fname, w, h, boxes, crowd):
    return {
      'image': _jpeg_bytes(w, h),
      'image/filename': fname,
      'image/id': int(Path(fname).stem.split('_')[-1]),
      'objects': {
        'id': list(range(len(boxes))),
        'area': [1] * len(boxes),
        'bbox': [
          tfds.features.BBox(y / h, x / w, (y + bh) / h, (x + bw) / w) for x, y, bw, bh in boxes
        ],
        'label': [0] * len(boxes),
        'is_crowd': crowd,
      },
    }

  _write_prepared(
    data_dir,
    'coco/2014',
    '1.1.0',
    coco_features,
    {
      'train': [
        coco_rec(in20k, 64, 48, [(10.2, 5.7, 20.0, 30.1), (0, 0, 64, 48)], [False, True]),
        coco_rec('COCO_train2014_000000000001.jpg', 32, 32, [(1, 1, 2, 2)], [False]),
      ]
    },
  )
  return data_dir


def test_tfds_voc_matches_devkit_convention(tfds_dir):
  ex = datasets.tfds_detection('voc/2007', 'train+validation', tfds_dir)
  assert [e.id for e in ex] == ['000005', '000007', '000012']  # sorted by id
  by_id = {e.id: e for e in ex}
  np.testing.assert_array_equal(by_id['000005'].boxes, [[262, 210, 324, 339]])
  np.testing.assert_array_equal(by_id['000007'].boxes, [[140, 49, 500, 330], [0, 0, 9, 9]])
  assert by_id['000007'].image_hw == (333, 500) and by_id['000007'].path is None
  # no_hard: 000007 has a truncated and a difficult box -> nothing left -> image skipped
  hard = datasets.tfds_detection('voc/2007', 'train', tfds_dir, no_hard=True)
  assert [e.id for e in hard] == ['000012']
  np.testing.assert_array_equal(hard[0].boxes, [[155, 96, 351, 270]])


def test_tfds_load_image_lazily(tfds_dir):
  e = {x.id: x for x in datasets.tfds_detection('voc/2007', 'train', tfds_dir)}['000012']
  rgb = datasets.load_image(e)
  assert rgb.shape == (500, 353, 3) and rgb.dtype == np.uint8
  assert abs(int(rgb[..., 2].mean()) - 199) < 4


def test_tfds_cache_dir_materialises_files(tfds_dir, tmp_path):
  ex = datasets.tfds_detection('voc/2007', 'train', tfds_dir, tmp_path / 'cache')
  for e in ex:
    assert e.path == str(tmp_path / 'cache' / 'voc_2007' / 'train' / f'{e.id}.jpg')
    assert datasets.load_image(e).shape[:2] == e.image_hw
  again = datasets.tfds_detection('voc/2007', 'train', tfds_dir, tmp_path / 'cache')  # reuses files
  assert [e.path for e in again] == [e.path for e in ex]


def test_tfds_coco_filters_to_20k_and_drops_crowd(tfds_dir):
  ex = datasets.tfds_detection('coco/2014', 'train', tfds_dir)
  assert [e.id for e in ex] == ['COCO_train2014_000000560992']
  # [x, y, x+w, y+h] = [10.2, 5.7, 30.2, 35.8] -> int(round(.))
  np.testing.assert_array_equal(ex[0].boxes, [[10, 6, 30, 36]])
  assert len(datasets.tfds_detection('coco/2014', 'train', tfds_dir, coco20k_only=False)) == 2


def test_tfds_not_prepared_message(tmp_path):
  with pytest.raises(datasets.TfdsNotPreparedError) as e:
    datasets.tfds_detection('voc/2012', 'train', tmp_path)
  msg = str(e.value)
  assert 'download_and_prepare' in msg and 'tfds build voc/2012' in msg and 'tensorflow-cpu' in msg
  assert isinstance(e.value, FileNotFoundError)
  with pytest.raises(ValueError):
    datasets.tfds_detection('mnist', 'train', tmp_path)


def test_tfds_mock_data_records():
  """tfds.testing.mock_data + tfds.data_source work without TensorFlow for voc/2007."""
  tfds = pytest.importorskip('tensorflow_datasets')
  with tfds.testing.mock_data(num_examples=3):
    source = tfds.data_source('voc/2007', split='test', download=False)
    # The mock's batched __getitems__ is broken (unbound partial); read records one by one.
    records = [source[i] for i in range(len(source))]
    ex = datasets.examples_from_tfds_records(records, 'voc/2007')
  assert len(ex) == 3
  for e in ex:
    assert e.boxes.shape[1] == 4 and e.image_hw is not None and e.tfds_ref is None


# ---------------------------------------------------------------- saliency sets


def _pair(img_dir, mask_dir, stem, size=(40, 30), ext='.jpg'):
  _jpeg(img_dir / f'{stem}{ext}', size)
  m = np.zeros((size[1], size[0]), np.uint8)
  m[: size[1] // 2] = 255
  _png(mask_dir / f'{stem}.png', m)


def test_saliency_ecssd_pairs_by_stem_and_logs_unpaired(tmp_path, monkeypatch):
  warnings = []
  monkeypatch.setattr(datasets.logging, 'warning', lambda fmt, *a: warnings.append(fmt % a))
  base = tmp_path / 'ECSSD'
  for s in ('0002', '0001'):
    _pair(base / 'images', base / 'ground_truth_mask', s)
  _jpeg(base / 'images' / '0003.jpg')  # no mask
  _png(base / 'ground_truth_mask' / '0009.png', np.zeros((3, 3), np.uint8))  # no image
  ex = datasets.saliency_folder('ECSSD', tmp_path)
  assert [e.id for e in ex] == ['0001', '0002']
  assert ex[0].mask_path.endswith('0001.png') and not ex[0].center_crop
  assert any('0003.jpg' in w for w in warnings) and any('0009' in w for w in warnings)
  assert [e.id for e in datasets.saliency_folder('ECSSD', base)] == ['0001', '0002']


def test_saliency_duts_and_dut_omron_layouts(tmp_path):
  duts = tmp_path / 'DUTS' / 'DUTS-TE'
  _pair(duts / 'DUTS-TE-Image', duts / 'DUTS-TE-Mask', 'ILSVRC2012_test_00000003')
  assert len(datasets.saliency_folder('DUTS-TE', tmp_path)) == 1
  omron = tmp_path / 'DUT_OMRON'
  _pair(omron / 'DUT-OMRON-image', omron / 'pixelwiseGT-new-PNG', 'im005')
  assert datasets.saliency_folder('DUT-OMRON', tmp_path)[0].id == 'im005'
  with pytest.raises(FileNotFoundError, match='DUT-OMRON-image'):
    datasets.saliency_folder('DUT-OMRON', tmp_path / 'nowhere')
  with pytest.raises(ValueError):
    datasets.saliency_folder('PASCAL-S', tmp_path)


def test_saliency_cub_nested_and_center_crop(tmp_path):
  base = tmp_path / 'CUB_200_2011'
  _pair(
    base / 'test_images' / '001.Black_footed_Albatross',
    base / 'test_segmentations' / '001.Black_footed_Albatross',
    'Black_Footed_Albatross_0001_796111',
    size=(40, 30),
  )
  _pair(
    base / 'test_images' / '002.Laysan_Albatross',
    base / 'test_segmentations' / '002.Laysan_Albatross',
    'Laysan_Albatross_0002_1027',
    size=(20, 25),
  )
  ex = datasets.saliency_folder('CUB', tmp_path)
  assert [e.id for e in ex] == ['Black_Footed_Albatross_0001_796111', 'Laysan_Albatross_0002_1027']
  assert all(e.center_crop for e in ex)
  # images and masks load uncropped (features use the full image); the crop is for scoring
  img, mask = datasets.load_image(ex[1]), datasets.load_gt_mask(ex[1])
  assert img.shape == (25, 20, 3) and mask.shape == (25, 20)
  crop = decode.center_crop_square(mask)
  assert crop.shape == (20, 20)
  # the mask is the top half (rows < 12); the crop starts at top = round(2.5) = 2
  assert crop[:10].all() and not crop[10:].any()
  assert not datasets.saliency_folder('CUB', tmp_path, center_crop=False)[0].center_crop


# ---------------------------------------------------------------- image folder


def test_image_folder_recursive_sorted_ids(tmp_path, monkeypatch):
  warnings = []
  monkeypatch.setattr(folders.logging, 'warning', lambda fmt, *a: warnings.append(fmt % a))
  _jpeg(tmp_path / 'b.jpg')
  _jpeg(tmp_path / 'a' / 'x.JPEG')
  _png(tmp_path / 'a' / 'y.png', np.zeros((4, 4), np.uint8))
  (tmp_path / 'notes.txt').write_text('not an image')
  ex = datasets.image_folder(tmp_path)
  assert warnings == [f'{tmp_path}: ignored 1 file that is not an image (.txt: 1)']
  assert [e.id for e in ex] == ['a__x', 'a__y', 'b']
  assert all(e.boxes is None and e.mask_path is None and e.apply_exif for e in ex)
  (tmp_path / 'empty').mkdir()
  with pytest.raises(ValueError, match='no images'):
    datasets.image_folder(tmp_path / 'empty')
  with pytest.raises(FileNotFoundError):
    datasets.image_folder(tmp_path / 'missing')


def test_image_folder_with_voc_xml_boxes_and_masks(tmp_path):
  imgs = tmp_path / 'imgs'
  _jpeg(imgs / 'p.jpg')
  _jpeg(imgs / 'q.jpg')
  _voc_xml(tmp_path / 'xml' / 'p.xml', 'p.jpg', (40, 30), [('dog', 0, 0, (3, 4, 10, 12))])
  _png(tmp_path / 'masks' / 'p.png', np.full((30, 40), 255, np.uint8))
  ex = datasets.image_folder(imgs, boxes=tmp_path / 'xml', masks_dir=tmp_path / 'masks')
  np.testing.assert_array_equal(ex[0].boxes, [[2, 3, 10, 12]])
  assert ex[1].boxes.shape == (0, 4)  # no XML for q
  assert ex[0].mask_path.endswith('p.png') and ex[1].mask_path is None
  assert not ex[0].apply_exif
  assert datasets.load_gt_mask(ex[0]).all()


def test_image_folder_with_coco_json(tmp_path, coco_root):
  root, ann = coco_root
  ex = datasets.image_folder(root / 'train2014', boxes=ann)
  by_id = {e.id: e for e in ex}
  np.testing.assert_array_equal(by_id['COCO_train2014_000000000001'].boxes, [[2, 2, 12, 6]])
  assert by_id['COCO_train2014_000000000002'].boxes.shape == (0, 4)
  with pytest.raises(ValueError, match='VOC XML'):
    datasets.image_folder(root / 'train2014', boxes=root / 'instances_train2014.txt')


def test_image_paths_keeps_order_and_names_folders_apart(tmp_path):
  for folder in ('a', 'b'):
    (tmp_path / folder).mkdir()
    for name in ('1.png', '2.jpg'):
      Image.new('RGB', (20, 10)).save(tmp_path / folder / name)
  single = tmp_path / 'photo.png'
  Image.new('RGB', (20, 10)).save(single)
  got = datasets.image_paths([single, tmp_path / 'b', tmp_path / 'a'])
  assert [ex.id for ex in got] == ['photo', 'b__1', 'b__2', 'a__1', 'a__2']
  assert got[1].path == str(tmp_path / 'b' / '1.png')
  # One folder alone: named as image_folder names them.
  assert [ex.id for ex in datasets.image_paths([tmp_path / 'a'])] == ['1', '2']
  with pytest.raises(FileNotFoundError, match='nowhere'):
    datasets.image_paths([single, tmp_path / 'nowhere'])
