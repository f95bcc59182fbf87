"""What every task runner shares: choosing the images, the model, resume, and errors."""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any, Sequence

from absl import logging

from spectral_jax import io, pipeline
from spectral_jax.data import datasets


def examples_from_config(data) -> list[Any]:
  """The dataset's examples (lazy: nothing decoded), in a fixed order, ``data.limit`` applied."""
  source = data.source
  if source == 'folder':
    _require_root(data)
    examples = datasets.image_folder(data.root, boxes=data.boxes or None,
                                     masks_dir=data.masks or None)
  elif source == 'voc':
    _require_root(data)
    examples = datasets.voc_devkit(data.root, data.year, data.split,
                                   no_hard=data.get('no_hard', False))
  elif source == 'coco20k':
    _require_root(data)
    examples = datasets.coco20k(data.root, data.get('annotations', '') or None)
  elif source == 'saliency':
    _require_root(data)
    examples = datasets.saliency_folder(data.name, data.root)
  elif source == 'tfds':
    examples = datasets.tfds_detection(data.name, data.split, data.root or None,
                                       Path(data.get('cache', '') or '/tmp/spectral_jax_tfds'))
  elif source == 'demo':
    examples = datasets.demo_images(data.get('demo_names', None))
  else:
    raise ValueError(f"data.source={source!r}: use folder, voc, coco20k, saliency, tfds or demo")
  if data.limit:
    examples = examples[:data.limit]
  _check_unique_ids(examples)
  if not examples:
    raise ValueError(f'no images found for data.source={source!r} data.root={data.root!r}')
  return examples


def _require_root(data) -> None:
  if not data.root:
    raise ValueError(f'data.source={data.source!r} needs --config.data.root=PATH')
  if not Path(data.root).exists():
    raise FileNotFoundError(f'data.root {data.root!r} does not exist: pass an existing folder '
                            'with --config.data.root=PATH')


def _check_unique_ids(examples: Sequence[Any]) -> None:
  counts = collections.Counter(ex.id for ex in examples)
  dups = [i for i, n in counts.items() if n > 1]
  if dups:
    raise ValueError(f'{len(dups)} image ids occur twice (e.g. {dups[:3]}); outputs are named '
                     'by file stem, so stems must be unique within a run')


def load_extractor(model) -> pipeline.FeatureExtractor:
  return pipeline.load_extractor(model.name, model.checkpoint, model.cache_dir,
                                 model.precision, model.feature_block)


class SkipLog:
  """Records unreadable images in ``workdir/skipped.jsonl`` so a run reports them at the end."""

  def __init__(self, workdir: Path):
    self.path = Path(workdir) / 'skipped.jsonl'
    self.count = 0

  def __call__(self, example, error: Exception) -> None:
    self.count += 1
    io.append_jsonl(self.path, [{'id': example.id, 'path': str(example.path),
                                 'error': f'{type(error).__name__}: {error}'}])

  def summary(self) -> str:
    return f'{self.count} unreadable images skipped (see {self.path})' if self.count else ''


def log_summary(*lines: str) -> None:
  for line in lines:
    if line:
      logging.info('%s', line)
      print(line)
