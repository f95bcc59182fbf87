"""models/dinov2.py against the official DINOv2 outputs (with and without registers)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spectral_jax.models import dinov2, posembed, vit
from spectral_jax.models import extractor as extractor_lib
from spectral_jax.models.weights.checkpoints import read_state_dict

from tests import backbones_data as bd
from tests.test_checkpoints import contiguous, write_torch_zip


@pytest.mark.parametrize('model', ['dinov2_vits14', 'dinov2_vits14_reg'])
def test_keys_and_normed_tokens_match_official(model):
  arch, _, out = bd.official_features(model)
  assert arch.num_registers == (4 if model.endswith('_reg') else 0)
  assert (arch.interpolate_antialias, arch.interpolate_offset) == (
    (True, 0.0) if model.endswith('_reg') else (False, 0.1)
  )
  errs = bd.rel_errors(out, model)
  assert set(errs) == {'k', 'x_norm_patchtokens'}
  assert max(errs.values()) <= 1e-4, errs


@pytest.mark.parametrize('n', [1, 5, 16, 26, 35, 36, 37, 38, 60, 100])
def test_antialias_matrix_equals_jax_resize(n):
  """The register rule is PyTorch's antialiased bicubic, which jax.image.resize reproduces."""
  grid = np.random.default_rng(n).normal(size=(37, 3)).astype(np.float32)
  want = jax.image.resize(jnp.asarray(grid), (n, 3), 'cubic', antialias=True)
  got = dinov2.antialias_bicubic_matrix(37, n) @ grid
  np.testing.assert_allclose(got, want, atol=2e-5)  # float32 rounding of the resize


def test_pos_table_used_as_is_only_for_the_pretrained_square_grid():
  plain = dinov2.hub_arch(384, 1, 6, registers=False)
  reg = dinov2.hub_arch(384, 1, 6, registers=True)
  for arch in (plain, reg):
    assert dinov2.resample_matrices(arch, (37, 37)) is None
    assert dinov2.resample_matrices(arch, (37, 36)) is not None
  rows, cols = dinov2.resample_matrices(plain, (28, 42))
  np.testing.assert_array_equal(rows, posembed.bicubic_matrix(37, 28, 28.1 / 37))  # +0.1 offset
  np.testing.assert_array_equal(cols, posembed.bicubic_matrix(37, 42, 42.1 / 37))
  rows, _ = dinov2.resample_matrices(reg, (37, 36))
  np.testing.assert_allclose(rows, np.eye(37), atol=1e-7)  # by size, 37 → 37 is the identity


