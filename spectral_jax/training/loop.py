"""Self-training of the DeepLabV3+ segmenter on pseudo-labels (official §7.3), Flax-imagenet style.

* Optimiser: AdamW (β 0.9/0.999, eps 1e-8), weight decay only on ≥2-D weights
  (timm's rule), learning rate decaying linearly to 0 over ``steps`` (no warm-up).
  Frozen backbone parameters (ResNet: conv1, bn1, layer1–3; see
  ``segmenter.frozen_backbone_modules``) get no update and no optimiser state, while
  every BatchNorm, frozen ones included, updates its running statistics in train mode.
* Data: host-side numpy augmentation (``augment``) — random resized crop (bicubic image,
  nearest mask), horizontal flip, colour jitter, to-gray, Gaussian blur (the official
  intended albumentations recipe) — in a thread pool, one batch ahead.
  The order is a pure function of (seed, step): epoch e uses permutation
  ``default_rng([seed, e])`` and example j of it augments with
  ``default_rng([seed, e, j])``, so a resumed run sees exactly the same batches.
* Parallelism: one jitted step over a ``('data',)`` mesh of every device of every
  process; the batch is sharded, the state replicated. BatchNorm statistics are
  therefore global-batch statistics. On several hosts each process loads and augments
  only the rows of each global batch that live on its devices
  (``jax.make_array_from_callback``), evaluates a strided share of the val set, and the
  confusion matrices are summed across processes: results equal a one-process run.
* Checkpoints (orbax, ``train_checkpoints``): every ``checkpoint_every`` steps and at each
  evaluation; the 2 latest and the best by val mIoU are kept. A checkpoint holds the whole
  ``TrainState`` (step, params, optimiser state, batch stats, dropout key) and
  the data position; dropout keys are ``fold_in(key, step)``, so resuming is exact.

Deviations from the official script (which does not run as released, §10.7):
training stops at exactly ``steps`` (the official loop finishes the epoch with
lr = 0); with the ViT, eval images are cropped top-left to multiples of the patch
size (the ViT needs it; GT is cropped alike); the ResNet runs at the original size.
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from spectral_jax import metrics, parallel
from spectral_jax import artifacts
from spectral_jax.training import augment
from spectral_jax.training import saving as checkpoints
from spectral_jax.training.state import Example, TrainConfig, TrainState
from spectral_jax.models import segmenter, vit

# --------------------------------------------------------------------------------------
# Data order: a pure function of (seed, step)


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  if num_examples < batch_size:
    raise ValueError(f'{num_examples} training examples cannot fill one batch of {batch_size}')
  return num_examples // batch_size  # drop_last=True


def batch_plan(
  step: int, num_examples: int, batch_size: int, seed: int
) -> tuple[int, np.ndarray, np.ndarray]:
  """(epoch, dataset indices [B], positions within the epoch [B]) of a global step."""
  epoch, pos = divmod(step, steps_per_epoch(num_examples, batch_size))
  perm = np.random.default_rng([seed, epoch]).permutation(num_examples)
  positions = np.arange(pos * batch_size, (pos + 1) * batch_size)
  return epoch, perm[positions], positions


def _augmented(
  data: Sequence[Example], index: int, seed: int, epoch: int, position: int, cfg: TrainConfig
) -> Example:
  image, label = data[index]
  return augment.augment(image, label, np.random.default_rng([seed, epoch, position]), cfg)


def train_batches(
  data: Sequence[Example],
  cfg: TrainConfig,
  start_step: int,
  end_step: int,
  prefetch: int = 2,
  rows: Optional[Sequence[int]] = None,
) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
  """(step, {'image' uint8 [R, S, S, 3], 'label' int32 [R, S, S]}) for steps [start, end).

  ``rows``: which rows of each global batch to load (default all B; see ``local_rows``).
  """
  rows = np.arange(cfg.batch_size) if rows is None else np.asarray(rows)
  with concurrent.futures.ThreadPoolExecutor(cfg.num_workers) as pool:

    def submit(step):
      epoch, indices, positions = batch_plan(step, len(data), cfg.batch_size, cfg.seed)
      return [
        pool.submit(_augmented, data, int(i), cfg.seed, epoch, int(p), cfg)
        for i, p in zip(indices[rows], positions[rows])
      ]

    pending = collections.deque()
    for step in range(start_step, end_step):
      while len(pending) < prefetch and step + len(pending) < end_step:
        pending.append(submit(step + len(pending)))
      examples = [f.result() for f in pending.popleft()]
      yield (
        step,
        {
          'image': np.stack([e[0] for e in examples]),
          'label': np.stack([e[1] for e in examples]).astype(np.int32),
        },
      )


# --------------------------------------------------------------------------------------
# Model, optimiser, steps


def weight_decay_mask(params: Any) -> Any:
  """True for ≥2-D weights (kernels, embeddings); biases and norm scales are not decayed."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def learning_rate_schedule(cfg: TrainConfig) -> optax.Schedule:
  return optax.linear_schedule(cfg.learning_rate, 0.0, cfg.steps)


