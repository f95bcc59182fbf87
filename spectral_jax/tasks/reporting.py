"""What every mode's outputs say about each image and the run: an image's file name as the
outputs give it, and the keys every metrics.json starts with."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from spectral_jax.tasks.common import previously_skipped


def file_name(example, root: str) -> str:
  """The image's path relative to the data root (its base name when not under it)."""
  if example.path is None:
    return example.id
  path = Path(example.path)
  if root and not Path(root).expanduser().is_file():  # a single image's root is itself
    try:
      return path.resolve().relative_to(Path(root).expanduser().resolve()).as_posix()
    except ValueError:
      pass
  return path.name


def run_metrics(
  stage: str,
  method: str,
  model: str,
  examples: Sequence[Any],
  workdir,
  num_processed: int,
  also_skipped_at: Sequence[str] = (),
) -> dict:
  """The keys every ``metrics.json`` starts with, the same in every mode: ``mode``, ``method``,
  ``model``, ``num_images`` (the dataset's images), ``num_processed`` (those with outputs) and
  ``num_failed`` (unusable images, listed in skipped.jsonl; ``also_skipped_at``: earlier stages
  whose skips this one inherits)."""
  ids = {ex.id for ex in examples}
  failed = set()
  for name in (stage, *also_skipped_at):
    failed |= previously_skipped(workdir, name) & ids
  return {
    'mode': stage,
    'method': method,
    'model': model,
    'num_images': len(examples),
    'num_processed': int(num_processed),
    'num_failed': len(failed),
  }
