"""``--mode=discover``: MaskCut multi-object discovery, written as a COCO instances file.

Per image, up to ``discover.max_objects`` objects by MaskCut (CutLER's pseudo-mask generator,
``spectral_jax.spectral.maskcut``, protocol in ``shared/reference/maskcut_protocol.md``): the
photo is resized to ``discover.fixed_size``² (LANCZOS), the last block's keys give a binary
graph (cosine > ``discover.tau``), each of the iterated normalized cuts zeroes the keys of the
objects already found, takes the bipartition, the object side and the seed's 4-connected
component, and the kept masks go back to the original size (optionally through MaskCut's dense
CRF and its IoU filter; ``discover.crf=True`` by default, as in the released pseudo-labels).
All images share one grid, so a batch runs one ViT forward and, per iteration, one batched
graph build (and one batched eigen-solve on an accelerator; ARPACK per graph on a CPU host).

Outputs (``workdir/``):

* ``instances.json`` - COCO instances: ``images`` (id from 1 in dataset order, ``file_name``
  relative to the data root, true height/width; images with no object are listed too),
  ``categories`` = one class ``fg``, ``annotations`` (COCO RLE ``segmentation`` with str
  ``counts``, pycocotools' ``bbox`` [x, y, w, h] and ``area`` of the mask, ``iscrowd`` 0,
  ``score``), in discovery order. It loads with ``pycocotools.coco.COCO`` and, being
  annotations with scores, with ``COCO.loadRes`` as detections.
* ``detections.json`` - the same objects as a COCO results list (``image_id``, ``category_id``,
  ``bbox``, ``score``, ``segmentation``) with each image's ``file_name``, as localize and segment.
* ``instance_maps/<id>.png`` - uint8 [H, W]: 0 background, i = the image's i-th object.
* ``panels/discover_<id>.png`` - photo | instance map in VOC colours, for the first
  ``output.num_panels`` images.
* ``discover/records.jsonl`` - one line per finished image (its objects as RLE); a killed run
  started again skips those images, and ``instances.json`` is rebuilt from all lines in dataset
  order, so it is the same file as one uninterrupted run.
* ``metrics.json`` - class-agnostic COCO AP, AP50 and AR100 (in %, mask ``segm`` when the
  ground truth has masks, and ``bbox``) when ground truth is given: ``--config.data.boxes``
  (a COCO JSON, with or without segmentations, or a folder of VOC XML files),
  ``--config.data.masks`` (instance PNGs: each distinct non-zero value, or colour, is one
  object; 255 is VOC's "void" border unless it is the only value), VOC or COCO20k sources.

Score of an object: ``1 − Ncut(M)`` of the cut that found it, on the very graph that iteration
cut (``Ncut = cut(M, M̄)/vol(M) + cut(M, M̄)/vol(M̄)``). A cleanly separated object has
Ncut ≈ 0, score ≈ 1; a set no better separated than a random subset of the graph has Ncut ≈ 1,
score ≈ 0. Use it to rank detections (AP) and to flag "no object here": a score near or below 0
means the cut separated nothing better than chance. It is not calibrated and drops nothing
(which objects exist is decided by the official rules), and no threshold is validated: with the
2-block test checkpoint the official objects of the parity photos score 0.01–0.34, the boxes of
the generated test images 0.50–0.68; pick a threshold on a labelled subset. Images where the
cuts keep nothing (or whose masks vanish after the subtraction, the CRF filter or the resize)
get zero annotations.

The CRF runs on the host and holds the GIL (~1 s per mask on one core): with ``crf=True`` it
runs in ``discover.workers`` spawned processes (0 = auto: up to 8, when there are at least 4
images per process), in dataset order, at most two rounds behind the device.

Unreadable images and images with a side under the patch size are skipped, named in
``skipped.jsonl``, and get no image entry (as the official script, which consumes no id).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import multiprocessing
import os
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from absl import logging
import jax
import numpy as np
from PIL import Image

from spectral_jax import coco, parallel, pipeline, viz
from spectral_jax import artifacts
from spectral_jax.data import datasets
from spectral_jax.results.objects import METHODS
from spectral_jax.results.types import mask_box
from spectral_jax.spectral import maskcut
from spectral_jax.tasks import common, reporting

STAGE = 'discover'


def record_files(workdir: Path) -> list[Path]:
  return sorted((Path(workdir) / STAGE).glob('records*.jsonl'))


def read_records(workdir: Path) -> dict[str, dict]:
  """Finished images by id, over every process's file (a later line wins)."""
  return {r['id']: r for path in record_files(workdir) for r in artifacts.read_jsonl(path)}


# ----------------------------------------------------------------------------- runner


