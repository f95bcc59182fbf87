"""Data parallelism: a mesh over this process's devices, batch sharding, and cross-process sums.

Inference here is embarrassingly parallel: every image is independent. Each process
(``jax.distributed.initialize`` on multi-host runs) takes its own strided shard of the
dataset and shards its batches over its local devices with ``NamedSharding``; nothing in
the hot path communicates. Processes meet only to reduce metrics (``process_sum``) and at
``barrier``s before a single process writes merged outputs.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

from absl import logging
import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P


def local_mesh() -> jax.sharding.Mesh:
  # Auto axes: XLA propagates the batch sharding through the model (no explicit annotations).
  return jax.make_mesh(
    (jax.local_device_count(),),
    ('data',),
    axis_types=(jax.sharding.AxisType.Auto,),
    devices=jax.local_devices(),
  )


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P('data'))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def pad_to_multiple(batch: np.ndarray, multiple: int) -> np.ndarray:
  """Repeats the last item so the batch splits evenly over devices (extras are dropped later)."""
  extra = -len(batch) % multiple
  if not extra:
    return batch
  return np.concatenate([batch, np.repeat(batch[-1:], extra, axis=0)])


def shard_batch(batch: np.ndarray, mesh: jax.sharding.Mesh) -> jax.Array:
  return jax.device_put(pad_to_multiple(batch, mesh.size), batch_sharding(mesh))


def process_shard(items: Sequence[Any]) -> list[Any]:
  """This process's strided share of the dataset (all of it in a single-process run)."""
  return list(items[jax.process_index() :: jax.process_count()])


def process_sum(values: np.ndarray) -> np.ndarray:
  """Sum of a host array over all processes (identity in a single-process run)."""
  values = np.asarray(values)
  if jax.process_count() == 1:
    return values
  return np.asarray(multihost_utils.process_allgather(values)).sum(axis=0)


def barrier(name: str) -> None:
  if jax.process_count() > 1:
    start = time.perf_counter()
    logging.info('process %d waiting for the other processes at %r', jax.process_index(), name)
    multihost_utils.sync_global_devices(name)
    logging.info('%r reached by every process after %.1f s', name, time.perf_counter() - start)


def is_main_process() -> bool:
  return jax.process_index() == 0
