"""models/extractor.py: DINOv2 / DINOv3 / ResNet-50 batches of mixed sizes equal the official
single-image outputs (the DINO ViT's: tests/test_pipeline.py), ``model.precision='bfloat16'`` on
the DINOv2/v3 ViTs, position rows cached within a bound for every ViT family, and the compile
line on a persistent-cache miss only."""

import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spectral_jax import pipeline
from spectral_jax.models import backbones, dinov2, vit
from spectral_jax.models import extractor as extractor_lib
from tests import backbones_data as bd
from tests.conftest import PARITY
from tests.test_precision import _dots

VITS = ('dinov2_vits14_reg', 'dinov3_vits16')
# bf16 operands keep 8 mantissa bits; the keys of these depth-2 checkpoints move by well under
# 1 % of max|k| (as the DINO ViT's, tests/test_precision.py).
KEY_RTOL = 0.02


def _extractor(name, precision='highest'):
  return extractor_lib.load(name, str(bd.DATA / name / 'checkpoint.pth'), precision=precision)


def _crops(name):
  """Three crops of the reference photo with different grids, the reference one first."""
  image = bd.image(name)
  p = backbones.BACKBONES[name].patch_size
  h, w = bd.MANIFEST[name]['grid']
  full = image[: h * p, : w * p]
  return [full, image[p : 9 * p, 2 * p : 15 * p], image[: 5 * p, : 3 * p]]


