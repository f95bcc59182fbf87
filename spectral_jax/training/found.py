"""FOUND head training: the pure pieces of the official recipe (``found_protocol.md`` §5).

The decoder (a 1×1 convolution D → 1 on the frozen last-block keys) is the only trained part.
Per iteration on a batch of 224 × 224 images (grid 28 × 28), as ``main_found_train.py``:

1. own prediction = sigmoid(logits) > 0.5, refined by the pseudo-mask procedure
   (:func:`spectral_jax.spectral.found.pseudo_mask`, 'multi' post-processing, gate IoU > 0.5);
2. loss = 1.5 · BCEWithLogits(logits, refined own prediction)
   + BCEWithLogits(logits, background pseudo-mask) for the first ``stop_bkg_loss`` (100)
     iterations, afterwards + 4.0 · BCEWithLogits(logits, own prediction);
3. AdamW (lr 5e-2, default betas and eps, weight decay 0.01 on weight and bias) with the
   learning rate × 0.95 every 50 iterations (torch StepLR), batch 50, 500 iterations.

Host work (solver, masks): :func:`background_targets`, :func:`iteration_targets`; device work:
:func:`make_train_step` (one jitted step). The head is ``{'weight': [D], 'bias': []}`` float32 and
is saved in the official file format (``{'decoder': {'weight': (1, D, 1, 1), 'bias': (1,)}}``,
torch's zip serialization) by a torch-free writer (:func:`save_head`), read back by
:func:`spectral_jax.spectral.found.read_decoder` (:func:`load_head`). The official draws (decoder
init, shuffling, augmentation) come from torch / NumPy / Python RNGs seeded with 0 and are not
reproduced: :func:`init_head` draws torch's default Conv2d init from a JAX key.
"""

from __future__ import annotations

import dataclasses
import struct
import zipfile
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from spectral_jax.settings import _check, _field, _is_int, _is_number
from spectral_jax.spectral import found
from spectral_jax.spectral import found_background

__all__ = [
  'FoundTrainSettings',
  'RECIPE',
  'LR0',
  'STEP_LR_SIZE',
  'STEP_LR_GAMMA',
  'WEIGHT_DECAY',
  'W_BS_LOSS',
  'W_SELF_LOSS',
  'STOP_BKG_LOSS',
  'MAX_ITER',
  'BATCH_SIZE',
  'init_head',
  'learning_rate',
  'optimizer',
  'bce_with_logits',
  'loss_fn',
  'make_train_step',
  'background_targets',
  'iteration_targets',
  'save_head',
  'load_head',
  'write_torch_zip',
]

# configs/found_DUTS-TR.yaml
LR0 = 5e-2
STEP_LR_SIZE = 50
STEP_LR_GAMMA = 0.95
WEIGHT_DECAY = 0.01  # torch AdamW's default
W_BS_LOSS = 1.5
W_SELF_LOSS = 4.0
STOP_BKG_LOSS = 100
MAX_ITER = 500
BATCH_SIZE = 50

Head = dict  # {'weight': [D] float32, 'bias': [] float32}
RECIPE = 'found'  # config.train.recipe: what sends --mode=train to the FOUND runner


