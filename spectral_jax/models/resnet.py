"""DINO's ResNet-50 as DSM's self-training backbone: dilated, output stride 8 (protocol §4).

torchvision's ResNet "v1.5" (stride on the 3×3 convolution) with
``replace_stride_with_dilation=[False, True, True]``: layer3 and layer4 keep stride 1 and
dilate instead, and the first block of such a stage still runs at the *previous* dilation.
Every padding is explicit and symmetric as in PyTorch (XLA's 'SAME' would shift stride-2
layers by a pixel). BatchNorm uses the running statistics in ``batch_stats`` (eps 1e-5);
``train=True`` (self-training) uses and updates batch statistics, PyTorch momentum 0.1.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn

BN_EPS = 1e-5
PLANES = (64, 128, 256, 512)


@dataclasses.dataclass(frozen=True)
class ResNetArch:
  """Blocks per stage (read from the checkpoint) and which strides become dilations."""

  layers: tuple[int, ...] = (3, 4, 6, 3)
  replace_stride_with_dilation: tuple[bool, bool, bool] = (False, True, True)

  @property
  def output_stride(self) -> int:
    return 32 // 2 ** sum(self.replace_stride_with_dilation)

  @property
  def patch_size(self) -> int:
    """Pixels per feature cell: the crop multiple used by ``backbones.features``."""
    return self.output_stride


def _conv(features, kernel, stride=1, dilation=1, padding=0, precision='highest', name=None):
  return nn.Conv(
    features,
    (kernel, kernel),
    strides=(stride, stride),
    padding=((padding, padding), (padding, padding)),
    kernel_dilation=(dilation, dilation),
    use_bias=False,
    precision=precision,
    name=name,
  )


def _bn(name, train: bool = False):
  # PyTorch BatchNorm2d: momentum 0.1 (= Flax 0.9), eps 1e-5.
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=BN_EPS, name=name)


class Bottleneck(nn.Module):
  """1×1 → 3×3 (stride, dilation, padding = dilation) → 1×1 (×4), plus the shortcut."""

  planes: int
  stride: int = 1
  dilation: int = 1
  downsample: bool = False
  precision: Any = 'highest'

  @nn.compact
  def __call__(self, x, train: bool = False):
    p, prec = self.planes, self.precision
    y = nn.relu(_bn('bn1', train)(_conv(p, 1, precision=prec, name='conv1')(x)))
    y = _conv(p, 3, self.stride, self.dilation, self.dilation, prec, name='conv2')(y)
    y = nn.relu(_bn('bn2', train)(y))
    y = _bn('bn3', train)(_conv(4 * p, 1, precision=prec, name='conv3')(y))
    if self.downsample:
      x = _conv(4 * p, 1, self.stride, precision=prec, name='downsample_conv')(x)
      x = _bn('downsample_bn', train)(x)
    return nn.relu(y + x)


class ResNet(nn.Module):
  """Input: normalised images [B, H, W, 3] (H, W multiples of the output stride).

  Returns ``features`` [B, H/8, W/8, 2048] (layer4, DeepLab's 'out') and ``low_level``
  [B, H/4, W/4, 256] (layer1), channels last (⌈·⌉ for other sizes). Apply with
  ``{'params', 'batch_stats'}``; with ``train=True`` also ``mutable=['batch_stats']``.
  """

  arch: ResNetArch
  precision: Any = 'highest'

  @nn.compact
  def __call__(self, images, train: bool = False):
    a = self.arch
    x = _conv(64, 7, 2, 1, 3, self.precision, name='conv1')(images)
    x = nn.relu(_bn('bn1', train)(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))  # pads with -inf
    dilation, in_ch, out = 1, 64, {}
    for stage, (planes, blocks) in enumerate(zip(PLANES, a.layers)):
      stride = 1 if stage == 0 else 2
      previous = dilation
      if stage > 0 and a.replace_stride_with_dilation[stage - 1]:
        dilation *= stride
        stride = 1
      for i in range(blocks):
        x = Bottleneck(
          planes,
          stride if i == 0 else 1,
          previous if i == 0 else dilation,  # block 0 runs at the previous dilation
          downsample=i == 0 and (stride != 1 or in_ch != 4 * planes),
          precision=self.precision,
          name=f'layer{stage + 1}_{i}',
        )(x, train)
        in_ch = 4 * planes
      if stage == 0:
        out['low_level'] = x
    out['features'] = x
    return out