def run(config, workdir) -> None:
  workdir = Path(workdir)
  run_settings = common.check_config(config)
  examples = common.examples_from_config(config.data, workdir)
  common.begin_stage(config, workdir, STAGE)
  # Each process owns a strided share and its own records file.
  own_path = (
    workdir / STAGE / 'records.jsonl'
    if jax.process_count() == 1
    else workdir / STAGE / f'records.process{jax.process_index()}.jsonl'
  )
  done = set(read_records(workdir))
  shard = parallel.process_shard(examples)
  todo = common.remaining(workdir, STAGE, shard, lambda ex: ex.id in done)
  if todo:
    _discover(config, run_settings, workdir, todo, own_path, examples)
  parallel.barrier('discover-done')
  if not parallel.is_main_process():
    return
  records = read_records(workdir)
  instances = build_instances([records[ex.id] for ex in examples if ex.id in records])
  artifacts.save_json(workdir / 'instances.json', instances)
  artifacts.save_json(workdir / 'detections.json', detections(instances))
  n_obj = len(instances['annotations'])
  common.log_summary(
    f'discover: {pipeline.count(n_obj, "object")} in {pipeline.count(len(instances["images"]))}'
    f' → {workdir / "instances.json"}'
  )
  result = reporting.run_metrics(
    STAGE, run_settings.discover.method, run_settings.model.name, examples, workdir,
    len(instances['images']),
  )  # fmt: skip
  result['num_objects'] = n_obj
  result.update(evaluate(config, examples, records, instances))
  artifacts.save_json(workdir / 'metrics.json', result)
  for kind in ('segm', 'bbox'):
    if kind in result:
      m = result[kind]
      common.log_summary(
        f'class-agnostic {kind}: AP {m["AP"]:.2f} AP50 {m["AP50"]:.2f} AR100 {m["AR100"]:.2f}'
        f' over {result["num_scored"]} images'
      )


@dataclasses.dataclass
class _Decoded:
  example: Any
  original_hw: tuple[int, int]
  image_s: np.ndarray  # uint8 [S, S, 3]: the CRF's image
  image_vit: np.ndarray  # uint8 [G·P, G·P, 3]: the ViT's
  grid: tuple[int, int]
  image: Optional[np.ndarray]  # the photo, kept only when a panel is due


def _decode(example, patch_size: int, fixed_size: int, max_pixels: int, keep: bool):
  """(decoded, error): the photo and its MaskCut resize, made in a worker thread."""
  try:
    image = datasets.load_image(example, min_side=patch_size, max_pixels=max_pixels)
    image_s, image_vit, grid = maskcut.preprocess(image, fixed_size, patch_size)
    hw = (int(image.shape[0]), int(image.shape[1]))
    return _Decoded(example, hw, image_s, image_vit, grid, image if keep else None), None
  except (OSError, ValueError, MemoryError) as e:  # one bad image must not stop a dataset run
    return example, e


def decoded(
  examples: Sequence[Any],
  patch_size: int,
  fixed_size: int,
  max_pixels: int,
  keep_images: frozenset = frozenset(),
  on_error=None,
  workers: int = 4,
) -> Iterator[_Decoded]:
  """Decoded and resized images, in order, made by threads a bounded window ahead."""
  window = max(2 * workers, 8)
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    pending = collections.deque()

    def finish():
      item, error = pending.popleft().result()
      if error is None:
        return item
      logging.warning('skipping %s: %s', item.path or item.id, error)
      if on_error is not None:
        on_error(item, error)
      return None

    for ex in examples:
      pending.append(
        pool.submit(_decode, ex, patch_size, fixed_size, max_pixels, ex.id in keep_images)
      )
      if len(pending) >= window:
        item = finish()
        if item is not None:
          yield item
    while pending:
      item = finish()
      if item is not None:
        yield item


def _chunks(items: Iterator[Any], size: int) -> Iterator[list]:
  chunk = []
  for item in items:
    chunk.append(item)
    if len(chunk) == size:
      yield chunk
      chunk = []
  if chunk:
    yield chunk


def crf_workers(d, todo: int) -> int:
  """Processes for the host post-processing: the CRF holds the GIL and costs ~1 s per mask."""
  if d.workers > 0:
    return d.workers
  if not d.crf:
    return 1  # without the CRF the host part is cheap: no pool
  auto = min(8, (os.cpu_count() or 1) - 1)
  return auto if todo >= 4 * auto else 1  # a pool's start-up (~s) only pays on larger runs


class _Serial:
  """The ``concurrent.futures`` surface used below, run in this process."""

  def submit(self, fn, *args):
    future = concurrent.futures.Future()
    try:
      future.set_result(fn(*args))
    except Exception as e:  # pylint: disable=broad-except
      future.set_exception(e)
    return future

  def shutdown(self, wait=True, cancel_futures=False):
    del wait, cancel_futures


