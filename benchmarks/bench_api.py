"""The Python API on images in memory against the CLI's runner on the same images as files.

  python benchmarks/bench_api.py --images 12 --repeats 3

One process, one backbone file, the same photos: the API gets decoded uint8 arrays
(``sj.localize(backbone, arrays)``: no file is written or re-encoded), the CLI runner
(``tasks.localize.run(config, workdir)``, what ``main.py --mode=localize`` runs) reads them as
PNG files from a folder and writes its outputs into a fresh workdir each pass. Both compile
first (an untimed pass each), then alternate; the best pass of each is reported with the ratio
(CLI time / API time: above 1 means the API is faster). Boxes are checked equal.

Default weights: the 2-block ViT-S/16 parity checkpoint that ships with the tests (same
shapes and work per token as the real ViT-S/16 up to depth); ``--checkpoint`` takes any DINO
ViT-S/16 file.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import spectral_jax as sj  # noqa: E402
from spectral_jax import config_dict  # noqa: E402
from spectral_jax.tasks import localize  # noqa: E402


def photos(n: int, seed: int = 0) -> list[np.ndarray]:
  """The three parity photos, then generated scenes (an ellipse on a textured background)."""
  out = [
    np.asarray(Image.open(p).convert('RGB'))
    for p in sorted((ROOT / 'tests' / 'data' / 'parity' / 'images').glob('*.png'))
  ][:n]
  rng = np.random.default_rng(seed)
  while len(out) < n:
    h, w = int(rng.integers(240, 480)), int(rng.integers(240, 480))
    yy, xx = np.mgrid[:h, :w]
    image = rng.integers(0, 80, (h, w, 3)).astype(np.uint8)
    cy, cx, ry, rx = h / 2, w / 2, h / 4, w / 5
    inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
    image[inside] = rng.integers(150, 255, 3)
    out.append(image)
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--images', type=int, default=12)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument(
    '--checkpoint', default=str(ROOT / 'tests' / 'data' / 'parity' / 'checkpoint.pth')
  )
  args = parser.parse_args()
  tmp = Path(tempfile.mkdtemp(prefix='spectral_jax_bench_api_'))
  arrays = photos(args.images)
  folder = tmp / 'images'
  folder.mkdir()
  for i, a in enumerate(arrays):
    Image.fromarray(a).save(folder / f'{i:04d}.png')
  backbone = sj.load_backbone('dino_vits16', args.checkpoint, cache_dir=tmp / 'cache')

  config = config_dict.default_config()
  config.data.root = str(folder)
  config.model.checkpoint = args.checkpoint
  config.model.cache_dir = str(tmp / 'cache')
  config.output.num_panels = 0

  def api() -> list:
    return [list(r.box_xyxy) for r in sj.localize(backbone, arrays)]

  def cli(k: int) -> list:
    work = tmp / f'work{k}'
    localize.run(config, str(work))
    records = {
      r['id']: r['box_xyxy']
      for r in map(json.loads, (work / 'predictions.jsonl').read_text().splitlines())
    }
    shutil.rmtree(work)
    return [records[f'{i:04d}'] for i in range(len(arrays))]

  assert api() == cli(-1), 'the API and the CLI disagree'  # also the untimed compile passes
  times = {'api': [], 'cli': []}
  for k in range(args.repeats):
    start = time.perf_counter()
    api()
    times['api'].append(time.perf_counter() - start)
    start = time.perf_counter()
    cli(k)
    times['cli'].append(time.perf_counter() - start)
  best = {side: min(t) for side, t in times.items()}
  print(f'| side ({args.images} images, best of {args.repeats}) | s | images/s |')
  print('|---|---|---|')
  print(f'| API, arrays in memory | {best["api"]:.3f} | {args.images / best["api"]:.2f} |')
  print(
    f'| CLI runner, PNG files → workdir | {best["cli"]:.3f} | {args.images / best["cli"]:.2f} |'
  )
  print(f'ratio CLI / API: {best["cli"] / best["api"]:.2f} (above 1: the API is faster)')
  shutil.rmtree(tmp, ignore_errors=True)


if __name__ == '__main__':
  main()
