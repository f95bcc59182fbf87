"""The compile wait: time to the first result with a cold and a warm compile cache, and the
compiled shapes of a folder of mixed sizes with the old and the new token buckets.

  python benchmarks/bench_first_result.py

(a) The demo's five scikit-image photos (``--config=demo``), each run in a fresh process with
$SPECTRAL_JAX_CACHE at a temporary folder whose converted weights are ready: cold = its
``xla`` folder empty, warm = the same command again. Through the CLI (``python -m
spectral_jax --config=demo --mode=localize``; first result = the first line of
predictions.jsonl, polled every 20 ms) and through the API (``sj.load_backbone`` then
``sj.localize(backbone, paths, progress=callback)``; first result = the first callback).
Times are from the process start.

(b) ``--folder-images`` generated photos (random sizes ``--min-side``..``--max-side`` px a
side, fixed seed) through ``pipeline.run_images`` at the default settings (K = 5, batch 8,
max_tokens 6400), in this process without a persistent cache (every shape compiles): the old
default buckets (``--old-bucket-tokens``, 32 = the CPU default before; the same as
``--config.data.bucket_tokens=32``) and the new default (-1: geometric). Compiled shapes are
the forward's (``extractor.compiled_shapes``) and every XLA compile JAX reports (eigen steps
included); compile time is the sum of JAX's backend compile durations.

Default weights: a random DINO ViT-S/16 (12 blocks) written in the official state-dict format
(same shapes, hence the same compile and run times, as the real weights); ``--checkpoint``
takes the real file.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from common import random_dino_state_dict  # noqa: E402
from spectral_jax import pipeline  # noqa: E402
from spectral_jax.data import datasets  # noqa: E402
from spectral_jax.models.weights import checkpoints  # noqa: E402
from spectral_jax.tasks import common  # noqa: E402
from spectral_jax.training.found import write_torch_zip  # noqa: E402

API_RUN = """
import json, sys, time
start = float(sys.argv[3])
from absl import logging
import spectral_jax as sj
logging.set_verbosity(logging.INFO)  # the compile line is an INFO line (the CLI shows INFO)
backbone = sj.load_backbone('dino_vits16', sys.argv[1])
loaded = time.time() - start
first = []
paths = json.loads(sys.argv[2])
sj.localize(backbone, paths, progress=lambda d, t: first or first.append(time.time() - start))
print(json.dumps({'loaded': loaded, 'first': first[0], 'all': time.time() - start}))
"""


def make_checkpoint(path: Path, seed: int = 0, depth: int = 12, dim: int = 384) -> None:
  """A random ViT-S/16 in DINO's state-dict format (benchmarks/common.py's, as
  benchmarks/bench_localize.py's, written torch-free: LayerNorm ≈ 1 ± 0.1, W ~ N(0, 1/fan_in))."""
  write_torch_zip(path, random_dino_state_dict(seed, depth, dim))


def demo_paths() -> list[str]:
  return [ex.path for ex in common.demo_examples()]


def child_env(cache: Path) -> dict:
  env = {k: v for k, v in os.environ.items() if not k.startswith('JAX_')}
  env['SPECTRAL_JAX_CACHE'] = str(cache)
  return env


def cli_run(checkpoint: Path, cache: Path, workdir: Path) -> dict:
  command = [sys.executable, '-m', 'spectral_jax', '--config=demo', '--mode=localize']
  command += [f'--workdir={workdir}', f'--config.model.checkpoint={checkpoint}']
  predictions = workdir / 'predictions.jsonl'
  start = time.time()
  proc = subprocess.Popen(
    command, cwd=ROOT, env=child_env(cache), stdout=subprocess.PIPE, stderr=subprocess.PIPE
  )
  first = None
  while proc.poll() is None:
    if first is None and predictions.is_file() and predictions.read_bytes().count(b'\n'):
      first = time.time() - start
    time.sleep(0.02)
  total = time.time() - start
  out, err = proc.communicate()
  if proc.returncode:
    raise RuntimeError(f'CLI failed:\n{err.decode()[-3000:]}')
  lines = predictions.read_text().splitlines()
  assert len(lines) == 5, lines
  return {'first': first or total, 'all': total, 'said': said_compiled(err.decode())}


