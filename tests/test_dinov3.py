"""models/dinov3.py against the official DINOv3 outputs (keys before and after RoPE)."""

import dataclasses

import jax
import numpy as np

from spectral_jax.models import dinov3, vit
from spectral_jax.models import extractor as extractor_lib
from spectral_jax.models.weights.checkpoints import read_state_dict

from tests import backbones_data as bd


def test_keys_rope_keys_and_normed_tokens_match_official():
  arch, variables, out = bd.official_features('dinov3_vits16')
  assert (arch.num_storage, arch.norm_eps, arch.ffn) == (4, 1e-5, 'mlp')
  errs = bd.rel_errors(out, 'dinov3_vits16')
  assert set(errs) == {'k', 'k_rope', 'x_norm_patchtokens'}
  assert max(errs.values()) <= 1e-4, errs
  # The file's periods (perturbed from 100^(m/16) in the reference) and a masked key bias.
  sd = read_state_dict(bd.DATA / 'dinov3_vits16' / 'checkpoint.pth')
  params = variables['params']
  np.testing.assert_array_equal(params['rope_periods'], sd['rope_embed.periods'])
  assert not np.allclose(sd['rope_embed.periods'], 100.0 ** (np.arange(16) / 16), rtol=1e-3)
  bias = params['blocks_1']['attn']['qkv']['bias']
  assert np.all(bias[384:768] == 0) and np.any(sd['blocks.1.attn.qkv.bias'][384:768] != 0)
  np.testing.assert_array_equal(bias[:384], sd['blocks.1.attn.qkv.bias'][:384])


def test_swiglu_widths_of_the_plus_models():
  assert dinov3.swiglu_hidden(384, 6) == 1536  # S/16+
  assert dinov3.swiglu_hidden(1024, 6) == 4096  # L/16+
  assert dinov3.swiglu_hidden(1280, 6) == 5120  # H/16+
  assert dinov3.hub_arch(384, 12, 6, plus=True).ffn == 'swiglu'


def test_rope_rotates_channel_pairs_m_and_m_plus_half():
  periods = np.full(16, 4.0, np.float32)
  coords = np.array([[[0.5, -0.25]]], np.float32)  # one token: row 0.5, column -0.25
  cos, sin = dinov3.rope_cos_sin(coords, periods)
  x = np.zeros((1, 1, 1, 64), np.float32)
  x[..., 0] = 1.0  # row angle 2π·0.5/4
  x[..., 16] = 1.0  # column angle 2π·(-0.25)/4
  y = np.asarray(dinov3.apply_rope(x, cos, sin))[0, 0, 0]
  row, col = np.pi / 4, -np.pi / 8
  np.testing.assert_allclose(y[[0, 32]], [np.cos(row), np.sin(row)], atol=1e-6)
  np.testing.assert_allclose(y[[16, 48]], [np.cos(col), np.sin(col)], atol=1e-6)
  assert np.count_nonzero(np.abs(y) > 1e-7) == 4
  np.testing.assert_allclose(  # separate normalisation, patch centres
    dinov3.patch_coords((2, 4)), [[r, c] for r in (-0.5, 0.5) for c in (-0.75, -0.25, 0.25, 0.75)]
  )


def test_padded_patch_sequences_equal_single_images():
  arch = dataclasses.replace(dinov3.hub_arch(128, 2, 2, plus=True), ffn_hidden=64)
  model = dinov3.DinoV3(arch)
  rng = np.random.default_rng(1)
  images = [rng.normal(size=(h, w, 3)).astype(np.float32) for h, w in [(32, 48), (48, 16)]]
  params = bd.random_params(model, images[0][None])
  params['rope_periods'] = 100.0 ** (np.arange(16) / 16).astype(np.float32)
  apply = jax.jit(model.apply)
  grids = [(im.shape[0] // 16, im.shape[1] // 16) for im in images]
  length = 6
  seqs = np.zeros((2, length, 16, 16, 3), np.float32)
  for i, im in enumerate(images):
    seqs[i, : grids[i][0] * grids[i][1]] = vit.patchify(im[None], 16)[0]
  inputs = extractor_lib.position_inputs(arch, params, grids, length)
  assert inputs['token_mask'].sum(1).tolist() == [5 + h * w for h, w in grids]
  batched = apply({'params': params}, seqs, **inputs)
  for i, im in enumerate(images):
    single = apply({'params': params}, im[None])
    n = grids[i][0] * grids[i][1]
    for key in ('k', 'k_rope', 'x_norm_patchtokens'):
      np.testing.assert_allclose(batched[key][i, :n], single[key][0], atol=1e-5)
