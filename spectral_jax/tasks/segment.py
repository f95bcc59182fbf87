"""``--mode=segment``: the main object's mask, optionally refined.

``--config.method``: dsm (Fiedler vector > 0, cropped input), tokencut (TokenCut's saliency
path: Lanczos-resized input, the seed component upsampled by torch's nearest rule to the
original size), lost (LOST's seed component on the padded input, ×P blocks) or found (FOUND's
official evaluation on the padded input: ``--config.found.evaluation_mode`` single | multi,
decoder ``--config.found.decoder``; see ``results.masks.found_mask``).
``--config.segment.refine``: none | crf (dense CRF) | bilateral (TokenCut's bilateral solver,
mask = output > 0.5; FOUND: its "+BS" with its own post-processing and gate);
``segment.crf=True`` means refine=crf.

Writes ``workdir/masks/<stem>.png`` (0/255, image size), ``workdir/metrics.json`` (mean
per-image IoU and accuracy, and maxFβ with β² = 0.3, when ground-truth masks are known) and
panels ``workdir/panels/<stem>.png``. Images whose mask exists are not recomputed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from absl import logging
from PIL import Image

from spectral_jax import coco, metrics, parallel, pipeline
from spectral_jax import artifacts
from spectral_jax.data import datasets, decode
from spectral_jax.results import boxes, masks
from spectral_jax.tasks import common, localize, reporting


def mask_path(workdir: Path, image_id: str) -> Path:
  return Path(workdir) / 'masks' / f'{image_id}.png'


def score_path(workdir: Path) -> Path:
  return Path(workdir) / 'mask_scores.jsonl'


def write_detections(workdir: Path, examples: list, data) -> None:
  """``workdir/detections.json``: COCO results with an RLE segmentation per mask (bbox from
  the mask, ``score`` as ``boxes.localization``), for standard evaluation tools."""
  ids = localize.coco_image_ids(examples, data)
  scores = {r['id']: r['score'] for r in artifacts.read_jsonl(score_path(workdir))}
  dets = []
  for ex in examples:  # one mask in memory at a time (RLE encoded at once)
    path = mask_path(workdir, ex.id)
    if not path.exists():
      continue
    mask = np.asarray(Image.open(path)) > 127
    if mask.any():  # nothing found: no detection, not an empty one
      dets += coco.detections_json(
        [ids[ex.id]],
        [float(scores.get(ex.id, 1.0))],
        masks=[mask],
        file_names=[reporting.file_name(ex, data.root)],
      )
  artifacts.save_json(workdir / 'detections.json', dets)


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
        '%s: mask %s vs ground truth %s (%s); not scored',
        ex.id,
        pred.shape,
        gt.shape,
        ex.mask_path,
      )
      continue
    # Binary masks: maxFβ is Fβ of the mask (the same at every threshold in (0, 1)).
    meter.update(pred, gt, soft_pred=pred.astype(np.float32))
    scored += 1
  result = meter.result() if scored else {}
  result.pop('n', None)  # num_scored below, as in every mode
  if annotated:
    result.update(
      num_annotated=len(annotated), num_scored=scored, num_skipped=len(annotated) - scored
    )
  return result


def run(config, workdir) -> None:
  workdir = Path(workdir)
  run_settings = common.check_config(config)  # a bad method or refinement fails here
  boxes.method_args(run_settings.method, segment=True, cache_dir=run_settings.model.cache_dir)
  examples = common.examples_from_config(config.data, workdir)
  common.begin_stage(config, workdir, 'segment')
  todo = common.remaining(
    workdir,
    'segment',
    parallel.process_shard(examples),
    lambda ex: mask_path(workdir, ex.id).exists(),
  )
  if todo:
    _predict(config, run_settings, workdir, todo, examples)
  parallel.barrier('segment-done')  # then one process scores every mask
  if not parallel.is_main_process():
    return
  result = score(examples, workdir)
  done = sum(mask_path(workdir, ex.id).exists() for ex in examples)
  head = reporting.run_metrics(
    'segment', run_settings.method.name, run_settings.model.name, examples, workdir, done
  )
  artifacts.save_json(workdir / 'metrics.json', {**head, **result})
  write_detections(workdir, examples, config.data)
  if result.get('num_scored'):
    common.log_summary(
      'segment: '
      + ', '.join(f'{k} {v:.4f}' for k, v in sorted(result.items()) if isinstance(v, float))
    )


def _predict(config, run_settings, workdir: Path, todo: list, examples: list) -> None:
  extractor = common.load_extractor(run_settings.model)
  skipped = common.SkipLog(workdir, 'segment')
  progress = skipped.track(pipeline.Progress(len(todo), 'segment'))
  args = boxes.method_args(
    run_settings.method, segment=True, cache_dir=run_settings.model.cache_dir
  )
  panels = common.Panels(workdir, config.output.num_panels, examples)
  for r in common.run_images(
    run_settings, extractor, todo, skipped, which_matrix='laplacian', **args
  ):
    try:
      mask, full, score = masks.scored_mask(
        r, run_settings.refine, args['preprocess'], run_settings.method.found.evaluation_mode
      )
    except ValueError as e:  # e.g. an image too large for the bilateral grid's hash
      logging.warning('skipping %s: %s', r.example.id, e)
      skipped(r.example, e)
      continue
    out = mask_path(workdir, r.example.id)
    # The score first: the mask file marks the image done (see masks.scored_mask).
    record = [{'id': r.example.id, 'score': round(score, 6)}]
    if not common.write_or_skip(
      r.example, skipped, artifacts.append_jsonl, score_path(workdir), record
    ):
      continue
    if not common.write_or_skip(
      r.example, skipped, artifacts.save_png, out, full.astype(np.uint8) * 255
    ):
      continue
    panel_mask = pipeline.resize_mask(mask, r.image.shape[:2])
    panels(
      r.example.id,
      lambda: localize.panel(r, run_settings, mask=panel_mask, score=score),
    )
    progress.update()
  common.log_summary(progress.summary(), skipped.summary())
