"""Benchmark: end-to-end single-object localization, ours (JAX) vs the official per-image loop.

Measures images/s of the whole per-image localization pipeline on the same images and the same
checkpoint:

* **ours**: ``spectral_jax.pipeline.run_images(extractor, examples, batch_size, max_pixels,
  spectral_k=5, bucket_tokens)`` (decode threads, size-bucketed batched ViT forward, batched
  Laplacian eigenvectors) followed by ``spectral_jax.results.boxes.localization`` (the
  localize task's box rule) for every result. A warm-up pass over the same images comes
  first; its time (which includes XLA compilation) is reported separately, with the number
  of compiled ViT shapes.
* **official**: ``benchmarks/official_reference.py`` — the official steps per image, in the same
  process: PIL decode, DINO ViT forward in torch (fp32, batch 1, top-left crop to multiples of
  16), keys of the last block, then on the CPU: L2-normalise, ``W = F Fᵀ``, ``> 0``, ``/ max``,
  dense ``D``, ``scipy.sparse.linalg.eigsh(D − W, k=5, sigma=0, which='LM', M=D)``, sign rule,
  Fiedler ``> 0``, largest 8-connected ``skimage.measure.label`` component, box × 16.

The model is a generated ViT-S/16 (12 blocks, random weights, DINO state-dict format, saved
with ``torch.save``; both sides load the same file). Random weights give the exact compute of
the real model; the boxes are not meaningful objects, and near-tied eigenvalues of a random
model can make the two eigen-solvers' Fiedler vectors (hence boxes) differ on a few images —
disagreements are listed with the reference's eigenvalue gap.

On startup the reference is verified against the parity data (``tests/data/parity``: official
keys within 1e-4·max and boxes equal to ``loc_box_xyxy`` for the three images, depth-2
checkpoint); the script stops if that fails (``--skip-verify`` to bypass).

Also reported: the ViT forward's achieved GFLOP/s (analytic FLOPs of the real tokens: patch
embedding + per block qkv/proj/MLP matmuls + q·kᵀ and attn·v, 2 flops per MAC) against this
machine's float32 matmul peak (a 2048×2048 ``jnp.matmul`` at HIGHEST precision, and
``torch.matmul`` for the reference), and a stage profile of both sides (``--no-profile`` to
skip): ViT forward alone, eigen stage per solver (``auto``/``dense``/``lanczos`` and the
official ``eigsh``), decode and box.

On a GPU the script runs unchanged: our side runs on JAX's default backend; the reference ViT
forward runs on ``--torch-device`` (``cpu`` by default, ``cuda`` allowed) and its eigen step
always on the CPU, as the official code does (scipy).

``--precision bfloat16`` runs our ViT matmuls on bfloat16 operands with float32 accumulation
(``model.precision=bfloat16``); the reference then gains a second row, the same official loop
with its ViT forward under ``torch.autocast('cpu'|'cuda', dtype=torch.bfloat16)`` (keys cast
back to float32; the eigen step stays float32 / scipy as in the official code).
``--model dino_vits8`` generates a random ViT-S/8 instead (patch 8, 28×28 pretrained grid).
``--synthetic N`` replaces the image set by N generated VOC-sized JPEG files (random crops of
the scikit-image photos, quality 90), timed end to end like the others (decode threads
included).

``--method tokencut|lost`` times TokenCut / LOST against their official per-image loops
(``official_methods.py``); ``--method found`` times FOUND's object discovery against its official
per-image evaluation (``official_found.py``, run by ``localize_found.py``: the 2-block ViT-S/8 and
``decoder_random.pt`` of ``tests/data/found`` by default, ``--checkpoint`` / ``--decoder`` to
override) and prints a stage profile of ours (ViT, decoder head, post-processing as % of the ViT).

Two further modes print tables instead of timing the official loop:

* ``--agreement``: our bfloat16 vs our float32 on the parity photos (parity checkpoint) and
  on the benchmark images (the generated checkpoint): identical boxes, mean box IoU, Fiedler
  |cos|, object-mask agreement (patches with the same label in the box's component mask) and
  max|Δk| / max|k|.
* ``--attention``: one attention layer at the model's token count of a 500×375 image (about
  2,900 tokens for ViT-S/8): our einsum path vs ``jax.nn.dot_product_attention`` (``xla``, and
  ``cudnn`` on GPUs), float32 and bfloat16, times and max differences.

Example (the numbers in benchmarks/README.md)::

    python benchmarks/bench_localize.py --images 40 --batch-size 4 --torch-threads 2,1
    python benchmarks/bench_localize.py --precision bfloat16 --synthetic 24
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import tempfile
import time
from typing import Dict, List, Sequence, Tuple

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from PIL import Image  # noqa: E402

try:  # the official reference needs torch; ours does not
  import torch  # noqa: E402
except ImportError:
  torch = None

TORCH_MISSING = (
  'torch is NOT installed: the official reference (torch ViT + scipy) cannot run, so nothing '
  'is timed or compared. Install torch (e.g. `pip install torch`, CPU is enough) and rerun.'
)

try:  # limits scipy's BLAS threads for the reference (installed with scikit-learn)
  from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover
  threadpool_limits = None

import official_methods as ref_methods  # noqa: E402
from common import (  # noqa: E402
  command_line,
  markdown_table,
  pass_seconds,
  random_dino_state_dict,
)

ref = None
if torch is not None:
  import official_reference as ref  # noqa: E402
from spectral_jax import pipeline  # noqa: E402
from spectral_jax.data import datasets  # noqa: E402
from spectral_jax.models import vit  # noqa: E402
from spectral_jax.spectral import affinity, eigen, segments  # noqa: E402
from spectral_jax.tasks import common  # noqa: E402
from spectral_jax.results import boxes as boxes_lib  # noqa: E402

# --model: (patch size, pretrained grid) of the generated random checkpoint.
MODELS = {'dino_vits16': (16, 14), 'dino_vits8': (8, 28)}

PARITY_DIR = os.path.join(ROOT, 'tests', 'data', 'parity')
PARITY_IDS = ('astronaut', 'chelsea', 'coffee')
# VOC-like (H, W): the most frequent VOC2007/2012 image sizes.
VOC_SIZES = [
  (375, 500),
  (500, 375),
  (333, 500),
  (500, 333),
  (500, 500),
  (366, 500),
  (281, 500),
  (400, 500),
  (500, 400),
  (375, 500),
  (500, 375),
  (334, 500),
]
SKIMAGE_PHOTOS = (
  'astronaut.png',
  'chelsea.png',
  'coffee.png',
  'rocket.jpg',
  'motorcycle_left.png',
  'motorcycle_right.png',
  'hubble_deep_field.jpg',
  'retina.jpg',
  'ihc.png',
  'camera.png',
  'cell.png',
  'coins.png',
  'clock_motion.png',
  'grass.png',
  'gravel.png',
  'moon.png',
  'brick.png',
  'color.png',
  'phantom.png',
)
# Images used at their own size (besides the parity images), if not larger than VOC-ish.
KEEP_ORIGINAL = ('rocket.jpg',)


# ------------------------------------------------------------------------------------------------
# Setup: load, checkpoint, images
# ------------------------------------------------------------------------------------------------


def loadavg() -> str:
  try:
    with open('/proc/loadavg') as f:
      return ' '.join(f.read().split()[:3])
  except OSError:
    return 'n/a'


def make_checkpoint(
  path: str, seed: int, depth: int = 12, dim: int = 384, patch: int = 16, grid: int = 14
) -> None:
  """A random ViT-S/16 in DINO's state-dict format (LayerNorm ≈ 1 ± 0.1, W ~ N(0, 1/fan_in))."""
  arrays = random_dino_state_dict(seed, depth, dim, patch, grid)
  sd = {name: torch.from_numpy(a) for name, a in arrays.items()}
  tmp = path + '.tmp'
  torch.save(sd, tmp)
  os.replace(tmp, path)


