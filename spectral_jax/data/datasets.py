"""Dataset readers: lists of lazy `Example` records (images are decoded later by `decode.py`).

Readers (all return `list[Example]` in a deterministic order):
  * `voc_devkit`     - PASCAL VOC devkit (LOST/official CorLoc protocol, section 5.1).
  * `coco20k`        - COCO train2014 restricted to the shipped COCO20k list.
  * `tfds_detection` - prepared tfds `voc/2007`, `voc/2012`, `coco/2014` (read without TensorFlow).
  * `saliency_folder`- ECSSD, DUTS-TE, DUT-OMRON, CUB (object segmentation, section 6).
  * `image_folder`   - any folder of images, optional VOC-XML / COCO-JSON boxes or masks.

Boxes are float xyxy in pixels of the stored image (no EXIF rotation), converted as the official
code does: VOC (xmin - 1, ymin - 1, xmax, ymax); COCO int(round(.)) of [x, y, x + w, y + h].
"""

from __future__ import annotations

import dataclasses
import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence, Union

import numpy as np
from absl import logging

from spectral_jax.data import decode
from spectral_jax.data.example import Example, TfdsRef
from spectral_jax.data.shipped_lists import coco20k_filenames, read_list
from spectral_jax.data.folders import (
  IMAGE_EXTENSIONS,
  _list_images,
  _pair_masks,
  saliency_folder,
)
from spectral_jax.data.tfds_source import (
  TfdsNotPreparedError,
  _tfds_source,
  examples_from_tfds_records,
  tfds_detection,
)

__all__ = [
  'Example',
  'TfdsRef',
  'IMAGE_EXTENSIONS',
  'TfdsNotPreparedError',
  'read_list',
  'coco20k_filenames',
  'parse_voc_xml',
  'voc_devkit',
  'coco20k',
  'tfds_detection',
  'examples_from_tfds_records',
  'saliency_folder',
  'image_folder',
  'load_image',
  'load_gt_mask',
]

PathLike = Union[str, os.PathLike]


# ----------------------------------------------------------------------------------------------
# PASCAL VOC
# ----------------------------------------------------------------------------------------------


def _voc_int(text: str | None, what: str, xml_path: PathLike) -> int:
  if text is None:
    raise ValueError(f'{xml_path}: missing <{what}>')
  try:
    return int(text)
  except ValueError:
    # LOST's int(str) would crash on '273.5'; truncate like int(float) and say so.
    logging.warning('%s: non-integer <%s> %r truncated to an integer', xml_path, what, text)
    return int(float(text))


def parse_voc_xml(xml_path: PathLike, no_hard: bool = False) -> dict[str, Any]:
  """Parses a VOC annotation: {'filename', 'image_hw', 'boxes' [n,4] float64, 'labels'}.

  Boxes follow LOST: (xmin - 1, ymin - 1, xmax, ymax) from the 1-based inclusive integers.
  With `no_hard`, objects with truncated == '1' or difficult == '1' are dropped.
  """
  try:
    root = ET.parse(xml_path).getroot()
  except ET.ParseError as e:
    raise ValueError(f'{xml_path}: malformed VOC annotation XML ({e})') from e
  size = root.find('size')
  image_hw = None
  if size is not None and size.findtext('height') and size.findtext('width'):
    image_hw = (int(float(size.findtext('height'))), int(float(size.findtext('width'))))
  boxes, labels = [], []
  for obj in root.findall('object'):
    hard = (obj.findtext('truncated') or '').strip() == '1' or (
      obj.findtext('difficult') or ''
    ).strip() == '1'
    if no_hard and hard:
      continue
    bb = obj.find('bndbox')
    if bb is None:
      raise ValueError(f'{xml_path}: <object> without <bndbox>')
    x1, y1, x2, y2 = (
      _voc_int(bb.findtext(k), k, xml_path) for k in ('xmin', 'ymin', 'xmax', 'ymax')
    )
    boxes.append([x1 - 1, y1 - 1, x2, y2])
    labels.append((obj.findtext('name') or '').strip())
  return {
    'filename': (root.findtext('filename') or '').strip(),
    'image_hw': image_hw,
    'boxes': np.asarray(boxes, np.float64).reshape(-1, 4),
    'labels': tuple(labels),
  }


