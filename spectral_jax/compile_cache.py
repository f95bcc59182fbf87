"""JAX's persistent compilation cache, on for every front-end (CLI, API, server): a compiled
shape is written once under the weights cache (``<cache>/xla``) and reused by later runs,
notebook restarts and server starts. ``watch`` tells a real compile from a cache hit."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time
from pathlib import Path
from typing import Iterator, Optional

import jax
from jax import monitoring

from spectral_jax.models.weights import checkpoints


def enable(cache_dir: Optional[str] = None) -> Optional[Path]:
  """Points JAX's persistent compilation cache at ``<cache_dir>/xla`` (default: the weights
  cache, $SPECTRAL_JAX_CACHE or ~/.cache/spectral_jax) and caches every compile. A cache the
  user configured (JAX_COMPILATION_CACHE_DIR or an earlier jax.config setting) is kept. Returns
  the folder in use, or None if caching is off because the folder cannot be created."""
  current = jax.config.jax_compilation_cache_dir or os.environ.get('JAX_COMPILATION_CACHE_DIR')
  if current and not cache_dir:  # an explicit cache_dir (a flag, a parameter) wins
    return Path(current)
  folder = Path(cache_dir or checkpoints.default_cache_dir()).expanduser() / 'xla'
  try:
    folder.mkdir(parents=True, exist_ok=True)
  except OSError:  # a read-only home: run without the cache rather than fail
    return None
  jax.config.update('jax_compilation_cache_dir', str(folder))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  return folder


# JAX's monitoring events: every XLA compile request (a persistent-cache lookup included)
# records BACKEND_COMPILE; one the persistent cache answered also records CACHE_HIT.
BACKEND_COMPILE = '/jax/core/compile/backend_compile_duration'
CACHE_HIT = '/jax/compilation_cache/cache_hits'
_COUNTS = {BACKEND_COMPILE: 0, CACHE_HIT: 0}
_LOCK = threading.Lock()
_LISTENING: list = []


def _count(event: str, *args, **kwargs) -> None:
  del args, kwargs
  if event in _COUNTS:
    with _LOCK:
      _COUNTS[event] += 1


@dataclasses.dataclass
class Compiles:
  """What ``watch`` saw: ``compiled`` XLA compiles the persistent cache did not answer (a
  real compile), ``requests`` compile requests in all, ``seconds`` the block's wall time."""

  compiled: int = 0
  requests: int = 0
  seconds: float = 0.0


@contextlib.contextmanager
def watch() -> Iterator[Compiles]:
  """Counts the compiles of the block (of every thread: JAX's listeners are global)."""
  with _LOCK:
    if not _LISTENING:
      monitoring.register_event_listener(_count)
      monitoring.register_event_duration_secs_listener(_count)
      _LISTENING.append(True)
    before = dict(_COUNTS)
  out, start = Compiles(), time.perf_counter()
  try:
    yield out
  finally:
    out.seconds = time.perf_counter() - start
    with _LOCK:
      out.requests = _COUNTS[BACKEND_COMPILE] - before[BACKEND_COMPILE]
      out.compiled = max(0, out.requests - (_COUNTS[CACHE_HIT] - before[CACHE_HIT]))


def where() -> str:
  """Where compiled code is kept, in words."""
  folder = jax.config.jax_compilation_cache_dir
  return f'kept in {folder} and reused by later runs' if folder else 'kept for this process'
