"""``--mode=localize``: one box per image; CorLoc when boxes are known.

``--config.method``: dsm (the Fiedler vector's largest 8-connected component, cropped input),
tokencut (TokenCut's seed component, normalised then zero-padded input), lost (LOST's seed
expansion, same input) or found (the largest 4-connected component of FOUND's decoder mask at
patch resolution, same input; decoder ``--config.found.decoder``, '' = the official file; its
score is the mean probability of that component); see ``pipeline.METHODS``.

Writes ``workdir/predictions.jsonl`` (one line per image: id, box_xyxy [x0, y0, x1, y1] in
pixels of the original image with exclusive max, image_size [H, W]), ``workdir/metrics.json``
and panels ``workdir/panels/<stem>.png``. Finished images (lines already in
predictions.jsonl) are not recomputed when a killed run is started again.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np

from spectral_jax import coco, metrics, parallel, pipeline, viz
from spectral_jax import artifacts
from spectral_jax.results import boxes
from spectral_jax.tasks import common, reporting


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
  result = {'num_processed': total}
  if annotated:
    result.update(num_annotated=annotated, num_scored=scored, num_skipped=annotated - scored)
  if scored:
    result.update(corloc=100.0 * hits / scored)
  return result


def panel_vectors(r: pipeline.ImageResult):
  """What a panel shows as heat maps: eigenvectors, or LOST's map M (FOUND's logits) in their
  place."""
  if r.eigenvectors is not None or not r.outputs:
    return r.eigenvectors
  heat = r.outputs.get('M', r.outputs.get(pipeline.FOUND_LOGITS))
  if heat is None:
    return None
  heat = np.ravel(heat)
  return np.stack([np.zeros_like(heat), heat])


def panel(r: pipeline.ImageResult, run_settings, **result) -> np.ndarray:
  """The captioned panel of a result: image (method · model) | eigenvectors with their eigenvalues (LOST's
  degree map or FOUND's logits in their place) | ``result`` (box_xyxy, mask, score)."""
  vectors = panel_vectors(r)
  names = ()
  if r.eigenvectors is None and vectors is not None:
    names = ('LOST seed map' if 'M' in (r.outputs or {}) else 'FOUND decoder logits',)
  return viz.panel(
    r.image,
    vectors,
    r.patch_grid,
    eigenvalues=r.eigenvalues,
    title=f'{run_settings.method.name} · {run_settings.model.name}',
    vector_names=names,
    **result,
  )


def prediction_files(workdir: Path) -> list[Path]:
  return sorted(Path(workdir).glob('predictions*.jsonl'))


def run(config, workdir) -> None:
  workdir = Path(workdir)
  run_settings = common.check_config(config)
  # Fail fast on a bad method or FOUND decoder file.
  boxes.method_args(run_settings.method, cache_dir=run_settings.model.cache_dir)
  examples = common.examples_from_config(config.data, workdir)
  common.begin_stage(config, workdir, 'localize')
  ids = {ex.id for ex in examples}
  # Each process owns a strided share and its own file; ids done by any earlier run count.
  own_path = workdir / (
    'predictions.jsonl'
    if jax.process_count() == 1
    else f'predictions.process{jax.process_index()}.jsonl'
  )
  done = {r['id'] for path in prediction_files(workdir) for r in artifacts.read_jsonl(path)}
  shard = parallel.process_shard(examples)
  todo = common.remaining(workdir, 'localize', shard, lambda ex: ex.id in done)
  if todo:
    _predict(config, run_settings, workdir, todo, own_path, examples)
  shard_ids = {ex.id for ex in shard}
  own = {
    r['id']: r
    for path in prediction_files(workdir)
    for r in artifacts.read_jsonl(path)
    if r['id'] in shard_ids
  }
  result = corloc_result(parallel.process_sum(corloc_counts(list(own.values()), shard)))
  parallel.barrier('localize-done')
  if parallel.is_main_process():
    if jax.process_count() > 1:  # one predictions.jsonl, as in a single-process run
      merged = {
        r['id']: r for path in prediction_files(workdir) for r in artifacts.read_jsonl(path)
      }
      artifacts.save_jsonl(
        workdir / 'predictions.jsonl', [merged[i] for i in sorted(merged) if i in ids]
      )
    head = reporting.run_metrics(
      'localize',
      run_settings.method.name,
      run_settings.model.name,
      examples,
      workdir,
      result['num_processed'],
    )
    artifacts.save_json(workdir / 'metrics.json', {**head, **result})
    final = {r['id']: r for path in prediction_files(workdir) for r in artifacts.read_jsonl(path)}
    write_detections(
      workdir, [final[ex.id] for ex in examples if ex.id in final], examples, config.data
    )
  if 'corloc' in result:
    common.log_summary(f'CorLoc {result["corloc"]:.2f} over {pipeline.count(result["num_scored"])}')


def coco_image_ids(examples: list, data) -> dict[str, int]:
  """COCO image ids for ``detections.json``: the ids of a COCO ground-truth file where one is
  given (matched by file name), else 1, 2, … in dataset order (as discover's instances.json)."""
  ids = {ex.id: i for i, ex in enumerate(examples, start=1)}
  gt = data.get('boxes', '') if data.source == 'folder' else data.get('annotations', '')
  if gt and str(gt).endswith('.json') and Path(gt).is_file():
    try:
      images = json.loads(Path(gt).read_text()).get('images', [])
    except (OSError, ValueError):
      return ids
    by_name = {}
    for im in images:
      by_name[im['file_name']] = im['id']
      by_name.setdefault(Path(im['file_name']).name, im['id'])
    for ex in examples:
      if ex.path is not None and Path(ex.path).name in by_name:
        ids[ex.id] = int(by_name[Path(ex.path).name])
  return ids


def score_file(pred_path: Path) -> Path:
  """scores[.processI].jsonl beside predictions[.processI].jsonl: {id, score} per image."""
  return pred_path.with_name(pred_path.name.replace('predictions', 'scores', 1))


def write_detections(workdir: Path, records: list[dict], examples: list, data) -> None:
  """``workdir/detections.json``: COCO results (image_id, category_id 1, bbox [x, y, w, h],
  score) of the predictions, for standard evaluation tools."""
  ids = coco_image_ids(examples, data)
  scores = {
    r['id']: r['score']
    for path in sorted(workdir.glob('scores*.jsonl'))
    for r in artifacts.read_jsonl(path)
  }
  kept = [r for r in records if r['id'] in ids]
  by_id = {ex.id: ex for ex in examples}
  dets = coco.detections_json(
    [ids[r['id']] for r in kept],
    [float(scores.get(r['id'], 1.0)) for r in kept],
    boxes=[[x0, y0, x1 - x0, y1 - y0] for x0, y0, x1, y1 in (r['box_xyxy'] for r in kept)],
    file_names=[reporting.file_name(by_id[r['id']], data.root) for r in kept],
  )
  artifacts.save_json(workdir / 'detections.json', dets)


def _predict(
  config, run_settings, workdir: Path, todo: list, pred_path: Path, examples: list
) -> None:
  extractor = common.load_extractor(run_settings.model)
  skipped = common.SkipLog(workdir, 'localize')
  progress = skipped.track(pipeline.Progress(len(todo), 'localize'))
  panels = common.Panels(workdir, config.output.num_panels, examples)
  method = boxes.method_args(run_settings.method, cache_dir=run_settings.model.cache_dir)
  for r in common.run_images(run_settings, extractor, todo, skipped, **method):
    try:
      box, working_box, score = boxes.localization(r, run_settings.spectral.which_matrix)
    except ValueError as e:  # FOUND: no foreground patch, no box (never a made-up one)
      skipped(r.example, e)
      continue
    record = {
      'id': r.example.id,
      'box_xyxy': [int(v) for v in box],
      'image_size': [int(v) for v in r.image_hw],
    }
    # The score first, then one prediction line per finished image (what marks it done), so a
    # killed run loses at most the image in flight.
    score_line = [{'id': r.example.id, 'score': round(score, 6)}]
    if not common.write_or_skip(
      r.example, skipped, artifacts.append_jsonl, score_file(pred_path), score_line
    ):
      continue
    if not common.write_or_skip(r.example, skipped, artifacts.append_jsonl, pred_path, [record]):
      continue
    panels(
      r.example.id,
      lambda: panel(r, run_settings, box_xyxy=working_box, score=score),
    )
    progress.update()
  common.log_summary(progress.summary(), skipped.summary())
