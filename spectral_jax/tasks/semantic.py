"""``--mode=semantic``: unsupervised semantic segmentation pseudo-labels (official §4, §7.2).

eigs → multi-region segments (k-means on eigenvectors 1..K−1, border segment = 0)
→ one box per segment (erode, dilate) → CLS feature of each box crop (full
resolution, DINO ViT) → dataset-wide clustering of the L2-normalised features →
per-image semantic map (background 0, cluster c → c + 1).

Writes (resumable: per-image files that exist are kept)
  workdir/multi_region/<stem>.png   segment map at patch resolution
  workdir/boxes/<stem>.npz          segment_indices [M], boxes [M, 4] (x0, y0, x1, y1,
                                    patch units), features [M, D] (box CLS)
  workdir/semantic/<stem>.png       semantic map (patch resolution) of semantic.seeds[0];
                                    other seeds under workdir/semantic_seeds/<seed>/
  workdir/metrics.json              when GT is available: mIoU (Hungarian over 21 labels),
                                    per-class IoU and matching per seed, mean ± std

Seeds vary the dataset-wide clustering only (the expensive box features are
shared); multi-region k-means uses ``config.seed``.

On several processes (shared workdir) each computes its strided share of the per-image
files; after a barrier, process 0 clusters the whole dataset and writes the maps.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np
from absl import logging
from PIL import Image

from spectral_jax import metrics, parallel, pipeline, viz
from spectral_jax import artifacts
from spectral_jax.data import datasets, decode
from spectral_jax.imaging import resample
from spectral_jax.models import extractor as extractor_lib
from spectral_jax.models import vit
from spectral_jax.spectral import clustering
from spectral_jax.tasks import common, extract, reporting

NUM_VOC_CLASSES = 21


# --------------------------------------------------------------------------------------
# Pure steps (arrays in, arrays out)


def box_crops(image: np.ndarray, boxes: np.ndarray, patch_size: int) -> list[np.ndarray]:
  """Full-resolution crops of boxes given in patch units (sides are multiples of P)."""
  image = vit.crop_to_patches(image, patch_size)
  return [
    image[y0 * patch_size : y1 * patch_size, x0 * patch_size : x1 * patch_size]
    for x0, y0, x1, y1 in np.asarray(boxes)
  ]


def image_box_features(
  image: np.ndarray,
  segmap: np.ndarray,
  patch_size: int,
  cls_fn: Callable[[list[np.ndarray]], np.ndarray],
  num_erode: int = 2,
  num_dilate: int = 5,
) -> dict[str, np.ndarray]:
  """Boxes of one image's segments and the feature of each box crop (official §4.2–4.3)."""
  indices, boxes = clustering.segment_boxes(segmap, num_erode, num_dilate)
  crops = list(box_crops(image, boxes, patch_size))
  feats = np.asarray(cls_fn(crops), np.float32) if crops else np.zeros((0, 0), np.float32)
  return {'segment_indices': indices, 'boxes': boxes, 'features': feats}


def semantic_maps(
  segmaps: Sequence[np.ndarray],
  boxes: Sequence[dict],
  n_clusters: int = 20,
  seed: int = 0,
  pca_dim: int = 0,
  method: str = 'kmeans',
) -> list[np.ndarray]:
  """Clusters all box features of the dataset; per-image maps (bg 0, cluster c → c + 1)."""
  feats = np.concatenate([b['features'] for b in boxes if len(b['features'])])
  labels = clustering.cluster_features(feats, n_clusters, seed, pca_dim, method)
  splits = np.cumsum([len(b['features']) for b in boxes])[:-1]
  return [
    clustering.semantic_map(s, b['segment_indices'], c)
    for s, b, c in zip(segmaps, boxes, np.split(labels, splits))
  ]


# cv2.resize(INTER_NEAREST) to (H, W): the official pseudo-label resize (§7.2).
resize_nearest = resample.nearest_cv2


