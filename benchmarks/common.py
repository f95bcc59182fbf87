"""Small helpers the benchmark scripts share: a random DINO ViT state dict, the box of a patch
component, the benchmark command line and the markdown result tables.

The scripts import it as a top-level module (``benchmarks/`` is on ``sys.path`` when they run as
``python benchmarks/<script>.py``); it needs only numpy.
"""

from __future__ import annotations

import sys
from typing import Dict, Optional, Sequence

import numpy as np


def random_dino_state_dict(
  seed: int, depth: int = 12, dim: int = 384, patch: int = 16, grid: int = 14
) -> Dict[str, np.ndarray]:
  """A random ViT (ViT-S/16 by default) in DINO's state-dict format, float32 numpy arrays
  (LayerNorm ≈ 1 ± 0.1, W ~ N(0, 1/fan_in)); the same ``seed`` gives the same arrays."""
  rng = np.random.default_rng(seed)

  def t(a):
    return np.ascontiguousarray(a, dtype=np.float32)

  def linear(out_f, in_f):
    return (t(rng.normal(0, 1 / np.sqrt(in_f), (out_f, in_f))), t(rng.normal(0, 0.02, out_f)))

  def norm():
    return t(1 + 0.1 * rng.standard_normal(dim)), t(0.02 * rng.standard_normal(dim))

  sd = {
    'cls_token': t(rng.normal(0, 0.02, (1, 1, dim))),
    'pos_embed': t(rng.normal(0, 0.02, (1, 1 + grid * grid, dim))),
  }
  fan = 3 * patch * patch
  sd['patch_embed.proj.weight'] = t(rng.normal(0, 1 / np.sqrt(fan), (dim, 3, patch, patch)))
  sd['patch_embed.proj.bias'] = t(rng.normal(0, 0.02, dim))
  for i in range(depth):
    b = f'blocks.{i}.'
    sd[b + 'norm1.weight'], sd[b + 'norm1.bias'] = norm()
    sd[b + 'attn.qkv.weight'], sd[b + 'attn.qkv.bias'] = linear(3 * dim, dim)
    sd[b + 'attn.proj.weight'], sd[b + 'attn.proj.bias'] = linear(dim, dim)
    sd[b + 'norm2.weight'], sd[b + 'norm2.bias'] = norm()
    sd[b + 'mlp.fc1.weight'], sd[b + 'mlp.fc1.bias'] = linear(4 * dim, dim)
    sd[b + 'mlp.fc2.weight'], sd[b + 'mlp.fc2.bias'] = linear(dim, 4 * dim)
  sd['norm.weight'], sd['norm.bias'] = norm()
  return sd


def patch_box(ys: np.ndarray, xs: np.ndarray, patch_size: int, image_hw) -> np.ndarray:
  """The box [x0, y0, x1, y1] (int64, pixels) of the patches at rows ``ys``, columns ``xs``,
  clipped to the image's (height, width) on the far sides."""
  p = patch_size
  return np.asarray(
    [
      xs.min() * p,
      ys.min() * p,
      min((xs.max() + 1) * p, image_hw[1]),
      min((ys.max() + 1) * p, image_hw[0]),
    ],
    np.int64,
  )


def command_line(script: str, argv: Optional[Sequence[str]] = None) -> str:
  """The markdown line that names the command run (``argv``: default ``sys.argv[1:]``)."""
  return (
    f'- command: `python benchmarks/{script} {" ".join(sys.argv[1:] if argv is None else argv)}`'
  )


def pass_seconds(seconds: Sequence[float], fmt: str = '.2f') -> str:
  """The seconds of each timed pass, comma-separated."""
  return ', '.join(f'{t:{fmt}}' for t in seconds)


def markdown_table(columns: Sequence[str], align: str, rows: Sequence[Sequence[str]]) -> str:
  """A markdown table: ``columns`` the header, ``align`` one letter a column (``l`` left,
  ``r`` right), ``rows`` the cells as strings."""
  lines = [
    '| ' + ' | '.join(columns) + ' |',
    '|' + ''.join('---:|' if a == 'r' else '---|' for a in align),
  ]
  lines += ['| ' + ' | '.join(row) + ' |' for row in rows]
  return '\n'.join(lines)
