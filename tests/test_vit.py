"""models/vit.py against the official DINO outputs (parity data) and a PyTorch patch-8 model."""

import jax
import numpy as np
import pytest
from PIL import Image

from spectral_jax.models import vit
from spectral_jax.models.weights import checkpoints
from spectral_jax.models import extractor as extractor_lib

from tests.conftest import MANIFEST, PARITY, PARITY_IDS as IDS


@pytest.fixture(scope='module')
def parity_model():
  sd = checkpoints.read_state_dict(f'{PARITY}/checkpoint.pth')
  arch = vit.ViTArch(**checkpoints.infer_arch(sd))
  params = checkpoints.state_dict_to_params(sd, vit.abstract_params(arch))
  return vit.VisionTransformer(arch), params


def features(model, params, image, **kw):
  x = vit.normalize(vit.crop_to_patches(image, model.arch.patch_size))[None]
  return jax.jit(lambda p, x: model.apply({'params': p}, x, **kw))(params, x)


@pytest.mark.parametrize('image_id', IDS)
def test_qkv_match_official_dino(parity_model, image_id):
  model, params = parity_model
  image = np.array(Image.open(f'{PARITY}/images/{image_id}.png').convert('RGB'))
  ref = np.load(f'{PARITY}/{image_id}.npz')
  grid = MANIFEST['images'][image_id]['patch_grid']
  out = features(model, params, image)
  for key in 'qkv':
    got = np.asarray(out[key][0])
    assert got.shape == (grid[0] * grid[1], 384)
    err = np.abs(got - ref[key]).max()
    assert err <= 1e-4 * np.abs(ref[key]).max(), (key, err)


def test_patch8_model_matches_pytorch():
  """A random ViT-Tiny/8 run by PyTorch (tests/data/make_torch_fixtures.py)."""
  sd = checkpoints.read_state_dict('tests/data/vit_tiny8/checkpoint.pth')
  arch = vit.ViTArch(**checkpoints.infer_arch(sd))
  assert (arch.patch_size, arch.embed_dim, arch.num_heads, arch.depth) == (8, 192, 3, 1)
  params = checkpoints.state_dict_to_params(sd, vit.abstract_params(arch))
  image = np.array(Image.open('tests/data/vit_tiny8/image.png').convert('RGB'))
  ref = np.load('tests/data/vit_tiny8/reference.npz')
  out = features(vit.VisionTransformer(arch), params, image, with_cls=True)
  for key in ('q', 'k', 'v'):
    np.testing.assert_allclose(out[key][0], ref[key], atol=1e-4 * np.abs(ref[key]).max())
  np.testing.assert_allclose(out['cls'][0], ref['cls'], atol=1e-4 * np.abs(ref['cls']).max())


def test_block_outputs_and_attention(parity_model):
  model, params = parity_model
  image = np.array(Image.open(f'{PARITY}/images/chelsea.png').convert('RGB'))
  first = features(model, params, image, feature_block=0)
  last = features(model, params, image, feature_block=-1, with_cls=True, with_attention=True)
  assert features(model, params, image)['attn'] is None  # not materialised unless asked
  n = 18 * 28
  assert first['tokens'].shape == (1, n, 384)
  assert last['attn'].shape == (1, 6, n + 1, n + 1)
  np.testing.assert_allclose(np.asarray(last['attn']).sum(-1), 1.0, atol=1e-5)
  assert last['cls'].shape == (1, 384)
  # Block 0's output is block 1's input: recompute block 1's keys from it by hand.
  b1 = params['blocks_1']
  x = np.concatenate([np.zeros((1, 1, 384), np.float32), np.asarray(first['tokens'])], 1)
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  y = (x - mean) / np.sqrt(var + 1e-6) * b1['norm1']['scale'] + b1['norm1']['bias']
  k = (y @ b1['attn']['qkv']['kernel'] + b1['attn']['qkv']['bias'])[0, 1:, 384:768]
  np.testing.assert_allclose(last['k'][0], k, atol=1e-4 * np.abs(k).max())


def test_layernorm_is_two_pass_like_pytorch():
  # Large mean, small spread: E[x²] − E[x]² in float32 loses everything here.
  x = (1e4 + np.random.default_rng(0).normal(size=(4, 64))).astype(np.float32)
  ln = vit.TorchLayerNorm()
  out = np.asarray(
    ln.apply({'params': {'scale': np.ones(64, np.float32), 'bias': np.zeros(64, np.float32)}}, x)
  )
  x64 = x.astype(np.float64)
  ref = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-6)
  np.testing.assert_allclose(out, ref, atol=2e-3)