def freeze_labels(params: Any, frozen: frozenset[str]) -> Any:
  """'frozen' on ``params['backbone'][name]`` subtrees with ``name`` in ``frozen``, else 'train'."""

  def label(path, _):
    keys = [getattr(k, 'key', None) for k in path[:2]]
    return 'frozen' if keys[0] == 'backbone' and keys[1] in frozen else 'train'

  return jax.tree_util.tree_map_with_path(label, params)


@functools.lru_cache(maxsize=None)
def create_optimizer(
  cfg: TrainConfig, frozen: tuple[str, ...] = ()
) -> optax.GradientTransformation:
  """AdamW (cached per config: the same object keeps jit caches warm across runs).

  ``frozen``: top-level backbone parameter names left unchanged (``set_to_zero``: no
  update, no decay, no Adam moments). Without any, plain AdamW (the ViT's state layout).
  """
  adamw = optax.adamw(
    learning_rate_schedule(cfg),
    b1=cfg.b1,
    b2=cfg.b2,
    eps=cfg.eps,
    weight_decay=cfg.weight_decay,
    mask=weight_decay_mask,
  )
  if not frozen:
    return adamw
  labels = functools.partial(freeze_labels, frozen=frozenset(frozen))
  return optax.multi_transform({'train': adamw, 'frozen': optax.set_to_zero()}, labels)


def model_optimizer(
  model: segmenter.DeepLabV3Plus, cfg: TrainConfig
) -> optax.GradientTransformation:
  """The optimiser of ``model``: AdamW with its frozen backbone stages (official rule)."""
  return create_optimizer(cfg, segmenter.frozen_backbone_modules(model))


def create_train_state(
  model: segmenter.DeepLabV3Plus,
  cfg: TrainConfig,
  key: jax.Array,
  backbone_params: Optional[Mapping[str, Any]] = None,
) -> TrainState:
  """Random head + (optionally) pretrained backbone.

  ``backbone_params``: the ViT's params tree, or a variables dict {'params', 'batch_stats'}
  (the ResNet's, as ``backbones.load_backbone_params`` returns it).
  """
  init_key, dropout_key = jax.random.split(key)
  variables = segmenter.init_variables(model, init_key, cfg.crop_size)
  if backbone_params is not None:
    if 'params' not in backbone_params:  # a bare ViT params tree
      backbone_params = {'params': backbone_params}
    variables = segmenter.with_backbone_variables(variables, backbone_params)
  params = variables['params']
  return TrainState(
    step=jnp.int32(0),
    params=params,
    opt_state=model_optimizer(model, cfg).init(params),
    batch_stats=variables['batch_stats'],
    key=dropout_key,
  )


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean over all pixels (official: no ignore index, no class weights)."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def train_step(
  model: segmenter.DeepLabV3Plus,
  tx: optax.GradientTransformation,
  state: TrainState,
  batch: Mapping[str, jax.Array],
) -> tuple[TrainState, dict[str, jax.Array]]:
  images = vit.normalize(batch['image'])
  dropout_key = jax.random.fold_in(state.key, state.step)

  def loss_fn(params):
    logits, updates = model.apply(
      {'params': params, 'batch_stats': state.batch_stats},
      images,
      train=True,
      rngs={'dropout': dropout_key},
      mutable=['batch_stats'],
    )
    return cross_entropy(logits, batch['label']), (logits, updates['batch_stats'])

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  new_state = state.replace(
    step=state.step + 1,
    params=optax.apply_updates(state.params, updates),
    opt_state=opt_state,
    batch_stats=batch_stats,
  )
  accuracy = jnp.mean(jnp.argmax(logits, -1) == batch['label'])
  return new_state, {'loss': loss, 'accuracy': accuracy}