def skimage_data_dir() -> str:
  import skimage.data

  return os.path.dirname(skimage.data.__file__)


def make_images(folder: str, n: int, seed: int, synthetic: bool = False) -> List[str]:
  """``n`` RGB PNGs: the parity images, a few photos at their size, then VOC-sized crops;
  ``synthetic``: only VOC-sized crops, as JPEG files (quality 90)."""
  os.makedirs(folder, exist_ok=True)
  rng = np.random.default_rng(seed)
  sk = skimage_data_dir()
  sources = {}
  for name in SKIMAGE_PHOTOS:
    p = os.path.join(sk, name)
    if os.path.isfile(p):
      with Image.open(p) as im:
        sources[name] = im.convert('RGB')
  images: List[Tuple[str, Image.Image]] = []
  for pid in () if synthetic else PARITY_IDS:
    with Image.open(os.path.join(PARITY_DIR, 'images', pid + '.png')) as im:
      images.append((f'parity_{pid}', im.convert('RGB')))
  for name in () if synthetic else KEEP_ORIGINAL:
    if name in sources:
      images.append((f'orig_{os.path.splitext(name)[0]}', sources[name]))
  names = sorted(sources)
  i = 0
  while len(images) < n:
    name = names[i % len(names)]
    src = sources[name]
    h, w = VOC_SIZES[rng.integers(len(VOC_SIZES))]
    # Random crop with the target aspect ratio covering 50-100 % of the limiting side.
    frac = rng.uniform(0.5, 1.0)
    cw = min(src.width, int(round(src.height * w / h)))
    ch = int(round(cw * h / w))
    cw, ch = max(16, int(cw * frac)), max(16, int(ch * frac))
    x0 = int(rng.integers(0, src.width - cw + 1))
    y0 = int(rng.integers(0, src.height - ch + 1))
    crop = src.crop((x0, y0, x0 + cw, y0 + ch)).resize((w, h), Image.BICUBIC)
    images.append((f'voc_{i:03d}_{os.path.splitext(name)[0]}_{h}x{w}', crop))
    i += 1
  paths = []
  for image_id, im in images[:n]:
    p = os.path.join(folder, image_id + ('.jpg' if synthetic else '.png'))
    if not os.path.isfile(p):
      im.save(p, quality=90) if synthetic else im.save(p)
    paths.append(p)
  return paths


# ------------------------------------------------------------------------------------------------
# FLOPs and matmul peak
# ------------------------------------------------------------------------------------------------


def vit_flops(n: int, depth: int = 12, dim: int = 384, patch: int = 16) -> float:
  """FLOPs (2 per MAC) of one ViT forward on n patches: matmuls + attention."""
  t = n + 1
  flops = 2.0 * n * (3 * patch * patch) * dim  # patch embedding
  per_block = (
    2.0 * t * dim * 3 * dim  # qkv
    + 2.0 * t * dim * dim  # proj
    + 2.0 * 2 * t * dim * 4 * dim  # fc1 + fc2
    + 2.0 * t * t * dim  # q·kᵀ (all heads)
    + 2.0 * t * t * dim
  )  # attn·v
  return flops + depth * per_block


def jax_matmul_peak(bf16: bool = False, n: int = 2048, repeats: int = 5) -> float:
  """Best GFLOP/s of an n×n jnp.matmul: float32 at HIGHEST precision, or (``bf16``) bfloat16
  operands with float32 accumulation, as ``model.precision`` runs them."""
  dtype = jnp.bfloat16 if bf16 else jnp.float32
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), dtype)
  b = jax.random.normal(jax.random.PRNGKey(1), (n, n), dtype)
  if bf16:
    f = jax.jit(lambda x, y: jnp.matmul(x, y, preferred_element_type=jnp.float32))
  else:
    f = jax.jit(lambda x, y: jnp.matmul(x, y, precision=jax.lax.Precision.HIGHEST))
  f(a, b).block_until_ready()
  best = float('inf')
  for _ in range(repeats):
    t0 = time.perf_counter()
    f(a, b).block_until_ready()
    best = min(best, time.perf_counter() - t0)
  return 2.0 * n**3 / best / 1e9


def torch_matmul_peak(n: int = 2048, repeats: int = 5, device: str = 'cpu') -> float:
  a = torch.randn(n, n, device=device)
  b = torch.randn(n, n, device=device)
  torch.matmul(a, b)
  best = float('inf')
  for _ in range(repeats):
    if device != 'cpu':
      torch.cuda.synchronize()
    t0 = time.perf_counter()
    torch.matmul(a, b)
    if device != 'cpu':
      torch.cuda.synchronize()
    best = min(best, time.perf_counter() - t0)
  return 2.0 * n**3 / best / 1e9


# ------------------------------------------------------------------------------------------------
# Verification of the reference
# ------------------------------------------------------------------------------------------------


def verify_reference(device: str) -> str:
  """Reference vs the official parity data; raises AssertionError on mismatch."""
  ckpt = os.path.join(PARITY_DIR, 'checkpoint.pth')
  model = ref.load_dino(ckpt, device)
  lines = []
  for pid in PARITY_IDS:
    data = np.load(os.path.join(PARITY_DIR, pid + '.npz'))
    r = ref.localize(model, os.path.join(PARITY_DIR, 'images', pid + '.png'), k=5, device=device)
    k_ref = data['k']
    rel = float(np.abs(r['k'] - k_ref).max() / np.abs(k_ref).max())
    assert r['k'].shape == k_ref.shape, f'{pid}: keys {r["k"].shape} vs {k_ref.shape}'
    assert rel <= 1e-4, f'{pid}: keys differ by {rel:.2e}·max (> 1e-4)'
    assert np.array_equal(r['box'], data['loc_box_xyxy']), (
      f'{pid}: box {r["box"].tolist()} vs official {data["loc_box_xyxy"].tolist()}'
    )
    lines.append(f'{pid}: keys max|Δ| = {rel:.1e}·max, box {r["box"].tolist()} == official')
  return '; '.join(lines)