def test_fused_swiglu_width_and_half_order():
  assert dinov2.swiglu_fused_hidden(1536) == 4096  # ViT-g
  arch = dinov2.hub_arch(1536, 40, 24, registers=True)
  assert (arch.ffn, arch.ffn_hidden) == ('swiglufused', 4096)
  ffn = dinov2.SwiGLUFused(4)
  x = np.random.default_rng(0).normal(size=(2, 3)).astype(np.float32)
  params = bd.random_params(ffn, x, scale=1.0)
  ab = x @ params['w12']['kernel'] + params['w12']['bias']
  a, b = ab[:, :4], ab[:, 4:]  # the first half is gated
  want = (a / (1 + np.exp(-a)) * b) @ params['w3']['kernel'] + params['w3']['bias']
  np.testing.assert_allclose(ffn.apply({'params': params}, x), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('registers', [False, True])
def test_padded_patch_sequences_equal_single_images(registers):
  """Images of two sizes as one padded batch give each image's own features."""
  arch = dataclasses.replace(dinov2.hub_arch(128, 2, 2, registers), pos_grid=5)
  model = dinov2.DinoV2(arch)
  rng = np.random.default_rng(1)
  images = [rng.normal(size=(h, w, 3)).astype(np.float32) for h, w in [(28, 42), (42, 14)]]
  params = bd.random_params(model, images[0][None])
  apply = jax.jit(model.apply)
  length = 6
  grids = [(im.shape[0] // 14, im.shape[1] // 14) for im in images]
  seqs = np.zeros((2, length, 14, 14, 3), np.float32)
  for i, im in enumerate(images):
    seqs[i, : grids[i][0] * grids[i][1]] = vit.patchify(im[None], 14)[0]
  inputs = extractor_lib.position_inputs(arch, params, grids, length)
  assert inputs['token_mask'].sum(1).tolist() == [arch.num_prefix_tokens + h * w for h, w in grids]
  batched = apply({'params': params}, seqs, **inputs)
  for i, im in enumerate(images):
    single = apply({'params': params}, im[None])
    n = grids[i][0] * grids[i][1]
    for key in ('k', 'x_norm_patchtokens'):
      np.testing.assert_allclose(batched[key][i, :n], single[key][0], atol=1e-5)


def _numpy_dinov2(sd: dict, image: np.ndarray, heads: int, registers: int) -> dict:
  """Float64 numpy DINOv2 register model (antialiased size-based position resampling) on one
  uint8 image: an oracle independent of the Flax port, for widths without official data."""
  from scipy.special import erf  # pylint: disable=import-outside-toplevel

  sd = {k: np.asarray(v, np.float64) for k, v in sd.items()}
  p = 14
  h, w = image.shape[0] // p, image.shape[1] // p
  x = image[: h * p, : w * p].astype(np.float64) / 255.0
  x = (x - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
  patches = x.reshape(h, p, w, p, 3).transpose(0, 2, 4, 1, 3).reshape(h * w, -1)  # (c, i, j)
  weight = sd['patch_embed.proj.weight']
  tokens = patches @ weight.reshape(len(weight), -1).T + sd['patch_embed.proj.bias']
  d = tokens.shape[1]
  g = int(round((sd['pos_embed'].shape[1] - 1) ** 0.5))
  table = sd['pos_embed'][0, 1:].reshape(g, g, d)
  table = jax.image.resize(table.astype(np.float32), (h, w, d), 'bicubic', antialias=True)
  table = np.asarray(table, np.float64)
  x = np.concatenate([
      sd['cls_token'][0] + sd['pos_embed'][0, :1],
      sd['register_tokens'][0],
      tokens + table.reshape(h * w, d),
  ])  # fmt: skip

  def norm(x, prefix):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-6) * sd[prefix + '.weight'] + sd[prefix + '.bias']

  def linear(x, prefix):
    return x @ sd[prefix + '.weight'].T + sd[prefix + '.bias']

  depth = 1 + max(int(k.split('.')[1]) for k in sd if k.startswith('blocks.'))
  for i in range(depth):
    b = f'blocks.{i}'
    qkv = linear(norm(x, b + '.norm1'), b + '.attn.qkv')
    q, k, v = (
      qkv[:, j * d : (j + 1) * d].reshape(len(x), heads, -1).transpose(1, 0, 2) for j in range(3)
    )
    logits = q @ k.transpose(0, 2, 1) / np.sqrt(d // heads)
    attn = np.exp(logits - logits.max(-1, keepdims=True))
    attn /= attn.sum(-1, keepdims=True)
    out = (attn @ v).transpose(1, 0, 2).reshape(len(x), d)
    x = x + sd[b + '.ls1.gamma'] * linear(out, b + '.attn.proj')
    hidden = linear(norm(x, b + '.norm2'), b + '.mlp.fc1')
    hidden = 0.5 * hidden * (1 + erf(hidden / np.sqrt(2)))
    x = x + sd[b + '.ls2.gamma'] * linear(hidden, b + '.mlp.fc2')
  prefix = 1 + registers
  return {'k': qkv[prefix:, d : 2 * d], 'x_norm_patchtokens': norm(x, 'norm')[prefix:]}


def test_base_width_register_checkpoint_matches_a_numpy_oracle(tmp_path):
  """dinov2_vitb14_reg (768 wide, 12 heads) from an official-format .pth of 2 random blocks:
  widths and head count come from the name and the file, not from the S/14 reference."""

  small = read_state_dict(bd.DATA / 'dinov2_vits14_reg' / 'checkpoint.pth')
  rng = np.random.default_rng(7)
  sd = {}
  for name, value in small.items():
    shape = tuple(2 * s if s % 384 == 0 else s for s in value.shape)  # S → B widths
    centre = 1.0 if name.endswith(('gamma', 'norm1.weight', 'norm2.weight', 'norm.weight')) else 0
    spread = 0.2 if centre else 0.3 if 'qkv.weight' in name else 0.01  # peaked attention
    sd[name] = (centre + spread * rng.standard_normal(shape)).astype(np.float32)
  tensors = {name: contiguous(f'{i}', value) for i, (name, value) in enumerate(sd.items())}
  path = write_torch_zip(
    tmp_path / 'dinov2_vitb14_reg4_pretrain.pth', tensors, [t.args[0] for t in tensors.values()]
  )
  extractor = extractor_lib.load('dinov2_vitb14_reg', str(path))
  assert (extractor.arch.embed_dim, extractor.arch.num_heads, extractor.arch.depth) == (768, 12, 2)
  image = bd.image('dinov2_vits14_reg')[: 8 * 14, : 11 * 14]
  out = extractor([image])
  want = _numpy_dinov2(sd, image, heads=12, registers=4)
  for key in ('k', 'x_norm_patchtokens'):
    got = np.asarray(out[key][0])
    scale = np.abs(want[key]).max()
    assert np.abs(got - want[key]).max() <= 1e-4 * scale, key
  # The oracle tells head counts apart: 6 heads (the S/14 count) gives other tokens.
  other = _numpy_dinov2(sd, image, heads=6, registers=4)['x_norm_patchtokens']
  assert np.abs(other - want['x_norm_patchtokens']).max() > 0.1 * np.abs(other).max()
