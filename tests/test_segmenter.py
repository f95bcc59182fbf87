"""Tests for spectral_jax.models.segmenter (DeepLabV3+ on the DINO ViT)."""

import contextlib
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spectral_jax.training import loop
from spectral_jax.training import saving
from spectral_jax.models import segmenter as S
from spectral_jax.models import resnet, vit

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
  model = S.DeepLabV3Plus(ARCH, low_level_block=1, **SMALL_HEAD)
  _, inter = jax.jit(
    lambda v, x: model.apply(v, x, capture_intermediates=True, mutable=['intermediates'])
  )(variables, images)
  normed = inter['intermediates']['backbone']['__call__'][0]['normed']
  low, out = (x.reshape(2, 4, 5, ARCH.embed_dim) for x in normed)
  ref_vit = vit.VisionTransformer(ARCH)
  norm = vit.TorchLayerNorm()
  for block, got in ((1, low), (2, out)):
    tokens = ref_vit.apply({'params': params}, images, feature_block=block)['tokens']
    want = norm.apply({'params': params['norm']}, tokens).reshape(2, 4, 5, ARCH.embed_dim)
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize(
  'name', ['dinov2_vits14_reg', pytest.param('dinov3_vits16', marks=pytest.mark.slow)]
)
def test_dinov2_and_dinov3_segmenters_hold_the_pretrained_tree_and_its_normed_tokens(name):
  """The registry's DINOv2/v3 parameters drop into params['backbone']; the decoder's inputs
  are the final-normed patch tokens of blocks 1 and 2 (= the official x_norm_patchtokens
  for the last block of these depth-2 checkpoints; the low block = the normed output of
  the same weights cut after block 1)."""
  from spectral_jax.models import backbones  # pylint: disable=import-outside-toplevel
  from tests import backbones_data as bd  # pylint: disable=import-outside-toplevel

  arch, pretrained = backbones.load_backbone_params(name, bd.DATA / name / 'checkpoint.pth')
  model = S.DeepLabV3Plus(arch, **SMALL_HEAD)
  cfg = loop.TrainConfig(steps=1, batch_size=1, crop_size=arch.patch_size * 4)
  state = loop.create_train_state(model, cfg, jax.random.PRNGKey(0), pretrained)
  assert S.shape_tree(state.params['backbone']) == S.shape_tree(pretrained['params'])
  image = vit.crop_to_patches(bd.image(name), arch.patch_size)
  x = vit.normalize(image)[None]
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  logits, inter = jax.jit(
    lambda v, x: model.apply(v, x, capture_intermediates=True, mutable=['intermediates'])
  )(variables, x)
  assert logits.shape == (1, *image.shape[:2], 5)
  normed = inter['intermediates']['backbone']['__call__'][0]['normed']
  grid = tuple(bd.MANIFEST[name]['grid'])
  written = {'x_norm_patchtokens': np.asarray(normed[1][0]), 'grid': grid}
  ref = bd.reference(name)['x_norm_patchtokens']
  got = written['x_norm_patchtokens'][:: bd.MANIFEST[name]['row_step']]
  assert np.abs(got - ref).max() <= 1e-4 * bd.MANIFEST[name]['max_abs']['x_norm_patchtokens']
  cut = dataclasses.replace(arch, depth=1)
  first = {k: v for k, v in pretrained['params'].items() if k != 'blocks_1'}
  want = backbones.features(cut, {'params': first}, image)['x_norm_patchtokens']
  np.testing.assert_allclose(np.asarray(normed[0][0]), want, atol=1e-5 * np.abs(want).max())
  with (
    pytest.raises(ValueError, match='multiple of patch size')
    if 'dinov2' in name
    else (contextlib.nullcontext())
  ):  # DINOv3's stride-16 conv crops as the official one does
    jax.eval_shape(model.apply, variables, jnp.zeros((1, 4 * arch.patch_size + 3, 64, 3)))


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
  cfg = loop.TrainConfig(steps=1, batch_size=2, crop_size=32)  # init compile shared above
  small = S.DeepLabV3Plus(ARCH, **SMALL_HEAD)
  state = loop.create_train_state(small, cfg, jax.random.PRNGKey(0))
  mngr = saving.checkpoint_manager(tmp_path / 'ckpt')
  saving.save(mngr, state, {'step': 0}, small)
  mngr.wait_until_finished()
  mngr.close()

  wide = S.DeepLabV3Plus(vit.ViTArch(8, 48, 2, 3, 16), **SMALL_HEAD)
  pattern = (
    r'different architecture[\s\S]*params/backbone/blocks_0/attn/qkv/kernel: '
    r'checkpoint has shape \(32, 96\), model expects \(48, 144\)[\s\S]*'
    r"written by \{.*'embed_dim': 32"
  )
  with pytest.raises(ValueError, match=pattern):
    saving.restore_variables(tmp_path / 'ckpt', wide)
  mngr = saving.checkpoint_manager(tmp_path / 'ckpt')
  with pytest.raises(ValueError, match=pattern):
    abstract = jax.eval_shape(
      functools.partial(loop.create_train_state, wide, cfg), jax.random.PRNGKey(0)
    )
    saving.restore(mngr, 0, abstract)
  deeper = S.DeepLabV3Plus(vit.ViTArch(8, 32, 2, 4, 16), **SMALL_HEAD)
  with pytest.raises(ValueError, match=r'params/backbone/blocks_3/[\w/]+: missing from checkpoint'):
    saving.restore_variables(tmp_path / 'ckpt', deeper)
  # The same architecture restores.
  variables, step = saving.restore_variables(tmp_path / 'ckpt', small)
  assert step == 0
  np.testing.assert_array_equal(
    variables['params']['classifier']['kernel'], state.params['classifier']['kernel']
  )


