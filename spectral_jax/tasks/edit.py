"""``--mode=edit``: background removal and compositing from the Laplacian eigenvectors.

For each image: the foreground patches (Fiedler vector > 0, or segment ``edit.segment`` of the
k-means eigen-segmentation), upsampled to pixels, refined into a soft alpha matte against the
image (``spectral_jax.imaging.matting``: trimap → closed-form matting → guided upsampling), foreground
colours by blur fusion. Writes

  workdir/cutout/<stem>.png         RGBA, the object on a transparent background
  workdir/composite/<stem>.png      RGB, the object on ``edit.background`` (if given)
  workdir/panels/edit_<stem>.png    image | mask | alpha | result, first output.num_panels images

``data.root`` may be a folder or a single image. Eigenvectors come from ``workdir/eigs`` and
are extracted first (``--mode=extract``) where missing. Finished images are not redone; an
unreadable image is logged to ``workdir/skipped.jsonl`` and skipped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from absl import logging

from spectral_jax import parallel, pipeline, viz
from spectral_jax.imaging import matting
from spectral_jax import artifacts
from spectral_jax import config_dict
from spectral_jax.data import datasets
from spectral_jax.results import cutout
from spectral_jax.settings import Settings
from spectral_jax.spectral import segments
from spectral_jax.tasks import common, extract, reporting


# ----------------------------------------------------------------------------- paths & resume


def output_paths(workdir: Path, image_id: str) -> dict[str, Path]:
  workdir = Path(workdir)
  return {
    'cutout': workdir / 'cutout' / f'{image_id}.png',
    'composite': workdir / 'composite' / f'{image_id}.png',
    'panel': workdir / 'panels' / f'edit_{image_id}.png',
  }


def is_done(workdir: Path, image_id: str, with_composite: bool, with_panel: bool) -> bool:
  paths = output_paths(workdir, image_id)
  return (
    paths['cutout'].exists()
    and (paths['composite'].exists() or not with_composite)
    and (paths['panel'].exists() or not with_panel)
  )


# ----------------------------------------------------------------------------- inputs


def ensure_eigenvectors(config, workdir: Path, examples: list) -> None:
  """Runs ``--mode=extract`` (with this run's settings) if some image has no eigenvectors yet.

  Images that extraction already logged as unusable (``skipped.jsonl``) do not count, so a
  resumed run with one bad file does not load the model again just to fail on it. Extract
  checks its own settings record: eigenvectors made with other settings are never reused.
  """
  unusable = common.previously_skipped(workdir, 'extract')
  missing = [
    ex
    for ex in examples
    if not extract.output_paths(workdir, ex.id)[1].exists() and ex.id not in unusable
  ]
  if missing:
    common.log_summary(f'edit: {pipeline.count(len(missing))} need eigenvectors; running extract')
  extract.run(config, workdir)


# ----------------------------------------------------------------------------- one image


def eigen_frame(record, image_hw: tuple[int, int]) -> tuple[int, tuple[int, int], tuple[int, int]]:
  """(patch size, patch grid, working size) of an eigs record, checked against the image."""
  n_tokens = record['eigenvectors'].shape[1]
  if 'working_size' not in record:  # written before working sizes existed
    patch, grid = segments.infer_patch_grid(n_tokens, image_hw)
    return patch, grid, tuple(image_hw)
  if tuple(int(v) for v in record['image_size']) != tuple(image_hw):
    raise ValueError(
      f'image is {image_hw} but was {tuple(record["image_size"])} at extraction; '
      'rerun with --config.overwrite=True to recompute'
    )
  grid = tuple(int(v) for v in record['patch_grid'])
  working = tuple(int(v) for v in record['working_size'])
  if 'patch_size' in record:
    return int(record['patch_size']), grid, working
  # Records written before patch_size was stored: the image is cropped to whole patches, so
  # working // grid overestimates P whenever H mod P ≥ h; take the backbone size that fits.
  fits = [p for p in (16, 14, 8) if all(n // p == g for n, g in zip(working, grid))]
  return (fits[0] if fits else working[0] // grid[0]), grid, working


def _process(
  example,
  workdir: Path,
  run_settings: Settings,
  background: cutout.Background,
  with_panel: bool,
) -> None:
  image = datasets.load_image(example, min_side=1, max_pixels=run_settings.limits.max_pixels)
  with np.load(extract.output_paths(workdir, example.id)[1]) as f:
    record = {k: np.asarray(f[k]) for k in f.files}
  patch, grid, working = eigen_frame(record, image.shape[:2])
  mask, out = cutout.image_cutout(
    image,
    record['eigenvectors'],
    patch,
    grid,
    working,
    run_settings.edit,
    background,
    run_settings.seed,
    example.id,
  )
  paths = output_paths(workdir, example.id)
  # Cutout last: it is what marks the image done, so a crash before it redoes the image.
  if 'composite' in out:
    artifacts.save_png(paths['composite'], out['composite'])
  if with_panel:
    tiles = matting.edit_tiles(image, mask, out['alpha'], out.get('composite'))
    last = 'composite' if 'composite' in out else 'cutout'
    model = run_settings.model.name
    segment = run_settings.edit.segment
    chosen = 'Fiedler mask' if segment < 0 else f'eigen-segment {segment}'
    captions = [f'image · dsm · {model}', chosen, 'alpha (matting)', last]
    artifacts.save_png(paths['panel'], viz.row(tiles, captions))
  artifacts.save_png(paths['cutout'], out['cutout'])


# ----------------------------------------------------------------------------- the task


def run(config, workdir) -> None:
  workdir = Path(workdir)
  unknown = config_dict.unknown_edit_keys(config)
  if unknown:
    raise ValueError(f'unknown config.edit options: {unknown}')
  run_settings = common.check_config(config)
  background = cutout.resolve_background(
    run_settings.edit.background, run_settings.limits.max_pixels
  )
  examples = common.examples_from_config(config.data, workdir)
  common.begin_stage(config, workdir, 'edit')
  panel_ids = {ex.id for ex in examples[: max(config.output.num_panels, 0)]}
  shard = parallel.process_shard(examples)  # the same share extract gives this process
  # Images extraction or an earlier edit found unusable are not retried (see skipped.jsonl).
  unusable = common.previously_skipped(workdir, 'edit') | common.previously_skipped(
    workdir, 'extract'
  )
  todo = [
    ex
    for ex in shard
    if not is_done(workdir, ex.id, background is not None, ex.id in panel_ids)
    and ex.id not in unusable
  ]
  images = pipeline.count(len(shard))
  done = len(shard) - len(todo)
  common.log_summary(f'edit: {images}' + (f', {done} already done or skipped' if done else ''))
  # Extract runs where any process has work, on every process (its settings check is a
  # barrier), and not at all on a finished rerun.
  if int(parallel.process_sum(np.array([len(todo)]))[0]):
    ensure_eigenvectors(config, workdir, todo)
  if todo:
    _edit_all(workdir, run_settings, background, todo, panel_ids)
  parallel.barrier('edit-done')
  if parallel.is_main_process():
    with_composite = background is not None
    done = sum(is_done(workdir, ex.id, with_composite, False) for ex in examples)
    head = reporting.run_metrics(
      'edit', 'dsm', run_settings.model.name, examples, workdir, done, ('extract',)
    )
    artifacts.save_json(workdir / 'metrics.json', head)


def _edit_all(workdir, run_settings, background, todo, panel_ids) -> None:
  skipped = common.SkipLog(workdir, 'edit')
  progress = skipped.track(pipeline.Progress(len(todo), 'edit'))
  for ex in todo:
    if not extract.output_paths(workdir, ex.id)[1].exists():
      # Skipped at extraction (and said so there): counted, not said twice.
      logging.debug('%s: no eigenvectors; skipped', ex.id)
      progress.skip()
      continue
    try:
      _process(ex, workdir, run_settings, background, ex.id in panel_ids)
    except Exception as e:  # pylint: disable=broad-except  # one bad image must not stop a run
      logging.exception('edit: skipping %s', ex.id)
      skipped(ex, e)
      continue
    progress.update()
  common.log_summary(progress.summary(), skipped.summary())