def _discover(
  config, run_settings, workdir: Path, todo: list, own_path: Path, examples: list
) -> None:
  d = run_settings.discover
  method = METHODS[d.method]
  extractor = common.load_extractor(run_settings.model)
  if method.check is not None:
    method.check(extractor, run_settings.model.name)
  p = extractor.arch.patch_size
  fixed_size = method.fixed_size(run_settings)
  skipped = common.SkipLog(workdir, STAGE)
  progress = skipped.track(pipeline.Progress(len(todo), STAGE))
  panels = common.Panels(workdir, config.output.num_panels, examples, prefix='discover_')
  grid_side = int(round(fixed_size / p))
  n = grid_side * grid_side
  # Every image has the same grid, so one batch size (and one compiled shape) serves all.
  batch = max(1, min(config.data.batch_size, config.data.batch_tokens // n, len(todo)))
  stream = decoded(todo, p, fixed_size, config.data.max_pixels, frozenset(panels.due), skipped)
  workers = crf_workers(d, len(todo))
  # 'spawn': forking a process that runs JAX threads can deadlock.
  pool = (
    concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context('spawn'))
    if workers > 1
    else _Serial()
  )
  pending = collections.deque()  # (item, future), in dataset order

  def finish_one():
    item, future = pending.popleft()
    ex = item.example
    try:
      objects, labels = future.result()
    except (ValueError, MemoryError) as e:
      logging.warning('skipping %s: %s', ex.path or ex.id, e)
      skipped(ex, e)
      return
    record = {
      'id': ex.id,
      'file_name': reporting.file_name(ex, config.data.root),
      'height': item.original_hw[0],
      'width': item.original_hw[1],
      'objects': objects,
    }
    # The map first, the record last: a record means the image is finished.
    if not common.write_or_skip(ex, skipped, _write, workdir, ex.id, labels, own_path, record):
      return
    if item.image is not None:
      title = f'{d.method} · {run_settings.model.name}'
      panels(ex.id, lambda: objects_panel(item.image, labels, objects, title))
    progress.update()

  try:
    for chunk in _chunks(stream, batch):
      crops = [item.image_vit for item in chunk]
      crops += [crops[-1]] * (batch - len(crops))  # a short last batch reuses the compiled shape
      keys = np.asarray(extractor(crops, n)['k'])[: len(chunk), :n]
      for item, (post, first) in zip(chunk, method.chunk(keys, chunk[0].grid, run_settings)):
        args = first + (item.original_hw, item.image_s, d.crf)
        pending.append((item, pool.submit(post, *args)))
      # The device runs ahead of the CRF workers by at most two rounds of them.
      while len(pending) > max(2 * workers, batch):
        finish_one()
    while pending:
      finish_one()
  finally:
    pool.shutdown(wait=False, cancel_futures=True)
  common.log_summary(progress.summary(), skipped.summary())


def objects_panel(image: np.ndarray, labels: np.ndarray, objects: list, title: str) -> np.ndarray:
  """image | the objects (label i + 1 = object i) over it, each with its box and score."""
  sy, sx = image.shape[0] / labels.shape[0], image.shape[1] / labels.shape[1]
  boxes = []
  for i in range(len(objects)):
    mine = labels == i + 1
    x0, y0, x1, y1 = mask_box(mine) if mine.any() else (0, 0, 0, 0)  # hidden by later objects
    boxes.append([x0 * sx, y0 * sy, x1 * sx, y1 * sy])
  scores = [o['score'] for o in objects]
  return viz.instances_panel(image, labels, boxes, scores, title)


def _write(workdir: Path, image_id: str, labels: np.ndarray, path: Path, record: dict) -> None:
  # A palette PNG: object i has value i (as before) and a VOC colour in any viewer.
  artifacts.save_png(workdir / 'instance_maps' / f'{image_id}.png', labels, viz.label_palette())
  artifacts.append_jsonl(path, [record])


def build_instances(records: Sequence[dict]) -> dict:
  """Records (dataset order) → the COCO instances dict; ids run from 1 over this list."""
  images, anns = [], []
  for image_id, r in enumerate(records, start=1):
    images.append(
      {'id': image_id, 'file_name': r['file_name'], 'height': r['height'], 'width': r['width']}
    )
    for obj in r['objects']:
      rle = obj['segmentation']
      anns.append(
        {
          'id': len(anns) + 1,
          'image_id': image_id,
          'category_id': 1,
          'segmentation': rle,
          'bbox': coco.bbox(rle),
          'area': coco.area(rle),
          'iscrowd': 0,
          'score': float(obj['score']),
        }
      )
  return coco.instances_json(images, anns)


def detections(instances: dict) -> list[dict]:
  """The instances' annotations as COCO results, each with its image's ``file_name``."""
  names = {im['id']: im['file_name'] for im in instances['images']}
  keys = ('image_id', 'category_id', 'bbox', 'score', 'segmentation')
  return [
    {**{k: a[k] for k in keys}, 'file_name': names[a['image_id']]} for a in instances['annotations']
  ]


# ----------------------------------------------------------------------------- evaluation


def _gt_json_path(data) -> str:
  if data.source == 'folder' and data.boxes and str(data.boxes).lower().endswith('.json'):
    return data.boxes
  if data.source == 'coco20k' and data.annotations:
    return data.annotations
  return ''


def _json_ground_truth(path: str, examples: Sequence[Any], image_ids: dict, root: str):
  """Our image id → that image's annotations in a COCO JSON (matched by relative path or name)."""
  with open(path) as f:
    data = json.load(f)
  by_name = {}
  for im in data.get('images', []):
    by_name[im['file_name']] = im['id']
    by_name.setdefault(os.path.basename(im['file_name']), im['id'])
  anns = collections.defaultdict(list)
  for a in data.get('annotations', []):
    anns[a['image_id']].append(a)
  out = {}
  for ex in examples:
    if ex.id not in image_ids or ex.path is None:
      continue
    theirs = by_name.get(reporting.file_name(ex, root), by_name.get(Path(ex.path).name))
    if theirs is not None:
      out[image_ids[ex.id]] = anns.get(theirs, [])
  return out


def mask_instances(path: str) -> list[np.ndarray]:
  """Instance masks of a ground-truth PNG: each distinct non-zero value (or colour) is one
  object; 255 is VOC's void border unless it is the only non-zero value."""
  arr = np.asarray(Image.open(path))
  if arr.ndim == 3:
    flat = arr[..., :3].reshape(-1, 3)
    colours, inverse = np.unique(flat, axis=0, return_inverse=True)
    labels = inverse.reshape(arr.shape[:2])
    return [labels == i for i, c in enumerate(colours) if c.any()]
  values = [int(v) for v in np.unique(arr) if v != 0]
  if len(values) > 1 and 255 in values:
    values.remove(255)
  return [arr == v for v in values]


def evaluate(config, examples: Sequence[Any], records: dict, instances: dict) -> dict:
  """Class-agnostic AP/AP50/AR100 (in %) of the discovered objects when ground truth is given."""
  # The ids build_instances gave: dataset order over the finished images.
  finished = [ex.id for ex in examples if ex.id in records]
  image_ids = {image_id: i for i, image_id in enumerate(finished, start=1)}
  gt_anns: dict[int, list[dict]] = {}
  json_path = _gt_json_path(config.data)
  if json_path:
    gt_anns = _json_ground_truth(json_path, examples, image_ids, config.data.root)
  else:
    for ex in examples:
      if ex.id not in image_ids or ex.gt_error:
        continue
      if ex.mask_path is not None:
        try:
          masks = mask_instances(ex.mask_path)
        except (OSError, ValueError) as e:
          logging.warning('unreadable ground truth %s: %s', ex.mask_path, e)
          continue
        gt_anns[image_ids[ex.id]] = [
          {'segmentation': coco.encode(m), 'bbox': coco.bbox(coco.encode(m))} for m in masks
        ]
      elif ex.boxes is not None:
        gt_anns[image_ids[ex.id]] = [
          {'bbox': [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]}
          for b in np.asarray(ex.boxes, float).reshape(-1, 4)
        ]
  if not gt_anns:
    return {}
  evaluated = set(gt_anns)
  gt_images = [im for im in instances['images'] if im['id'] in evaluated]
  gt = {'images': gt_images, 'annotations': []}
  for image_id in sorted(gt_anns):
    for a in gt_anns[image_id]:
      a = dict(a, image_id=image_id, id=len(gt['annotations']) + 1)
      a.setdefault('iscrowd', 0)
      gt['annotations'].append(a)
  dets = [a for a in instances['annotations'] if a['image_id'] in evaluated]
  kinds = ['bbox']
  if gt['annotations'] and all('segmentation' in a for a in gt['annotations']):
    kinds.insert(0, 'segm')
  result = {'num_scored': len(evaluated), 'num_gt_objects': len(gt['annotations'])}
  for kind in kinds:
    scores = coco.evaluate_class_agnostic(gt, dets, kind)
    result[kind] = {k: 100.0 * v for k, v in scores.items()}
  return result