@dataclasses.dataclass(frozen=True)
class FoundTrainSettings:
  """``config.train`` of configs/found.py: the official recipe (configs/found_DUTS-TR.yaml;
  the official names in the help) and how the run saves and logs. Not in ``settings.py``,
  which would pass 500 lines."""

  recipe: str = _field(RECIPE, "'found': --mode=train trains FOUND's head (configs/found.py)")
  steps: int = _field(MAX_ITER, 'updates (max_iter; the official runs max_iter + 1); 0 = targets')
  batch_size: int = _field(
    BATCH_SIZE,
    'images per iteration (batch_size; last batch of an epoch '
    'may be smaller, as the official DataLoader)',
  )
  learning_rate: float = _field(LR0, 'AdamW learning rate (lr0)')
  step_lr_size: int = _field(STEP_LR_SIZE, 'StepLR period in iterations (step_lr_size)')
  step_lr_gamma: float = _field(STEP_LR_GAMMA, 'StepLR factor (step_lr_gamma)')
  weight_decay: float = _field(WEIGHT_DECAY, "AdamW weight decay (torch's default)")
  w_bs_loss: float = _field(W_BS_LOSS, 'weight of the BS-refined own-prediction loss')
  w_self_loss: float = _field(W_SELF_LOSS, 'weight of the own-prediction loss after stop_bkg_loss')
  stop_bkg_loss: int = _field(STOP_BKG_LOSS, 'iterations trained on the pseudo-masks')
  crop_size: int = _field(found.CROP_SIZE, 'training input side (crop_size; a patch multiple)')
  scale_range: tuple = _field(found.SCALE_RANGE, 'random scale U(lo, hi) (scale_range; 1 = off)')
  blur_p: float = _field(found.BLUR_P, 'Gaussian blur probability (proba_photometric_aug)')
  seed: int = _field(0, 'head init, shuffling and augmentation draws (seed)')
  nb_epochs: int = _field(3, 'at most this many epochs (nb_epochs)')
  checkpoint_every: int = _field(50, 'orbax checkpoint every N iterations (and at the end)')
  keep_checkpoints: int = _field(2, 'newest checkpoints kept')
  log_every: int = _field(10, 'train_log.jsonl line every N iterations')
  num_workers: int = _field(4, 'image decoding / augmentation threads')

  def __post_init__(self):
    _check(self.recipe == RECIPE, 'train.recipe', self.recipe, f'use {RECIPE!r}')
    for key, low in (
      ('steps', 0),
      ('batch_size', 1),
      ('step_lr_size', 1),
      ('stop_bkg_loss', 0),
      ('crop_size', 16),
      ('nb_epochs', 1),
      ('checkpoint_every', 1),
      ('keep_checkpoints', 1),
      ('log_every', 1),
      ('num_workers', 1),
    ):
      value = getattr(self, key)
      _check(_is_int(value) and value >= low, f'train.{key}', value, f'use an int >= {low}')
    _check(_is_int(self.seed), 'train.seed', self.seed, 'use an int')
    for key in ('learning_rate', 'step_lr_gamma'):
      value = getattr(self, key)
      _check(_is_number(value) and value > 0, f'train.{key}', value, 'use a number > 0')
    for key in ('weight_decay', 'w_bs_loss', 'w_self_loss'):
      value = getattr(self, key)
      _check(_is_number(value) and value >= 0, f'train.{key}', value, 'use a number >= 0')
    _check(
      _is_number(self.blur_p) and 0 <= self.blur_p <= 1,
      'train.blur_p',
      self.blur_p,
      'use a probability in [0, 1]',
    )
    lo_hi = tuple(self.scale_range) if isinstance(self.scale_range, (tuple, list)) else ()
    _check(
      len(lo_hi) == 2 and all(_is_number(v) and v > 0 for v in lo_hi) and lo_hi[0] <= lo_hi[1],
      'train.scale_range',
      self.scale_range,
      'use (lo, hi) with 0 < lo <= hi',
    )
    object.__setattr__(self, 'scale_range', tuple(float(v) for v in lo_hi))


def init_head(key: jax.Array, dim: int = 384) -> Head:
  """torch ``nn.Conv2d(dim, 1, 1)``'s default init (kaiming_uniform with a = √5, i.e.
  U(±1/√dim) for the weight, and U(±1/√dim) for the bias), drawn from a JAX key."""
  bound = 1.0 / np.sqrt(dim)
  kw, kb = jax.random.split(key)
  return {
    'weight': jax.random.uniform(kw, (dim,), jnp.float32, -bound, bound),
    'bias': jax.random.uniform(kb, (), jnp.float32, -bound, bound),
  }


def learning_rate(
  lr0: float = LR0, step_size: int = STEP_LR_SIZE, gamma: float = STEP_LR_GAMMA
) -> optax.Schedule:
  """torch StepLR stepped once per iteration: lr0 · gamma^(n // step_size) at update n
  (0-based)."""
  return optax.exponential_decay(lr0, step_size, gamma, staircase=True)


def optimizer(
  lr0: float = LR0,
  step_size: int = STEP_LR_SIZE,
  gamma: float = STEP_LR_GAMMA,
  weight_decay: float = WEIGHT_DECAY,
) -> optax.GradientTransformation:
  """torch AdamW (betas 0.9/0.999, eps 1e-8, decoupled weight decay on every parameter, decay
  scaled by the current learning rate) with :func:`learning_rate`."""
  return optax.adamw(
    learning_rate(lr0, step_size, gamma), b1=0.9, b2=0.999, eps=1e-8, weight_decay=weight_decay
  )


def bce_with_logits(logits, targets) -> jax.Array:
  """torch ``BCEWithLogitsLoss()`` (mean over every element)."""
  return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, jnp.asarray(targets, logits.dtype)))


