"""``--mode=train`` with configs/found.py: FOUND's head trained on an unlabelled image folder.

1. Targets: ``workdir/pseudo_masks/<id>.png``, the 28 × 28 (crop / patch) 0/255 target of each
   image's un-augmented 224 × 224 input from ``found.targets`` (found: the official background
   pseudo-mask at ``found.bkg_th``; dsm | tokencut | maskcut: that method's mask, see
   ``spectral_jax.training.found_targets``). Images already written are kept on a rerun;
   unreadable ones go to ``skipped.jsonl``. ``train.steps=0`` stops here.
2. Training (``spectral_jax.training.found_loop``): the official recipe of ``config.train``,
   orbax checkpoints in ``workdir/checkpoints`` (a killed run resumes exactly), the loss in
   ``train_log.jsonl``; the head in the official file format, ``workdir/decoder_weights.pt``
   (``--config.found.decoder=`` reads it).
3. With ``data.masks``: IoU, accuracy and maxFβ of the trained head's single and multi masks
   (evaluation input: the full image, normalised and zero-padded; refine none) in
   ``workdir/train_metrics.json``, with the final iteration and loss.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from PIL import Image

from spectral_jax import artifacts, config_dict, metrics, pipeline
from spectral_jax.data import datasets
from spectral_jax.errors import SettingError
from spectral_jax.models import backbones
from spectral_jax.settings import Settings
from spectral_jax.spectral import found
from spectral_jax.spectral import found_background
from spectral_jax.tasks import common
from spectral_jax.training import found as found_train
from spectral_jax.training import found_loop, found_targets

STAGE = 'found_train'
TARGET_DIR = 'pseudo_masks'


def check_config(config) -> tuple[Settings, found_train.FoundTrainSettings]:
  """The run's typed settings and recipe; SettingError names the key, before anything loads."""
  settings = common.check_config(config)
  cfg = config_dict.found_train_settings(config)
  entry = backbones.BACKBONES.get(settings.model.name)
  if entry is None or entry.family != 'dino':
    raise SettingError(
      'model.name',
      settings.model.name,
      'FOUND trains on a DINO ViT (its official backbone: dino_vits8)',
    )
  if settings.model.feature_block != -1:
    raise SettingError(
      'model.feature_block',
      settings.model.feature_block,
      "FOUND reads the last block's keys: use -1",
    )
  if cfg.crop_size % entry.patch_size:
    raise SettingError(
      'train.crop_size', cfg.crop_size, f'use a multiple of the patch size {entry.patch_size}'
    )
  return settings, cfg


def _load(example, settings: Settings) -> np.ndarray:
  return datasets.load_image(example, max_pixels=settings.limits.max_pixels)


def read_target(path: Path) -> np.ndarray:
  return np.asarray(Image.open(path)) > 127


def write_targets(
  extractor,
  examples: Sequence[Any],
  settings: Settings,
  cfg,
  workdir: Path,
  skipped: common.SkipLog,
) -> list[str]:
  """Writes the missing ``pseudo_masks/<id>.png``; returns the ids that have one."""
  folder = workdir / TARGET_DIR
  folder.mkdir(parents=True, exist_ok=True)
  done = lambda ex: (folder / f'{ex.id}.png').exists()  # noqa: E731
  todo = common.remaining(workdir, STAGE, examples, done)
  chunk = max(1, settings.batching.batch_size)
  for start in range(0, len(todo), chunk):
    batch, images = [], []
    for ex in todo[start : start + chunk]:
      try:
        images.append(found_background.train_image(_load(ex, settings), cfg.crop_size))
        batch.append(ex)
      except (ValueError, OSError) as e:  # unreadable, too large: skipped, logged
        skipped(ex, e)
    if not batch:
      continue
    masks = found_targets.make_targets(
      settings.found.targets, extractor, np.stack(images), settings
    )
    for ex, mask in zip(batch, masks):
      common.write_or_skip(
        ex, skipped, artifacts.save_png, folder / f'{ex.id}.png', mask.astype(np.uint8) * 255
      )
    common.log_summary(f'{STAGE}: pseudo-masks {start + len(batch)}/{len(todo)}')
  return [ex.id for ex in examples if done(ex)]