# ------------------------------------------------------------------------------------------------
# Our side
# ------------------------------------------------------------------------------------------------


def run_ours(extractor, examples, args, method: str = 'dsm') -> Tuple[float, Dict[str, np.ndarray]]:
  """Seconds and boxes (original pixels) of ``method`` through the localize task's own steps:
  ``pipeline.run_images`` then ``results.boxes.localization`` per result."""
  boxes = {}
  t0 = time.perf_counter()
  for r in pipeline.run_images(
    extractor,
    examples,
    batch_size=args.batch_size,
    limits=pipeline.ImageLimits(max_pixels=args.max_pixels),
    spectral_k=5 if method == 'dsm' else 0,
    bucket_tokens=args.bucket_tokens,
    solver=args.solver,
    method=method,
  ):
    boxes[r.example.id] = boxes_lib.localization(r)[0]
  return time.perf_counter() - t0, boxes


def run_official(model, paths, args, timers=None) -> Tuple[float, Dict[str, dict]]:
  out = {}
  t0 = time.perf_counter()
  for p in paths:
    out[os.path.splitext(os.path.basename(p))[0]] = ref.localize(
      model, p, k=5, device=args.torch_device, timers=timers
    )
  return time.perf_counter() - t0, out


@dataclasses.dataclass
class OurBatch:
  crops: List[np.ndarray]  # uint8 [h·16, w·16, 3]
  grids: List[Tuple[int, int]]
  length: int  # tokens per padded sequence
  ids: List[str]


