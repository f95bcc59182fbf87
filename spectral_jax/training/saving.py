"""Orbax checkpoints of self-training: one manager keeping the newest steps and the best by
val mIoU, architecture checks that name the offending parameters, and restores that skip
damaged steps (falling back to the newest readable one and moving the damaged aside)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Optional

import jax
import orbax.checkpoint as ocp
from absl import logging

from spectral_jax import parallel
from spectral_jax.models import segmenter

from spectral_jax.training.state import TrainState


def checkpoint_manager(
  directory: Path, keep_latest: int = 2, read_only: bool = False
) -> ocp.CheckpointManager:
  """Keeps the ``keep_latest`` newest checkpoints plus the best one by 'val_miou'.

  Steps whose metadata is damaged (orbax reads it here) are moved aside with a warning;
  a read-only manager leaves them in place and only ranks by recency instead.
  """
  try:
    return _checkpoint_manager(directory, keep_latest, read_only, rank=True)
  except Exception as e:  # orbax reads every step's metrics on creation
    bad = _damaged_metadata_steps(Path(directory))
    if not bad:
      raise
    logging.warning('checkpoints %s under %s have damaged metadata (%s)', bad, directory, e)
    if read_only:
      return _checkpoint_manager(directory, keep_latest, read_only, rank=False)
    _set_aside(Path(directory).absolute(), bad)
    return _checkpoint_manager(directory, keep_latest, read_only, rank=True)


def _checkpoint_manager(
  directory: Path, keep_latest: int, read_only: bool, rank: bool
) -> ocp.CheckpointManager:
  policies = ocp.checkpoint_managers
  best = lambda m: m['val_miou']
  options = ocp.CheckpointManagerOptions(
    preservation_policy=policies.AnyPreservationPolicy(
      [
        policies.LatestN(keep_latest),
        policies.BestN(get_metric_fn=best, n=1, keep_checkpoints_without_metrics=False),
      ]
    )
    if rank
    else policies.LatestN(keep_latest),
    best_fn=best if rank else None,
    best_mode='max',
    read_only=read_only,
    create=not read_only,
    lightweight_initialize=not rank,  # reads no step's metrics (or other metadata)
  )
  handlers = {
    'state': ocp.StandardCheckpointHandler(),
    'data': ocp.JsonCheckpointHandler(),
    'model': ocp.JsonCheckpointHandler(),
  }
  return ocp.CheckpointManager(Path(directory).absolute(), options=options, item_handlers=handlers)


def _damaged_metadata_steps(directory: Path) -> list[int]:
  bad = []
  for step_dir in directory.iterdir() if directory.is_dir() else ():
    if not step_dir.name.isdigit():
      continue
    for meta in (step_dir / '_CHECKPOINT_METADATA', step_dir / 'metrics' / 'metrics'):
      try:
        if meta.exists():
          json.loads(meta.read_text())
      except (OSError, ValueError):  # UnicodeDecodeError is a ValueError
        bad.append(int(step_dir.name))
        break
  return sorted(bad)


def save(
  mngr: ocp.CheckpointManager,
  state: TrainState,
  data_position: dict,
  model: segmenter.DeepLabV3Plus,
  val_miou: Optional[float] = None,
) -> None:
  mngr.save(
    int(state.step),
    args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data=ocp.args.JsonSave(data_position),
      model=ocp.args.JsonSave(segmenter.model_spec(model)),
    ),
    metrics=None if val_miou is None else {'val_miou': val_miou},
  )


class UnreadableCheckpointError(ValueError):
  """A checkpoint step whose files cannot be read (truncated, garbage, half-deleted)."""

  def __init__(self, directory: Path, step: int, cause: BaseException):
    self.step = step
    reason = f'{type(cause).__name__}: {cause}'
    reason = reason if len(reason) < 400 else reason[:400] + '...'  # tensorstore specs are long
    super().__init__(f'checkpoint {directory}/{step} is unreadable ({reason})')


def check_architecture(mngr: ocp.CheckpointManager, step: int, expected_params: Any) -> Any:
  """Saved state metadata of ``step``, after checking its parameter shapes.

  A checkpoint of another architecture fails here, naming each offending parameter
  with both shapes and the model that wrote it, instead of deep inside orbax. One
  whose metadata cannot be read raises UnreadableCheckpointError.
  """
  try:
    saved = mngr.item_metadata(step)['state']
    saved = getattr(saved, 'tree', saved)
    saved_params = segmenter.shape_tree(saved['params'])
  except Exception as e:  # orbax/tensorstore/json errors of damaged files
    raise UnreadableCheckpointError(mngr.directory, step, e) from e
  try:
    segmenter.check_compatible(saved_params, segmenter.shape_tree(expected_params))
  except ValueError as e:
    spec = saved_model_spec(mngr, step)
    raise ValueError(f'{e}\n(checkpoint {mngr.directory}/{step} was written by {spec})') from None
  return saved


def saved_model_spec(mngr: ocp.CheckpointManager, step: int) -> dict:
  """``segmenter.model_spec`` of the model that wrote ``step`` (JSON: tuples as lists)."""
  return mngr.restore(step, args=ocp.args.Composite(model=ocp.args.JsonRestore()))['model']


# Model settings that change predictions without changing any parameter shape.
SPEC_KEYS = ('backbone', 'arch', 'aspp_rates')


def check_model_spec(mngr: ocp.CheckpointManager, step: int, model: Any) -> None:
  """Stops when the checkpoint's model differs from ``model`` in a setting that parameter
  shapes cannot show (ASPP rates, attention heads, ...), naming each one."""
  try:
    saved = saved_model_spec(mngr, step)
  except Exception as e:  # orbax/json errors of damaged files
    raise UnreadableCheckpointError(mngr.directory, step, e) from e
  current = json.loads(json.dumps(segmenter.model_spec(model)))
  changed = [
    f'{key}: checkpoint {saved.get(key)!r}, this run {current[key]!r}'
    for key in SPEC_KEYS
    if key in saved and saved[key] != current[key]
  ]
  if changed:
    raise ValueError(
      f'checkpoint {mngr.directory}/{step} was written by another model ('
      + '; '.join(changed)
      + '): set --config.segmenter (e.g. aspp_rates) as in the training run'
    )


def _newest_readable(
  mngr: ocp.CheckpointManager, step: int, read: Callable[[int], Any], fall_back: bool = True
) -> tuple[Any, int, list[int]]:
  """(``read(s)``, s, unreadable steps skipped) for s = ``step`` or, when its files are
  damaged and ``fall_back``, the newest older step that reads; warns naming each bad step."""
  older = sorted((s for s in mngr.all_steps() if s < step), reverse=True)
  bad: list[int] = []
  for candidate in [step] + (older if fall_back else []):
    try:
      try:
        return read(candidate), candidate, bad
      except UnreadableCheckpointError:
        raise
      except ValueError as e:
        if 'was written by' in str(e):  # another architecture: a config error, not damage
          raise
        raise UnreadableCheckpointError(mngr.directory, candidate, e) from e
      except Exception as e:  # orbax/tensorstore errors of damaged files
        raise UnreadableCheckpointError(mngr.directory, candidate, e) from e
    except UnreadableCheckpointError as e:
      if not fall_back:
        raise
      logging.warning('%s; falling back to the newest older step', e)
      bad.append(candidate)
  raise UnreadableCheckpointError(
    mngr.directory, step, RuntimeError(f'no readable step among {[step] + older}')
  )


def _set_aside(directory: Path, steps: list[int]) -> None:
  """Renames unreadable steps out of orbax's view (kept for inspection), so a resumed run
  can save those step numbers again."""
  if steps and parallel.is_main_process():
    stamp = time.strftime('%Y%m%d-%H%M%S')
    for step in steps:
      path = Path(directory) / str(step)
      if path.exists():
        path.rename(path.with_name(f'{step}.unreadable-{stamp}'))
        logging.warning('moved unreadable %s aside (%s.unreadable-%s)', path, step, stamp)
  if steps:
    parallel.barrier('checkpoints_set_aside')


def restore(mngr: ocp.CheckpointManager, step: int, target: Any) -> tuple[Any, dict]:
  """(state, data position) of ``step``; ``target`` is a concrete or abstract TrainState.

  If the files of ``step`` are damaged, the newest older readable step is restored
  instead (``state.step`` tells which), with a warning, and the damaged steps are moved
  aside so the run can write those steps again.
  """
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)

  def read(candidate: int) -> Any:
    check_architecture(mngr, candidate, target.params)
    return mngr.restore(
      candidate,
      args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()
      ),
    )

  out, _, bad = _newest_readable(mngr, step, read)
  if bad:
    _set_aside(Path(mngr.directory), bad)
    mngr.reload()
  return out['state'], dict(out['data'])


def best_or_latest_step(mngr: ocp.CheckpointManager) -> Optional[int]:
  try:
    best = mngr.best_step()
  except Exception as e:  # damaged metrics of some step: the latest one is still a choice
    logging.warning('cannot rank checkpoints under %s by val_miou (%s)', mngr.directory, e)
    best = None
  return mngr.latest_step() if best is None else best


def restore_variables(
  directory: Path, model: segmenter.DeepLabV3Plus, step: Optional[int] = None
) -> tuple[dict, int]:
  """Inference variables {'params', 'batch_stats'} of a checkpoint (best step by default).

  The target is built from the checkpoint's own metadata (any optimiser state
  restores), after the parameter shapes are checked against ``model``. If the default
  step's files are damaged, the newest older readable step is used, with a warning; an
  explicitly requested damaged step raises UnreadableCheckpointError.
  """
  mngr = checkpoint_manager(directory, read_only=True)
  requested = step
  step = best_or_latest_step(mngr) if step is None else step
  if step is None:
    raise FileNotFoundError(f'no checkpoint under {directory}')
  if requested is not None and step not in mngr.all_steps():
    steps = sorted(mngr.all_steps())
    mngr.close()
    raise FileNotFoundError(
      f'no checkpoint step {step} under {directory}: it holds steps {steps} '
      '(--config.checkpoint_step; -1 = the best)'
    )
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

  def read(candidate: int) -> Any:
    saved = check_architecture(mngr, candidate, segmenter.abstract_variables(model)['params'])
    check_model_spec(mngr, candidate, model)
    abstract = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), saved
    )
    return mngr.restore(
      candidate, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
    )['state']

  try:
    state, step, _ = _newest_readable(mngr, step, read, fall_back=requested is None)
  finally:
    mngr.close()
  return {'params': state['params'], 'batch_stats': state['batch_stats']}, step