def data_mesh(
  devices: Optional[Sequence[Any]] = None, batch_size: Optional[int] = None
) -> jax.sharding.Mesh:
  """Devices (default: all) on one 'data' axis; Auto axis: XLA inserts the reductions.

  With ``batch_size`` in a one-process run, the most devices that split it evenly
  (e.g. 1 of 2 CPU devices for an odd batch).
  """
  devices = jax.devices() if devices is None else list(devices)
  if batch_size is not None and jax.process_count() == 1:
    usable = max(n for n in range(1, len(devices) + 1) if batch_size % n == 0)
    if usable < len(devices):
      logging.info('batch %d: training on %d of %d devices', batch_size, usable, len(devices))
    devices = devices[:usable]
  return jax.make_mesh(
    (len(devices),), ('data',), axis_types=(jax.sharding.AxisType.Auto,), devices=devices
  )


def local_rows(sharding: jax.sharding.Sharding, batch_size: int) -> np.ndarray:
  """Rows of a [batch_size, ...] global batch that live on this process's devices."""
  index = sharding.addressable_devices_indices_map((batch_size,))
  return np.unique(np.concatenate([np.arange(batch_size)[i] for i in index.values()]))


def replicate(tree: Any, sharding: jax.sharding.Sharding) -> Any:
  """Host values (equal on every process) as arrays replicated over ``sharding``'s mesh.

  Unlike ``jax.device_put`` of a device array, this needs no cross-host transfer.
  """

  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

  return jax.tree.map(put, tree)


def global_batch(
  local: Mapping[str, np.ndarray],
  rows: np.ndarray,
  sharding: jax.sharding.Sharding,
  batch_size: int,
) -> dict[str, jax.Array]:
  """The global batch from this process's ``rows`` of it (as ordered by ``local_rows``)."""

  def build(x):
    def shard(index):
      return x[np.searchsorted(rows, np.arange(batch_size)[index[0]])]

    return jax.make_array_from_callback((batch_size,) + x.shape[1:], sharding, shard)

  return {key: build(x) for key, x in local.items()}


@functools.lru_cache(maxsize=None)
def compiled_train_step(
  model: segmenter.DeepLabV3Plus, tx: optax.GradientTransformation, mesh: jax.sharding.Mesh
):
  """The jitted step: batch sharded over 'data', state replicated."""
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  sharded = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
  donate = () if jax.default_backend() == 'cpu' else (0,)  # CPU cannot donate
  return jax.jit(
    functools.partial(train_step, model, tx),
    in_shardings=(replicated, sharded),
    out_shardings=(replicated, replicated),
    donate_argnums=donate,
  )


# --------------------------------------------------------------------------------------
# Evaluation


@functools.partial(jax.jit, static_argnums=0)
def _predict(model: segmenter.DeepLabV3Plus, variables: Any, image: jax.Array) -> jax.Array:
  logits = model.apply(variables, vit.normalize(image)[None], train=False)
  return jnp.argmax(logits[0], -1).astype(jnp.int32)


def predict(model: segmenter.DeepLabV3Plus, variables: Any, image: np.ndarray) -> np.ndarray:
  """Label map of one image [H', W'], at its resolution cropped top-left to multiples of P
  (ViT; the ResNet takes any size: H' = H, W' = W)."""
  crop = vit.crop_to_patches(image, segmenter.input_multiple(model))
  return np.asarray(_predict(model, variables, crop))  # one compile per (cropped) size


