"""What every task runner shares: choosing the images, the model, resume, and errors."""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any, Callable, Sequence

from absl import logging
import jax

from spectral_jax import io, pipeline
from spectral_jax.data import datasets

SOLVERS = ('auto', 'dense', 'lanczos')
# data.bucket_tokens = -1: measured in benchmarks/README.md (bench_localize.py --bucket-tokens).
CPU_BUCKET_TOKENS = 32
ACCELERATOR_BUCKET_TOKENS = 64


def check_config(config) -> None:
  """Fails fast, naming the flag, before any image or weight is touched."""
  s = config.spectral
  if s.which_matrix not in ('laplacian', 'affinity'):
    raise ValueError(
        f'--config.spectral.which_matrix={s.which_matrix!r}: use laplacian or affinity'
    )
  if s.solver not in SOLVERS:
    raise ValueError(f'--config.spectral.solver={s.solver!r}: use one of {SOLVERS}')
  if not 2 <= s.K <= 64:
    raise ValueError(f'--config.spectral.K={s.K}: use 2..64 (eigenvector 1 is the Fiedler vector)')
  if s.color_lambda < 0:
    raise ValueError(f'--config.spectral.color_lambda={s.color_lambda}: must be >= 0')
  if config.data.batch_size < 1:
    raise ValueError(f'--config.data.batch_size={config.data.batch_size}: must be >= 1')
  if config.data.bucket_tokens < -1:
    raise ValueError(
        f'--config.data.bucket_tokens={config.data.bucket_tokens}: use -1 (by backend), '
        '0 (exact token counts) or a positive step'
    )


def examples_from_config(data) -> list[Any]:
  """The dataset's examples (lazy: nothing decoded), in a fixed order, ``data.limit`` applied."""
  source = data.source
  if source == 'folder':
    _require_root(data)
    examples = datasets.image_folder(
        data.root, boxes=data.boxes or None, masks_dir=data.masks or None
    )
  elif source == 'voc' and data.root:
    _require_existing_root(data)
    examples = datasets.voc_devkit(data.root, data.year, data.split, no_hard=data.no_hard)
  elif source == 'voc':  # no devkit given: the prepared tfds dataset
    examples = datasets.tfds_detection(
        f'voc/{data.year}', 'train+validation', data.tfds_dir or None, no_hard=data.no_hard
    )
  elif source == 'coco20k' and data.root:
    _require_existing_root(data)
    examples = datasets.coco20k(data.root, data.annotations or None)
  elif source == 'coco20k':
    examples = datasets.tfds_detection('coco/2014', 'train', data.tfds_dir or None)
  elif source == 'saliency':
    _require_root(data)
    examples = datasets.saliency_folder(data.name, data.root)
  elif source == 'tfds':
    examples = datasets.tfds_detection(
        data.name, data.split, data.tfds_dir or None, no_hard=data.no_hard
    )
  elif source == 'demo':
    examples = demo_examples()
  else:
    raise ValueError(f'data.source={source!r}: use folder, voc, coco20k, saliency, tfds or demo')
  if data.limit:
    examples = examples[: data.limit]
  _check_unique_ids(examples)
  if not examples:
    raise ValueError(f'no images found for data.source={source!r} data.root={data.root!r}')
  return examples


DEMO_IMAGES = ('astronaut.png', 'chelsea.png', 'coffee.png', 'rocket.jpg', 'motorcycle_left.png')


def demo_examples() -> list[Any]:
  """Photos that ship inside scikit-image, so the demo downloads nothing but the weights."""
  import skimage.data  # pylint: disable=import-outside-toplevel

  folder = Path(skimage.data.__file__).parent
  return [
      datasets.Example(id=Path(name).stem, path=str(folder / name))
      for name in DEMO_IMAGES
      if (folder / name).exists()
  ]


def _require_root(data) -> None:
  if not data.root:
    raise ValueError(f'data.source={data.source!r} needs --config.data.root=PATH')
  _require_existing_root(data)


def _require_existing_root(data) -> None:
  if not Path(data.root).exists():
    raise FileNotFoundError(
        f'data.root {data.root!r} does not exist: pass an existing folder '
        'with --config.data.root=PATH'
    )


def _check_unique_ids(examples: Sequence[Any]) -> None:
  counts = collections.Counter(ex.id for ex in examples)
  dups = [i for i, n in counts.items() if n > 1]
  if dups:
    raise ValueError(
        f'{len(dups)} image ids occur twice (e.g. {dups[:3]}); outputs are named '
        'by file stem, so stems must be unique within a run'
    )


def load_extractor(model) -> pipeline.FeatureExtractor:
  return pipeline.load_extractor(
      model.name, model.checkpoint, model.cache_dir, model.precision, model.feature_block
  )


def bucket_tokens(config) -> int:
  """data.bucket_tokens, with -1 = by backend.

  Padding a patch sequence to a shared length lets images of similar size batch and
  compile once, for a few % more FLOPs. Accelerators want large batches and pay more per
  compilation, so they get coarser buckets than a CPU.
  """
  step = config.data.bucket_tokens
  if step >= 0:
    return step
  return CPU_BUCKET_TOKENS if jax.default_backend() == 'cpu' else ACCELERATOR_BUCKET_TOKENS


def run_images(config, extractor, todo: Sequence[Any], on_error, which_matrix: str = ''):
  """pipeline.run_images with the run's config (spectral settings, batching, limits)."""
  s = config.spectral
  return pipeline.run_images(
      extractor,
      todo,
      batch_size=config.data.batch_size,
      max_pixels=config.data.max_pixels,
      spectral_k=s.K,
      color_lambda=s.color_lambda,
      which_matrix=which_matrix or s.which_matrix,
      solver=s.solver,
      bucket_tokens=bucket_tokens(config),
      on_error=on_error,
  )


class Panels:
  """Writes ``workdir/panels/<id>.png`` for the first ``count`` images a run processes."""

  def __init__(self, workdir, count: int):
    self.folder = Path(workdir) / 'panels'
    self.left = count

  def __call__(self, image_id: str, render: Callable[[], Any]) -> None:
    """``render`` builds the panel only when one is still due."""
    if self.left <= 0:
      return
    self.left -= 1
    io.save_png(self.folder / f'{image_id}.png', render())


class SkipLog:
  """Records unreadable images in ``workdir/skipped.jsonl`` so a run reports them at the end."""

  def __init__(self, workdir: Path):
    self.path = Path(workdir) / 'skipped.jsonl'
    self.count = 0

  def __call__(self, example, error: Exception) -> None:
    self.count += 1
    io.append_jsonl(
        self.path,
        [
            {
                'id': example.id,
                'path': str(example.path),
                'error': f'{type(error).__name__}: {error}',
            }
        ],
    )

  def summary(self) -> str:
    return f'{self.count} unreadable images skipped (see {self.path})' if self.count else ''


def log_summary(*lines: str) -> None:
  for line in lines:
    if line:
      logging.info('%s', line)
      print(line)