def _find_voc_year_dir(root: Path, year: str) -> Path:
  candidates = [root / 'VOCdevkit' / f'VOC{year}', root / f'VOC{year}', root]
  for c in candidates:
    if (c / 'JPEGImages').is_dir() and (c / 'Annotations').is_dir():
      return c
  raise FileNotFoundError(
    f'no VOC{year} devkit under {root}: looked for JPEGImages/ and Annotations/ in '
    + ', '.join(str(c) for c in candidates)
  )


def voc_devkit(
  root: PathLike, year: str | int, image_set: str = 'trainval', no_hard: bool = False
) -> list[Example]:
  """VOC detection examples of `ImageSets/Main/<image_set>.txt`, in list order.

  `root` may be the folder holding VOCdevkit/, VOCdevkit/ itself or VOC<year>/.
  `no_hard` drops truncated/difficult boxes and then images left without a box (LOST
  `--no_hard`); by default every image and box is kept (README protocol).
  """
  year = str(year)
  base = _find_voc_year_dir(Path(root), year)
  list_path = base / 'ImageSets' / 'Main' / f'{image_set}.txt'
  if not list_path.is_file():
    raise FileNotFoundError(f'VOC image-set list not found: {list_path}')
  ids = [line.split()[0] for line in list_path.read_text().splitlines() if line.strip()]
  examples, skipped = [], 0
  for image_id in ids:
    xml_path = base / 'Annotations' / f'{image_id}.xml'
    if not xml_path.is_file():
      raise FileNotFoundError(f'VOC annotation not found: {xml_path}')
    try:
      ann = parse_voc_xml(xml_path, no_hard=no_hard)
    except ValueError as e:  # one bad annotation is not scored; the image still runs
      logging.warning('%s', e)
      examples.append(
        Example(
          id=image_id,
          path=str(base / 'JPEGImages' / f'{image_id}.jpg'),
          apply_exif=False,
          gt_error=str(e),
        )
      )
      continue
    if no_hard and len(ann['boxes']) == 0:
      skipped += 1
      continue
    examples.append(
      Example(
        id=image_id,
        path=str(base / 'JPEGImages' / f'{image_id}.jpg'),
        image_hw=ann['image_hw'],
        boxes=ann['boxes'],
        labels=ann['labels'],
        apply_exif=False,
      )
    )
  if skipped:
    logging.info(
      'VOC%s %s: %d images without non-hard boxes skipped (--no_hard)', year, image_set, skipped
    )
  logging.info('VOC%s %s: %d examples from %s', year, image_set, len(examples), base)
  return examples


# ----------------------------------------------------------------------------------------------
# COCO
# ----------------------------------------------------------------------------------------------


def _coco_box(bbox: Sequence[float]) -> list[float]:
  x, y, w, h = (float(v) for v in bbox)
  return [float(int(round(v))) for v in (x, y, x + w, y + h)]  # Python round: half to even


def _coco_index(
  annotations_json: PathLike,
) -> tuple[dict[str, dict], dict[int, list[dict]], dict[int, str]]:
  """file_name -> image record, image id -> annotations (file order), category id -> name."""
  with open(annotations_json) as f:
    data = json.load(f)
  by_name = {}
  for im in data.get('images', []):
    by_name[im['file_name']] = im
    by_name.setdefault(os.path.basename(im['file_name']), im)
  anns: dict[int, list[dict]] = {}
  for a in data.get('annotations', []):
    anns.setdefault(a['image_id'], []).append(a)
  cats = {c['id']: c.get('name', str(c['id'])) for c in data.get('categories', [])}
  return by_name, anns, cats


def _coco_gt(anns: Iterable[dict], cats: Mapping[int, str]) -> tuple[np.ndarray, tuple[str, ...]]:
  boxes, labels = [], []
  for a in anns:
    if a.get('iscrowd', 0) == 1:  # LOST removes crowd boxes
      continue
    boxes.append(_coco_box(a['bbox']))
    labels.append(cats.get(a.get('category_id'), str(a.get('category_id'))))
  return np.asarray(boxes, np.float64).reshape(-1, 4), tuple(labels)


_COCO_JSON_NAMES = ('instances_train2014.json', 'instances_train2014_sel20k.json')