def evaluate(
  model: segmenter.DeepLabV3Plus,
  variables: Any,
  data: Sequence[Example],
  num_classes: Optional[int] = None,
  hungarian: bool = False,
) -> dict[str, Any]:
  """mIoU over ``data`` (GT 255 = void; ``num_classes`` defaults to the model's), with
  ``num_scored`` and ``num_skipped``: an item whose loading raises a ValueError (an unusable
  image or GT, see ``tasks.train.GTDataset``) is skipped with a warning, not the end of the run.

  Hungarian matching is for cluster-valued outputs; a self-trained model predicts
  class ids already (identity matching).
  """
  num_classes = num_classes or model.num_classes
  # Each process predicts a strided share with its own copy of the (replicated) variables.
  variables = jax.tree.map(_local_copy, variables)
  confusion = np.zeros((model.num_classes, num_classes), np.int64)
  counts = np.zeros(2, np.int64)  # scored, skipped
  for i in range(jax.process_index(), len(data), jax.process_count()):
    try:
      image, gt = data[i]
    except ValueError as e:
      logging.warning('evaluation skips %s', e)
      counts[1] += 1
      continue
    pred = predict(model, variables, image)
    confusion += metrics.confusion_matrix(
      pred, gt[: pred.shape[0], : pred.shape[1]], model.num_classes, num_classes
    )
    counts[0] += 1
  result = score_confusion(parallel.process_sum(confusion), hungarian)
  scored, skipped = parallel.process_sum(counts)
  return dict(result, num_scored=int(scored), num_skipped=int(skipped))


def _local_copy(x: Any) -> Any:
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return x.addressable_data(0)  # replicated: every device holds the whole value
  return x


def score_confusion(confusion: np.ndarray, hungarian: bool) -> dict[str, Any]:
  """{'miou', 'per_class_iou', 'matching'} from a dataset confusion matrix [n_pred, n_gt]."""
  if hungarian:
    matching = metrics.hungarian_match(confusion)
  else:
    n = min(confusion.shape)
    matching = np.stack([np.arange(n), np.arange(n)], 1)
  miou, per_class = metrics.miou_from_confusion(confusion, matching)
  return {
    'miou': miou,
    'per_class_iou': per_class.tolist(),
    'matching': [tuple(int(v) for v in m) for m in matching],
  }


# --------------------------------------------------------------------------------------
# The loop


def _data_position(step: int, n: int, cfg: TrainConfig) -> dict:
  epoch, pos = divmod(step, steps_per_epoch(n, cfg.batch_size))
  return {
    'step': step,
    'epoch': epoch,
    'position': pos,
    'data_seed': cfg.seed,
    'num_examples': n,
    'batch_size': cfg.batch_size,
  }


def _due(step: int, every: int) -> bool:
  return every > 0 and step % every == 0


def _check_data_position(saved: dict, current: dict) -> None:
  for key in ('data_seed', 'num_examples', 'batch_size'):
    if saved.get(key) != current[key]:
      raise ValueError(
        f'cannot resume exactly: checkpoint has {key}={saved.get(key)}, this run '
        f'has {current[key]} (use a fresh workdir)'
      )


def _trim_log(log_path: Path, step: int) -> None:
  """Drops log lines after ``step`` (written after the checkpoint a resumed run starts
  from), so a resumed run logs each step once."""
  records = artifacts.read_jsonl(log_path)
  kept = [r for r in records if r.get('step', 0) <= step]
  if len(kept) != len(records):
    artifacts.save_jsonl(log_path, kept)


def _check_finite(record: Mapping[str, float], step: int, cfg: TrainConfig) -> None:
  bad = sorted(k for k, v in record.items() if not np.isfinite(v))
  if bad:
    raise FloatingPointError(
      f'training diverged at step {step}: {", ".join(bad)} not finite '
      f'(learning_rate={cfg.learning_rate}); the last finite checkpoint is kept: lower '
      '--config.train.learning_rate and rerun'
    )


