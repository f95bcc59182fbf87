"""The types self-training's modules share (its loop, augmentation and checkpoints): in a module
of their own, so none of those imports another for a type."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax
import jax
import numpy as np

# (image uint8 [H, W, 3], label uint8 [H, W]); labels use 255 for void in GT.
Example = tuple[np.ndarray, np.ndarray]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Hyper-parameters of self-training (defaults = README command + train.yaml)."""

  steps: int = 5000
  batch_size: int = 96
  learning_rate: float = 2e-4
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  weight_decay: float = 1e-8
  crop_size: int = 224
  scale: tuple[float, float] = (0.08, 1.0)
  ratio: tuple[float, float] = (3 / 4, 4 / 3)
  flip_p: float = 0.5
  jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)
  jitter_p: float = 0.8
  gray_p: float = 0.2  # ToGray
  blur_p: float = 0.1  # GaussianBlur, odd kernel 3..7
  seed: int = 1
  eval_every: int = 0  # steps; 0 = once per epoch (official)
  checkpoint_every: int = 500
  keep_checkpoints: int = 2  # latest ones, besides the best
  log_every: int = 50
  num_workers: int = 8  # augmentation threads

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> 'TrainConfig':
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
      raise ValueError(f'unknown train options {sorted(unknown)}; known: {sorted(names)}')
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  batch_stats: Any
  key: jax.Array  # dropout key of step s is fold_in(key, s)
