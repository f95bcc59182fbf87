"""Prepared tfds detection datasets (voc/2007, voc/2012, coco/2014), read from their
array_record files without TensorFlow; records become lazy `Example`s."""

from __future__ import annotations

import functools
import io
import os
import re
from pathlib import Path
from typing import Any, Iterable, Union

import numpy as np
from absl import logging

from spectral_jax.data.example import Example, TfdsRef
from spectral_jax.data.shipped_lists import coco20k_filenames

PathLike = Union[str, os.PathLike]


TFDS_DETECTION = ('voc/2007', 'voc/2012', 'coco/2014')


class TfdsNotPreparedError(FileNotFoundError):
  """The requested tfds dataset has not been prepared in `data_dir`."""


def _tfds_data_dir(data_dir: PathLike | None) -> Path:
  if data_dir is not None:
    return Path(data_dir).expanduser()
  return Path(os.environ.get('TFDS_DATA_DIR', '~/tensorflow_datasets')).expanduser()


def _version_key(v: str) -> tuple[int, ...]:
  return tuple(int(x) for x in v.split('.'))


def _find_builder_dir(name: str, data_dir: Path) -> Path | None:
  """Newest `<data_dir>/<ds>/<config>/<x.y.z>/` holding dataset_info.json, or None."""
  base = data_dir.joinpath(*name.split('/'))
  if not base.is_dir():
    return None
  versions = [
    d.name
    for d in base.iterdir()
    if re.fullmatch(r'\d+\.\d+\.\d+', d.name) and (d / 'dataset_info.json').is_file()
  ]
  return base / max(versions, key=_version_key) if versions else None


def _not_prepared_message(name: str, data_dir: Path) -> str:
  return (
    f'tfds dataset {name!r} is not prepared in {data_dir}. Prepare it once (this step needs '
    f'TensorFlow: pip install tensorflow-cpu), e.g.\n'
    f"  python -c \"import tensorflow_datasets as tfds; tfds.builder('{name}', "
    f"data_dir='{data_dir}').download_and_prepare(file_format='array_record')\"\n"
    f'or: tfds build {name} --data_dir={data_dir} --file_format=array_record\n'
    f'Reading it afterwards does not need TensorFlow.'
  )


@functools.lru_cache(maxsize=8)
def _tfds_source(builder_dir: str, split: str) -> Any:
  """Random-access data source of a prepared split; images stay encoded (SkipDecoding)."""
  import tensorflow_datasets as tfds  # heavy import, only when tfds is used

  builder = tfds.builder_from_directory(builder_dir)
  file_format = getattr(builder.info.file_format, 'value', builder.info.file_format)
  if file_format is not None and str(file_format) != 'array_record':
    raise ValueError(
      f'{builder_dir} is stored as {file_format}; random access without TensorFlow needs '
      "array_record: re-prepare with download_and_prepare(file_format='array_record')"
    )
  return builder.as_data_source(split, decoders={'image': tfds.decode.SkipDecoding()})


def _text(v: Any) -> str:
  if isinstance(v, (bytes, np.bytes_)):
    return bytes(v).decode('utf-8')
  if isinstance(v, np.ndarray):
    return _text(v.item())
  return str(v)


def _image_hw(image: Any) -> tuple[int, int]:
  """(H, W) of an encoded image (header only) or of an already decoded array."""
  if isinstance(image, np.ndarray) and image.dtype != object:
    return int(image.shape[0]), int(image.shape[1])
  from PIL import Image

  with Image.open(io.BytesIO(bytes(image))) as im:
    return im.height, im.width


def _write_once(path: Path, data: bytes) -> Path:
  """Writes `data` to `path` unless a file of the same size is there (atomic rename)."""
  if path.is_file() and path.stat().st_size == len(data):
    return path
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
  tmp.write_bytes(data)
  os.replace(tmp, path)
  return path


def _iter_records(records: Any, chunk: int = 256) -> Iterable[tuple[int, Any]]:
  """(index, record) pairs; batched `__getitems__` lets array_record read in parallel."""
  n = len(records)
  getitems = getattr(type(records), '__getitems__', None)
  for start in range(0, n, chunk):
    idx = list(range(start, min(n, start + chunk)))
    batch = getitems(records, idx) if getitems is not None else [records[i] for i in idx]
    yield from zip(idx, batch)


