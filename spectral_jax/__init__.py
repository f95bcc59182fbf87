"""Deep Spectral Methods (Melas-Kyriazi et al., CVPR 2022) in JAX/Flax.

The Python API (``spectral_jax.api``, imported on first use so ``import spectral_jax`` stays
light):

  import spectral_jax as sj
  backbone = sj.load_backbone('dino_vits16')
  sj.localize(backbone, 'photo.jpg').box_xyxy     # (x0, y0, x1, y1), exclusive max
  sj.segment(backbone, ['a.jpg', 'b.png'])        # bool masks [H, W]
  sj.remove_background(backbone, 'photo.jpg')     # RGBA uint8 [H, W, 4]

The command line: ``python -m spectral_jax --config=voc --mode=localize --workdir=OUT``.
"""

from typing import TYPE_CHECKING

from spectral_jax.version import __version__

_API = (
  'Backbone',
  'Eigen',
  'Localization',
  'Objects',
  'load_backbone',
  'eigenvectors',
  'localize',
  'localize_methods',
  'segment',
  'discover',
  'remove_background',
)

__all__ = ['__version__', *_API]

if TYPE_CHECKING:
  from spectral_jax.api import (  # noqa: F401
    Backbone,
    Eigen,
    Localization,
    Objects,
    discover,
    eigenvectors,
    load_backbone,
    localize,
    localize_methods,
    remove_background,
    segment,
  )


def __getattr__(name: str):
  if name in _API:
    from spectral_jax import api  # pylint: disable=import-outside-toplevel  # imports jax

    return getattr(api, name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__():
  return sorted(set(globals()) | set(_API))
