"""models/dinov2.py against the official DINOv2 outputs (with and without registers)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spectral_jax.models import dinov2, posembed, vit

from tests import backbones_data as bd


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
  tables, masks = dinov2.sequence_pos_tables(arch, np.asarray(params['pos_embed']), grids, length)
  batched = apply({'params': params}, seqs, pos_tables=tables, token_mask=masks)
  for i, im in enumerate(images):
    single = apply({'params': params}, im[None])
    n = grids[i][0] * grids[i][1]
    for key in ('k', 'x_norm_patchtokens'):
      np.testing.assert_allclose(batched[key][i, :n], single[key][0], atol=1e-5)
