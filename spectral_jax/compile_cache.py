"""JAX's persistent compilation cache, on for every front-end (CLI, API, server): a compiled
shape is written once under the weights cache (``<cache>/xla``) and reused by later runs,
notebook restarts and server starts."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import jax

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
