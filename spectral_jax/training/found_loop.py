"""FOUND's training loop (``main_found_train.py``, ``found_protocol.md`` §5) with resumable
orbax checkpoints.

Per iteration on a batch of augmented 224 × 224 inputs: the frozen ViT's last-block keys and
CLS attention (:func:`spectral_jax.spectral.found.keys_and_cls_attention`), the targets of
:func:`spectral_jax.training.found.iteration_targets` (the BS-refined own prediction; for the
first ``stop_bkg_loss`` iterations the pseudo-masks, afterwards the own prediction ×
``w_self_loss``) and one jitted AdamW step of the head (:func:`training.found.make_train_step`).
The pseudo-masks are FOUND's background discovery on that very batch, as the official, or fixed
grid targets of another method (:mod:`spectral_jax.training.found_targets`).

Data order and draws are pure functions of (seed, iteration), so a resumed run sees exactly the
batches an uninterrupted one would: epoch e shuffles with ``default_rng([seed, e])``; the
example at position j of epoch e draws its random scale and blur from
``default_rng([seed, e, j, 1])`` (:func:`spectral_jax.spectral.found.draw_augmentation`). As
the official DataLoader (``shuffle=True``, no ``drop_last``) the last batch of an epoch holds
the remainder; training stops after ``steps`` updates or ``nb_epochs`` epochs, whichever comes
first (the official runs iterations 0 … max_iter, i.e. max_iter + 1 updates, then saves
``decoder_weights_niter{max_iter}.pt``: ``steps = max_iter + 1`` repeats that count).

A checkpoint (``checkpoint_every`` updates and the last) holds the head, the optimiser state,
the iteration and the data position (epoch, position, the image list's digest): a killed run
restarts from the newest one and ends bitwise equal to an uninterrupted run.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import math
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from spectral_jax import artifacts
from spectral_jax.spectral import found
from spectral_jax.spectral import found_background
from spectral_jax.training import found as found_train

__all__ = [
  'TrainData',
  'batches_per_epoch',
  'total_steps',
  'batch_plan',
  'augmented_image',
  'checkpoint_manager',
  'restore_head',
  'train',
]


@dataclasses.dataclass(frozen=True)
class TrainData:
  """The training images. ``load(i)``: uint8 [H, W, 3] of image i; ``targets(i)``: its fixed
  bool grid target, or None for FOUND's own background targets computed per batch."""

  ids: Sequence[str]
  load: Callable[[int], np.ndarray]
  targets: Optional[Callable[[int], np.ndarray]] = None

  def digest(self) -> str:
    return hashlib.sha256('\n'.join(self.ids).encode()).hexdigest()


def batches_per_epoch(num_examples: int, batch_size: int) -> int:
  """The official DataLoader's batches per epoch (no drop_last): ⌈N / B⌉."""
  if num_examples < 1:
    raise ValueError('no training images')
  return math.ceil(num_examples / batch_size)


def total_steps(cfg: found_train.FoundTrainSettings, num_examples: int) -> int:
  """Updates of a run: ``steps``, at most ``nb_epochs`` epochs."""
  return min(cfg.steps, cfg.nb_epochs * batches_per_epoch(num_examples, cfg.batch_size))


def batch_plan(
  step: int, num_examples: int, batch_size: int, seed: int
) -> tuple[int, np.ndarray, np.ndarray]:
  """(epoch, dataset indices [b], positions within the epoch [b]) of iteration ``step``."""
  epoch, pos = divmod(step, batches_per_epoch(num_examples, batch_size))
  perm = np.random.default_rng([seed, epoch]).permutation(num_examples)
  positions = np.arange(pos * batch_size, min((pos + 1) * batch_size, num_examples))
  return epoch, perm[positions], positions


def augmented_image(
  image: np.ndarray, cfg: found_train.FoundTrainSettings, epoch: int, position: int
) -> np.ndarray:
  """The training input of one draw: uint8 [crop, crop, 3] (random scale, blur coin)."""
  rng = np.random.default_rng([cfg.seed, epoch, position, 1])
  draw = found_background.draw_augmentation(rng, cfg.scale_range, cfg.blur_p)
  return found_background.train_image(image, cfg.crop_size, draw['scale'], draw['blur_sigma'])


def checkpoint_manager(
  directory: Path, keep: int, read_only: bool = False
) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
    max_to_keep=keep, create=not read_only, read_only=read_only
  )
  handlers = {'state': ocp.StandardCheckpointHandler(), 'data': ocp.JsonCheckpointHandler()}
  return ocp.CheckpointManager(Path(directory).absolute(), options=options, item_handlers=handlers)


def restore_head(directory: Path, step: Optional[int] = None) -> tuple[found_train.Head, int]:
  """(head, iteration) of a checkpoint under ``directory`` (default: the newest)."""
  mngr = checkpoint_manager(directory, 1, read_only=True)
  try:
    step = mngr.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'no FOUND checkpoint under {directory}')
    state = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  finally:
    mngr.close()
  head = state['state']['head']
  return {'weight': np.asarray(head['weight']), 'bias': np.asarray(head['bias'])}, step


def _restore(mngr, step: int, state: dict, data: TrainData, cfg) -> dict:
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  out = mngr.restore(
    step,
    args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()),
  )
  position = dict(out['data'])
  expected = dict(
    images=len(data.ids), digest=data.digest(), batch_size=cfg.batch_size, seed=cfg.seed
  )
  changed = [k for k, v in expected.items() if position.get(k) != v]
  if changed:
    raise ValueError(
      f'checkpoint {mngr.directory}/{step} was trained on other data ({", ".join(changed)} '
      'changed: the images with a pseudo-mask, train.batch_size or train.seed); use another '
      '--workdir, or --config.overwrite=True to train again'
    )
  return out['state']


