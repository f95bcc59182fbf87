"""What each FOUND training target costs to make (--config.found.targets=found|dsm|tokencut|maskcut).

  python benchmarks/bench_found_targets.py --repeats 3

The three parity photos (tests/data/parity/images), their un-augmented 224 × 224 training
inputs, one batch per method through ``training.found_targets.make_targets`` (what
``--mode=train`` runs before training): a compiling pass first (untimed), then the best of
``--repeats`` passes; seconds per image and the ratio to ``found``. Default weights: the
2-block ViT-S/8 parity checkpoint of the tests (``--checkpoint`` takes any DINO ViT-S/8 file:
the ViT's share grows with its depth, the host work — solver, eigen-solves — does not).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from spectral_jax import pipeline  # noqa: E402
from spectral_jax.training import found_targets  # noqa: E402


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--checkpoint', default=str(ROOT / 'tests/data/found/checkpoint.pth'))
  parser.add_argument('--repeats', type=int, default=3)
  args = parser.parse_args()
  folder = ROOT / 'tests' / 'data' / 'parity' / 'images'
  photos = [np.asarray(Image.open(p).convert('RGB')) for p in sorted(folder.glob('*.png'))]
  with tempfile.TemporaryDirectory() as cache:
    extractor = pipeline.load_extractor('dino_vits8', args.checkpoint, cache)
    images = found_targets.training_images(photos)
    seconds = {}
    for method in found_targets.TARGETS:
      found_targets.make_targets(method, extractor, images)  # compiles
      best = float('inf')
      for _ in range(args.repeats):
        start = time.perf_counter()
        found_targets.make_targets(method, extractor, images)
        best = min(best, time.perf_counter() - start)
      seconds[method] = best / len(images)
  for method, s in seconds.items():
    print(f'{method:9s} {s:.3f} s/image  {s / seconds["found"]:.2f} × found')


if __name__ == '__main__':
  main()