def _find_coco_json(root: Path, image_dir: Path) -> Path:
  """Standard places of the train2014 instances JSON around the image folder."""
  candidates = [
    base / sub / name
    for base in dict.fromkeys((root, image_dir.parent, image_dir.parent.parent))
    for sub in ('annotations', '')
    for name in _COCO_JSON_NAMES
  ]
  for c in candidates:
    if c.is_file():
      return c
  raise FileNotFoundError(
    'COCO20k needs the train2014 instances JSON (annotations/instances_train2014.json from '
    'annotations_trainval2014.zip); pass it explicitly or put it in one of: '
    + ', '.join(str(c) for c in candidates[:4])
  )


def coco20k(
  root: PathLike, annotations_json: PathLike | None = None, filenames: Sequence[str] | None = None
) -> list[Example]:
  """COCO20k examples (order of the shipped list) with boxes from `annotations_json`.

  `root` may hold train2014/ (or images/train2014/) or be train2014/ itself.
  `annotations_json` is `instances_train2014.json` (or a subset containing the 20k images);
  None looks for annotations/instances_train2014.json next to the images.
  Boxes: [x, y, x + w, y + h] each int(round(.)); crowd boxes dropped. List entries missing
  from the JSON are skipped with a warning.
  """
  root = Path(root)
  image_dir = next(
    (d for d in (root / 'train2014', root / 'images' / 'train2014') if d.is_dir()), root
  )
  names = coco20k_filenames() if filenames is None else [os.path.basename(n) for n in filenames]
  if annotations_json is None:
    annotations_json = _find_coco_json(root, image_dir)
  by_name, anns, cats = _coco_index(annotations_json)
  examples, missing = [], []
  for name in names:
    im = by_name.get(name)
    if im is None:
      missing.append(name)
      continue
    boxes, labels = _coco_gt(anns.get(im['id'], []), cats)
    examples.append(
      Example(
        id=Path(name).stem,
        path=str(image_dir / name),
        image_hw=(int(im['height']), int(im['width'])),
        boxes=boxes,
        labels=labels,
        apply_exif=False,
      )
    )
  if missing:
    if not examples:
      raise ValueError(f'none of the {len(names)} COCO20k images is in {annotations_json}')
    logging.warning(
      'COCO20k: %d listed images are not in %s (skipped), e.g. %s',
      len(missing),
      annotations_json,
      missing[:3],
    )
  logging.info('COCO20k: %d examples from %s', len(examples), image_dir)
  return examples


# ----------------------------------------------------------------------------------------------
# Any folder
# ----------------------------------------------------------------------------------------------


def _folder_id(path: Path, root: Path) -> str:
  return path.relative_to(root).with_suffix('').as_posix().replace('/', '__')


