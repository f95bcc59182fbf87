"""Tests for spectral_jax.models.segmenter (DeepLabV3+ on the DINO ViT)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spectral_jax import train
from spectral_jax.models import segmenter as S
from spectral_jax.models import vit

ARCH = vit.ViTArch(patch_size=8, embed_dim=32, num_heads=2, depth=3, num_pos=16)
SMALL_HEAD = dict(num_classes=5, channels=16, low_level_channels=8)


@pytest.fixture(scope='module')
def model_and_vars():
  model = S.DeepLabV3Plus(ARCH, **SMALL_HEAD)
  return model, S.init_variables(model, jax.random.PRNGKey(0), 32)


def test_default_low_level_block():
  assert S.default_low_level_block(12) == 7  # block 8 of 12 (get_intermediate_layers(n=5)[0])
  assert S.default_low_level_block(3) == 1
  assert S.default_low_level_block(1) == 0


def test_backbone_params_are_the_dino_tree(model_and_vars):
  _, variables = model_and_vars
  assert S.shape_tree(variables['params']['backbone']) == vit.abstract_params(ARCH)
  assert set(variables['batch_stats']) == {'aspp', 'project', 'classifier_conv'}


def test_backbone_features_are_final_normed_block_outputs(model_and_vars):
  _, variables = model_and_vars
  params = variables['params']['backbone']
  images = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 40, 3))
  low, out = S.ViTBackbone(ARCH, (1, 2)).apply({'params': params}, images)
  ref_vit = vit.VisionTransformer(ARCH)
  norm = vit.TorchLayerNorm()
  for block, got in ((1, low), (2, out)):
    tokens = ref_vit.apply({'params': params}, images, feature_block=block)['tokens']
    want = norm.apply({'params': params['norm']}, tokens).reshape(2, 4, 5, ARCH.embed_dim)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_logits_at_input_resolution_and_batchnorm_updates(model_and_vars):
  model, variables = model_and_vars
  images = jax.random.normal(jax.random.PRNGKey(2), (2, 48, 32, 3))
  train_apply = jax.jit(
      lambda v, x: model.apply(
          v, x, train=True, mutable=['batch_stats'], rngs={'dropout': jax.random.PRNGKey(3)}
      )
  )
  logits, updates = train_apply(variables, images)
  assert logits.shape == (2, 48, 32, 5)
  before = variables['batch_stats']['aspp']['ConvBNReLU_0']['BatchNorm_0']['mean']
  after = updates['batch_stats']['aspp']['ConvBNReLU_0']['BatchNorm_0']['mean']
  assert not np.allclose(before, after)
  with pytest.raises(ValueError, match='multiple of patch size'):
    model.apply(variables, jnp.zeros((1, 30, 32, 3)))


def test_with_backbone_loads_dino_params_and_rejects_other_shapes(model_and_vars):
  _, variables = model_and_vars
  dino = jax.tree.map(
      lambda s: np.full(s, 0.5, np.float32),
      vit.abstract_params(ARCH),
      is_leaf=lambda x: isinstance(x, tuple),
  )
  params = S.with_backbone(variables['params'], dino)
  assert float(params['backbone']['blocks_0']['attn']['qkv']['kernel'][0, 0]) == 0.5
  other = vit.abstract_params(vit.ViTArch(8, 48, 2, 3, 16))
  other = jax.tree.map(np.zeros, other, is_leaf=lambda x: isinstance(x, tuple))
  with pytest.raises(
      ValueError,
      match=r'backbone/blocks_0/attn/qkv/kernel: checkpoint has '
      r'shape \(48, 144\), model expects \(32, 96\)',
  ):
    S.with_backbone(variables['params'], other)


def test_checkpoint_of_another_architecture_fails_clearly(tmp_path):
  """An orbax checkpoint written by a 32-dim model, restored into a 48-dim one."""
  cfg = train.TrainConfig(steps=1, batch_size=2, crop_size=32)  # init compile shared above
  small = S.DeepLabV3Plus(ARCH, **SMALL_HEAD)
  state = train.create_train_state(small, cfg, jax.random.PRNGKey(0))
  mngr = train.checkpoint_manager(tmp_path / 'ckpt')
  train._save(mngr, state, {'step': 0}, small)
  mngr.wait_until_finished()
  mngr.close()

  wide = S.DeepLabV3Plus(vit.ViTArch(8, 48, 2, 3, 16), **SMALL_HEAD)
  pattern = (
      r'different architecture[\s\S]*params/backbone/blocks_0/attn/qkv/kernel: '
      r'checkpoint has shape \(32, 96\), model expects \(48, 144\)[\s\S]*'
      r"written by \{.*'embed_dim': 32"
  )
  with pytest.raises(ValueError, match=pattern):
    train.restore_variables(tmp_path / 'ckpt', wide)
  mngr = train.checkpoint_manager(tmp_path / 'ckpt')
  with pytest.raises(ValueError, match=pattern):
    abstract = jax.eval_shape(
        functools.partial(train.create_train_state, wide, cfg), jax.random.PRNGKey(0)
    )
    train.restore(mngr, 0, abstract)
  deeper = S.DeepLabV3Plus(vit.ViTArch(8, 32, 2, 4, 16), **SMALL_HEAD)
  with pytest.raises(ValueError, match=r'params/backbone/blocks_3/[\w/]+: missing from checkpoint'):
    train.restore_variables(tmp_path / 'ckpt', deeper)
  # The same architecture restores.
  variables, step = train.restore_variables(tmp_path / 'ckpt', small)
  assert step == 0
  np.testing.assert_array_equal(
      variables['params']['classifier']['kernel'], state.params['classifier']['kernel']
  )