@pytest.mark.parametrize('name', VITS)
def test_mixed_size_batch_equals_the_official_and_single_image_outputs(name):
  extractor = _extractor(name)
  crops = _crops(name)
  p = extractor.arch.patch_size
  tokens = [(c.shape[0] // p) * (c.shape[1] // p) for c in crops]
  out = extractor(crops, tokens[0] + 7, with_cls=True)  # padded beyond the largest
  assert out['k'].shape[:2] == (len(crops), tokens[0] + 7)
  # The full crop in a mixed batch is the official output.
  written = {key: np.asarray(value[0, : tokens[0]]) for key, value in out.items() if key != 'cls'}
  written['grid'] = tuple(bd.MANIFEST[name]['grid'])
  errs = bd.rel_errors(written, name)
  assert set(errs) == set(bd.reference(name)) and max(errs.values()) <= 1e-4, errs
  # Every crop equals its own single-image forward (an independent code path: full images).
  for i, crop in enumerate(crops):
    single = backbones.features(extractor.arch, extractor.variables, crop)
    for key in ('k', 'x_norm_patchtokens', *(('k_rope',) if 'dinov3' in name else ())):
      got = np.asarray(out[key][i, : tokens[i]])
      scale = np.abs(single[key]).max()
      np.testing.assert_allclose(got, single[key], rtol=0, atol=1e-5 * scale, err_msg=key)
    cls = single['x_norm_clstoken']
    np.testing.assert_allclose(np.asarray(out['cls'][i]), cls, atol=1e-5 * np.abs(cls).max())
  # The bucketed CLS helper of the semantic mode runs on these backbones too.
  cls_rows = pipeline.cls_batch(extractor, crops[1:])
  scale = np.abs(cls_rows).max()
  np.testing.assert_allclose(cls_rows, np.asarray(out['cls'][1:]), atol=1e-5 * scale)
  assert len(extractor.compiled_shapes) == 3  # one batch + the CLS helper's two buckets


def test_resnet_batches_same_size_crops_and_equals_single_images():
  name = 'dino_resnet50'
  extractor = _extractor(name)
  image = bd.image(name)
  crops = [image[:64, :96], image[8:72, 16:112], image[:40, :56]]  # two of one shape
  out = extractor(crops)
  assert out['k'].shape == (3, 8 * 12, 2048) and out['low_level'].shape == (3, 4 * 96, 256)
  assert len(extractor.compiled_shapes) == 2
  for i, crop in enumerate(crops):
    single = backbones.features(extractor.arch, extractor.variables, crop)
    n = len(single['features'])
    scale = np.abs(single['features']).max()
    np.testing.assert_allclose(np.asarray(out['k'][i, :n]), single['features'], atol=1e-5 * scale)
    low = single['low_level']
    np.testing.assert_allclose(
      np.asarray(out['low_level'][i, : len(low)]), low, atol=1e-5 * np.abs(low).max()
    )
    assert not np.asarray(out['k'][i, n:]).any()
  extractor([crops[2].astype(np.float32)])  # a float32 input compiles its own shape
  assert len(extractor.compiled_shapes) == 3
  # A uint8 and a float32 crop of one shape would stack into one array: refused, as for ViTs.
  with pytest.raises(ValueError, match='mixes input dtypes'):
    extractor([crops[0], crops[1].astype(np.float32)])
  with pytest.raises(ValueError, match=r'\(64, 96\) crop has more than 10 patches'):
    extractor(crops[:1], 10)
  with pytest.raises(TypeError, match='ResNet'):
    extractor.sequence_inputs(crops, 96)


@pytest.mark.parametrize('name', VITS)
def test_bfloat16_runs_bf16_matmuls_close_to_the_official_keys(name):
  extractor = _extractor(name, vit.BFLOAT16)
  crops = _crops(name)[:2]
  out = extractor(crops)
  n = int(np.prod(bd.MANIFEST[name]['grid']))
  written = {key: np.asarray(value[0, :n]) for key, value in out.items()}
  written['grid'] = tuple(bd.MANIFEST[name]['grid'])
  errs = bd.rel_errors(written, name)
  assert 0 < errs['k'] <= KEY_RTOL, errs  # a different (bf16) computation, close to official
  assert max(errs.values()) <= 4 * KEY_RTOL, errs
  assert out['k'].dtype == jnp.float32
  # Every matmul of the forward multiplies bf16 operands into float32.
  patches, inputs = extractor.sequence_inputs([np.zeros_like(c) for c in crops], n)
  closed = jax.make_jaxpr(extractor._features)(extractor.variables, patches, inputs)
  dots = list(_dots(closed.jaxpr))
  assert len(dots) >= 1 + 6 * extractor.arch.depth
  for eqn in dots:
    assert [v.aval.dtype for v in eqn.invars] == [jnp.bfloat16] * 2, eqn
    assert eqn.outvars[0].aval.dtype == jnp.float32, eqn
  hlo = jax.jit(extractor._features).lower(extractor.variables, patches, inputs).as_text()
  lowered = [line for line in hlo.splitlines() if 'stablehlo.dot_general' in line]
  assert lowered and all(
    re.search(r'\(tensor<[^>]*xbf16>, tensor<[^>]*xbf16>\) -> tensor<[^>]*xf32>', line)
    for line in lowered
  ), lowered


@pytest.mark.parametrize(
  'flags, has_units',
  [
    ('fpu sse2 avx2 fma avx512f avx512_vnni', False),  # Ice Lake: AVX-512, no BF16
    ('fpu avx512f avx512_bf16 amx_bf16 amx_tile', True),  # Sapphire Rapids
    ('fp asimd bf16 i8mm', True),  # Arm ('Features')
  ],
)
def test_bfloat16_on_a_cpu_without_bf16_units_warns(tmp_path, monkeypatch, flags, has_units):
  key = 'Features' if 'asimd' in flags else 'flags'
  cpuinfo = tmp_path / 'cpuinfo'
  cpuinfo.write_text(f'processor\t: 0\n{key}\t\t: {flags}\n\nprocessor\t: 1\n{key}\t: {flags}\n')
  assert extractor_lib.cpu_has_bf16_units(str(cpuinfo)) is has_units
  assert extractor_lib.cpu_has_bf16_units(str(tmp_path / 'missing')) is None
  read = extractor_lib.cpu_has_bf16_units
  monkeypatch.setattr(extractor_lib, 'cpu_has_bf16_units', lambda: read(str(cpuinfo)))
  warnings = []
  monkeypatch.setattr(extractor_lib.logging, 'warning', lambda msg, *a: warnings.append(msg % a))
  monkeypatch.setattr(jax, 'default_backend', lambda: 'cpu')
  extractor_lib.warn_if_bf16_is_emulated('highest')
  assert not warnings
  name = 'dinov2_vits14_reg'
  _extractor(name, vit.BFLOAT16)  # the loader warns (CLI and API load through it)
  assert len(warnings) == (0 if has_units else 1)
  if warnings:
    assert 'model.precision=float32' in warnings[0] and 'without bfloat16 units' in warnings[0]
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')  # accelerators: never
  extractor_lib.warn_if_bf16_is_emulated(vit.BFLOAT16)
  assert len(warnings) == (0 if has_units else 1)


def test_bfloat16_is_refused_for_the_resnet():
  with pytest.raises(ValueError, match='bfloat16.*dino_resnet50.*float32'):
    pipeline.load_extractor('dino_resnet50', precision=vit.BFLOAT16)


def test_dinov3_attention_runs_in_query_chunks_above_the_budget(monkeypatch):
  name = 'dinov3_vits16'
  crops = _crops(name)[1:]
  full = _extractor(name)(crops)
  monkeypatch.setattr(vit, 'ATTENTION_CHUNK_BYTES', 1 << 14)  # forces chunks of 64 queries
  chunked = _extractor(name)(crops)
  for key in ('k', 'k_rope', 'x_norm_patchtokens'):
    scale = np.abs(np.asarray(full[key])).max()
    np.testing.assert_allclose(np.asarray(chunked[key]), np.asarray(full[key]), atol=1e-5 * scale)


def _pos_table_oracle(name, arch, pos_embed, grid):
  """The family's table for one grid, straight from the model module."""
  if name.startswith('dinov2'):
    return np.asarray(dinov2.resample_pos_embed(arch, pos_embed, grid))[0]
  return np.asarray(vit.interpolate_pos_embed(pos_embed, grid, arch.pretrained_grid))[0]


@pytest.mark.parametrize('name', ['dino_vits16', 'dinov2_vits14_reg'])
def test_position_tables_are_cached_within_a_bound(name, tmp_path, monkeypatch):
  """Hundreds of image sizes keep at most POSITION_TABLES tables per extractor, and a table
  evicted and rebuilt is the model's own table for that grid."""
  assert extractor_lib.POSITION_TABLES == 64
  monkeypatch.setattr(extractor_lib, 'POSITION_TABLES', 5)  # the same rule, fewer tables
  if name == 'dino_vits16':
    extractor = extractor_lib.load(name, str(PARITY / 'checkpoint.pth'), str(tmp_path))
  else:
    extractor = _extractor(name)
  p = extractor.arch.patch_size
  prefix = extractor_lib.prefix_tokens(extractor.arch)
  pos_embed = np.asarray(extractor.variables['params']['pos_embed'])
  grids = [(3, w) for w in range(2, 2 + extractor_lib.POSITION_TABLES + 3)]
  crops = [np.zeros((h * p, w * p, 3), np.uint8) for h, w in grids]
  _, inputs = extractor.sequence_inputs(crops, 3 * grids[-1][1])
  assert extractor._grid_positions.cache_info().currsize == extractor_lib.POSITION_TABLES
  _, again = extractor.sequence_inputs(crops[:1], 6)  # evicted, rebuilt
  for i, packed in ((0, inputs), (len(grids) - 1, inputs), (0, again)):
    want = _pos_table_oracle(name, extractor.arch, pos_embed, grids[i])
    np.testing.assert_array_equal(packed['pos_tables'][i, : len(want)], want)
    assert not packed['pos_tables'][i, len(want) :].any()
    assert packed['token_mask'][i].sum() == prefix + grids[i][0] * grids[i][1]


_COMPILE_RUN = """
import sys
import numpy as np
from absl import logging
import spectral_jax as sj
logging.set_verbosity(logging.INFO)
backbone = sj.load_backbone('dino_vits16', sys.argv[1])
image = np.random.default_rng(0).integers(0, 256, (96, 128, 3), np.uint8)
print('box', sj.localize(backbone, [image])[0].box_xyxy)
"""


def test_the_compile_line_appears_on_a_cache_miss_only(tmp_path):
  """A fresh $SPECTRAL_JAX_CACHE: the first process compiles and says so, once, naming the
  folder; a second process on the same image size loads it from that folder and says
  nothing about compiling (and writes no new compiled entry)."""
  env = {k: v for k, v in os.environ.items() if not k.startswith('JAX_COMPILATION_CACHE')}
  env['SPECTRAL_JAX_CACHE'] = str(tmp_path)
  root = PARITY.parent.parent.parent

  def run():
    proc = subprocess.run(
      [sys.executable, '-c', _COMPILE_RUN, str(PARITY / 'checkpoint.pth')],
      cwd=root,
      env=env,
      capture_output=True,
      text=True,
      timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc

  first = run()
  entries = sorted(p.name for p in (tmp_path / 'xla').iterdir())
  said = [line for line in first.stderr.splitlines() if 'compiled for a new image size' in line]
  assert len(said) == 1, first.stderr[-3000:]
  assert 'dino_vits16' in said[0] and '(1 × 64 tokens)' in said[0]  # 6×8 patches → 64
  assert f'kept in {tmp_path / "xla"} and reused by later runs' in said[0]
  assert entries
  second = run()
  assert 'compiled' not in second.stderr, second.stderr[-3000:]
  assert second.stdout.splitlines()[-1] == first.stdout.splitlines()[-1]  # the same box
  assert sorted(p.name for p in (tmp_path / 'xla').iterdir()) == entries
