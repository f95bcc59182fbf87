"""``bench_localize.py --method found``: FOUND's object discovery, ours vs the official loop.

* **ours**: ``pipeline.run_images(extractor, examples, ..., method='found',
  method_params=results.boxes.found_params(decoder))`` (decode threads, padded inputs in token
  buckets, batched ViT forward, the decoder's 1×1 convolution jitted on the batch, the box on the
  host), then ``results.boxes.localization(r)`` per image (``None`` where no patch is
  foreground: the official crashes there).
* **official**: ``official_found.localize`` per image (PIL decode, normalise then zero-pad,
  torch DINO ViT ``get_last_selfattention`` at batch 1 with the keys hooked, ``nn.Conv2d(384, 1,
  1)``, sigmoid > 0.5 at patch resolution, largest 4-connected component, box).

Before timing, the official loop is asserted against the official FOUND outputs of
``tests/data/found`` (both decoders: logits ≤ 1e-4·max, boxes equal). Then the stage profile of
our run: the ViT forward alone over the batches ``run_images`` forms, the decoder head alone
(``pipeline.method_outputs`` on those keys), the host post-processing (the method's host step:
sigmoid mask, components, box, score), and, for reference, the saliency mask's ×8 bilinear
upsampling + sigmoid > 0.5 (§2; not on the box path), each as seconds and % of the ViT.
"""

from __future__ import annotations

import os
import time
from typing import Dict, List, Optional

import jax
import numpy as np

import official_found
from common import command_line, markdown_table, pass_seconds
from spectral_jax import pipeline
from spectral_jax.data import datasets
from spectral_jax.results import boxes as boxes_lib
from spectral_jax.spectral import found

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
FOUND_DIR = os.path.join(ROOT, 'tests', 'data', 'found')
PARITY_IMAGES = os.path.join(ROOT, 'tests', 'data', 'parity', 'images')
DEFAULT_CHECKPOINT = os.path.join(FOUND_DIR, 'checkpoint.pth')
DEFAULT_DECODER = os.path.join(FOUND_DIR, 'decoder_random.pt')


def verify(ref, device: str) -> str:
  """The official loop on the parity photos vs the official FOUND outputs (both decoders)."""
  model = ref.load_dino(DEFAULT_CHECKPOINT, device)
  worst = 0.0
  for decoder, prefix in (('decoder_found.pt', ''), ('decoder_random.pt', 'random_')):
    conv = official_found.load_decoder(os.path.join(FOUND_DIR, decoder), device)
    for pid in ('astronaut', 'chelsea', 'coffee'):
      want = np.load(os.path.join(FOUND_DIR, pid + '.npz'))
      out = official_found.localize(model, conv, os.path.join(PARITY_IMAGES, pid + '.png'), device)
      logits = want[prefix + 'logits']
      rel = float(np.abs(out['logits'] - logits).max() / np.abs(logits).max())
      assert rel <= 1e-4, f'{decoder} {pid}: logits differ by {rel:.1e}·max'
      assert out['box'].tolist() == want[prefix + 'uod_box_xyxy'].tolist(), (
        f'{decoder} {pid}: box {out["box"]} vs {want[prefix + "uod_box_xyxy"]}'
      )
      worst = max(worst, rel)
  return f'6/6 boxes == official (2 decoders × 3 photos), logits ≤ {worst:.1e}·max'


def run_ours(extractor, examples, args, params) -> tuple:
  out: Dict[str, Optional[np.ndarray]] = {}
  t0 = time.perf_counter()
  for r in pipeline.run_images(
    extractor,
    examples,
    batch_size=args.batch_size,
    limits=pipeline.ImageLimits(max_pixels=args.max_pixels),
    bucket_tokens=args.bucket_tokens,
    method='found',
    method_params=params,
  ):
    try:
      out[r.example.id] = boxes_lib.localization(r)[0]
    except ValueError:  # no foreground patch: no box (the official crashes)
      out[r.example.id] = None
  return time.perf_counter() - t0, out


def run_official(ref_found, model, decoder, paths, device, timers=None) -> tuple:
  out = {}
  t0 = time.perf_counter()
  for p in paths:
    out[os.path.splitext(os.path.basename(p))[0]] = ref_found.localize(
      model, decoder, p, device, timers
    )['box']
  return time.perf_counter() - t0, out