def loss_fn(
  head: Head, keys, bs_targets, second_targets, second_weight, w_bs: float = W_BS_LOSS
) -> jax.Array:
  """The official loss on keys [B, N, D]: ``w_bs`` · BCE(logits, bs_targets) + ``second_weight``
  · BCE(logits, second_targets); targets [B, N] in {0, 1} (see :func:`iteration_targets`)."""
  logits = found.decoder_logits(keys, head['weight'], head['bias'])
  return w_bs * bce_with_logits(logits, bs_targets) + second_weight * bce_with_logits(
    logits, second_targets
  )


def make_train_step(
  tx: optax.GradientTransformation, w_bs: float = W_BS_LOSS
) -> Callable[..., tuple[Head, Any, jax.Array]]:
  """One jitted step: ``step(head, opt_state, keys, bs_targets, second_targets,
  second_weight) -> (head, opt_state, loss)`` (the loss before the update)."""

  @jax.jit
  def step(head, opt_state, keys, bs_targets, second_targets, second_weight):
    loss, grads = jax.value_and_grad(loss_fn)(
      head, keys, bs_targets, second_targets, second_weight, w_bs
    )
    updates, opt_state = tx.update(grads, opt_state, head)
    return optax.apply_updates(head, updates), opt_state, loss

  return step


def background_targets(
  references: Sequence[np.ndarray],
  cls_attention,
  keys,
  grid: Sequence[int],
  bkg_th: float = found.BKG_TH,
) -> np.ndarray:
  """``get_bkg_pseudo_labels_batch``: per image, the background discovery's object mask
  (:func:`found_background.background`) refined by :func:`found_background.pseudo_mask` (the official passes its
  ``shape`` into ``get_all_cc``: 'multi' post-processing). references: uint8 [B, H, W, 3]
  (:func:`found_background.unnormalised_reference` of the inputs); cls_attention [B, heads, N]; keys
  [B, N, D]. Returns bool [B, N] (row-major ``grid``)."""
  cls_attention, keys = np.asarray(cls_attention), np.asarray(keys)
  out = []
  for ref, att, k in zip(references, cls_attention, keys):
    obj = ~found_background.background(att, k, bkg_th)['background'].reshape(tuple(grid))
    out.append(found_background.pseudo_mask(ref, obj, get_all_cc=True)['mask'].reshape(-1))
  return np.stack(out)


def iteration_targets(
  head: Head,
  keys,
  references: Sequence[np.ndarray],
  grid: Sequence[int],
  step: int,
  bkg_targets: Optional[np.ndarray] = None,
  stop_bkg_loss: int = STOP_BKG_LOSS,
  w_self: float = W_SELF_LOSS,
) -> tuple[np.ndarray, np.ndarray, float]:
  """The targets of iteration ``step`` (0-based) before its update.

  Returns (bs_targets [B, N], second_targets [B, N], second_weight): the own prediction
  (sigmoid(logits) > 0.5) refined by :func:`found_background.pseudo_mask` ('multi', gate); then the
  background pseudo-masks (``bkg_targets``, :func:`background_targets`; needed only while
  ``step < stop_bkg_loss``) with weight 1, or afterwards the own prediction with ``w_self``.
  """
  logits = np.asarray(found.decoder_logits(keys, head['weight'], head['bias']))
  own = found.multi_mask(logits).reshape(len(logits), *grid)
  bs = np.stack(
    [found_background.pseudo_mask(r, m)['mask'].reshape(-1) for r, m in zip(references, own)]
  )
  if step < stop_bkg_loss:
    if bkg_targets is None:
      raise ValueError(f'iteration {step} < stop_bkg_loss={stop_bkg_loss} needs bkg_targets')
    return bs, np.asarray(bkg_targets, bool).reshape(bs.shape), 1.0
  return bs, own.reshape(bs.shape), float(w_self)


# ----------------------------------------------------------------------------------------------
# The official decoder file, written without torch
# ----------------------------------------------------------------------------------------------


def save_head(path, head: Head) -> Path:
  """Writes the head as FOUND's ``decoder_weights_niter*.pt``: ``{'decoder': OrderedDict(
  weight (1, D, 1, 1), bias (1,))}`` float32 in torch's zip format (``torch.load`` and
  :func:`load_head` read it). Returns the path."""
  w = np.asarray(head['weight'], np.float32).reshape(1, -1, 1, 1)
  b = np.asarray(head['bias'], np.float32).reshape(1)
  return write_torch_zip(path, {'decoder': {'weight': w, 'bias': b}})


