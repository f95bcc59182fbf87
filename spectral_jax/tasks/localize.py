"""``--mode=localize``: one box per image; CorLoc when boxes are known.

``--config.method``: dsm (the Fiedler vector's largest 8-connected component, cropped input),
tokencut (TokenCut's seed component, normalised then zero-padded input) or lost (LOST's seed
expansion, same input); see ``pipeline.METHODS``.

Writes ``workdir/predictions.jsonl`` (one line per image: id, box_xyxy [x0, y0, x1, y1] in
pixels of the original image with exclusive max, image_size [H, W]), ``workdir/metrics.json``
and panels ``workdir/panels/<stem>.png``. Finished images (lines already in
predictions.jsonl) are not recomputed when a killed run is started again.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from spectral_jax import io, metrics, parallel, pipeline, viz
from spectral_jax.spectral import segments
from spectral_jax.tasks import common


def eigenvector_index(which_matrix: str) -> int:
  """The official 'infer' rule: Fiedler vector for the Laplacian, the top one for W."""
  return {'laplacian': 1, 'affinity': 0}[which_matrix]


def corloc_counts(predictions: list[dict], examples: list) -> np.ndarray:
  """[hits, scored, predicted, annotated] — sums over processes give the dataset's CorLoc.

  Annotated: images with ground-truth boxes, or whose annotation is unreadable; those and
  the annotated images without a prediction (skipped) are not scored.
  """
  by_id = {ex.id: ex for ex in examples}
  hits = scored = 0
  for pred in predictions:
    ex = by_id.get(pred['id'])
    if ex is None or ex.boxes is None or len(ex.boxes) == 0:
      continue
    scored += 1
    hits += metrics.corloc_hit(np.asarray(pred['box_xyxy'], float), np.asarray(ex.boxes))
  annotated = sum(
      1 for ex in examples if ex.gt_error or (ex.boxes is not None and len(ex.boxes) > 0)
  )
  return np.array([hits, scored, len(predictions), annotated], np.int64)


def corloc_result(counts: np.ndarray) -> dict:
  hits, scored, total, annotated = (int(c) for c in counts)
  result = {'num_images': total}
  if annotated:
    result.update(num_annotated=annotated, num_scored=scored, num_skipped=annotated - scored)
  if scored:
    result.update(corloc=100.0 * hits / scored)
  return result


def method_args(config, segment: bool = False) -> dict:
  """``common.run_images`` keywords of ``config.method``: its input for object discovery (or
  for its mask with ``segment``) and its parameters; a bad value names the flag."""
  name = config.get('method', 'dsm')
  if name not in pipeline.METHODS:
    raise ValueError(f'--config.method={name!r}: use one of {sorted(pipeline.METHODS)}')
  method = pipeline.METHODS[name]
  params = {}
  if name == 'tokencut':
    params = dict(tau=float(config.tokencut.tau), eps=float(config.tokencut.eps))
    if not params['eps'] > 0:
      raise ValueError(f"--config.tokencut.eps={params['eps']!r}: must be > 0")
  elif name == 'lost':
    params = dict(k_patches=int(config.lost.k_patches))
    if params['k_patches'] < 1:
      raise ValueError(f"--config.lost.k_patches={params['k_patches']!r}: must be >= 1")
  preprocess = method.segment_preprocess if segment else method.preprocess
  return dict(method=name, preprocess=preprocess, method_params=params)


def panel_vectors(r: pipeline.ImageResult):
  """What a panel shows as heat maps: eigenvectors, or LOST's map M in their place."""
  if r.eigenvectors is not None or not r.outputs or 'M' not in r.outputs:
    return r.eigenvectors
  return np.stack([np.zeros_like(r.outputs['M']), r.outputs['M']])


def prediction_files(workdir: Path) -> list[Path]:
  return sorted(Path(workdir).glob('predictions*.jsonl'))


def run(config, workdir) -> None:
  workdir = Path(workdir)
  common.check_config(config)
  method_args(config)  # fail fast on a bad method
  examples = common.examples_from_config(config.data, workdir)
  common.begin_stage(config, workdir, 'localize')
  ids = {ex.id for ex in examples}
  # Each process owns a strided share and its own file; ids done by any earlier run count.
  own_path = workdir / (
      'predictions.jsonl'
      if jax.process_count() == 1
      else f'predictions.process{jax.process_index()}.jsonl'
  )
  done = {r['id'] for path in prediction_files(workdir) for r in io.read_jsonl(path)}
  skipped_before = common.previously_skipped(workdir, 'localize')
  shard = parallel.process_shard(examples)
  todo = [ex for ex in shard if ex.id not in done and ex.id not in skipped_before]
  common.log_summary(
      f'localize: {len(shard)} images in this process, {len(shard) - len(todo)} already done'
      + (f' or skipped ({len(skipped_before)}, see skipped.jsonl)' if skipped_before else '')
  )
  if todo:
    _predict(config, workdir, todo, own_path, examples)
  shard_ids = {ex.id for ex in shard}
  own = {
      r['id']: r
      for path in prediction_files(workdir)
      for r in io.read_jsonl(path)
      if r['id'] in shard_ids
  }
  result = corloc_result(parallel.process_sum(corloc_counts(list(own.values()), shard)))
  parallel.barrier('localize-done')
  if parallel.is_main_process():
    if jax.process_count() > 1:  # one predictions.jsonl, as in a single-process run
      merged = {r['id']: r for path in prediction_files(workdir) for r in io.read_jsonl(path)}
      io.save_jsonl(workdir / 'predictions.jsonl', [merged[i] for i in sorted(merged) if i in ids])
    io.save_json(workdir / 'metrics.json', result)
  if 'corloc' in result:
    common.log_summary(f"CorLoc {result['corloc']:.2f} over {result['num_scored']} images")


def _predict(config, workdir: Path, todo: list, pred_path: Path, examples: list) -> None:
  extractor = common.load_extractor(config.model)
  skipped = common.SkipLog(workdir, 'localize')
  progress = pipeline.Progress(len(todo), 'localize')
  panels = common.Panels(workdir, config.output.num_panels, examples)
  index = eigenvector_index(config.spectral.which_matrix)
  for r in common.run_images(config, extractor, todo, skipped, **method_args(config)):
    if r.outputs is not None:  # TokenCut / LOST: the seed component's box
      working_box = r.outputs['box']
    else:
      working_box = segments.localization_box(
          r.eigenvectors, r.patch_grid, r.patch_size, r.image.shape[:2], index=index
      )
    box = r.box_to_original(working_box)
    record = {
        'id': r.example.id,
        'box_xyxy': [int(v) for v in box],
        'image_size': [int(v) for v in r.image_hw],
    }
    # One line per finished image, so a killed run loses at most the image in flight.
    if not common.write_or_skip(r.example, skipped, io.append_jsonl, pred_path, [record]):
      continue
    panels(
        r.example.id,
        lambda: viz.panel(r.image, panel_vectors(r), r.patch_grid, box_xyxy=working_box),
    )
    progress.update()
  common.log_summary(progress.summary(), skipped.summary())
