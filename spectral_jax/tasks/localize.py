"""``--mode=localize``: one box per image from the Fiedler vector; CorLoc when boxes are known.

Writes ``workdir/predictions.jsonl`` (one line per image: id, box_xyxy [x0, y0, x1, y1] in
pixels of the original image with exclusive max, image_size [H, W]), ``workdir/metrics.json``
and panels ``workdir/panels/<stem>.png``. Finished images (lines already in
predictions.jsonl) are not recomputed when a killed run is started again.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spectral_jax import io, metrics, pipeline, viz
from spectral_jax.spectral import segments
from spectral_jax.tasks import common


def eigenvector_index(which_matrix: str) -> int:
  """The official 'infer' rule: Fiedler vector for the Laplacian, the top one for W."""
  return {'laplacian': 1, 'affinity': 0}[which_matrix]


def corloc_metrics(predictions: list[dict], examples: list) -> dict:
  """CorLoc over images that have ground-truth boxes (the official protocol)."""
  by_id = {ex.id: ex for ex in examples}
  hits = []
  for pred in predictions:
    ex = by_id.get(pred['id'])
    if ex is None or ex.boxes is None or len(ex.boxes) == 0:
      continue
    hits.append(metrics.corloc_hit(np.asarray(pred['box_xyxy'], float), np.asarray(ex.boxes)))
  if not hits:
    return {'num_images': len(predictions)}
  return {'corloc': metrics.corloc(hits), 'num_scored': len(hits),
          'num_images': len(predictions)}


def run(config, workdir) -> None:
  workdir = Path(workdir)
  common.check_config(config)
  examples = common.examples_from_config(config.data)
  pred_path = workdir / 'predictions.jsonl'
  done = {r['id'] for r in io.read_jsonl(pred_path)}
  todo = [ex for ex in examples if ex.id not in done]
  common.log_summary(f'localize: {len(examples)} images, {len(examples) - len(todo)} already done')
  if todo:
    _predict(config, workdir, todo, pred_path, num_panels=max(config.output.num_panels - len(done), 0))
  predictions = [r for r in io.read_jsonl(pred_path) if r['id'] in {ex.id for ex in examples}]
  result = corloc_metrics(predictions, examples)
  io.save_json(workdir / 'metrics.json', result)
  if 'corloc' in result:
    common.log_summary(f"CorLoc {result['corloc']:.2f} over {result['num_scored']} images")


def _predict(config, workdir: Path, todo: list, pred_path: Path, num_panels: int) -> None:
  extractor = common.load_extractor(config.model)
  skipped = common.SkipLog(workdir)
  progress = pipeline.Progress(len(todo), 'localize')
  s = config.spectral
  index = eigenvector_index(s.which_matrix)
  for r in pipeline.run_images(extractor, todo, batch_size=config.data.batch_size,
                               max_pixels=config.data.max_pixels, spectral_k=s.K,
                               color_lambda=s.color_lambda, which_matrix=s.which_matrix,
                               solver=s.solver, on_error=skipped):
    box = segments.localization_box(r.eigenvectors, r.patch_grid, r.patch_size,
                                    r.image.shape[:2], index=index)
    # One line per finished image, so a killed run loses at most the image in flight.
    io.append_jsonl(pred_path, [{'id': r.example.id, 'box_xyxy': [int(v) for v in box],
                                 'image_size': [int(r.image.shape[0]), int(r.image.shape[1])]}])
    if num_panels > 0:
      num_panels -= 1
      io.save_png(workdir / 'panels' / f'{r.example.id}.png',
                  viz.panel(r.image, r.eigenvectors, r.patch_grid, box_xyxy=box))
    progress.update()
  common.log_summary(progress.summary(), skipped.summary())