def load_head(path, dim: Optional[int] = None) -> Head:
  """A decoder file (official or :func:`save_head`'s) as a head; see :func:`found.read_decoder`."""
  weight, bias = found.read_decoder(path, dim)
  return {'weight': jnp.asarray(weight), 'bias': jnp.asarray(bias)}


class _Pickle:
  """Protocol-2 pickle opcodes for the few objects of a state dict (no memo)."""

  def __init__(self):
    self.out = bytearray(b'\x80\x02')  # PROTO 2

  def string(self, s: str):
    raw = s.encode('utf-8')
    self.out += b'X' + struct.pack('<I', len(raw)) + raw  # BINUNICODE

  def integer(self, i: int):
    if 0 <= i < 256:
      self.out += b'K' + bytes([i])  # BININT1
    elif -(2**31) <= i < 2**31:
      self.out += b'J' + struct.pack('<i', i)  # BININT
    else:
      raw = i.to_bytes((i.bit_length() + 8) // 8, 'little', signed=True)
      self.out += b'\x8a' + bytes([len(raw)]) + raw  # LONG1

  def ints(self, values):
    self.out += b'('  # MARK
    for v in values:
      self.integer(int(v))
    self.out += b't'  # TUPLE

  def global_(self, module: str, name: str):
    self.out += b'c' + f'{module}\n{name}\n'.encode()  # GLOBAL

  def ordered_dict(self):
    self.global_('collections', 'OrderedDict')
    self.out += b')R'  # EMPTY_TUPLE, REDUCE

  def tensor(self, key: str, array: np.ndarray):
    """torch._utils._rebuild_tensor_v2(storage, 0, size, stride, False, OrderedDict())."""
    self.global_('torch._utils', '_rebuild_tensor_v2')
    self.out += b'(('  # MARK (args), MARK (persistent id)
    self.string('storage')
    self.global_('torch', 'FloatStorage')
    self.string(key)
    self.string('cpu')
    self.integer(array.size)
    self.out += b'tQ'  # TUPLE, BINPERSID
    self.integer(0)
    self.ints(array.shape)
    strides = np.cumprod((1,) + array.shape[::-1][:-1])[::-1] if array.ndim else ()
    self.ints(strides)
    self.out += b'\x89'  # NEWFALSE (requires_grad)
    self.ordered_dict()  # backward hooks
    self.out += b'tR'  # TUPLE, REDUCE


def write_torch_zip(path, tree: dict) -> Path:
  """``torch.save`` of a dict of (dicts of) float32 arrays, torch-free: inner dicts become
  state-dict OrderedDicts (with torch's ``_metadata``), arrays float32 tensors on the CPU;
  records stored uncompressed and 64-byte aligned as torch writes them."""
  pk, storages = _Pickle(), []

  def emit(node, top: bool):
    if isinstance(node, dict):
      if top:
        pk.out += b'}'  # EMPTY_DICT
      else:
        pk.ordered_dict()
      if node:
        pk.out += b'('  # MARK
        for name, value in node.items():
          pk.string(str(name))
          emit(value, False)
        pk.out += b'u'  # SETITEMS
      if not top:  # state dicts carry {'_metadata': OrderedDict({'': {'version': 1}})}
        pk.out += b'}'
        pk.string('_metadata')
        pk.ordered_dict()
        pk.string('')
        pk.out += b'}'
        pk.string('version')
        pk.integer(1)
        pk.out += b'sssb'  # SETITEM ×3, BUILD
      return
    array = np.ascontiguousarray(np.asarray(node, np.float32))
    key = str(len(storages))
    storages.append((key, array.astype('<f4').tobytes()))
    pk.tensor(key, array)

  emit(tree, True)
  pk.out += b'.'  # STOP
  path = Path(path)
  records = [('data.pkl', bytes(pk.out)), ('byteorder', b'little')]
  records += [(f'data/{key}', raw) for key, raw in storages] + [('version', b'3\n')]
  with open(path, 'wb') as f, zipfile.ZipFile(f, 'w', zipfile.ZIP_STORED) as zf:
    for name, raw in records:
      info = zipfile.ZipInfo(f'archive/{name}', date_time=(1980, 1, 1, 0, 0, 0))
      info.compress_type = zipfile.ZIP_STORED
      start = f.tell() + 30 + len(info.filename)  # data offset without an extra field
      pad = -start % 64
      if pad:  # torch's "FB" extra field: payload after a 4-byte field header
        pad = pad if pad >= 4 else pad + 64
        info.extra = b'FB' + struct.pack('<H', pad - 4) + b'Z' * (pad - 4)
      zf.writestr(info, raw)
  return path