def examples_from_tfds_records(
  records: Any,
  name: str,
  *,
  builder_dir: str | None = None,
  split: str = '',
  keep_filenames: set[str] | None = None,
  no_hard: bool = False,
  cache_dir: Path | None = None,
) -> list[Example]:
  """Converts tfds detection records (an indexable data source) into Examples.

  Normalised tfds boxes (ymin, xmin, ymax, xmax) become pixel xyxy:
    * VOC: tfds stores the 1-based XML ints divided by the XML size, so the ints are recovered
      by rounding and the LOST shift (xmin - 1, ymin - 1) is applied - identical to
      `voc_devkit` boxes (non-integer XML coordinates, very rare, round instead of truncate).
    * COCO: x*W etc. are float32-rounded before int(round(.)), so a box edge at exactly .5 px
      can land 1 px away from the JSON path; CorLoc may therefore differ very slightly.
  `keep_filenames` filters by `image/filename` (COCO20k); `no_hard` as in `voc_devkit`;
  `cache_dir` receives the encoded image files (see `tfds_detection`).
  """
  is_voc = name.startswith('voc')
  examples, skipped_hard = [], 0
  for i, rec in _iter_records(records):
    filename = _text(rec['image/filename'])
    if keep_filenames is not None and filename not in keep_filenames:
      continue
    h, w = _image_hw(rec['image'])
    objs = rec['objects']
    bbox = np.asarray(objs['bbox'], np.float64).reshape(-1, 4)
    keep = np.ones(len(bbox), bool)
    if is_voc:
      if no_hard:
        hard = np.asarray(objs['is_truncated'], bool).reshape(-1) | np.asarray(
          objs['is_difficult'], bool
        ).reshape(-1)
        keep &= ~hard
      # Recover the XML integers, then LOST's shift.
      xyxy = np.rint(bbox[:, [1, 0, 3, 2]] * np.array([w, h, w, h], np.float64))
      xyxy[:, :2] -= 1.0
    else:
      keep &= ~np.asarray(objs['is_crowd'], bool).reshape(-1)
      xyxy = bbox[:, [1, 0, 3, 2]] * np.array([w, h, w, h], np.float64)
      xyxy = np.array([[float(int(round(v))) for v in row] for row in xyxy], np.float64).reshape(
        -1, 4
      )
    boxes = xyxy[keep]
    if is_voc and no_hard and len(boxes) == 0:
      skipped_hard += 1
      continue
    ref = TfdsRef(builder_dir, split, i) if builder_dir is not None else None
    path = None
    if cache_dir is not None and isinstance(rec['image'], (bytes, np.bytes_)):
      path = str(_write_once(Path(cache_dir) / os.path.basename(filename), bytes(rec['image'])))
    examples.append(
      Example(
        id=Path(filename).stem,
        path=path,
        image_hw=(h, w),
        boxes=boxes,
        apply_exif=False,
        tfds_ref=ref,
      )
    )
  if skipped_hard:
    logging.info('%s: %d images without non-hard boxes skipped (no_hard)', name, skipped_hard)
  return examples


def tfds_detection(
  name: str,
  split: str,
  data_dir: PathLike | None = None,
  cache_dir: PathLike | None = None,
  *,
  coco20k_only: bool = True,
  no_hard: bool = False,
) -> list[Example]:
  """Examples from a prepared tfds detection dataset ('voc/2007', 'voc/2012', 'coco/2014').

  `split` may join splits with '+': VOC CorLoc (devkit trainval) is 'train+validation'.
  Examples are sorted by id.

  Works without TensorFlow: the prepared directory is opened with
  `tfds.builder_from_directory(...).as_data_source(split)` (array_record random access) and
  images are kept encoded until `load_image`. With `cache_dir`, the encoded images (the
  original JPEG bytes) are also written once to `cache_dir/<ds>_<config>/<split>/<file name>`
  and `Example.path` points there, so path-based decoding works too. For 'coco/2014' the
  records are filtered to the
  COCO20k list (`coco20k_only`, use split='train') and crowd boxes are dropped. Listing reads
  every record of the split once (COCO train: ~83k records, image bytes included).

  Raises:
    TfdsNotPreparedError: with the command that prepares the dataset (needs TensorFlow).
  """
  if name not in TFDS_DETECTION:
    raise ValueError(f'unsupported tfds dataset {name!r}; choose one of {TFDS_DETECTION}')
  root = _tfds_data_dir(data_dir)
  builder_dir = _find_builder_dir(name, root)
  if builder_dir is None:
    raise TfdsNotPreparedError(_not_prepared_message(name, root))
  keep = set(coco20k_filenames()) if (name == 'coco/2014' and coco20k_only) else None
  examples = []
  for part in split.split('+'):  # e.g. VOC CorLoc uses 'train+validation' (= devkit trainval)
    source = _tfds_source(str(builder_dir), part.strip())
    examples += examples_from_tfds_records(
      source,
      name,
      builder_dir=str(builder_dir),
      split=part.strip(),
      keep_filenames=keep,
      no_hard=no_hard,
      cache_dir=None
      if cache_dir is None
      else Path(cache_dir) / name.replace('/', '_') / part.strip(),
    )
  examples.sort(key=lambda e: e.id)  # tfds stores records shuffled; list them like the devkit
  logging.info('tfds %s[%s]: %d examples from %s', name, split, len(examples), builder_dir)
  return examples