# --------------------------------------------------------------------------------------
# DeepLabV3+ on the dilated DINO ResNet-50 (official §7.3), reference checkpoint [1,1,1,1]


@pytest.fixture(scope='module')
def resnet_segmenter():
  """(model, pretrained backbone variables, segmenter variables with them loaded)."""
  from spectral_jax.models import backbones  # pylint: disable=import-outside-toplevel
  from tests import backbones_data as bd  # pylint: disable=import-outside-toplevel

  arch, pretrained = backbones.load_backbone_params(
    'dino_resnet50', bd.DATA / 'dino_resnet50' / 'checkpoint.pth'
  )
  model = S.DeepLabV3Plus(arch, aspp_rates=S.default_aspp_rates(arch), **SMALL_HEAD)
  cfg = loop.TrainConfig(steps=2, batch_size=2, crop_size=32)
  state = loop.create_train_state(model, cfg, jax.random.PRNGKey(0), pretrained)
  return model, pretrained, {'params': state.params, 'batch_stats': state.batch_stats}


def test_resnet_segmenter_backbone_equals_official_features(resnet_segmenter):
  """Pretrained weights really sit in the segmenter: its backbone's layer4 / layer1 maps on
  the reference image match the official outputs; eval mode leaves batch_stats alone."""
  from tests import backbones_data as bd  # pylint: disable=import-outside-toplevel

  model, _, variables = resnet_segmenter
  image = vit.crop_to_patches(bd.image('dino_resnet50'), 8)
  apply = jax.jit(
    lambda v, x: model.apply(v, x, capture_intermediates=True, mutable=['batch_stats'])
  )
  logits, state = apply(variables, vit.normalize(image)[None])
  assert logits.shape == (1, *image.shape[:2], 5)
  maps = state['intermediates']['backbone']['__call__'][0]
  out = {k: np.asarray(m[0]).reshape(-1, m.shape[-1]) for k, m in maps.items()}
  out['grid'] = (image.shape[0] // 8, image.shape[1] // 8)
  errs = bd.rel_errors(out, 'dino_resnet50')
  assert set(errs) == {'features', 'low_level'} and max(errs.values()) <= 1e-4, errs
  for a, b in zip(jax.tree.leaves(state['batch_stats']), jax.tree.leaves(variables['batch_stats'])):
    np.testing.assert_array_equal(a, b)  # running statistics are not touched in eval


def test_resnet_segmenter_shapes_strides_and_aspp_rates(resnet_segmenter):
  model, _, variables = resnet_segmenter
  assert model.aspp_rates == (12, 24, 36) and model.arch.output_stride == 8
  x = jax.ShapeDtypeStruct((2, 64, 48, 3), jnp.float32)
  logits, state = jax.eval_shape(
    lambda v, x: model.apply(v, x, capture_intermediates=True, mutable=['intermediates']),
    variables,
    x,
  )
  assert logits.shape == (2, 64, 48, 5)  # upsampled to the input
  inter = state['intermediates']
  maps = inter['backbone']['__call__'][0]
  assert maps['features'].shape == (2, 8, 6, 2048)  # layer4, stride 8
  assert maps['low_level'].shape == (2, 16, 12, 256)  # layer1, stride 4
  assert inter['aspp']['__call__'][0].shape == (2, 8, 6, 16)  # resized to 16×12 in the decoder
  assert inter['project']['__call__'][0].shape == (2, 16, 12, 8)  # 48 ch officially
  # Dilations read back from the traced model: the three 3×3 ASPP convs on the 2048-ch map.
  jaxpr = jax.make_jaxpr(lambda v, x: model.apply(v, x))(variables, np.zeros(x.shape, x.dtype))
  aspp = [
    (e.params['rhs_dilation'], e.params['padding'])
    for e in jaxpr.eqns
    if e.primitive.name == 'conv_general_dilated' and e.invars[1].aval.shape[:3] == (3, 3, 2048)
  ]
  assert aspp == [((r, r), ((r, r), (r, r))) for r in (12, 24, 36)]


def test_full_resnet50_segmenter_holds_the_official_backbone_tree():
  """ResNet-50 (3, 4, 6, 3): the segmenter's backbone params and batch_stats are exactly the
  tree ``load_backbone_params`` fills from dino_resnet50_pretrain.pth (shapes only)."""
  from spectral_jax.models import backbones  # pylint: disable=import-outside-toplevel

  arch = resnet.ResNetArch()
  model = S.DeepLabV3Plus(arch, aspp_rates=S.default_aspp_rates(arch))
  shapes = S.shape_tree(S.abstract_variables(model, 32))
  official = backbones._abstract_variables(arch)  # pylint: disable=protected-access
  assert shapes['params']['backbone'] == official['params']
  assert shapes['batch_stats']['backbone'] == official['batch_stats']
  assert shapes['params']['aspp']['ConvBNReLU_1']['Conv_0']['kernel'] == (3, 3, 2048, 256)
  assert shapes['params']['project']['Conv_0']['kernel'] == (1, 1, 256, 48)
  assert shapes['params']['classifier_conv']['Conv_0']['kernel'] == (3, 3, 304, 256)
  assert shapes['params']['classifier']['kernel'] == (1, 1, 256, 21)


def test_resnet_frozen_layers_get_no_update_and_no_state(resnet_segmenter):
  """Official rule (unfrozen_backbone_layers=1): conv1, bn1, layer1–3 frozen; layer4 + head
  train. Random gradients through the optimiser: frozen updates exactly 0, others not."""
  model, _, variables = resnet_segmenter
  assert S.frozen_backbone_modules(model) == ('conv1', 'bn1', 'layer1_0', 'layer2_0', 'layer3_0')
  full = S.frozen_backbone_modules(S.DeepLabV3Plus(resnet.ResNetArch(), unfrozen_backbone_layers=2))
  assert full[-1] == 'layer2_3' and len(full) == 2 + 3 + 4  # conv1, bn1, layer1, layer2
  assert S.frozen_backbone_modules(S.DeepLabV3Plus(ARCH)) == ()  # ViT: one child, nothing frozen
  # The segmenter's tree with tiny leaves (labels go by name, decay by ndim): fast eager ops.
  params = jax.tree.map(lambda p: jnp.full((2,) * p.ndim, 0.5), variables['params'])
  tx = loop.model_optimizer(model, loop.TrainConfig(learning_rate=1e-3, steps=10))
  grads = jax.tree.map(lambda p: jnp.ones_like(p), params)
  updates, opt_state = tx.update(grads, tx.init(params), params)
  frozen = set(S.frozen_backbone_modules(model))
  for name, tree in updates['backbone'].items():
    moved = any(np.abs(u).max() > 0 for u in jax.tree.leaves(tree))
    assert moved == (name not in frozen), name
  assert all(np.abs(u).max() > 0 for u in jax.tree.leaves(updates['classifier']))
  n_moments = len(jax.tree.leaves(opt_state))
  n_trained = sum(len(jax.tree.leaves(t)) for k, t in params.items() if k != 'backbone')
  backbone = params['backbone']
  n_trained += sum(len(jax.tree.leaves(t)) for k, t in backbone.items() if k not in frozen)
  assert n_moments == 2 * n_trained + 2  # mu, nu of trained params; Adam's, schedule's counts


def test_resnet_train_mode_updates_every_batch_norm(resnet_segmenter):
  """PyTorch's model.train(): frozen stages' BatchNorms too use and update batch statistics."""
  model, _, variables = resnet_segmenter
  images = jax.random.normal(jax.random.PRNGKey(4), (2, 32, 32, 3))
  _, updates = jax.jit(
    lambda v, x: model.apply(
      v, x, train=True, mutable=['batch_stats'], rngs={'dropout': jax.random.PRNGKey(5)}
    )
  )(variables, images)
  for module in ('bn1', 'layer1_0', 'layer4_0'):
    before = jax.tree.leaves(variables['batch_stats']['backbone'][module])
    after = jax.tree.leaves(updates['batch_stats']['backbone'][module])
    assert all(not np.allclose(a, b) for a, b in zip(before, after)), module
  with pytest.raises(ValueError, match="collections \\['params'\\]"):
    S.with_backbone_variables(variables, {'params': variables['params']['backbone']})