def our_batches(examples, args, patch: int) -> Tuple[List[OurBatch], float]:
  """The batches run_images forms (same grouping and padding), and the decode time."""
  t0 = time.perf_counter()
  items = [
    (ex, datasets.load_image(ex, min_side=patch, max_pixels=args.max_pixels)) for ex in examples
  ]
  decode_s = time.perf_counter() - t0
  batches = []
  for batch in pipeline.size_batches(items, patch, args.batch_size, args.bucket_tokens):
    crops = [vit.crop_to_patches(im, patch) for _, im in batch]
    grids = [(c.shape[0] // patch, c.shape[1] // patch) for c in crops]
    length = pipeline.bucket_length(grids[0], args.bucket_tokens)
    batches.append(OurBatch(crops, grids, length, [ex.id for ex, _ in batch]))
  return batches, decode_s


def time_our_vit(
  extractor, batches: Sequence[OurBatch], repeats: int = 2
) -> Tuple[float, List[np.ndarray]]:
  """ViT forward alone over the batches, best of ``repeats`` (shapes compiled beforehand)."""
  for b in batches:  # make sure every shape is compiled (no-op after the warm-up pass)
    extractor(b.crops, b.length)['k'].block_until_ready()
  best, outs = float('inf'), []
  for _ in range(repeats):
    t0 = time.perf_counter()
    outs = [extractor(b.crops, b.length)['k'] for b in batches]
    jax.block_until_ready(outs)
    best = min(best, time.perf_counter() - t0)
  return best, [np.asarray(o) for o in outs]


def time_our_eigen(
  batches: Sequence[OurBatch], feats: Sequence[np.ndarray], solver: str, repeats: int = 1
) -> float:
  """Eigen solver alone as the pipeline batches it: affinities (computed beforehand) padded to
  the sequence length with ``eigen.pad_affinities``, one vmapped ``laplacian_eigs`` call per
  batch."""
  aff = jax.jit(affinity.feature_affinity)
  inputs = []
  for b, f in zip(batches, feats):
    ws = [np.asarray(aff(f[i, : h * w])) for i, (h, w) in enumerate(b.grids)]
    inputs.append(eigen.pad_affinities(ws, size=b.length))

  def run():
    outs = [eigen.laplacian_eigs(w, 5, solver=solver, n_valid=nv) for w, nv in inputs]
    jax.block_until_ready(outs)

  run()  # compile
  best = float('inf')
  for _ in range(repeats):
    t0 = time.perf_counter()
    run()
    best = min(best, time.perf_counter() - t0)
  return best


def time_our_affinity(batches: Sequence[OurBatch], feats: Sequence[np.ndarray]) -> float:
  """Feature affinity (normalise, F Fᵀ, threshold, / max) for every image, jitted."""
  aff = jax.jit(jax.vmap(affinity.feature_affinity))
  xs = [jnp.asarray(f) for f in feats]
  jax.block_until_ready([aff(x) for x in xs])
  t0 = time.perf_counter()
  jax.block_until_ready([aff(x) for x in xs])
  return time.perf_counter() - t0


# ------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------


def iou(a: np.ndarray, b: np.ndarray) -> float:
  ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
  iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
  inter = ix * iy
  union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
  return inter / max(union, 1)


def passes(times: Sequence[float], loads: Sequence[str]) -> str:
  return ' / '.join(f'{t:.2f} [{l}]' for t, l in zip(times, loads))


def thread_limit(n: int):
  """Limits torch intra-op threads and the BLAS (OpenBLAS/MKL) pools used by scipy to ``n``."""
  torch.set_num_threads(n)
  if threadpool_limits is None:
    return contextlib.nullcontext()
  return threadpool_limits(n)


# ------------------------------------------------------------------------------------------------
# --method tokencut | lost
# ------------------------------------------------------------------------------------------------

METHODS_DIR = os.path.join(ROOT, 'tests', 'data', 'methods')


def verify_method_graph(method: str) -> str:
  """The reference's graph/box part on the official keys (no torch needed): boxes and seeds
  must equal the official ones of tests/data/methods."""
  import json  # pylint: disable=import-outside-toplevel

  manifest = json.load(open(os.path.join(METHODS_DIR, 'manifest.json')))
  fn = ref_methods.tokencut_box if method == 'tokencut' else ref_methods.lost_box
  lines = []
  for pid, info in sorted(manifest['images'].items()):
    k = np.load(os.path.join(METHODS_DIR, pid + '.npz'))['k']
    out = fn(k, tuple(info['patch_grid']), 16, (info['height'], info['width']))
    want = info[f'{method}_box_xyxy']
    assert out['box'].tolist() == want, f'{pid}: box {out["box"].tolist()} vs {want}'
    assert int(out['seed']) == info[f'{method}_seed'], f'{pid}: seed {out["seed"]}'
    lines.append(f'{pid}: box {want} == official')
  return '; '.join(lines)


def verify_method_reference(method: str, device: str) -> str:
  """Torch ViT keys of the padded input vs the official keys, then boxes, end to end."""
  import json  # pylint: disable=import-outside-toplevel

  manifest = json.load(open(os.path.join(METHODS_DIR, 'manifest.json')))
  model = ref.load_dino(os.path.join(PARITY_DIR, 'checkpoint.pth'), device)
  lines = []
  for pid, info in sorted(manifest['images'].items()):
    path = os.path.join(PARITY_DIR, 'images', pid + '.png')
    with Image.open(path) as im:
      keys = ref_methods.extract_padded_keys(model, np.array(im.convert('RGB')), device)
    k_ref = np.load(os.path.join(METHODS_DIR, pid + '.npz'))['k']
    rel = float(np.abs(keys - k_ref).max() / np.abs(k_ref).max())
    assert keys.shape == k_ref.shape and rel <= 1e-4, f'{pid}: keys differ by {rel:.2e}·max'
    out = ref_methods.localize(model, path, method, device)
    assert out['box'].tolist() == info[f'{method}_box_xyxy'], f'{pid}: box {out["box"]}'
    lines.append(f'{pid}: keys {rel:.1e}·max, box == official')
  return '; '.join(lines)


def main_method(args, argv) -> int:
  """Ours (pipeline.run_images, method=...) vs the official per-image TokenCut / LOST loop."""
  print(f'## bench_localize --method {args.method}')
  print()
  print(command_line(os.path.basename(__file__), argv))
  print(
    f'- JAX {jax.__version__} backend `{jax.default_backend()}`; torch '
    f'{torch.__version__ if torch is not None else "NOT INSTALLED"}; load average '
    f'{loadavg()}'
  )
  print(f'- reference graph/box part on the official keys: {verify_method_graph(args.method)}')
  if torch is None:
    print(f'- {TORCH_MISSING}')
    return 2
  if not args.skip_verify:
    msg = verify_method_reference(args.method, args.torch_device)
    print(f'- reference verified end to end against tests/data/methods: {msg}')
  os.makedirs(args.cache_dir, exist_ok=True)
  ckpt = args.checkpoint
  if not ckpt:
    ckpt = os.path.join(args.cache_dir, f'random_vits16_d12_seed{args.seed}.pth')
    if not os.path.isfile(ckpt):
      make_checkpoint(ckpt, args.seed)
  paths = make_images(
    os.path.join(args.cache_dir, f'images_seed{args.seed}'), args.images, args.seed
  )
  examples = [datasets.Example(id=os.path.splitext(os.path.basename(p))[0], path=p) for p in paths]
  extractor = pipeline.load_extractor('dino_vits16', checkpoint=ckpt, cache_dir=args.cache_dir)
  model = ref.load_dino(ckpt, args.torch_device)
  first_s, _ = run_ours(extractor, examples, args, args.method)  # compiles
  ref_methods.localize(model, paths[0], args.method, args.torch_device)  # torch warm-up
  ours_s, ref_s, boxes, ref_out = [], [], {}, {}
  timers: Dict[str, float] = {}
  for _ in range(args.repeats):
    t, boxes = run_ours(extractor, examples, args, args.method)
    ours_s.append(t)
    t0 = time.perf_counter()
    for p in paths:
      ref_out[os.path.splitext(os.path.basename(p))[0]] = ref_methods.localize(
        model, p, args.method, args.torch_device, timers
      )
    ref_s.append(time.perf_counter() - t0)
  n = len(paths)
  same = sum(np.array_equal(boxes[i], ref_out[i]['box']) for i in ref_out)
  print(f'- checkpoint `{ckpt}`, {n} images; our warm-up pass (compilation) {first_s:.1f} s')
  print()
  print(
    markdown_table(
      ('side', 'images/s (best of passes)', 's per pass'),
      'lll',
      [
        (
          f'ours ({args.method}, batch {args.batch_size})',
          f'{n / min(ours_s):.2f}',
          pass_seconds(ours_s, '.1f'),
        ),
        (
          f'official loop (torch {args.torch_device} + scipy)',
          f'{n / min(ref_s):.2f}',
          pass_seconds(ref_s, '.1f'),
        ),
      ],
    )
  )
  print()
  print(
    f'- speed-up {min(ref_s) / min(ours_s):.2f}×; identical boxes {same}/{n}; reference '
    'stage seconds: ' + ', '.join(f'{k} {v:.1f}' for k, v in timers.items())
  )
  return 0


# ------------------------------------------------------------------------------------------------
# --precision bfloat16: the reference under torch.autocast
# ------------------------------------------------------------------------------------------------


def autocast_keys(model, image: np.ndarray, device: str) -> np.ndarray:
  """``ref.extract_keys`` with the ViT forward under bf16 autocast; keys back to float32."""
  with torch.no_grad(), torch.autocast(device_type=device, dtype=torch.bfloat16):
    return ref.extract_keys(model, image, device)


def localize_autocast(model, path: str, device: str, timers=None) -> Dict[str, np.ndarray]:
  """``ref.localize`` with only the ViT forward under autocast (eigen step: float32 + scipy,
  as the official code)."""
  return ref.localize(model, path, 5, device, timers, keys_fn=autocast_keys)


def run_reference(model, paths, args, autocast: bool, timers=None):
  if not autocast:
    return run_official(model, paths, args, timers)
  out = {}
  t0 = time.perf_counter()
  for p in paths:
    out[os.path.splitext(os.path.basename(p))[0]] = localize_autocast(
      model, p, args.torch_device, timers
    )
  return time.perf_counter() - t0, out


# ------------------------------------------------------------------------------------------------
# --agreement: our bfloat16 vs our float32
# ------------------------------------------------------------------------------------------------


def object_mask(r) -> np.ndarray:
  """The patch mask whose largest component gives the box (box_from_patch_mask's steps)."""
  m = segments.fiedler_mask(r.eigenvectors, r.patch_grid, 1)
  frac = float(np.mean(m))
  if 0.5 < frac < 1.0:
    m = ~m
  elif not m.any():
    m = np.ones_like(m)
  return segments.largest_component(m)


def agreement(ckpt: str, examples, args, label: str) -> str:
  results = {}
  for prec in ('float32', 'bfloat16'):
    extractor = pipeline.load_extractor(
      args.model, checkpoint=ckpt, cache_dir=args.cache_dir, precision=common.PRECISIONS[prec]
    )
    results[prec] = {
      r.example.id: r
      for r in pipeline.run_images(
        extractor,
        examples,
        batch_size=args.batch_size,
        spectral_k=5,
        bucket_tokens=args.bucket_tokens,
        solver=args.solver,
      )
    }
  same, ious, coss, masks, dks = 0, [], [], [], []
  for i, a in results['float32'].items():
    b = results['bfloat16'][i]
    ba, bb = (
      segments.localization_box(r.eigenvectors, r.patch_grid, r.patch_size, r.image.shape[:2])
      for r in (a, b)
    )
    same += int(np.array_equal(ba, bb))
    ious.append(iou(ba, bb))
    u, v = a.eigenvectors[1], b.eigenvectors[1]
    coss.append(abs(u @ v) / (np.linalg.norm(u) * np.linalg.norm(v)))
    masks.append(float(np.mean(object_mask(a) == object_mask(b))))
    dks.append(float(np.abs(b.features - a.features).max() / np.abs(a.features).max()))
  n = len(ious)
  return (
    f'| {label} | {n} | {same}/{n} ({100 * same / n:.0f} %) | {np.mean(ious):.3f} '
    f'(min {np.min(ious):.2f}) | {np.mean(coss):.4f} (min {np.min(coss):.3f}) | '
    f'{np.mean(masks):.4f} (min {np.min(masks):.3f}) | {np.mean(dks):.4f} '
    f'(max {np.max(dks):.4f}) |'
  )


def main_agreement(args, argv, ckpt: str, examples) -> int:
  print(f'## bench_localize --agreement ({args.model}): bfloat16 vs float32 (ours)')
  print()
  print(command_line(os.path.basename(__file__), argv))
  print(f'- JAX {jax.__version__} backend `{jax.default_backend()}`; load average {loadavg()}')
  print()
  print(
    '| images | n | identical boxes | mean box IoU | mean Fiedler abs(cos) | '
    'object-mask agreement | max abs(Δk) / max abs(k) |'
  )
  print('|---|---:|---:|---:|---:|---:|---:|')
  if args.model == 'dino_vits16':  # the parity checkpoint is a ViT-S/16
    parity = [
      datasets.Example(id=i, path=os.path.join(PARITY_DIR, 'images', i + '.png'))
      for i in PARITY_IDS
    ]
    print(
      agreement(
        os.path.join(PARITY_DIR, 'checkpoint.pth'),
        parity,
        args,
        'parity photos, parity checkpoint (depth 2)',
      )
    )
  print(agreement(ckpt, examples, args, f'benchmark images, random {args.model} (depth 12)'))
  return 0


def best_of(f, *args, repeats: int = 5) -> float:
  """Best wall time (s) of ``f(*args)`` over ``repeats`` runs after one warm-up run."""
  jax.block_until_ready(f(*args))
  best = float('inf')
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(f(*args))
    best = min(best, time.perf_counter() - t0)
  return best


# ------------------------------------------------------------------------------------------------
# --block: where one ViT block's time goes
# ------------------------------------------------------------------------------------------------


def main_block(args) -> int:
  patch = MODELS[args.model][0]
  b, t, d, heads = args.batch_size, (375 // patch) * (500 // patch) + 1, 384, 6
  prec = vit.BFLOAT16 if args.precision == 'bfloat16' else 'highest'
  rng = np.random.default_rng(0)
  normal = lambda *shape: jnp.asarray(rng.standard_normal(shape) * 0.05, jnp.float32)
  x, hidden = normal(b, t, d), normal(b, t, 4 * d)
  q, k, v = (normal(b, t, heads, d // heads) for _ in range(3))
  mask = jnp.ones((b, t), bool)
  weights = {
    'qkv': normal(d, 3 * d),
    'proj': normal(d, d),
    'fc1': normal(d, 4 * d),
    'fc2': normal(4 * d, d),
  }

  def dense_matmuls(x, h):
    outs = [vit.einsum('btd,de->bte', x, weights[n], prec) for n in ('qkv', 'proj', 'fc1')]
    return [*outs, vit.einsum('bte,ed->btd', h, weights['fc2'], prec)]

  def attention_matmuls(q, k, v):  # the two products of every head, head by head, no softmax
    by_head = lambda x: x.transpose(0, 2, 1, 3).reshape(b * heads, t, d // heads)
    one_head = lambda qkv: vit.einsum(
      'qk,kc->qc', vit.einsum('qc,kc->qk', qkv[0], qkv[1], prec), qkv[2], prec
    )
    return jax.lax.map(one_head, (by_head(q), by_head(k), by_head(v)))

  block = vit.Block(heads, prec)
  block_params = block.init(jax.random.PRNGKey(0), x, mask)
  norm = vit.TorchLayerNorm()
  norm_params = norm.init(jax.random.PRNGKey(0), x)
  attention_flops = 4.0 * b * heads * t * t * (d // heads)
  parts = [
    (
      'whole block (vit.Block)',
      jax.jit(lambda x: block.apply(block_params, x, mask)[0]),
      (x,),
      2.0 * b * t * d * 12 * d + attention_flops,
    ),
    ('qkv, proj, fc1, fc2 matmuls', jax.jit(dense_matmuls), (x, hidden), 2.0 * b * t * d * 12 * d),
    (
      f'attention (vit.attention, the {jax.default_backend()} path)',
      jax.jit(lambda q, k, v: vit.attention(q, k, v, mask, prec)),
      (q, k, v),
      attention_flops,
    ),
    (
      "attention's two matmuls only (head by head)",
      jax.jit(attention_matmuls),
      (q, k, v),
      attention_flops,
    ),
    (
      'exact GELU on the MLP hidden',
      jax.jit(lambda h: jax.nn.gelu(h, approximate=False)),
      (hidden,),
      0.0,
    ),
    ('LayerNorm', jax.jit(lambda x: norm.apply(norm_params, x)), (x,), 0.0),
  ]
  print(
    f'## bench_localize --block ({args.model} block: batch {b} × {t} tokens, width {d}, '
    f'{heads} heads, {args.precision})'
  )
  print()
  print(f'- JAX {jax.__version__} backend `{jax.default_backend()}`; load average {loadavg()}')
  print()
  print('| part | best of 7 (ms) | GFLOP/s |')
  print('|---|---:|---:|')
  for name, f, inputs, flops in parts:
    seconds = best_of(f, *inputs, repeats=7)
    rate = f'{flops / seconds / 1e9:.1f}' if flops else '-'
    print(f'| {name} | {1e3 * seconds:.1f} | {rate} |')
  print()
  print(
    f'f32 2048² jnp.matmul peak in this process: {jax_matmul_peak():.1f} GFLOP/s; '
    f'load average at the end: {loadavg()}'
  )
  return 0


# ------------------------------------------------------------------------------------------------
# --attention: einsum path vs jax.nn.dot_product_attention
# ------------------------------------------------------------------------------------------------


def main_attention(args) -> int:
  patch = MODELS[args.model][0]
  t = (375 // patch) * (500 // patch) + 1
  heads, hd = 6, 64
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.standard_normal((1, t, heads, hd)), jnp.float32) for _ in range(3))
  mask = jnp.ones((1, t), bool)
  print(f'## bench_localize --attention ({args.model}: {t} tokens, {heads} heads × {hd})')
  print()
  print(f'- JAX {jax.__version__} backend `{jax.default_backend()}`; load average {loadavg()}')
  print()

  def ours(prec):  # all heads at once (the accelerator path)
    return jax.jit(lambda q, k, v: vit._attend(q, k, v, mask, prec)[0])

  def head_by_head(prec):  # the CPU path (vit.attention on a CPU backend)
    return jax.jit(lambda q, k, v: vit.head_by_head_attention(q, k, v, mask, prec))

  def dpa(prec, impl):
    def f(q, k, v):
      if vit.is_bfloat16(prec):
        q, k, v = (x.astype(jnp.bfloat16) for x in (q, k, v))
      out = jax.nn.dot_product_attention(q, k, v, mask=mask[:, None, None, :], implementation=impl)
      return out.astype(jnp.float32)

    return jax.jit(f)

  def head_by_head_chunks(prec, rows):  # the CPU path with queries in chunks of ``rows``
    def f(q, k, v):
      saved = vit.ATTENTION_CHUNK_BYTES
      vit.ATTENTION_CHUNK_BYTES = rows * t * 4  # one head's chunk logits, at trace time
      try:
        return vit.head_by_head_attention(q, k, v, mask, prec)
      finally:
        vit.ATTENTION_CHUNK_BYTES = saved

    return jax.jit(f)

  def deferred_division(prec):  # head by head, exp(l − max)·v divided by the row sums after
    def one_head(qkv):
      qh, kh, vh = qkv
      logits = vit.einsum('qc,kc->qk', qh, kh, prec) * hd**-0.5
      e = jnp.exp(logits - logits.max(-1, keepdims=True))
      return vit.einsum('qk,kc->qc', e, vh, prec) / e.sum(-1, keepdims=True)

    by_head = lambda x: x[0].transpose(1, 0, 2)
    return jax.jit(
      lambda q, k, v: jax.lax.map(one_head, (by_head(q), by_head(k), by_head(v))).transpose(
        1, 0, 2
      )[None]
    )

  impls = ['xla'] + (['cudnn'] if jax.default_backend() == 'gpu' else [])
  variants = []
  for prec in ('highest', vit.BFLOAT16):
    variants.append((f'einsum, all heads at once ({prec})', ours(prec)))
    variants.append((f'head by head, lax.map ({prec})', head_by_head(prec)))
    if prec == 'highest':
      for rows in (512, 256, 128):
        variants.append(
          (f'head by head, queries in chunks of {rows} ({prec})', head_by_head_chunks(prec, rows))
        )
      variants.append(
        (f'head by head, softmax division after attn·v ({prec})', deferred_division(prec))
      )
    for impl in impls:
      variants.append((f'dot_product_attention {impl} ({prec} operands)', dpa(prec, impl)))
  ref_out = np.asarray(ours('highest')(q, k, v))
  print('| variant | best of 5 (ms) | max abs(Δ) vs einsum float32 |')
  print('|---|---:|---:|')
  for name, f in variants:
    try:
      out = f(q, k, v).block_until_ready()
    except Exception as e:  # e.g. cudnn without a supported GPU
      print(f'| {name} | n/a ({type(e).__name__}) | - |')
      continue
    diff = float(np.abs(np.asarray(out) - ref_out).max())
    print(f'| {name} | {1e3 * best_of(f, q, k, v):.1f} | {diff:.2e} |')
  print()
  print(f'Load average at the end: {loadavg()}')
  return 0


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(
    description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter
  )
  ap.add_argument('--images', type=int, default=40, help='number of images (default 40)')
  ap.add_argument(
    '--synthetic',
    type=int,
    default=0,
    help='N > 0: time N generated VOC-sized JPEG files instead of --images',
  )
  ap.add_argument(
    '--model',
    default='dino_vits16',
    choices=sorted(MODELS),
    help='generated random backbone (default dino_vits16)',
  )
  ap.add_argument(
    '--precision',
    default='float32',
    choices=('float32', 'bfloat16'),
    help='our model.precision (default float32); bfloat16 adds the reference '
    'under torch.autocast(bfloat16)',
  )
  ap.add_argument(
    '--no-autocast',
    action='store_true',
    help='with --precision bfloat16: skip the autocast reference row',
  )
  ap.add_argument(
    '--agreement',
    action='store_true',
    help='only compare our bfloat16 with our float32 (no timing, no torch ViT)',
  )
  ap.add_argument(
    '--block',
    action='store_true',
    help='time one ViT block and its parts (matmuls, attention, GELU, LayerNorm) '
    "at --batch-size × a 375×500 image's tokens, --precision",
  )
  ap.add_argument(
    '--attention',
    action='store_true',
    help="only time attention variants at the model's VOC token count",
  )
  ap.add_argument('--batch-size', type=int, default=4, help='our batch size (default 4)')
  ap.add_argument(
    '--bucket-tokens',
    type=int,
    default=32,
    help='our token-count bucket step (0 = exact token counts; default 32)',
  )
  ap.add_argument(
    '--solver',
    default='auto',
    choices=('auto', 'dense', 'lanczos'),
    help='our eigen-solver (default auto)',
  )
  ap.add_argument('--max-pixels', type=int, default=8192 * 8192)
  ap.add_argument(
    '--repeats',
    type=int,
    default=2,
    help='timed passes per side, alternating ours/official (best is reported; default 2)',
  )
  ap.add_argument('--seed', type=int, default=0, help='checkpoint and image seed')
  ap.add_argument(
    '--checkpoint',
    default='',
    help='DINO-format .pth for both sides (default: generated random --model)',
  )
  ap.add_argument(
    '--cache-dir',
    default=os.path.join(tempfile.gettempdir(), 'spectral_jax_bench'),
    help='generated checkpoint, images and our params cache',
  )
  ap.add_argument(
    '--torch-threads',
    default='',
    help='comma-separated thread counts for the reference (torch intra-op and '
    "scipy's BLAS), one official row each; default: the number of usable "
    "cores, e.g. '2,1'",
  )
  ap.add_argument(
    '--torch-device',
    default='cpu',
    choices=('cpu', 'cuda'),
    help='device of the reference ViT forward (its eigen step is always CPU)',
  )
  ap.add_argument(
    '--device', default='', help='free-text note on the machine, printed with the results'
  )
  ap.add_argument(
    '--skip-verify',
    action='store_true',
    help='do not verify the reference against tests/data/parity',
  )
  ap.add_argument('--no-profile', action='store_true', help='skip the stage profile')
  ap.add_argument(
    '--method',
    default='dsm',
    choices=('dsm', 'tokencut', 'lost', 'found'),
    help='dsm (default), or TokenCut / LOST object discovery against their '
    "official per-image loop (benchmarks/official_methods.py), or FOUND's "
    '(benchmarks/official_found.py; --checkpoint defaults to the 2-block '
    'ViT-S/8 of tests/data/found)',
  )
  ap.add_argument(
    '--decoder',
    default='',
    help="--method found: FOUND's decoder file (default tests/data/found/decoder_random.pt)",
  )
  args = ap.parse_args(argv)
  if args.attention:
    return main_attention(args)
  if args.block:
    return main_block(args)
  if args.method == 'found':
    import localize_found  # pylint: disable=import-outside-toplevel

    return localize_found.main(args, argv, sys.modules[__name__])
  if args.method != 'dsm':
    return main_method(args, argv)
  if torch is None:
    print(TORCH_MISSING)
    raise SystemExit(2)

  # --- checkpoint and images ----------------------------------------------------------------
  os.makedirs(args.cache_dir, exist_ok=True)
  patch, grid = MODELS[args.model]
  ckpt = args.checkpoint
  if not ckpt:
    tag = 'vits16' if args.model == 'dino_vits16' else args.model.replace('dino_', '')
    ckpt = os.path.join(args.cache_dir, f'random_{tag}_d12_seed{args.seed}.pth')
    if not os.path.isfile(ckpt):
      make_checkpoint(ckpt, args.seed, patch=patch, grid=grid)
  if args.synthetic:
    paths = make_images(
      os.path.join(args.cache_dir, f'synthetic_jpeg_seed{args.seed}'),
      args.synthetic,
      args.seed,
      synthetic=True,
    )
  else:
    paths = make_images(
      os.path.join(args.cache_dir, f'images_seed{args.seed}'), args.images, args.seed
    )
  examples = [datasets.Example(id=os.path.splitext(os.path.basename(p))[0], path=p) for p in paths]
  if args.agreement:
    return main_agreement(args, argv, ckpt, examples)

  cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
  thread_list = [int(x) for x in args.torch_threads.split(',') if x.strip()] or [cores]
  # Reference rows: (threads, autocast); the autocast row with the first thread count.
  ref_rows = [(nt, False) for nt in thread_list]
  if args.precision == 'bfloat16' and not args.no_autocast:
    ref_rows.append((thread_list[0], True))
  if args.torch_device == 'cuda':  # true float32 like the official fp32 forward (no TF32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
  load_start = loadavg()
  backend = jax.default_backend()

  def row_name(key):
    nt, ac = key
    return f'{nt} thread(s)' + (', autocast bf16' if ac else '')

  print('## bench_localize')
  print()
  print(command_line(os.path.basename(__file__), argv))
  print(
    f'- JAX {jax.__version__} backend `{backend}`, devices {jax.devices()}; torch '
    f'{torch.__version__}; ours {args.model} model.precision={args.precision}; reference '
    f'ViT on `{args.torch_device}` with {"/".join(map(str, thread_list))} threads'
    f'{" (+ autocast bf16)" if any(ac for _, ac in ref_rows) else ""}, eigen on CPU '
    '(scipy, same BLAS threads)'
  )
  print(
    f'- usable CPU cores {cores}; load average at start {load_start}'
    + (f'; device note: {args.device}' if args.device else '')
  )

  # --- verification -------------------------------------------------------------------------
  if not args.skip_verify:
    with thread_limit(thread_list[0]):
      msg = verify_reference(args.torch_device)
    print(f'- reference verified against tests/data/parity (depth-2 checkpoint): {msg}')

  ids = [e.id for e in examples]
  n = len(paths)
  sizes = []
  for p in paths:
    with Image.open(p) as im:
      sizes.append((im.height, im.width))
  print(
    f'- checkpoint `{ckpt}`; {n} {"JPEG" if args.synthetic else ""} images in '
    f'`{os.path.dirname(paths[0])}`, {len(set(sizes))} distinct sizes, '
    f'{sum(h * w for h, w in sizes) / n:,.0f} pixels on average'
  )
  if args.checkpoint and os.path.abspath(args.checkpoint) == os.path.abspath(
    os.path.join(PARITY_DIR, 'checkpoint.pth')
  ):
    print('- (parity checkpoint given: the reference was asserted against the official data above)')

  # --- load both sides ----------------------------------------------------------------------
  t0 = time.perf_counter()
  extractor = pipeline.load_extractor(
    args.model,
    checkpoint=ckpt,
    cache_dir=args.cache_dir,
    precision=common.PRECISIONS[args.precision],
  )
  load_ours = time.perf_counter() - t0
  t0 = time.perf_counter()
  model = ref.load_dino(ckpt, args.torch_device)
  load_ref = time.perf_counter() - t0
  depth = extractor.arch.depth
  dim = extractor.arch.embed_dim

  # --- ours: warm-up (compile) pass, then timed passes alternating with the reference -------
  first_s, _ = run_ours(extractor, examples, args)
  n_shapes = len(extractor.compiled_shapes)
  ref_first: Dict[tuple, float] = {}
  for key in ref_rows:  # torch warm-up on one image (autocast too)
    with thread_limit(key[0]):
      ref_first[key], _ = run_reference(model, paths[:1], args, key[1])
  ours_times: List[float] = []
  ref_times: Dict[tuple, List[float]] = {key: [] for key in ref_rows}
  ref_timers: Dict[tuple, Dict[str, float]] = {}
  out_ref: Dict[tuple, dict] = {}
  fallbacks: Dict[str, int] = {row_name(key): 0 for key in ref_rows}
  boxes_ours: Dict[str, np.ndarray] = {}
  ours_loads: List[str] = []
  ref_loads: Dict[tuple, List[str]] = {key: [] for key in ref_rows}
  for _ in range(args.repeats):
    ours_loads.append(loadavg().split()[0])
    s, boxes_ours = run_ours(extractor, examples, args)
    ours_times.append(s)
    for key in ref_rows:
      timers: Dict[str, float] = {}
      before = ref.FALLBACKS['count']
      ref_loads[key].append(loadavg().split()[0])
      with thread_limit(key[0]):
        s, out = run_reference(model, paths, args, key[1], timers)
      fallbacks[row_name(key)] = max(fallbacks[row_name(key)], ref.FALLBACKS['count'] - before)
      ref_times[key].append(s)
      if s <= min(ref_times[key]):
        ref_timers[key], out_ref[key] = timers, out
  torch.set_num_threads(cores)
  load_end = loadavg()

  t_ours = min(ours_times)
  print(f'- load average at end {load_end}')
  print()
  print(
    '| side | device | first pass (s) | timed passes (s) [1-min load before] | images/s | '
    'ours / this | boxes = ours |'
  )
  print('|---|---|---:|---:|---:|---:|---:|')
  print(
    f'| ours: run_images + localization_box ({args.model}, {args.precision}, batch '
    f'{args.batch_size}, bucket {args.bucket_tokens} tokens, solver {args.solver}; '
    f'{n_shapes} compiled shapes) | {backend} | '
    f'{first_s:.2f} | {passes(ours_times, ours_loads)} | {n / t_ours:.3f} | '
    '1.00 | - |'
  )
  for key in ref_rows:
    t_ref = min(ref_times[key])
    same = sum(np.array_equal(boxes_ours[i], out_ref[key][i]['box']) for i in ids)
    kind = 'torch.autocast(bf16) ViT' if key[1] else 'torch ViT'
    print(
      f'| official: {kind} + scipy eigsh + skimage, per image, {key[0]} thread(s) | '
      f'{args.torch_device} + cpu | (1 image: {ref_first[key]:.2f}) | '
      f'{passes(ref_times[key], ref_loads[key])} | {n / t_ref:.3f} | '
      f'**{t_ref / t_ours:.2f}×** | {same}/{n} |'
    )
  print()
  print(
    f'Best timed pass per side; ours / this = official time / our time. Load: '
    f'{load_ours:.1f} s ours (params cache), {load_ref:.1f} s reference. Official eigsh '
    "shift-invert failures retried with which='SM' (per pass, by row): "
    f'{fallbacks}.'
  )
  base = ref_rows[0]
  rows = [
    (key, i)
    for key in ref_rows
    for i in ids
    if not np.array_equal(boxes_ours[i], out_ref[key][i]['box'])
  ]
  if rows:
    ious = [iou(boxes_ours[i], out_ref[key][i]['box']) for key, i in rows]
    print()
    print(
      f'Box disagreements: {len(rows)} (image, row) pairs, mean IoU {np.mean(ious):.2f}'
      ' (official run of that row, its eigenvalues; first 20):'
    )
    print()
    print('| image | row | grid | ours | official | IoU | λ1 | λ2 | (λ2−λ1)/λ2 |')
    print('|---|---|---|---|---|---:|---:|---:|---:|')
    for key, i in rows[:20]:
      r = out_ref[key][i]
      v = r['eigenvalues']
      print(
        f'| {i} | {row_name(key)} | {tuple(r["grid"].tolist())} | '
        f'{boxes_ours[i].tolist()} | {r["box"].tolist()} | '
        f'{iou(boxes_ours[i], r["box"]):.2f} | {v[1]:.4g} | '
        f'{v[2]:.4g} | {(v[2] - v[1]) / max(v[2], 1e-12):.3f} |'
      )

  # --- FLOPs / peak -------------------------------------------------------------------------
  grids = [tuple(out_ref[base][i]['grid'].tolist()) for i in ids]
  useful = sum(vit_flops(h * w, depth, dim, patch) for h, w in grids)
  batches, decode_s = our_batches(examples, args, patch)
  executed = 0.0
  dev_mult = jax.local_device_count()
  for b in batches:
    executed += vit_flops(b.length, depth, dim, patch) * (-(-len(b.grids) // dev_mult) * dev_mult)
  bf16 = args.precision == 'bfloat16'
  peak_jax = jax_matmul_peak(bf16)
  vit_ours, feats = time_our_vit(extractor, batches)
  print()
  print(
    f'ViT forward ({depth} blocks): {useful / 1e9:.1f} GFLOP on the real tokens of the '
    f'{n} images ({useful / n / 1e9:.1f} GFLOP/image); ours executes '
    f'{executed / 1e9:.1f} GFLOP with bucket/batch padding '
    f'(+{100 * (executed / useful - 1):.0f} %).'
  )
  print()
  print(
    '| ViT forward | time (s) | useful GFLOP/s | matmul peak (GFLOP/s, 2048²) | fraction of peak |'
  )
  print('|---|---:|---:|---:|---:|')
  peak_name = 'bf16 jnp.matmul, f32 accumulation' if bf16 else 'f32 jnp.matmul, HIGHEST'
  print(
    f'| ours (jax, {backend}, {args.precision}; separate runs over the same batches, best '
    f'of 2) | {vit_ours:.2f} | {useful / vit_ours / 1e9:.1f} | {peak_jax:.1f} '
    f'({peak_name}) | {useful / vit_ours / 1e9 / peak_jax:.2f} |'
  )
  for key in ref_rows:
    with thread_limit(key[0]):
      peak_torch = torch_matmul_peak(device=args.torch_device)
    vit_ref = ref_timers[key]['vit']
    print(
      f'| official (torch, {args.torch_device}, {row_name(key)}; its best pass) | '
      f'{vit_ref:.2f} | {useful / vit_ref / 1e9:.1f} | {peak_torch:.1f} (f32 '
      f'torch.matmul, {key[0]} thread(s)) | {useful / vit_ref / 1e9 / peak_torch:.2f} |'
    )
  torch.set_num_threads(cores)

  if args.no_profile:
    return 0

  # --- stage profile ------------------------------------------------------------------------
  ns = sorted({b.length for b in batches})
  choices = sorted(
    {eigen.resolve_solver('auto', b.length, 5, min(h * w for h, w in b.grids)) for b in batches}
  )
  eig_times = {
    s: time_our_eigen(batches, feats, s, repeats=2) for s in ('auto', 'dense', 'lanczos')
  }
  aff_s = time_our_affinity(batches, feats)
  t0 = time.perf_counter()
  for i in ids:
    r = out_ref[base][i]
    segments.localization_box(
      r['eigenvectors'], tuple(r['grid'].tolist()), patch, tuple(r['image_hw'].tolist()), index=1
    )
  box_ours = time.perf_counter() - t0
  print()
  print(
    f'Stage profile, seconds for all {n} images (ours: separate timed runs of each stage on '
    'the same batches, best of 2; official: per-stage timers of its best '
    f'timed pass). Padded graph sizes N in our batches: {ns}; `auto` picks {choices} for '
    f'K=5 on {backend}.'
  )
  print()
  print(
    '| stage | ours (s) | '
    + ' | '.join(f'official, {row_name(key)} (s)' for key in ref_rows)
    + ' |'
  )
  print('|---|---:|' + '---:|' * len(ref_rows))

  def row(name, ours, stage):
    cells = ' | '.join(
      f'{ref_timers[key].get(stage, float("nan")):.3f}' if stage else '-' for key in ref_rows
    )
    print(f'| {name} | {ours} | {cells} |')

  row('decode (PIL)', f'{decode_s:.3f} (threads, overlapped in run_images)', 'decode')
  row('ViT forward', f'{vit_ours:.2f}', 'vit')
  row('eigen: affinity (normalise, F Fᵀ, > 0, / max)', f'{aff_s:.3f}', None)
  row(
    'eigen: solver `auto` (padded batch, as run_images) / official affinity + eigsh + sign rule',
    f'{eig_times["auto"]:.3f}',
    'eigen',
  )
  row('eigen: solver `dense` (eigh)', f'{eig_times["dense"]:.3f}', None)
  row('eigen: solver `lanczos`', f'{eig_times["lanczos"]:.3f}', None)
  row('box', f'{box_ours:.3f}', 'box')
  cells = ' | '.join(f'{min(ref_times[key]):.2f}' for key in ref_rows)
  print(f'| end to end | {t_ours:.2f} | {cells} |')
  print()
  print(f'Load average at the very end: {loadavg()}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
