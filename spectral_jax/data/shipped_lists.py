"""The image lists that ship inside the package (COCO20k, VOC), read as resources."""

from __future__ import annotations

import importlib.resources
import os


def read_list(name: str) -> list[str]:
  """Non-empty lines of a list shipped in `spectral_jax/data/` (e.g. 'coco_20k_filenames.txt')."""
  text = importlib.resources.files('spectral_jax.data').joinpath(name).read_text()
  return [line.strip() for line in text.splitlines() if line.strip()]


def coco20k_filenames() -> list[str]:
  """The 19,817 COCO20k file names (basename, e.g. 'COCO_train2014_000000560992.jpg')."""
  return [os.path.basename(line) for line in read_list('coco_20k_filenames.txt')]