def train_and_evaluate(
  cfg: TrainConfig,
  model: segmenter.DeepLabV3Plus,
  train_data: Sequence[Example],
  val_data: Sequence[Example],
  workdir: Path,
  backbone_params: Optional[Mapping[str, Any]] = None,
  stop_after: Optional[int] = None,
  mesh: Optional[jax.sharding.Mesh] = None,
) -> dict[str, Any]:
  """Trains (resuming from ``workdir/checkpoints`` if present); returns a summary.

  ``stop_after`` ends the run after that global step, like a preemption
  (checkpoints on disk are what a killed run leaves behind). ``mesh`` defaults to
  all devices on the 'data' axis.
  """
  workdir = Path(workdir)
  mesh = mesh or data_mesh(batch_size=cfg.batch_size)
  if cfg.batch_size % mesh.size:
    raise ValueError(
      f'--config.train.batch_size={cfg.batch_size} is not divisible by the {mesh.size} '
      'devices of this multi-process run: use a multiple of the device count'
    )
  n = len(train_data)
  spe = steps_per_epoch(n, cfg.batch_size)
  eval_every = cfg.eval_every or spe
  tx = model_optimizer(model, cfg)
  step_fn = compiled_train_step(model, tx, mesh)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  sharded = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
  rows = local_rows(sharded, cfg.batch_size)

  state = create_train_state(model, cfg, jax.random.PRNGKey(cfg.seed), backbone_params)
  state = replicate(state, replicated)
  mngr = checkpoints.checkpoint_manager(workdir / 'checkpoints', cfg.keep_checkpoints)
  if mngr.latest_step() is not None:
    state, saved_position = checkpoints.restore(mngr, mngr.latest_step(), state)
    _check_data_position(saved_position, _data_position(int(state.step), n, cfg))
    logging.info('resumed from step %d', int(state.step))
  start = int(state.step)
  end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
  log_path = workdir / 'train_log.jsonl'
  if parallel.is_main_process():
    _trim_log(log_path, start)
  last_eval: Optional[dict] = None
  tick = time.perf_counter()
  log = artifacts.append_jsonl if parallel.is_main_process() else lambda *_: None
  try:  # a failure mid-run still leaves the checkpoint being written complete
    for step, local in train_batches(train_data, cfg, start, end, rows=rows):
      state, step_metrics = step_fn(state, global_batch(local, rows, sharded, cfg.batch_size))
      done = step + 1
      if _due(done, cfg.log_every) or done == cfg.steps:
        record = {k: float(v) for k, v in step_metrics.items()}
        _check_finite(record, done, cfg)
        record.update(
          step=done,
          learning_rate=float(learning_rate_schedule(cfg)(step)),
          seconds=time.perf_counter() - tick,
        )
        log(log_path, [record])
        logging.info('step %d: %s', done, record)
      should_eval = _due(done, eval_every) or done == cfg.steps
      if should_eval and val_data:
        last_eval = evaluate(
          model, {'params': state.params, 'batch_stats': state.batch_stats}, val_data
        )
        log(log_path, [{'step': done, 'val_miou': last_eval['miou']}])
        logging.info('step %d: val mIoU %.4f', done, last_eval['miou'])
      if should_eval or _due(done, cfg.checkpoint_every):
        _check_finite({k: float(v) for k, v in step_metrics.items()}, done, cfg)  # no NaN saved
        checkpoints.save(
          mngr,
          state,
          _data_position(done, n, cfg),
          model,
          None if last_eval is None or not should_eval else last_eval['miou'],
        )
  finally:
    mngr.wait_until_finished()
  best_step = mngr.best_step()
  summary = {
    'state': state,
    'step': int(state.step),
    'best_step': best_step,
    'best_val_miou': None if best_step is None else mngr.metrics(best_step)['val_miou'],
    'final': last_eval,
  }
  mngr.close()
  return summary
