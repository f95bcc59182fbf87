"""The backbone parity data (tests/data/backbones/, outputs of the official code) and helpers."""

import json
from pathlib import Path

import numpy as np
from PIL import Image

from spectral_jax.models import backbones

DATA = Path(__file__).parent / 'data' / 'backbones'
MANIFEST = json.loads((DATA / 'manifest.json').read_text())


def image(model: str) -> np.ndarray:
  return np.array(Image.open(DATA / 'images' / f'{MANIFEST[model]["image"]}.png').convert('RGB'))


def reference(model: str) -> dict[str, np.ndarray]:
  """Every ``row_step``-th row of the official arrays (rows of the full grid)."""
  with np.load(DATA / model / f'{MANIFEST[model]["image"]}.npz') as ref:
    return dict(ref)


def rel_errors(out: dict[str, np.ndarray], model: str) -> dict[str, float]:
  """max|ours - official| / max|official| per reference array (the parity measure)."""
  info = MANIFEST[model]
  h, w = info['grid']
  assert tuple(out['grid']) == (h, w)
  errs = {}
  for key, ref in reference(model).items():
    got = out[key][:: info['row_step']]
    assert got.shape == ref.shape, (key, got.shape, ref.shape)
    errs[key] = float(np.abs(got - ref).max() / info['max_abs'][key])
  return errs


def official_features(name: str):
  """(arch, variables, features) of the reference checkpoint and image of ``name``."""
  arch, variables = backbones.load_backbone_params(name, DATA / name / 'checkpoint.pth')
  return arch, variables, backbones.features(arch, variables, image(name))


def random_params(model, *args, scale: float = 0.1, seed: int = 0, **kwargs):
  """Random parameters of a Flax model from its shapes alone (no init compilation)."""
  import jax  # pylint: disable=import-outside-toplevel

  init = lambda a: model.init(jax.random.PRNGKey(0), *a, **kwargs)
  shapes = jax.eval_shape(init, args)['params']
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: (scale * rng.normal(size=s.shape)).astype(np.float32), shapes)
