"""``--mode=extract``: features and eigenvectors per image, the inputs of every other stage.

Writes ``workdir/features/<stem>.npz`` (k [h·w, D] float32 row-major over the patch grid,
patch_size P, patch_grid (h, w), image_size (H, W) of the original image, working_size (H', W')
the model saw: smaller when the image was downscaled to data.max_tokens) and
``workdir/eigs/<stem>.npz`` (eigenvalues [K'], eigenvectors [K', h·w], patch_size, patch_grid,
image_size, working_size; K' = K unless the image has no more than K patches). Images whose
files exist are not recomputed.
Registry backbones add their other arrays to features/: x_norm_patchtokens (DINOv2/v3),
k_rope (DINOv3), and for dino_resnet50 features (= k, layer4) and low_level [(2h)·(2w), 256].

``--config.method=tokencut``: keys of TokenCut's input (normalised, zero-padded to ⌈H/P⌉ ×
⌈W/P⌉ patches) and its eigenpairs λ0, λ1, λ2 of (D − W) v = λ D v on the binary graph,
eigenvector 1 oriented by TokenCut's seed rule. LOST has no eigenvectors: method=lost stops.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spectral_jax import parallel, pipeline, viz
from spectral_jax import artifacts
from spectral_jax.results import boxes
from spectral_jax.tasks import common


def output_paths(workdir, image_id: str) -> tuple[Path, Path]:
  workdir = Path(workdir)
  return workdir / 'features' / f'{image_id}.npz', workdir / 'eigs' / f'{image_id}.npz'


def is_done(workdir, image_id: str, with_features: bool) -> bool:
  features, eigs = output_paths(workdir, image_id)
  return eigs.exists() and (features.exists() or not with_features)


def _write(r: pipeline.ImageResult, workdir, with_features: bool) -> None:
  feat_path, eig_path = output_paths(workdir, r.example.id)
  frame = dict(
    patch_size=np.array(r.patch_size),
    patch_grid=np.array(r.patch_grid),
    image_size=np.array(r.image_hw),
    working_size=np.array(r.image.shape[:2]),
  )
  if with_features:
    extras = {key: value.astype(np.float32) for key, value in (r.extras or {}).items()}
    if 'low_level' in extras:  # the ResNet's layer4 map, under its own name too
      extras['features'] = r.features.astype(np.float32)
    artifacts.save_npz(feat_path, k=r.features.astype(np.float32), **extras, **frame)
  # eigs last: it is what marks the image done.
  artifacts.save_npz(eig_path, eigenvalues=r.eigenvalues, eigenvectors=r.eigenvectors, **frame)


def run(config, workdir) -> None:
  run_settings = common.check_config(config)
  name = run_settings.method.name
  if name in pipeline.METHODS and not pipeline.METHODS[name].has_eigenvectors:
    raise ValueError(
      f'--config.method={name!r} has no eigenvectors to extract: use '
      '--mode=localize or --mode=segment (or method dsm / tokencut)'
    )
  args = boxes.method_args(run_settings.method)
  examples = common.examples_from_config(config.data, workdir)
  common.begin_stage(config, workdir, 'extract')
  todo = common.remaining(
    workdir,
    'extract',
    parallel.process_shard(examples),
    lambda ex: is_done(workdir, ex.id, config.output.features),
  )
  if not todo:
    return
  extractor = common.load_extractor(run_settings.model)
  skipped = common.SkipLog(workdir, 'extract')
  progress = skipped.track(pipeline.Progress(len(todo), 'extract'))
  panels = common.Panels(workdir, config.output.num_panels, examples)
  for r in common.run_images(run_settings, extractor, todo, skipped, **args):
    if not common.write_or_skip(r.example, skipped, _write, r, workdir, config.output.features):
      continue
    panels(
      r.example.id,
      lambda: viz.panel(
        r.image,
        r.eigenvectors,
        r.patch_grid,
        eigenvalues=r.eigenvalues,
        title=f'{run_settings.method.name} · {run_settings.model.name}',
      ),
    )
    progress.update()
  common.log_summary(
    progress.summary(),
    skipped.summary(),
    f'{len(extractor.compiled_shapes)} compiled input shapes',
  )
