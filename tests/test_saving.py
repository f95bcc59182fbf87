"""spectral_jax.training.saving: restoring when the newest step is damaged."""

from __future__ import annotations

import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spectral_jax.training import loop
from spectral_jax.training import saving
from tests.test_train import tiny_config, tiny_model


@pytest.fixture(scope='module')
def states():
  """TrainStates of steps 2 and 4 with distinguishable parameters."""
  model, cfg = tiny_model(), tiny_config()
  state = loop.create_train_state(model, cfg, jax.random.PRNGKey(0))
  out = {}
  for step in (2, 4):
    params = jax.tree.map(lambda x, s=step: x + s, state.params)
    out[step] = state.replace(step=jnp.int32(step), params=params)
  return model, out


def write_checkpoints(directory: Path, states: dict) -> None:
  mngr = saving.checkpoint_manager(directory)
  for step, state in states.items():
    position = {'step': step, 'data_seed': 0, 'num_examples': 8, 'batch_size': 4}
    # step 4 is the best
    saving.save(mngr, state, position, tiny_model(), val_miou=step / 10)
  mngr.wait_until_finished()
  mngr.close()


def damage(step_dir: Path, how: str) -> None:
  """Truncates or overwrites every file of a step ('state_garbage': only the array data,
  so orbax's metadata still lists the step)."""
  root = step_dir / 'state' if how == 'state_garbage' else step_dir
  files = [p for p in root.rglob('*') if p.is_file() and p.name != '_METADATA']
  assert files
  for i, path in enumerate(files):
    data = path.read_bytes()
    if how == 'truncated':
      path.write_bytes(data[: len(data) // 3])
    else:
      path.write_bytes(np.random.default_rng(i).bytes(max(len(data), 16)))


def assert_params(params, expected) -> None:
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(expected)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def bad_step_warnings(caplog, directory: Path, step: int) -> list[str]:
  return [
    r.getMessage()
    for r in caplog.records
    if r.levelno >= logging.WARNING and f'{directory}/{step}' in r.getMessage()
  ]


@pytest.mark.parametrize('how', ['truncated', 'garbage', 'state_garbage'])
def test_training_resume_falls_back_to_the_newest_readable_step(tmp_path, states, how, caplog):
  model, by_step = states
  directory = (tmp_path / 'checkpoints').absolute()
  write_checkpoints(directory, by_step)
  damage(directory / '4', how)
  with caplog.at_level(logging.WARNING):  # what train_and_evaluate does to resume
    mngr = saving.checkpoint_manager(directory)
    state, position = saving.restore(mngr, mngr.latest_step(), by_step[2])
  assert int(state.step) == 2 and position['step'] == 2
  assert_params(state.params, by_step[2].params)
  assert bad_step_warnings(caplog, directory, 4)
  # The damaged step is kept aside, out of orbax's way: the run can write step 4 again.
  assert mngr.all_steps() == [2]
  assert [p.name for p in directory.glob('4.unreadable-*')]
  saving.save(mngr, by_step[4], {'step': 4}, model)
  mngr.wait_until_finished()
  assert mngr.all_steps() == [2, 4]
  mngr.close()


def test_restore_variables_falls_back_unless_the_step_is_explicit(tmp_path, states, caplog):
  model, by_step = states
  directory = (tmp_path / 'checkpoints').absolute()
  write_checkpoints(directory, by_step)
  damage(directory / '4', 'garbage')
  with caplog.at_level(logging.WARNING):
    variables, step = saving.restore_variables(directory, model)
  assert step == 2
  assert_params(variables['params'], by_step[2].params)
  assert bad_step_warnings(caplog, directory, 4)
  unreadable = f'{directory}/4 is unreadable'
  with pytest.raises(saving.UnreadableCheckpointError, match=unreadable):
    saving.restore_variables(directory, model, step=4)
  with pytest.raises(FileNotFoundError, match=r'no checkpoint step 7 .* holds steps \[2, 4\]'):
    saving.restore_variables(directory, model, step=7)
  assert (directory / '4').is_dir()  # read-only restores never move anything


def test_architecture_mismatch_is_not_mistaken_for_damage(tmp_path, states):
  _, by_step = states
  directory = (tmp_path / 'checkpoints').absolute()
  write_checkpoints(directory, by_step)
  with pytest.raises(ValueError, match='was written by') as e:
    saving.restore_variables(directory, tiny_model(num_classes=7))
  assert not isinstance(e.value, saving.UnreadableCheckpointError)