def _position(step: int, data: TrainData, cfg) -> dict:
  epoch, pos = divmod(step, batches_per_epoch(len(data.ids), cfg.batch_size))
  return dict(
    step=step,
    epoch=epoch,
    position=pos * cfg.batch_size,
    images=len(data.ids),
    digest=data.digest(),
    batch_size=cfg.batch_size,
    seed=cfg.seed,
  )


def _batches(data: TrainData, cfg, start: int, end: int, pool) -> Any:
  """(step, uint8 [b, S, S, 3], fixed targets [b, gh, gw] or None) for steps [start, end),
  decoded and augmented by ``pool`` one batch ahead."""

  def submit(step):
    epoch, indices, positions = batch_plan(step, len(data.ids), cfg.batch_size, cfg.seed)
    work = lambda i, p: augmented_image(data.load(int(i)), cfg, epoch, int(p))  # noqa: E731
    images = [pool.submit(work, i, p) for i, p in zip(indices, positions)]
    targets = None
    if data.targets is not None and step < cfg.stop_bkg_loss:
      targets = [pool.submit(data.targets, int(i)) for i in indices]
    return images, targets

  pending = submit(start) if start < end else None
  for step in range(start, end):
    images, targets = pending
    pending = submit(step + 1) if step + 1 < end else None
    yield (
      step,
      np.stack([f.result() for f in images]),
      None if targets is None else np.stack([f.result() for f in targets]),
    )


def train(
  cfg: found_train.FoundTrainSettings,
  extractor: Any,
  data: TrainData,
  workdir: Path,
  bkg_th: float = found.BKG_TH,
  stop_after: Optional[int] = None,
) -> dict[str, Any]:
  """Trains (or resumes) the head; checkpoints in ``workdir/checkpoints``, one
  ``workdir/train_log.jsonl`` line per ``log_every`` updates ({step, loss, lr}).

  ``stop_after``: stop once this many updates are done, without the checkpoint a finished run
  writes (what a kill leaves; tests). Returns {'head', 'step', 'total', 'loss', 'stopped'}.
  """
  workdir = Path(workdir)
  total = total_steps(cfg, len(data.ids))
  tx = found_train.optimizer(
    cfg.learning_rate, cfg.step_lr_size, cfg.step_lr_gamma, cfg.weight_decay
  )
  schedule = found_train.learning_rate(cfg.learning_rate, cfg.step_lr_size, cfg.step_lr_gamma)
  head = found_train.init_head(jax.random.key(cfg.seed), extractor.arch.embed_dim)
  state = dict(head=head, opt_state=tx.init(head))
  mngr = checkpoint_manager(workdir / 'checkpoints', cfg.keep_checkpoints)
  log_path = workdir / 'train_log.jsonl'
  try:
    start = mngr.latest_step() or 0
    if start > total:
      raise ValueError(
        f"{mngr.directory} holds iteration {start}, beyond this run's {total} (train.steps="
        f'{cfg.steps}, train.nb_epochs={cfg.nb_epochs}); use another --workdir, or raise '
        'train.steps'
      )
    if start:
      state = _restore(mngr, start, state, data, cfg)
      logging.info('resuming FOUND training at iteration %d of %d', start, total)
    log = [r for r in artifacts.read_jsonl(log_path) if r.get('step', 0) <= start]
    artifacts.save_jsonl(log_path, log)  # lines of iterations after the checkpoint go
    step_fn = found_train.make_train_step(tx, cfg.w_bs_loss)
    head, opt_state, loss, done = state['head'], state['opt_state'], None, start
    grid = (cfg.crop_size // extractor.arch.patch_size,) * 2
    with concurrent.futures.ThreadPoolExecutor(cfg.num_workers) as pool:
      for step, images, fixed in _batches(data, cfg, start, total, pool):
        x = np.stack([found_background.train_input(im) for im in images])
        keys, attention = found_background.keys_and_cls_attention(extractor, x)
        references = [found_background.unnormalised_reference(xi) for xi in x]
        bkg = fixed
        if step < cfg.stop_bkg_loss and fixed is None:
          bkg = found_train.background_targets(references, attention, keys, grid, bkg_th)
        bs, second, weight = found_train.iteration_targets(
          head, keys, references, grid, step, bkg, cfg.stop_bkg_loss, cfg.w_self_loss
        )
        head, opt_state, loss = step_fn(head, opt_state, keys, bs, second, weight)
        done = step + 1
        if done % cfg.log_every == 0 or done == total:
          record = dict(step=done, loss=float(loss), lr=float(schedule(step)))
          artifacts.append_jsonl(log_path, [record])
          logging.info('FOUND iteration %d/%d: loss %.4f', done, total, record['loss'])
        if stop_after is not None and done >= stop_after and done < total:
          return dict(head=head, step=done, total=total, loss=float(loss), stopped=True)
        if done % cfg.checkpoint_every == 0 or done == total:
          mngr.save(
            done,
            args=ocp.args.Composite(
              state=ocp.args.StandardSave(dict(head=head, opt_state=opt_state)),
              data=ocp.args.JsonSave(_position(done, data, cfg)),
            ),
          )
    mngr.wait_until_finished()
  finally:
    mngr.close()
  last = artifacts.read_jsonl(log_path)
  loss = float(loss) if loss is not None else (last[-1]['loss'] if last else None)
  return dict(head=head, step=done, total=total, loss=loss, stopped=False)