def score_maps(
  maps: Sequence[np.ndarray],
  gts: Sequence[np.ndarray],
  n_pred: int,
  num_classes: int = NUM_VOC_CLASSES,
) -> dict[str, Any]:
  """Dataset mIoU of label maps (any resolution) against GT (255 = void).

  Hungarian matching when there are as many labels as classes (official), else majority.
  """
  confusion = np.zeros((n_pred, num_classes), np.int64)
  for pred, gt in zip(maps, gts):
    confusion += metrics.confusion_matrix(resize_nearest(pred, gt.shape), gt, n_pred, num_classes)
  match = metrics.hungarian_match if n_pred == num_classes else metrics.majority_match
  matching = match(confusion)
  miou, per_class = metrics.miou_from_confusion(confusion, matching)
  return {
    'miou': miou,
    'per_class_iou': per_class.tolist(),
    'matching': [[int(p), int(g)] for p, g in matching],
    'matching_kind': 'hungarian' if n_pred == num_classes else 'majority',
  }


def summarize_seeds(per_seed: dict[int, dict]) -> dict[str, Any]:
  mious = np.array([r['miou'] for r in per_seed.values()])
  first = next(iter(per_seed.values()))
  return {
    **first,
    'miou_mean': float(mious.mean()),
    'miou_std': float(mious.std()),
    'seeds': {str(s): r for s, r in per_seed.items()},
  }


# --------------------------------------------------------------------------------------
# Files


def checked_gt(
  path: Path, num_classes: int = NUM_VOC_CLASSES, image_hw: Optional[Sequence[int]] = None
) -> np.ndarray:
  """VOC SegmentationClass PNG → uint8 palette indices, or a ValueError naming the file for
  what cannot be scored: an unreadable file or another mode (``decode.BadImageError``), labels
  outside 0..num_classes − 1 (255 = void), or (``image_hw``) a size other than the image's."""
  gt = decode.load_label_map(path)
  if image_hw is not None and tuple(gt.shape) != tuple(int(v) for v in image_hw):
    raise ValueError(f'{path}: ground truth is {gt.shape}, the image is {tuple(image_hw)}')
  labels = np.unique(gt)
  bad = labels[(labels >= num_classes) & (labels != 255)]
  if bad.size:
    raise ValueError(f'{path}: labels {bad[:5].tolist()} outside 0..{num_classes - 1} (255 = void)')
  return gt


