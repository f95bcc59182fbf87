"""models/resnet.py (dilated DINO ResNet-50, output stride 8) against the official outputs."""

import jax
import numpy as np
import pytest

from spectral_jax.models import resnet
from spectral_jax.models.weights import keymaps
from spectral_jax.models.weights.checkpoints import CheckpointError

from tests import backbones_data as bd


def test_features_and_low_level_match_official():
  arch, variables, out = bd.official_features('dino_resnet50')
  assert arch.layers == (1, 1, 1, 1) and arch.output_stride == 8
  assert 'batch_stats' in variables
  errs = bd.rel_errors(out, 'dino_resnet50')
  assert set(errs) == {'features', 'low_level'}
  assert max(errs.values()) <= 1e-4, errs


def _convs(arch, size=(64, 48)):
  """(window strides, dilation, padding) of every 3×3 / 7×7 convolution, in order."""
  model = resnet.ResNet(arch)
  x = jax.ShapeDtypeStruct((1, *size, 3), np.float32)
  shapes = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), x)
  variables = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
  jaxpr = jax.make_jaxpr(model.apply)(variables, np.zeros(x.shape, x.dtype))
  out = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == 'conv_general_dilated' and eqn.invars[1].aval.shape[0] > 1:
      p = eqn.params
      out.append((p['window_strides'], p['rhs_dilation'], p['padding']))
  return out, jax.eval_shape(model.apply, variables, x)


def test_full_depth_dilation_bookkeeping():
  """layer3: block 0 at dilation 1, later ones 2; layer4: block 0 at 2, later 4; stride on 3×3."""
  convs, out = _convs(resnet.ResNetArch((3, 4, 6, 3)))
  assert out['features'].shape == (1, 8, 6, 2048)
  assert out['low_level'].shape == (1, 16, 12, 256)
  stem, rest = convs[0], convs[1:]
  assert stem == ((2, 2), (1, 1), ((3, 3), (3, 3)))
  want = (
      [((1, 1), 1)] * 3
      + [((2, 2), 1)] + [((1, 1), 1)] * 3
      + [((1, 1), 1)] + [((1, 1), 2)] * 5
      + [((1, 1), 2)] + [((1, 1), 4)] * 2
  )  # fmt: skip
  got = [(s, d[0]) for s, d, _ in rest]
  assert got == want
  assert all(pad == ((d[0], d[0]), (d[0], d[0])) for _, d, pad in rest)  # symmetric, = dilation


def test_loading_is_strict():
  sd = {'conv1.weight': np.zeros((64, 3, 7, 7), np.float32), 'fc.weight': np.zeros((10, 2048))}
  assert 'fc' not in keymaps.resnet_to_flax(sd)['params']
  with pytest.raises(CheckpointError, match='layer1.0.conv9.weight'):
    keymaps.resnet_to_flax({'layer1.0.conv9.weight': np.zeros((1, 1, 1, 1))})