def _predict(extractor, head, image: np.ndarray, max_tokens: int, bucket: int = 8):
  """(multi-mode probability float32 [H, W], multi mask, single mask) of one photo, from the
  official evaluation input (normalised, zero-padded to patch multiples). Grids are
  edge-padded to multiples of ``bucket`` patches before the upsampling (same values: torch's
  bilinear repeats the border), so compilations are per bucket, not per image size."""
  p = extractor.arch.patch_size
  hw = image.shape[:2]
  work = pipeline.working_size(hw, p, max_tokens)
  x = image if work == hw else np.asarray(Image.fromarray(image).resize(work[::-1], Image.BILINEAR))
  grid = (-(-work[0] // p), -(-work[1] // p))
  padded_x = np.zeros((grid[0] * p, grid[1] * p, 3), np.float32)  # normalised, then zeros
  padded_x[: work[0], : work[1]] = found_background.train_input(x)  # numpy: no compilation per size
  keys = extractor([padded_x], pipeline.bucket_length(grid, 64))['k']
  logits = np.asarray(found.decoder_logits(keys[0], head['weight'], head['bias']))
  logits = logits[: grid[0] * grid[1]].reshape(grid)
  padded = np.pad(logits, [(0, -g % bucket) for g in grid], mode='edge')
  up = found.upsample_logits(padded, (padded.shape[0] * p, padded.shape[1] * p), p)
  up = np.asarray(up)[: work[0], : work[1]]
  prob = 1.0 / (1.0 + np.exp(-up.astype(np.float64)))
  if work != hw:
    prob = np.asarray(Image.fromarray(prob.astype(np.float32)).resize(hw[::-1], Image.BILINEAR))
  multi = prob > 0.5
  return prob.astype(np.float32), multi, found.single_mask(multi)


def score(
  extractor, head, examples: Sequence[Any], settings: Settings, skipped: common.SkipLog
) -> dict[str, Any]:
  """Mean IoU, accuracy (binary masks) and maxFβ (multi: the probability; single: its
  binary mask) of the head's single and multi masks against the examples' GT masks."""
  meters = {mode: metrics.ObjectSegMeter() for mode in found.MODES}
  for ex in examples:
    if ex.mask_path is None:
      continue
    try:
      image, gt = _load(ex, settings), datasets.load_gt_mask(ex)
      if gt.shape != image.shape[:2]:
        raise ValueError(f'mask {gt.shape} and image {image.shape[:2]} differ in size')
    except (ValueError, OSError) as e:
      skipped(ex, e)
      continue
    prob, multi, single = _predict(extractor, head, image, settings.limits.max_tokens)
    meters['multi'].update(multi, gt, prob)
    meters['single'].update(single, gt, single.astype(np.float32))
  return {mode: m.result() for mode, m in meters.items() if len(m)}


def run(config, workdir, stop_after: Optional[int] = None) -> Optional[dict]:
  """The runner (see the module doc). ``stop_after``: stop after that many updates as a
  kill would (no final checkpoint or outputs; tests); returns the training summary."""
  workdir = Path(workdir)
  settings, cfg = check_config(config)
  examples = common.examples_from_config(config.data, workdir)
  common.begin_stage(config, workdir, STAGE)  # other settings: stop, or redo (overwrite)
  extractor = common.load_extractor(config.model)
  skipped = common.SkipLog(workdir, STAGE)
  ids = write_targets(extractor, examples, settings, cfg, workdir, skipped)
  common.log_summary(
    f'{STAGE}: {len(ids)} pseudo-masks in {workdir / TARGET_DIR}', skipped.summary()
  )
  if cfg.steps == 0:
    return None
  if not ids:
    raise ValueError(f'no image of data.root={config.data.root!r} could be read: nothing to train')
  by_id = {ex.id: ex for ex in examples}
  folder = workdir / TARGET_DIR
  data = found_loop.TrainData(
    ids=ids,
    load=lambda i: _load(by_id[ids[i]], settings),
    targets=None
    if settings.found.targets == 'found'
    else lambda i: read_target(folder / f'{ids[i]}.png'),
  )
  summary = found_loop.train(cfg, extractor, data, workdir, settings.found.bkg_th, stop_after)
  if summary['stopped']:
    return summary
  found_train.save_head(workdir / 'decoder_weights.pt', summary['head'])
  record = dict(
    step=summary['step'], loss=summary['loss'], images=len(ids), targets=settings.found.targets
  )
  if config.data.masks:
    record.update(score(extractor, summary['head'], examples, settings, skipped))
  artifacts.save_json(workdir / 'train_metrics.json', record)
  common.log_summary(
    f'{STAGE}: {summary["step"]} iterations, loss {summary["loss"]}; head in '
    f'{workdir / "decoder_weights.pt"}',
    *(
      f'{mode}: IoU {record[mode]["iou"]:.4f}, acc {record[mode]["acc"]:.4f}, maxFβ '
      f'{record[mode]["max_f"]:.4f} ({int(record[mode]["n"])} masks)'
      for mode in found.MODES
      if mode in record
    ),
  )
  return summary