def load_scorable_gts(
  gts: dict[str, Path], image_sizes: dict[str, Sequence[int]]
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """({stem: GT} that can be scored, {stem: why not} for the others, each logged)."""
  loaded, skipped = {}, {}
  for stem, path in gts.items():
    try:
      loaded[stem] = checked_gt(path, NUM_VOC_CLASSES, image_sizes.get(stem))
    except ValueError as e:
      logging.warning('ground truth of %s not scored: %s', stem, e)
      skipped[stem] = str(e)
  return loaded, skipped


def read_png(path: Path) -> np.ndarray:
  with Image.open(path) as im:
    return np.asarray(im)


def gt_paths(gt_dir: str, val_list: str, stems: Sequence[str]) -> dict[str, Path]:
  """stem → GT PNG for the stems that have one (restricted to ``val_list`` if given)."""
  if not gt_dir:
    return {}
  wanted = set(stems)
  if val_list:
    wanted &= {l.split()[0] for l in Path(val_list).read_text().splitlines() if l.strip()}
  return {
    s: Path(gt_dir) / f'{s}.png' for s in sorted(wanted) if (Path(gt_dir) / f'{s}.png').exists()
  }


def voc_defaults(config) -> tuple[str, str]:
  """(gt_dir, val_list), defaulting to VOC's layout next to a .../JPEGImages data root."""
  sem = config.semantic
  gt_dir, val_list = sem.gt_dir, sem.val_list
  root = Path(config.data.root) if config.data.root else None
  if root is not None and root.name == 'JPEGImages':
    if not gt_dir and (root.parent / 'SegmentationClass').is_dir():
      gt_dir = str(root.parent / 'SegmentationClass')
    if not val_list and (root.parent / 'ImageSets/Segmentation/val.txt').exists():
      val_list = str(root.parent / 'ImageSets/Segmentation/val.txt')
  return gt_dir, val_list


def _eig_stems(workdir: Path) -> list[str]:
  return sorted(p.stem for p in (workdir / 'eigs').glob('*.npz'))


def _patch_grid(workdir: Path, stem: str, eigs) -> tuple[int, int]:
  if 'patch_grid' in eigs:
    return tuple(int(v) for v in eigs['patch_grid'])
  return tuple(int(v) for v in np.load(workdir / 'features' / f'{stem}.npz')['patch_grid'])


def _segment_all(workdir: Path, stems: Sequence[str], sem, seed: int, chunk: int = 64) -> None:
  """Writes multi_region/<stem>.png for this process's stems that lack it (batched k-means)."""
  todo = [
    s for s in parallel.process_shard(stems) if not (workdir / 'multi_region' / f'{s}.png').exists()
  ]
  key = jax.random.PRNGKey(seed)
  index = {s: i for i, s in enumerate(stems)}
  for start in range(0, len(todo), chunk):
    part = todo[start : start + chunk]
    eigs = [np.load(workdir / 'eigs' / f'{s}.npz') for s in part]
    grids = [_patch_grid(workdir, s, e) for s, e in zip(part, eigs)]
    keys = np.stack([jax.random.fold_in(key, index[s]) for s in part])  # order-independent
    maps = clustering.multi_region_segments_batch(
      [e['eigenvectors'] for e in eigs],
      grids,
      keys,
      sem.n_segments,
      sem.adaptive,
      [e['eigenvalues'] for e in eigs],
    )
    for s, m in zip(part, maps):
      artifacts.save_png(workdir / 'multi_region' / f'{s}.png', m.astype(np.uint8))


def _box_features_all(workdir: Path, stems: Sequence[str], examples: dict, sem, config) -> None:
  """Writes boxes/<stem>.npz (boxes + box CLS features) for this process's stems that lack it."""
  todo = [s for s in parallel.process_shard(stems) if not (workdir / 'boxes' / f'{s}.npz').exists()]
  if not todo:
    return
  extractor = common.load_extractor(config.model)
  p = extractor.arch.patch_size
  progress = pipeline.Progress(len(todo), 'box features')
  for s in todo:
    segmap = read_png(workdir / 'multi_region' / f'{s}.png')
    grid = _patch_grid(workdir, s, np.load(workdir / 'eigs' / f'{s}.npz'))
    if segmap.shape != grid:
      raise NotImplementedError(
        f'{s}: segments at {segmap.shape} but patch grid {grid}; '
        'semantic mode needs eigenvectors at patch resolution'
      )
    image = datasets.load_image(examples[s], min_side=p, max_pixels=config.data.max_pixels)
    # The frame the eigenvectors were computed in (downscaled above data.max_tokens).
    image = pipeline.fit_tokens(image, p, config.data.max_tokens, True, str(examples[s].path))
    cls = functools.partial(pipeline.cls_batch, extractor)
    out = image_box_features(image, segmap, p, cls, sem.num_erode, sem.num_dilate)
    artifacts.save_npz(workdir / 'boxes' / f'{s}.npz', **out)
    progress.update()
  common.log_summary(progress.summary(), f'{len(extractor.compiled_shapes)} compiled crop shapes')


def _write_panels(workdir: Path, stems, examples, segmaps, maps, config) -> None:
  """image | per-image eigen-segments | dataset-level semantic map, for the first images."""
  for i, s in enumerate(stems):
    image = datasets.load_image(examples[s], max_pixels=config.data.max_pixels)
    artifacts.save_png(
      workdir / 'panels' / f'semantic_{s}.png',
      viz.label_panel(
        image,
        [segmaps[i], maps[i]],
        ['eigen-segments (this image)', 'semantic clusters'],
        title=f'{config.method} · {config.model.name}',
      ),
    )


CLUSTER_METHODS = ('kmeans', 'minibatch')


def check_semantic_config(config) -> None:
  """Flag-named errors for the semantic settings, before anything loads."""
  sem = config.semantic
  if config.get('method', 'dsm') != 'dsm':
    raise ValueError(
      f'--config.method={config.method!r}: semantic segmentation runs on the DSM '
      'eigenvectors; use --config.method=dsm'
    )
  if isinstance(sem.get('num_clusters'), int) and sem.num_clusters > 254:
    raise ValueError(  # cluster c is label c + 1 of a uint8 map, 255 = void
      f'--config.semantic.num_clusters={sem.num_clusters}: at most 254'
    )
  for flag, minimum in (('n_segments', 2), ('num_clusters', 1), ('num_erode', 0),
                        ('num_dilate', 0), ('pca_dim', 0)):  # fmt: skip
    value = sem.get(flag, minimum)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
      raise ValueError(f'--config.semantic.{flag}={value!r}: must be an integer >= {minimum}')
  seeds = tuple(sem.get('seeds', (0,)))
  if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
    raise ValueError(f'--config.semantic.seeds={seeds!r}: give one or more integer seeds')
  if sem.get('cluster_method', 'kmeans') not in CLUSTER_METHODS:
    raise ValueError(
      f'--config.semantic.cluster_method={sem.cluster_method!r}: use one of {CLUSTER_METHODS}'
    )


def run(config, workdir) -> None:
  workdir = Path(workdir)
  sem = config.semantic
  check_semantic_config(config)
  extractor_lib.require_vit(config.model.name, 'semantic')
  extract.run(config, workdir)  # computes only the images whose features/eigs are missing
  parallel.barrier('semantic-extract')
  examples = {ex.id: ex for ex in common.examples_from_config(config.data, workdir)}
  common.begin_stage(config, workdir, 'semantic')
  stems = [s for s in _eig_stems(workdir) if s in examples]
  if not stems:
    raise ValueError(f'no eigenvectors in {workdir / "eigs"} for the configured images')
  _segment_all(workdir, stems, sem, config.seed)
  _box_features_all(workdir, stems, examples, sem, config)
  parallel.barrier('semantic-per-image')
  if not parallel.is_main_process():  # dataset-level clustering and scoring: one process
    return

  segmaps = [read_png(workdir / 'multi_region' / f'{s}.png') for s in stems]
  boxes = [dict(np.load(workdir / 'boxes' / f'{s}.npz')) for s in stems]
  gt_dir, val_list = voc_defaults(config)
  gts = gt_paths(gt_dir, val_list, stems)
  sizes = {s: _image_size(workdir / 'eigs' / f'{s}.npz') for s in gts}
  loaded, gt_skipped = load_scorable_gts(gts, sizes)
  scored = [i for i, s in enumerate(stems) if s in loaded]
  gt_arrays = [loaded[stems[i]] for i in scored]
  n_features = sum(len(b['features']) for b in boxes)
  if n_features < sem.num_clusters:
    raise ValueError(
      f'--config.semantic.num_clusters={sem.num_clusters}: the {len(stems)} images have only '
      f'{n_features} box features to cluster; lower it or add images'
    )
  per_seed = {}
  for n, seed in enumerate(sem.seeds):
    maps = semantic_maps(segmaps, boxes, sem.num_clusters, seed, sem.pca_dim, sem.cluster_method)
    out_dir = workdir / 'semantic' if n == 0 else workdir / 'semantic_seeds' / str(seed)
    for s, m in zip(stems, maps):
      artifacts.save_png(out_dir / f'{s}.png', m)
    if n == 0:
      _write_panels(workdir, stems[: config.output.num_panels], examples, segmaps, maps, config)
    if gt_arrays:
      per_seed[seed] = score_maps([maps[i] for i in scored], gt_arrays, sem.num_clusters + 1)
      logging.info('seed %d: mIoU %.4f on %d images', seed, per_seed[seed]['miou'], len(scored))
  if per_seed:
    result = reporting.run_metrics(
      'semantic', config.method, config.model.name, list(examples.values()), workdir, len(stems),
      ('extract',),
    )  # fmt: skip
    result.update(summarize_seeds(per_seed))
    result.update(
      num_annotated=len(gts),
      num_scored=len(scored),
      num_skipped=len(gt_skipped),
      skipped_gt=gt_skipped,
      gt_dir=gt_dir,
      val_list=val_list,
    )
    artifacts.save_json(workdir / 'metrics.json', result)
    common.log_summary(
      f'semantic: mIoU {100 * result["miou_mean"]:.1f} ± '
      f'{100 * result["miou_std"]:.1f} over seeds {list(sem.seeds)} '
      f'({len(scored)} images with GT)'
    )
  else:
    common.log_summary(
      f'semantic: {len(stems)} pseudo-label maps written; no GT to score'
      + (f' ({len(gt_skipped)} ground truths unusable, see the log)' if gt_skipped else '')
    )


def _image_size(eigs_path: Path) -> Optional[np.ndarray]:
  with np.load(eigs_path) as record:
    return record['image_size'] if 'image_size' in record.files else None
