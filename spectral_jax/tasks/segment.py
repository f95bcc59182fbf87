"""``--mode=segment``: the main object's mask from the Fiedler vector, optionally CRF-refined.

Writes ``workdir/masks/<stem>.png`` (0/255, image size), ``workdir/metrics.json`` (mean
per-image IoU and accuracy, and maxFβ with β² = 0.3, when ground-truth masks are known) and
panels ``workdir/panels/<stem>.png``. Images whose mask exists are not recomputed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from absl import logging
from PIL import Image

from spectral_jax import crf, io, metrics, parallel, pipeline, viz
from spectral_jax.data import datasets, decode
from spectral_jax.spectral import segments
from spectral_jax.tasks import common


def mask_path(workdir: Path, image_id: str) -> Path:
  return Path(workdir) / 'masks' / f'{image_id}.png'


def object_mask(
    image: np.ndarray, eigenvectors: np.ndarray, grid_hw, patch_size: int, crf_params=None
) -> np.ndarray:
  """Fiedler vector > 0 (the minority side, after the sign rule) at image resolution."""
  mask = segments.fiedler_mask(eigenvectors, grid_hw)
  full = segments.upsample_patch_mask(mask, image.shape[:2], patch_size)
  if crf_params is not None:
    full = crf.refine_mask(image, full, crf_params)
  return full


def score(examples: list, workdir: Path) -> dict:
  """Mean per-image IoU / accuracy and maxFβ (β² = 0.3) over images with a ground-truth mask.

  An unreadable ground truth or one whose size differs from the image is skipped, named in
  the log and counted (``num_skipped``), never the end of the scoring.
  """
  meter = metrics.ObjectSegMeter()
  annotated = [ex for ex in examples if ex.mask_path is not None]
  scored = 0
  for ex in annotated:
    path = mask_path(workdir, ex.id)
    if not path.exists():
      continue
    try:
      pred = np.asarray(Image.open(path)) > 127
      gt = datasets.load_gt_mask(ex)
    except (OSError, ValueError) as e:
      logging.warning('%s: ground truth or mask unreadable (%s); not scored', ex.id, e)
      continue
    if ex.center_crop:  # CUB: features on the full image, scored on the centred square
      pred, gt = decode.center_crop_square(pred), decode.center_crop_square(gt)
    if pred.shape != gt.shape:
      logging.warning(
          '%s: mask %s vs ground truth %s (%s); not scored', ex.id, pred.shape, gt.shape,
          ex.mask_path,
      )
      continue
    # Binary masks: maxFβ is Fβ of the mask (the same at every threshold in (0, 1)).
    meter.update(pred, gt, soft_pred=pred.astype(np.float32))
    scored += 1
  result = meter.result() if scored else {'n': 0}
  if annotated:
    result.update(
        num_annotated=len(annotated), num_scored=scored, num_skipped=len(annotated) - scored
    )
  return result


def run(config, workdir) -> None:
  workdir = Path(workdir)
  common.check_config(config)
  examples = common.examples_from_config(config.data, workdir)
  common.begin_stage(config, workdir, 'segment')
  skipped_before = common.previously_skipped(workdir, 'segment')
  todo = [
      ex
      for ex in parallel.process_shard(examples)
      if not mask_path(workdir, ex.id).exists() and ex.id not in skipped_before
  ]
  common.log_summary(
      f'segment: {len(examples)} images, {len(examples) - len(todo)} already done'
      + (f' or skipped ({len(skipped_before)}, see skipped.jsonl)' if skipped_before else '')
  )
  if todo:
    _predict(config, workdir, todo, examples)
  parallel.barrier('segment-done')  # then one process scores every mask
  if not parallel.is_main_process():
    return
  result = score(examples, workdir)
  io.save_json(workdir / 'metrics.json', result)
  if result['n']:
    common.log_summary(
        'segment: '
        + ', '.join(f'{k} {v:.4f}' for k, v in sorted(result.items()) if isinstance(v, float))
    )


def _predict(config, workdir: Path, todo: list, examples: list) -> None:
  extractor = common.load_extractor(config.model)
  skipped = common.SkipLog(workdir, 'segment')
  progress = pipeline.Progress(len(todo), 'segment')
  crf_params = crf.CRFParams(**config.segment.crf_params) if config.segment.crf else None
  panels = common.Panels(workdir, config.output.num_panels, examples)
  for r in common.run_images(config, extractor, todo, skipped, which_matrix='laplacian'):
    mask = object_mask(r.image, r.eigenvectors, r.patch_grid, r.patch_size, crf_params)
    full = r.mask_to_original(mask)
    if not common.write_or_skip(
        r.example, skipped, io.save_png, mask_path(workdir, r.example.id), full.astype(np.uint8) * 255
    ):
      continue
    panels(r.example.id, lambda: viz.panel(r.image, r.eigenvectors, r.patch_grid, mask=mask))
    progress.update()
  common.log_summary(progress.summary(), skipped.summary())
