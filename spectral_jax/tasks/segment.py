"""``--mode=segment``: the main object's mask, optionally refined.

``--config.method``: dsm (Fiedler vector > 0, cropped input), tokencut (TokenCut's saliency
path: Lanczos-resized input, the seed component upsampled by torch's nearest rule to the
original size) or lost (LOST's seed component on the padded input, ×P blocks).
``--config.segment.refine``: none | crf (dense CRF) | bilateral (TokenCut's bilateral solver,
mask = output > 0.5); ``segment.crf=True`` means refine=crf.

Writes ``workdir/masks/<stem>.png`` (0/255, image size), ``workdir/metrics.json`` (mean
per-image IoU and accuracy, and maxFβ with β² = 0.3, when ground-truth masks are known) and
panels ``workdir/panels/<stem>.png``. Images whose mask exists are not recomputed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from absl import logging
from PIL import Image

from spectral_jax import coco, crf, io, metrics, parallel, pipeline, viz
from spectral_jax.data import datasets, decode
from spectral_jax.spectral import bilateral, segments, tokencut
from spectral_jax.tasks import common, localize

REFINES = ('none', 'crf', 'bilateral')


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


def refine_mode(segment_config) -> str:
  """segment.refine, with the older flag segment.crf=True meaning 'crf'."""
  refine = segment_config.get('refine', 'none')
  if refine not in REFINES:
    raise ValueError(f'--config.segment.refine={refine!r}: use one of {REFINES}')
  if segment_config.crf:
    if refine not in ('none', 'crf'):
      raise ValueError(
          f'--config.segment.crf=True and --config.segment.refine={refine!r}: choose one '
          "(segment.crf=True means refine='crf'; pass --config.segment.crf=False)"
      )
    return 'crf'
  return refine


def method_mask(r: pipeline.ImageResult, preprocess: str, hw=None) -> np.ndarray:
  """The method's unrefined mask, bool [H, W] at ``hw`` (default: the working image size).

  dsm ('crop'): Fiedler vector > 0, the official ×P upsampling of the cropped grid.
  tokencut ('resize'): torch nearest interpolation of the seed component to the image, as
  the official saliency code. lost ('pad'): ×P blocks of the seed component, cropped to the
  image (at another size: nearest resize of that).
  """
  hw = tuple(int(v) for v in (hw or r.image.shape[:2]))
  if r.outputs is None:
    mask = segments.fiedler_mask(r.eigenvectors, r.patch_grid)
    return segments.upsample_patch_mask(mask, hw, r.patch_size)
  patch_mask = r.outputs['patch_mask']
  if preprocess == 'resize':
    return tokencut.upsample_nearest(patch_mask, hw)
  p = r.patch_size
  blocks = np.repeat(np.repeat(patch_mask, p, axis=0), p, axis=1)
  if preprocess == 'pad':
    blocks = blocks[: r.image.shape[0], : r.image.shape[1]]
  else:
    blocks = segments.upsample_patch_mask(patch_mask, r.image.shape[:2], p)
  return pipeline.resize_mask(blocks, hw)


def refine_mask(image: np.ndarray, mask: np.ndarray, refine: str, config) -> np.ndarray:
  """Refined bool [H, W] mask of uint8 image [H, W, 3].

  bilateral: ``bilateral.solve(image, mask) > 0.5`` — what TokenCut's evaluation scores. The
  official ``get_saliency.py`` also "flips" masks whose IoU with the unrefined one is < 0.5,
  but its flip multiplies a boolean mask by −1 (values 0/−1), which empties the mask instead
  of inverting it, and the scores never see it: that rule is broken and is not reproduced.
  """
  if refine == 'crf':
    return crf.refine_mask(image, mask, crf.CRFParams(**config.segment.crf_params))
  if refine == 'bilateral':
    return bilateral.solve(image, mask, **dict(config.segment.bilateral_params))[1]
  return mask


def final_mask(r: pipeline.ImageResult, refine: str, preprocess: str, config):
  """(mask at the working or original size, bool mask [H, W] at the original size)."""
  if refine == 'none' and r.outputs is not None:
    # Straight to the original frame (the official saliency mask is upsampled to H × W).
    full = method_mask(r, preprocess, r.image_hw)
    return full, full
  # Refined at working resolution, with the image the model saw.
  mask = refine_mask(r.image, method_mask(r, preprocess), refine, config)
  return mask, r.mask_to_original(mask)


def score_path(workdir: Path) -> Path:
  return Path(workdir) / 'mask_scores.jsonl'


def write_detections(workdir: Path, examples: list, data) -> None:
  """``workdir/detections.json``: COCO results with an RLE segmentation per mask (bbox from
  the mask, ``score`` as ``localize.localization``), for standard evaluation tools."""
  ids = localize.coco_image_ids(examples, data)
  scores = {r['id']: r['score'] for r in io.read_jsonl(score_path(workdir))}
  dets = []
  for ex in examples:  # one mask in memory at a time (RLE encoded at once)
    path = mask_path(workdir, ex.id)
    if not path.exists():
      continue
    mask = np.asarray(Image.open(path)) > 127
    if mask.any():  # nothing found: no detection, not an empty one
      dets += coco.detections_json([ids[ex.id]], [float(scores.get(ex.id, 1.0))], masks=[mask])
  io.save_json(workdir / 'detections.json', dets)


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
  localize.method_args(config, segment=True)  # fail fast on a bad method or refinement
  refine_mode(config.segment)
  examples = common.examples_from_config(config.data, workdir)
  common.begin_stage(config, workdir, 'segment')
  todo = common.remaining(
      workdir, 'segment', parallel.process_shard(examples),
      lambda ex: mask_path(workdir, ex.id).exists(),
  )
  if todo:
    _predict(config, workdir, todo, examples)
  parallel.barrier('segment-done')  # then one process scores every mask
  if not parallel.is_main_process():
    return
  result = score(examples, workdir)
  io.save_json(workdir / 'metrics.json', result)
  write_detections(workdir, examples, config.data)
  if result['n']:
    common.log_summary(
        'segment: '
        + ', '.join(f'{k} {v:.4f}' for k, v in sorted(result.items()) if isinstance(v, float))
    )


def _predict(config, workdir: Path, todo: list, examples: list) -> None:
  extractor = common.load_extractor(config.model)
  skipped = common.SkipLog(workdir, 'segment')
  progress = pipeline.Progress(len(todo), 'segment')
  refine = refine_mode(config.segment)
  args = localize.method_args(config, segment=True)
  panels = common.Panels(workdir, config.output.num_panels, examples)
  for r in common.run_images(config, extractor, todo, skipped, which_matrix='laplacian', **args):
    try:
      mask, full = final_mask(r, refine, args['preprocess'], config)
    except ValueError as e:  # e.g. an image too large for the bilateral grid's hash
      logging.warning('skipping %s: %s', r.example.id, e)
      skipped(r.example, e)
      continue
    out = mask_path(workdir, r.example.id)
    # The score first: the mask file marks the image done (see localize.localization).
    score = localize.localization(r)[2] if r.outputs is None or r.eigenvalues is not None else 1.0
    record = [{'id': r.example.id, 'score': round(score, 6)}]
    if not common.write_or_skip(r.example, skipped, io.append_jsonl, score_path(workdir), record):
      continue
    if not common.write_or_skip(r.example, skipped, io.save_png, out, full.astype(np.uint8) * 255):
      continue
    panel_mask = pipeline.resize_mask(mask, r.image.shape[:2])
    panels(
        r.example.id,
        lambda: viz.panel(r.image, localize.panel_vectors(r), r.patch_grid, mask=panel_mask),
    )
    progress.update()
  common.log_summary(progress.summary(), skipped.summary())