def api_run(checkpoint: Path, cache: Path, paths: list[str]) -> dict:
  start = time.time()
  proc = subprocess.run(
    [sys.executable, '-c', API_RUN, str(checkpoint), json.dumps(paths), repr(start)],
    cwd=ROOT,
    env=child_env(cache),
    capture_output=True,
    text=True,
  )
  if proc.returncode:
    raise RuntimeError(f'API run failed:\n{proc.stderr[-3000:]}')
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  return dict(out, said=said_compiled(proc.stderr))


def said_compiled(stderr: str) -> str:
  return 'yes' if 'compiled for a new image size' in stderr else 'no'


def first_result(checkpoint: Path, tmp: Path, repeats: int) -> list[tuple]:
  """Rows (front-end, cache, first s, all s, compile line) of part (a)."""
  cache = tmp / 'cache'
  checkpoints.load_params('dino_vits16', str(checkpoint), str(cache))  # converted once, here
  paths = demo_paths()
  rows = []
  for k in range(repeats):
    for side in ('CLI', 'API'):
      shutil.rmtree(cache / 'xla', ignore_errors=True)
      for state in ('cold', 'warm'):
        work = tmp / f'work_{side}_{state}_{k}'
        r = cli_run(checkpoint, cache, work) if side == 'CLI' else api_run(checkpoint, cache, paths)
        rows.append((side, state, r['first'], r['all'], r['said']))
        print(f'  {side} {state} (round {k + 1}): first {r["first"]:.2f} s, all {r["all"]:.2f} s')
  return rows


def folder(tmp: Path, n: int, low: int, high: int, seed: int) -> list:
  """``n`` photo-like images (smooth colour fields + an ellipse), random sizes, as PNG files."""
  rng = np.random.default_rng(seed)
  (tmp / 'folder').mkdir(exist_ok=True)
  out = []
  for i in range(n):
    h, w = (int(v) for v in rng.integers(low, high + 1, 2))
    small = rng.integers(0, 256, (4, 4, 3), np.uint8)
    image = np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR)).copy()
    yy, xx = np.mgrid[:h, :w]
    cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
    inside = ((yy - cy) / (0.2 * h)) ** 2 + ((xx - cx) / (0.2 * w)) ** 2 < 1
    image[inside] = rng.integers(0, 256, 3)
    path = tmp / 'folder' / f'{i:03d}.png'
    Image.fromarray(image).save(path)
    out.append(datasets.Example(id=f'{i:03d}', path=str(path)))
  return out


def compiled_shapes(checkpoint: Path, examples: list, bucket_tokens: int) -> dict:
  """One pass over the folder with a fresh extractor and fresh eigen steps."""
  from jax import monitoring  # pylint: disable=import-outside-toplevel

  from spectral_jax.pipeline import methods  # pylint: disable=import-outside-toplevel

  methods._eigs_step.cache_clear()  # pylint: disable=protected-access
  seen = collections.Counter()

  def listen(event, seconds, **kwargs):
    if event == '/jax/core/compile/backend_compile_duration' and seen['on']:
      seen['compiles'] += 1
      seen['seconds'] += seconds

  monitoring.register_event_duration_secs_listener(listen)
  extractor = pipeline.load_extractor('dino_vits16', str(checkpoint))
  tokens = 0
  seen['on'] = 1
  start = time.perf_counter()
  for r in pipeline.run_images(
    extractor, examples, batch_size=8, spectral_k=5, bucket_tokens=bucket_tokens
  ):
    tokens += r.patch_grid[0] * r.patch_grid[1]
  wall = time.perf_counter() - start
  seen['on'] = 0
  return {
    'shapes': len(extractor.compiled_shapes),
    'compiles': seen['compiles'],
    'compile_s': seen['seconds'],
    'wall': wall,
    'tokens': tokens,
    'lengths': sorted({shape[1] for shape, _, _ in extractor.compiled_shapes}),
    'padding': padding(examples, bucket_tokens),
  }