def test_crop_is_top_left_and_rejects_tiny_images():
  image = np.arange(40 * 50 * 3, dtype=np.uint8).reshape(40, 50, 3)
  crop = vit.crop_to_patches(image, 16)
  assert crop.shape == (32, 48, 3)
  np.testing.assert_array_equal(crop, image[:32, :48])
  with pytest.raises(ValueError, match='smaller than one 16px patch'):
    vit.crop_to_patches(image[:10], 16)


def test_normalize_matches_torchvision_formula():
  image = np.random.default_rng(0).integers(0, 256, (5, 6, 3), dtype=np.uint8)
  ref = (image.astype(np.float32) / 255 - np.array([0.485, 0.456, 0.406], np.float32)) / np.array(
    [0.229, 0.224, 0.225], np.float32
  )
  np.testing.assert_allclose(vit.normalize(image), ref, rtol=0, atol=1e-5)


def test_padded_patch_sequence_equals_the_image(parity_model):
  """An image as a patch sequence padded with 13 zero patches (its own position table,
  masked keys) gives the official keys on its real tokens; bad inputs fail clearly."""
  model, params = parity_model
  image = np.array(Image.open(f'{PARITY}/images/chelsea.png').convert('RGB'))
  crop = vit.crop_to_patches(image, 16)
  grid = MANIFEST['images']['chelsea']['patch_grid']
  n = grid[0] * grid[1]
  patches = np.zeros((1, n + 13, 16, 16, 3), np.uint8)
  patches[0, :n] = vit.patchify(crop[None], 16)[0]
  inputs = extractor_lib.position_inputs(model.arch, params, [tuple(grid)], n + 13)
  assert inputs['token_mask'].sum() == 1 + n and not inputs['pos_tables'][0, 1 + n :].any()
  out = jax.jit(lambda p, x, i: model.apply({'params': p}, vit.normalize(x), **i))(
    params, patches, inputs
  )
  ref = np.load(f'{PARITY}/chelsea.npz')['k']
  assert np.abs(np.asarray(out['k'][0, :n]) - ref).max() <= 1e-4 * np.abs(ref).max()
  with pytest.raises(ValueError, match='need pos_tables'):
    model.apply({'params': params}, vit.normalize(patches))
  with pytest.raises(ValueError, match='more than 10 patches'):
    extractor_lib.position_inputs(model.arch, params, [(3, 4)], 10)
  with pytest.raises(ValueError, match='not a multiple of patch size 16'):
    vit.patchify(np.zeros((1, 20, 32, 3)), 16)


@pytest.mark.parametrize('backend', ['cpu', 'gpu'])
def test_chunked_attention_equals_full_attention(parity_model, monkeypatch, backend):
  """Above the logits budget, queries run in chunks: same keys as the unchunked forward
  (against the official keys too), with padded tokens masked as before. 'cpu' runs head by
  head (chunks within a head), other backends all heads at once (the trace is the same
  whatever device runs it, so the accelerator path is checked here too)."""
  model, params = parity_model
  image = np.array(Image.open(f'{PARITY}/images/coffee.png').convert('RGB'))
  full = features(model, params, image)['k']
  n = full.shape[1] + 1
  assert vit.query_chunk(1, 6, n) == n  # the default budget holds this image whole
  monkeypatch.setattr(vit.jax, 'default_backend', lambda: backend)
  heads = 1 if backend == 'cpu' else 6  # logits held at once: one head, or all of them
  monkeypatch.setattr(vit, 'ATTENTION_CHUNK_BYTES', heads * n * 4 * 100)  # ~100 queries a chunk
  assert vit.query_chunk(1, heads, n) < n
  chunked = features(model, params, image, with_attention=True)
  assert chunked['attn'] is None  # probabilities are not materialised
  np.testing.assert_allclose(chunked['k'], full, atol=1e-5 * np.abs(full).max())
  ref = np.load(f'{PARITY}/coffee.npz')['k']
  assert np.abs(np.asarray(chunked['k'])[0] - ref).max() <= 1e-4 * np.abs(ref).max()
  # The chunks really ran: the traced forward maps over query chunks.
  x = vit.normalize(vit.crop_to_patches(image, 16))[None]
  text = str(jax.make_jaxpr(lambda p, x: model.apply({'params': p}, x))(params, x))
  assert text.count('scan') >= (2 if backend == 'cpu' else 1) * model.arch.depth


def test_query_chunk_bounds_the_logits():
  for b, h, t in [(1, 6, 47_000), (8, 6, 6400), (5, 12, 20_000)]:
    c = vit.query_chunk(b, h, t)
    assert b * h * c * t * 4 <= max(vit.ATTENTION_CHUNK_BYTES, b * h * 64 * t * 4)
