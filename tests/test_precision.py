"""model.precision: 'float32' keeps official parity; 'bfloat16' runs bf16 matmuls close to it."""

import re

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from spectral_jax import api, pipeline
from spectral_jax.data import datasets
from spectral_jax.models import vit
from spectral_jax.spectral import segments
from spectral_jax.tasks import common
from tests.conftest import PARITY, PARITY_IDS

# bf16 operands keep 8 mantissa bits: keys of the depth-2 parity model move by ≈ 0.5 % of
# max|k| (measured 0.37-0.46 %); 2 % leaves room for other backends' accumulation orders.
KEY_RTOL = 0.02


def _run(precision, cache):
  extractor = pipeline.load_extractor(
    'dino_vits16', str(PARITY / 'checkpoint.pth'), cache, common.PRECISIONS[precision]
  )
  exs = [datasets.Example(id=i, path=str(PARITY / 'images' / f'{i}.png')) for i in PARITY_IDS]
  results = pipeline.run_images(extractor, exs, spectral_k=5, batch_size=2, bucket_tokens=64)
  return extractor, {r.example.id: r for r in results}


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  cache = str(tmp_path_factory.mktemp('cache'))
  return {p: _run(p, cache) for p in ('float32', 'bfloat16')}


def _box(r):
  return segments.localization_box(r.eigenvectors, r.patch_grid, r.patch_size, r.image.shape[:2])


def _iou(a, b):
  ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
  iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
  union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - ix * iy
  return ix * iy / union


def test_float32_default_equals_the_official_keys_and_boxes(runs):
  assert common.PRECISIONS['float32'] == 'highest'
  _, results = runs['float32']
  for image_id in PARITY_IDS:
    ref = np.load(PARITY / f'{image_id}.npz')
    got = results[image_id]
    assert np.abs(got.features - ref['k']).max() <= 1e-4 * np.abs(ref['k']).max()
    np.testing.assert_array_equal(_box(got), ref['loc_box_xyxy'])


def test_bfloat16_keys_eigenvectors_and_boxes_agree_with_float32(runs):
  _, f32 = runs['float32']
  _, bf16 = runs['bfloat16']
  for image_id in PARITY_IDS:
    a, b = f32[image_id], bf16[image_id]
    assert b.features.dtype == np.float32
    scale = np.abs(a.features).max()
    assert np.abs(b.features - a.features).max() <= KEY_RTOL * scale
    assert np.abs(b.features - a.features).max() > 0  # really a different (bf16) computation
    u, v = a.eigenvectors[1], b.eigenvectors[1]
    assert abs(u @ v) / (np.linalg.norm(u) * np.linalg.norm(v)) >= 0.99
    assert _iou(_box(a), _box(b)) >= 0.9


def _dots(jaxpr):
  """Every dot_general equation of a (closed) jaxpr, nested jaxprs included."""
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == 'dot_general':
      yield eqn
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      yield from _dots(sub)


def _forward_inputs(extractor, length=60):
  crop = np.zeros((96, 160, 3), np.uint8)  # 6 × 10 patches
  return (extractor.variables, *extractor.sequence_inputs([crop], length))


def _forward_jaxpr(extractor):
  return jax.make_jaxpr(extractor._features)(*_forward_inputs(extractor))


@pytest.mark.parametrize('chunk_budget', [None, 1 << 12])
def test_bfloat16_matmuls_run_on_bf16_operands(runs, monkeypatch, chunk_budget):
  if chunk_budget:  # query-chunked attention takes the same path
    monkeypatch.setattr(vit, 'ATTENTION_CHUNK_BYTES', chunk_budget)
  extractor, _ = runs['bfloat16']
  closed = _forward_jaxpr(extractor)
  dots = list(_dots(closed.jaxpr))
  # patch embedding + per block qkv, q·kᵀ, attn·v, proj, fc1, fc2 (the last block's unused
  # tail is traced too, then removed by XLA)
  assert len(dots) >= 1 + 6 * extractor.arch.depth
  for eqn in dots:
    assert [v.aval.dtype for v in eqn.invars] == [jnp.bfloat16] * 2, eqn
    assert eqn.outvars[0].aval.dtype == jnp.float32, eqn
  # The lowered module (what every backend compiles) multiplies bf16 tensors into float32.
  hlo = jax.jit(extractor._features).lower(*_forward_inputs(extractor)).as_text()
  lowered = [line for line in hlo.splitlines() if 'stablehlo.dot_general' in line]
  assert lowered and all(
    re.search(r'\(tensor<[^>]*xbf16>, tensor<[^>]*xbf16>\) -> tensor<[^>]*xf32>', line)
    for line in lowered
  ), lowered
  out = jax.eval_shape(extractor._features, *_forward_inputs(extractor))
  assert out['k'].dtype == jnp.float32


def test_float32_matmuls_stay_true_float32(runs):
  extractor, _ = runs['float32']
  for eqn in _dots(_forward_jaxpr(extractor).jaxpr):
    assert [v.aval.dtype for v in eqn.invars] == [jnp.float32] * 2, eqn
    assert eqn.params['precision'] in (
      (jax.lax.Precision.HIGHEST,) * 2,
      jax.lax.Precision.HIGHEST,
    ), eqn
  hlo = jax.jit(extractor._features).lower(*_forward_inputs(extractor)).as_text()
  assert 'bf16' not in hlo


def test_bfloat16_chunked_attention_equals_unchunked():
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.standard_normal((1, 40, 2, 8)), jnp.float32) for _ in range(3))
  mask = jnp.asarray(np.arange(40)[None] < 33)
  full, _ = vit._attend(q, k, v, mask, vit.BFLOAT16)
  chunked = vit.chunked_attention(q, k, v, mask, vit.BFLOAT16, chunk=16)
  assert full.dtype == chunked.dtype == jnp.float32
  np.testing.assert_allclose(chunked, full, rtol=0, atol=1e-6)


def test_precision_names_are_accepted_everywhere():
  for name in ('float32', 'bfloat16', 'highest', 'high', 'default'):
    assert name in common.PRECISIONS and name in api.PRECISIONS
  assert common.PRECISIONS['bfloat16'] == api.PRECISIONS['bfloat16'] == vit.BFLOAT16
  assert api.PRECISIONS['float32'] == 'highest'