def image_folder(
  root: PathLike,
  boxes: PathLike | None = None,
  masks_dir: PathLike | None = None,
  exclude: Sequence[PathLike] = (),
) -> list[Example]:
  """Every image under `root` (see `IMAGE_EXTENSIONS`; recursive, sorted by path).

  Args:
    root: folder of images, or one image file. Example ids are the relative paths without
      suffix, '/' -> '__'. Hidden entries and spectral_jax workdirs are skipped.
    boxes: None, a folder of VOC XML files (matched by image stem; LOST conversion) or a COCO
      JSON file (matched by file name, relative path or basename; int(round(.)), no crowd).
      Images without an annotation get an empty [0, 4] box array (logged).
    masks_dir: folder of GT masks matched by image stem.
    exclude: folders never listed (e.g. the run's workdir).
  EXIF orientation is applied only when no boxes or masks are given (annotations refer to
  the stored pixel grid).
  """
  root = Path(root).expanduser()
  if root.is_file():  # a single image: its own one-image dataset, named by its stem
    images, root = [root], root.parent
  elif not root.is_dir():
    raise FileNotFoundError(f'image folder not found: {root}')
  else:
    images = _list_images(root, exclude)
  if masks_dir is not None:
    masks_dir = Path(masks_dir)
    masks_abs = masks_dir.resolve()
    images = [
      p for p in images if masks_abs not in p.resolve().parents
    ]  # masks may live under root
  if not images:
    raise ValueError(f'no images ({", ".join(IMAGE_EXTENSIONS)}) under {root}')

  box_of: dict[Path, tuple[np.ndarray, tuple[str, ...], tuple[int, int] | None]] = {}
  gt_errors: dict[Path, str] = {}
  if boxes is not None:
    bpath = Path(boxes)
    missing = []
    if bpath.is_dir():
      for p in images:
        xml = bpath / f'{p.stem}.xml'
        if xml.is_file():
          try:
            ann = parse_voc_xml(xml)
          except ValueError as e:  # scored as skipped; the image still runs
            logging.warning('%s', e)
            gt_errors[p] = str(e)
            continue
          box_of[p] = (ann['boxes'], ann['labels'], ann['image_hw'])
        else:
          missing.append(p.name)
    elif bpath.suffix.lower() == '.json':
      by_name, anns, cats = _coco_index(bpath)
      for p in images:
        im = by_name.get(p.relative_to(root).as_posix()) or by_name.get(p.name)
        if im is None:
          missing.append(p.name)
          continue
        b, lab = _coco_gt(anns.get(im['id'], []), cats)
        box_of[p] = (b, lab, (int(im['height']), int(im['width'])))
    else:
      raise ValueError(f'boxes must be a folder of VOC XML files or a COCO .json file, got {bpath}')
    if missing:
      logging.warning(
        '%s: %d images without annotations in %s, e.g. %s', root, len(missing), bpath, missing[:3]
      )

  masks = _pair_masks(images, masks_dir, str(root)) if masks_dir is not None else {}
  annotated = boxes is not None or masks_dir is not None
  examples = []
  for p in images:
    b, lab, hw = box_of.get(p, (None, None, None))
    if boxes is not None and b is None and p not in gt_errors:
      b, lab = np.zeros((0, 4), np.float64), ()
    m = masks.get(p.stem)
    examples.append(
      Example(
        id=_folder_id(p, root),
        path=str(p),
        image_hw=hw,
        boxes=b,
        labels=lab,
        mask_path=str(m) if m is not None else None,
        apply_exif=not annotated,
        gt_error=gt_errors.get(p),
      )
    )
  logging.debug('%s: %d images', root, len(examples))  # each stage says its count
  return examples


def image_paths(paths: Sequence[PathLike], exclude: Sequence[PathLike] = ()) -> list[Example]:
  """Image files and folders, in the order given (a folder's images sorted, as ``image_folder``).

  An image file's id is its stem; a folder's images are named as in ``image_folder``, prefixed
  with the folder's name when several paths are given, so ``a/1.jpg`` and ``b/1.jpg`` stay
  apart. A path that is neither an image file nor a folder raises ``FileNotFoundError``.
  """
  examples: list[Example] = []
  for path in paths:
    path = Path(path).expanduser()
    if not path.exists():
      raise FileNotFoundError(f'{path}: no such image file or folder')
    listed = image_folder(path, exclude=exclude)
    if path.is_dir() and len(paths) > 1:
      prefix = path.absolute().name or 'folder'  # made safe with every id by the caller
      listed = [dataclasses.replace(ex, id=f'{prefix}__{ex.id}') for ex in listed]
    examples += listed
  return examples


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


def load_image(
  example: Example, *, min_side: int = 1, max_pixels: int = decode.DEFAULT_MAX_PIXELS
) -> np.ndarray:
  """Decodes an example's image to RGB uint8 [H, W, 3], honouring `apply_exif` and tfds records.

  Never cropped (`Example.center_crop` applies at scoring time, see `decode.center_crop_square`).
  """
  if example.pixels is not None:  # decoded already: only the size limits apply
    return decode.check_pixels(
      example.pixels, example.name or example.id, min_side=min_side, max_pixels=max_pixels
    )
  kw = dict(min_side=min_side, max_pixels=max_pixels, apply_exif=example.apply_exif)
  if example.path is not None:
    return decode.load_rgb(example.path, name=example.name or '', **kw)
  if example.tfds_ref is not None:
    ref = example.tfds_ref
    data = _tfds_source(ref.builder_dir, ref.split)[ref.index]['image']
    return decode.decode_rgb(
      data, f'{ref.builder_dir}[{ref.split}][{ref.index}] ({example.id})', **kw
    )
  raise ValueError(f'example {example.id!r} has neither pixels, a path nor a tfds record')


def load_gt_mask(example: Example) -> np.ndarray:
  """Decodes an example's GT mask to bool [H, W] (full size; crop at scoring time)."""
  if example.mask_path is None:
    raise ValueError(f'example {example.id!r} has no mask')
  return decode.load_mask(example.mask_path)
