"""``--mode=edit``: background removal and compositing from the Laplacian eigenvectors.

For each image: the foreground patches (Fiedler vector > 0, or segment ``edit.segment`` of the
k-means eigen-segmentation), upsampled to pixels, refined into a soft alpha matte against the
image (``spectral_jax.edit``: trimap → closed-form matting → guided upsampling), foreground
colours by blur fusion. Writes

  workdir/cutout/<stem>.png         RGBA, the object on a transparent background
  workdir/composite/<stem>.png      RGB, the object on ``edit.background`` (if given)
  workdir/panels/edit_<stem>.png    image | mask | alpha | result, first output.num_panels images

``data.root`` may be a folder or a single image. Eigenvectors come from ``workdir/eigs`` and
are extracted first (``--mode=extract``) where missing. Finished images are not redone; an
unreadable image is logged to ``workdir/skipped.jsonl`` and skipped.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Union

import numpy as np
from absl import logging

from spectral_jax import edit, io, parallel, pipeline
from spectral_jax.data import datasets, decode
from spectral_jax.spectral import segments
from spectral_jax.tasks import common, extract

Background = Union[None, tuple[int, int, int], np.ndarray]


@dataclasses.dataclass(frozen=True)
class EditOptions:
  """The ``config.edit`` section (defaults apply when a config has no such section)."""

  background: str = ''  # '' = cutout only; an image file or a colour ('white', '#RRGGBB', 'r,g,b')
  segment: int = -1  # -1 = Fiedler vector > 0; else this label of the eigen-segmentation
  n_segments: int = 4  # k-means clusters when segment >= 0
  band_px: float = 0.0  # half-width of the trimap's unknown band; 0 = one patch
  eps: float = 1e-6  # matting-Laplacian regulariser
  max_pixels: int = 1_000_000  # matting resolution cap (larger images: guided upsampling)
  levels: float = 0.05  # alpha ← clip((α − l) / (1 − 2l)): removes faint haze; 0 = off
  foreground: str = 'blur_fusion'  # foreground colours: blur_fusion | image (F = I)

  @classmethod
  def from_config(cls, config) -> 'EditOptions':
    section = config.get('edit', None)
    section = {} if section is None else dict(section)
    unknown = set(section) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
      raise ValueError(f'unknown config.edit options: {sorted(unknown)}')
    opts = cls(**section)
    if opts.foreground not in ('blur_fusion', 'image'):
      raise ValueError(f"edit.foreground={opts.foreground!r}: use 'blur_fusion' or 'image'")
    if opts.segment >= opts.n_segments:
      raise ValueError(f'edit.segment={opts.segment} but only edit.n_segments={opts.n_segments}')
    return opts


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


def resolve_background(spec: str, max_pixels: int = decode.DEFAULT_MAX_PIXELS) -> Background:
  """'' → None; an existing file → its pixels (uint8 [H, W, 3]); otherwise a colour."""
  spec = (spec or '').strip()
  if not spec:
    return None
  path = Path(spec).expanduser()
  if path.is_file():
    return decode.load_rgb(path, max_pixels=max_pixels)
  try:
    return edit.parse_color(spec)
  except ValueError as e:
    if path.suffix.lower() in datasets.IMAGE_EXTENSIONS or '/' in spec:
      raise FileNotFoundError(f'edit.background: no such image file {spec!r}') from e
    raise ValueError(
        f'edit.background={spec!r} is neither an image file nor a colour '
        "('white', '#RRGGBB', 'r,g,b')"
    ) from e


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
    common.log_summary(f'edit: {len(missing)} images need eigenvectors; running extract')
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


def foreground_patches(
    eigenvectors: np.ndarray, grid_hw: tuple[int, int], opts: EditOptions, seed: int = 0
) -> np.ndarray:
  """bool [h', w'] foreground on the patch grid (or the eigen-segmentation's grid)."""
  if opts.segment < 0:
    return segments.fiedler_mask(eigenvectors, grid_hw, index=1)
  try:
    from spectral_jax.spectral import clustering  # imports jax; only this path needs it
  except ImportError as e:
    raise ValueError('edit.segment >= 0 needs spectral_jax.spectral.clustering') from e
  import jax

  segmap = clustering.multi_region_segments(
      eigenvectors, grid_hw, opts.n_segments, jax.random.PRNGKey(seed)
  )
  return np.asarray(segmap) == opts.segment


def edit_image(
    image: np.ndarray, mask: np.ndarray, patch_size: int, opts: EditOptions, background: Background
) -> dict[str, np.ndarray]:
  """alpha / cutout (and composite) arrays of one image from its pixel-level coarse mask."""
  alpha = edit.matte(
      image, mask, opts.band_px or patch_size, opts.eps, opts.max_pixels, opts.levels
  )
  if opts.foreground == 'image':
    fg = image.astype(np.float32) / 255.0
  else:
    fg = edit.estimate_foreground(image, alpha)
  out = {'alpha': alpha, 'cutout': edit.cutout_rgba(image, alpha, fg)}
  if background is not None:
    out['composite'] = edit.composite(image, alpha, background, fg)
  return out


def _process(
    example, workdir: Path, config, opts: EditOptions, background: Background, with_panel: bool
) -> None:
  image = datasets.load_image(example, min_side=1, max_pixels=config.data.max_pixels)
  with np.load(extract.output_paths(workdir, example.id)[1]) as f:
    record = {k: np.asarray(f[k]) for k in f.files}
  patch, grid, working = eigen_frame(record, image.shape[:2])
  patch_mask = foreground_patches(record['eigenvectors'], grid, opts, config.get('seed', 0))
  if not patch_mask.any():
    logging.warning('%s: no foreground patches; the cutout is empty', example.id)
  # A segment map may be finer than the patch grid (2× for downsampled-8 eigenvectors).
  cell = max(patch * grid[0] // patch_mask.shape[0], 1)
  upsampled = segments.upsample_patch_mask(patch_mask, working, cell)
  mask = pipeline.resize_mask(upsampled, image.shape[:2])
  band = patch * image.shape[0] / working[0]  # one patch, in pixels of the original
  out = edit_image(image, mask, band, opts, background)
  paths = output_paths(workdir, example.id)
  # Cutout last: it is what marks the image done, so a crash before it redoes the image.
  if 'composite' in out:
    io.save_png(paths['composite'], out['composite'])
  if with_panel:
    io.save_png(paths['panel'], edit.edit_panel(image, mask, out['alpha'], out.get('composite')))
  io.save_png(paths['cutout'], out['cutout'])


# ----------------------------------------------------------------------------- the task


def run(config, workdir) -> None:
  workdir = Path(workdir)
  common.check_config(config)
  opts = EditOptions.from_config(config)
  background = resolve_background(opts.background, config.data.max_pixels)
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
  common.log_summary(f'edit: {len(shard)} images, {len(shard) - len(todo)} already done or skipped')
  if not todo:
    return
  ensure_eigenvectors(config, workdir, todo)
  skipped = common.SkipLog(workdir, 'edit')
  progress = pipeline.Progress(len(todo), 'edit')
  for ex in todo:
    if not extract.output_paths(workdir, ex.id)[1].exists():
      logging.warning('%s: no eigenvectors (unreadable at extraction?); skipped', ex.id)
      continue
    try:
      _process(ex, workdir, config, opts, background, ex.id in panel_ids)
    except Exception as e:  # pylint: disable=broad-except  # one bad image must not stop a run
      logging.exception('edit: skipping %s', ex.id)
      skipped(ex, e)
      continue
    progress.update()
  common.log_summary(progress.summary(), skipped.summary())