def padding(examples: list, step: int, max_tokens: int = 6400) -> float:
  """Tokens the forwards run (batches and sequences padded) / the images' own tokens, from
  the pipeline's own grouping (``size_batches``) of the working sizes."""
  sizes = []
  for ex in examples:
    with Image.open(ex.path) as im:
      sizes.append(pipeline.working_size((im.height, im.width), 16, max_tokens))
  items = [(i, np.zeros((h, w, 1), np.uint8)) for i, (h, w) in enumerate(sizes)]
  own = ran = 0
  for batch in pipeline.size_batches(items, 16, 8, step, max_tokens=max_tokens):
    grids = [(im.shape[0] // 16, im.shape[1] // 16) for _, im in batch]
    length = max(pipeline.bucket_length(grids[0], step, max_tokens), *(h * w for h, w in grids))
    count = len(batch)
    if step == pipeline.GEOMETRIC:
      count = pipeline.padded_count(count, pipeline.batch_capacity(length, 8, 1 << 15))
    own += sum(h * w for h, w in grids)
    ran += count * length
  return ran / own


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--checkpoint', default='', help='a DINO ViT-S/16 .pth; default: random')
  parser.add_argument('--repeats', type=int, default=1, help='rounds of part (a)')
  parser.add_argument('--folder-images', type=int, default=50)
  parser.add_argument('--min-side', type=int, default=200)
  parser.add_argument('--max-side', type=int, default=1600)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--old-bucket-tokens', type=int, default=32)
  parser.add_argument('--skip', choices=('first', 'folder', ''), default='')
  args = parser.parse_args()
  tmp = Path(tempfile.mkdtemp(prefix='spectral_jax_bench_first_'))
  checkpoint = Path(args.checkpoint) if args.checkpoint else tmp / 'dino_vits16_random.pth'
  if not args.checkpoint:
    make_checkpoint(checkpoint)
  print(f'machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs')
  try:
    if args.skip != 'first':
      rows = first_result(checkpoint, tmp, args.repeats)
      print('\n| front-end | compile cache | first result (s) | all 5 (s) | compile line |')
      print('|---|---|---|---|---|')
      for side, state, first, total, said in rows:
        print(f'| {side} | {state} | {first:.2f} | {total:.2f} | {said} |')
      best = collections.defaultdict(lambda: float('inf'))
      for side, state, first, total, _ in rows:
        best[side, state] = min(best[side, state], first)
      for side in ('CLI', 'API'):
        ratio = best[side, 'warm'] / best[side, 'cold']
        print(f'{side}: first result warm / cold = {ratio:.2f}')
    if args.skip != 'folder':
      examples = folder(tmp, args.folder_images, args.min_side, args.max_side, args.seed)
      print(f'\nfolder: {len(examples)} images, {args.min_side}-{args.max_side} px a side')
      runs = {}
      for label, step in (('new (-1, geometric)', -1), (f'old ({args.old_bucket_tokens})', None)):
        runs[label] = compiled_shapes(
          checkpoint, examples, args.old_bucket_tokens if step is None else step
        )
        r = runs[label]
        print(f'  {label}: {r["shapes"]} forward shapes, lengths {r["lengths"]}')
      print(
        '\n| buckets | forward shapes | XLA compiles | compile time (s) | pass (s) | '
        'padded tokens |'
      )
      print('|---|---|---|---|---|---|')
      for label, r in runs.items():
        print(
          f'| {label} | {r["shapes"]} | {r["compiles"]} | {r["compile_s"]:.1f} | '
          f'{r["wall"]:.1f} | +{100 * (r["padding"] - 1):.0f} % |'
        )
      new, old = runs.values()
      print(
        f'new / old: forward shapes {new["shapes"] / old["shapes"]:.2f}, XLA compiles '
        f'{new["compiles"] / old["compiles"]:.2f}, compile time '
        f'{new["compile_s"] / old["compile_s"]:.2f}, pass {new["wall"] / old["wall"]:.2f}'
      )
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == '__main__':
  main()