def best(f, repeats: int) -> float:
  f()  # warm (compilation, caches)
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    f()
    times.append(time.perf_counter() - t0)
  return min(times)


def profile(extractor, examples, args, params) -> Dict[str, float]:
  """Our stages, each alone over the batches run_images forms (best of ``args.repeats``+)."""
  p = extractor.arch.patch_size
  limits = pipeline.ImageLimits(max_pixels=args.max_pixels, min_tokens=pipeline.MIN_TOKENS)
  t0 = time.perf_counter()
  items = list(pipeline.decoded(examples, p, limits))
  decode_s = time.perf_counter() - t0
  batches = []
  for batch in pipeline.size_batches(
    items, p, args.batch_size, args.bucket_tokens, preprocess='pad'
  ):
    crops = [pipeline.prepare_input(it[1], p, 'pad') for it in batch]
    grids = [(c.shape[0] // p, c.shape[1] // p) for c in crops]
    tokens = [h * w for h, w in grids]
    length = max(pipeline.bucket_length(grids[0], args.bucket_tokens), max(tokens))
    batches.append((batch, crops, grids, tokens, length))
  spec = pipeline.METHODS['found']
  feats: List = []

  def vit():
    feats[:] = [extractor(crops, length)['k'] for _, crops, _, _, length in batches]
    jax.block_until_ready(feats)

  logits: List = []

  def head():
    logits[:] = [
      pipeline.method_outputs(spec, f, np.array(b[3]), 'auto', params)['logits']
      for f, b in zip(feats, batches)
    ]
    jax.block_until_ready(logits)

  def host():
    for lg, (batch, _, grids, _, _) in zip(logits, batches):
      lg = np.asarray(lg)
      for i, (_, image, _) in enumerate(batch):
        spec.host({'logits': lg[i]}, grids[i], p, image.shape[:2])

  def saliency():  # §2's mask, for reference: ×8 bilinear, sigmoid > 0.5 (not the box path)
    for lg, (batch, _, grids, _, _) in zip(logits, batches):
      lg = np.asarray(lg)
      for i, (_, image, _) in enumerate(batch):
        grid = lg[i, : grids[i][0] * grids[i][1]].reshape(grids[i])
        found.multi_mask(found.upsample_logits(grid, tuple(image.shape[:2]), p))

  reps = max(2, args.repeats)
  return {
    'decode': decode_s,
    'vit': best(vit, reps),
    'head': best(head, 5),
    'host': best(host, 3),
    'saliency': best(saliency, 2),
  }


def main(args, argv, bench) -> int:
  """``bench``: the bench_localize module (loadavg, make_images, thread_limit, ref)."""
  torch = bench.torch
  print('## bench_localize --method found')
  print()
  print(command_line('bench_localize.py', argv))
  print(
    f'- JAX {jax.__version__} backend `{jax.default_backend()}`; torch '
    f'{torch.__version__ if torch is not None else "NOT INSTALLED"}; load average '
    f'{bench.loadavg()}'
  )
  if torch is None:
    print(f'- {bench.TORCH_MISSING}')
    return 2
  cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
  threads = int(args.torch_threads.split(',')[0]) if args.torch_threads else cores
  with bench.thread_limit(threads):
    if not args.skip_verify:
      print(
        f'- official loop verified against tests/data/found: {verify(bench.ref, args.torch_device)}'
      )
  ckpt = args.checkpoint or DEFAULT_CHECKPOINT
  decoder = args.decoder or DEFAULT_DECODER
  paths = bench.make_images(
    os.path.join(args.cache_dir, f'images_seed{args.seed}'), args.images, args.seed
  )
  examples = [datasets.Example(id=os.path.splitext(os.path.basename(p))[0], path=p) for p in paths]
  n = len(paths)
  extractor = pipeline.load_extractor('dino_vits8', checkpoint=ckpt, cache_dir=args.cache_dir)
  params = boxes_lib.found_params(decoder)
  model = bench.ref.load_dino(ckpt, args.torch_device)
  conv = official_found.load_decoder(decoder, args.torch_device)
  print(
    f'- checkpoint `{os.path.relpath(ckpt, ROOT)}` (dino_vits8, {extractor.arch.depth} '
    f'blocks), decoder `{os.path.relpath(decoder, ROOT)}`; {n} images '
    f'({", ".join(e.id for e in examples)}); ours batch {args.batch_size}, bucket '
    f'{args.bucket_tokens} tokens; official torch {threads} thread(s)'
  )

  first_s, _ = run_ours(extractor, examples, args, params)  # compiles
  with bench.thread_limit(threads):
    official_found.localize(model, conv, paths[0], args.torch_device)  # torch warm-up
  ours_s, ref_s, loads = [], [], []
  timers: Dict[str, float] = {}
  for _ in range(args.repeats):
    loads.append(bench.loadavg().split()[0])
    t, ours = run_ours(extractor, examples, args, params)
    ours_s.append(t)
    pass_timers: Dict[str, float] = {}
    with bench.thread_limit(threads):
      t, official = run_official(official_found, model, conv, paths, args.torch_device, pass_timers)
    ref_s.append(t)
    if t <= min(ref_s):
      timers = pass_timers
  torch.set_num_threads(cores)
  same = sum(
    (ours[i] is None and official[i] is None)
    or (ours[i] is not None and official[i] is not None and np.array_equal(ours[i], official[i]))
    for i in official
  )
  empty = sum(official[i] is None for i in official)
  t_ours, t_ref = min(ours_s), min(ref_s)
  print(
    f'- our warm-up pass (compilation) {first_s:.1f} s; load average before the passes '
    f'{", ".join(loads)}, at the end {bench.loadavg()}'
  )
  print()
  print(
    markdown_table(
      ('side', 'images/s (best pass)', 's per pass', 'official / ours', 'boxes equal'),
      'lrlrr',
      [
        (
          "ours: run_images(method='found') + localization",
          f'{n / t_ours:.3f}',
          pass_seconds(ours_s),
          '1.00',
          '-',
        ),
        (
          'official: per image, torch ViT + Conv2d + scipy label',
          f'{n / t_ref:.3f}',
          pass_seconds(ref_s),
          f'**{t_ref / t_ours:.2f}×**',
          f'{same}/{n}',
        ),
      ],
    )
  )
  if empty:
    print(f'\n({empty} image(s) have no foreground patch on both sides: no box.)')
  if args.no_profile:
    return 0

  prof = profile(extractor, examples, args, params)
  vit_o, vit_r = prof['vit'], timers['vit']
  pct = lambda s, v: f'{100 * s / v:.2f} %'  # noqa: E731
  print()
  print(
    f'Stage profile, seconds for the {n} images (ours: each stage alone over the batches '
    'run_images forms, best of several; official: its per-stage timers, best pass):'
  )
  print()
  print('| stage | ours (s) | ours, % of our ViT | official (s) | official, % of its ViT |')
  print('|---|---:|---:|---:|---:|')
  print(
    f'| decode (PIL) | {prof["decode"]:.3f} (threads, overlapped) | - | '
    f'{timers["decode"]:.3f} | - |'
  )
  print(f'| ViT forward (keys of the last block) | {vit_o:.3f} | 100 % | {vit_r:.3f} | 100 % |')
  print(
    f'| decoder head (1×1 conv) | {prof["head"]:.4f} | {pct(prof["head"], vit_o)} | '
    f'{timers["head"]:.4f} | {pct(timers["head"], vit_r)} |'
  )
  print(
    f'| post-processing (sigmoid > 0.5, components, box; ours + score) | '
    f'{prof["host"]:.4f} | {pct(prof["host"], vit_o)} | {timers["post"]:.4f} | '
    f'{pct(timers["post"], vit_r)} |'
  )
  print(
    f'| head + post-processing | {prof["head"] + prof["host"]:.4f} | '
    f'**{pct(prof["head"] + prof["host"], vit_o)}** | '
    f'{timers["head"] + timers["post"]:.4f} | '
    f'**{pct(timers["head"] + timers["post"], vit_r)}** |'
  )
  print(
    f'| (saliency mask, §2: ×8 bilinear upsampling + sigmoid > 0.5; not on the box path) '
    f'| {prof["saliency"]:.4f} | {pct(prof["saliency"], vit_o)} | - | - |'
  )
  print(f'| end to end | {t_ours:.3f} | {pct(t_ours, vit_o)} | {t_ref:.3f} | {pct(t_ref, vit_r)} |')
  print()
  print(f'Load average at the very end: {bench.loadavg()}')
  return 0
