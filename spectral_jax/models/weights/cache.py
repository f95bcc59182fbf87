"""The cache of converted parameters: each DINO checkpoint is converted once into
``<cache>/params/<name>-<hash>/`` (``params.npz`` + ``arch.json``), keyed on its URL or on the
local file's path, size and mtime. (Where the checkpoint files themselves come from:
``downloads``.)

Everything written here is written atomically (a private temporary name, renamed into
place), so processes sharing a cache never see half-written files. Temporaries left by
killed runs are removed by ``remove_stale_temporaries``; a cache entry that is
nevertheless unreadable (disk trouble, manual edits) is reported by ``read_entry`` and
rebuilt by ``checkpoints.load_params``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from spectral_jax import artifacts as spectral_io
from spectral_jax.models.weights import downloads
from spectral_jax.models.weights.downloads import is_url, url_filename
from spectral_jax.models.weights.errors import CheckpointError, missing_file

__all__ = [
  'flatten',
  'unflatten',
  'save_params',
  'restore_params',
  'lookup',
  'read_entry',
  'write_entry',
  'discard_entry',
  'remove_stale_temporaries',
]

_RUN_START = time.time()  # temporaries older than this run and idle for STALE_AFTER are stale
STALE_AFTER = 600.0  # seconds; live writers touch their files far more often
_HOST = downloads.HOST


# --------------------------------------------------------------------------
# Parameter trees on disk
# --------------------------------------------------------------------------


def flatten(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
  flat: dict[tuple[str, ...], Any] = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      flat.update(flatten(value, prefix + (key,)))
    else:
      flat[prefix + (key,)] = value
  return flat


def unflatten(flat: Mapping[tuple[str, ...], Any]) -> dict[str, Any]:
  tree: dict[str, Any] = {}
  for path, value in flat.items():
    node = tree
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = value
  return tree


def save_params(params: Mapping[str, Any], path: str | os.PathLike) -> Path:
  """Saves a parameter tree as one ``.npz`` (keys ``'blocks_0/attn/qkv/kernel'``), atomically.

  A plain file rather than an orbax checkpoint: every process of a multi-host run reads
  it on its own, with no cross-process coordination to deadlock on.
  """
  flat = {'/'.join(key): np.asarray(value) for key, value in flatten(params).items()}
  return spectral_io.save_npz(Path(path).expanduser().absolute(), **flat)


def restore_params(path: str | os.PathLike) -> dict[str, Any]:
  """The tree saved by ``save_params``, as nested dicts of numpy arrays.

  Every array is read in full here, so a truncated or damaged file (zip CRC) raises now.
  """
  path = Path(path).expanduser().absolute()
  if not path.is_file():
    raise missing_file(path)
  with np.load(path) as data:
    return unflatten({tuple(key.split('/')): data[key] for key in data.files})


# --------------------------------------------------------------------------
# Cache entries of converted parameters: <cache>/params/<name>-<hash>/{params.npz,arch.json}
# --------------------------------------------------------------------------


def entry_path(source: str, label: str, cache_root: Path) -> Path:
  digest = hashlib.sha256(source.encode()).hexdigest()[:16]
  return cache_root / f'{Path(label).stem}-{digest}'


def local_source(path: Path) -> str:
  st = path.stat()
  return f'file:{path.absolute()}:{st.st_size}:{st.st_mtime_ns}'


def find_cached_local(path: Path, cache_root: Path) -> Path | None:
  """Newest cache entry converted from ``path`` (used when the file is gone)."""
  hits = []
  for meta in cache_root.glob(f'{path.stem}-*/arch.json'):
    try:
      if json.loads(meta.read_text()).get('path') == str(path.absolute()):
        hits.append(meta.parent)
    except (OSError, ValueError, AttributeError):
      continue
  return max(hits, key=lambda p: (p / 'arch.json').stat().st_mtime, default=None)


def lookup(
  model_name: str, checkpoint: str | os.PathLike | None, cache_root: Path
) -> tuple[Path | None, str | None]:
  """Cache entry directory for a request (None if unknowable) and its source id
  (None when the request names a local file that is gone)."""
  if checkpoint is None or not str(checkpoint):
    if model_name not in downloads.WEIGHTS:
      return None, None
    checkpoint = downloads.WEIGHTS[model_name]
  text = str(checkpoint)
  if is_url(text):
    # A URL names immutable release weights: key on the URL alone, so a
    # later run needs no network and no downloaded file.
    return entry_path(f'url:{text}', url_filename(text), cache_root), f'url:{text}'
  path = Path(text).expanduser()
  if path.is_file():
    source = local_source(path)
    return entry_path(source, path.name, cache_root), source
  return find_cached_local(path, cache_root), None


def converted_from_another_copy(entry: Path, source: str, cache_dir: Path) -> bool:
  """Whether a URL's entry was converted from other bytes than the copy now in the cache
  folder (a file dropped there by hand, then replaced): it is converted again. Compared by
  sha256 (remembered beside the file: cheap), so moving the cache or fetching the same file
  again keeps the entry; with no copy there the entry stands on its own."""
  if not source.startswith('url:'):
    return False  # local files are keyed on their size and mtime already
  copy = cache_dir / url_filename(source[len('url:') :])
  try:
    recorded = json.loads((entry / 'arch.json').read_text()).get('sha256')
    return copy.is_file() and recorded is not None and recorded != downloads.sha256_file(copy)
  except (OSError, ValueError, AttributeError):
    return False  # an unreadable record is read_entry's to report


def complete(entry: Path) -> bool:
  return (entry / 'arch.json').is_file() and (entry / 'params.npz').is_file()


_ARCH_KEYS = {'patch_size', 'embed_dim', 'num_heads', 'depth', 'num_pos'}


def read_entry(entry: Path) -> tuple[dict[str, Any], dict[str, int]]:
  """(params, arch) of a complete entry; CheckpointError naming it if anything is off."""
  try:
    arch = json.loads((entry / 'arch.json').read_text())['arch']
    if set(arch) != _ARCH_KEYS or not all(type(v) is int for v in arch.values()):
      raise ValueError(f'bad arch record {arch!r}')
    params = restore_params(entry / 'params.npz')
    leaves = flatten(params)
    if not leaves or not all(np.issubdtype(v.dtype, np.floating) for v in leaves.values()):
      raise ValueError('no parameters, or non-float ones')
  except Exception as e:  # json, zip (BadZipFile: bad CRC, truncated), numpy format errors
    raise CheckpointError(
      f'converted-weights cache entry {entry} is unreadable ({type(e).__name__}: {e})'
    ) from e
  return params, arch


def _private_name(entry: Path) -> Path:
  # The pattern remove_stale_temporaries recognises (host + pid: whose it is).
  return entry.with_name(f'{entry.name}.tmp-{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}')


def write_entry(
  entry: Path, params: Mapping[str, Any], arch: Mapping[str, int], source: str, path: Path
) -> None:
  """Writes the entry under a private name and renames it into place, so processes that
  share a cache directory never see (or clobber) each other's half-written entries."""
  staging = _private_name(entry)
  save_params(params, staging / 'params.npz')
  meta = {
    'arch': dict(arch),
    'source': source,
    'path': str(path.absolute()),
    # Which copy of a downloaded file it came from, by content (see converted_from_another_copy)
    'sha256': downloads.sha256_file(path) if source.startswith('url:') else None,
    'created': time.time(),
  }
  (staging / 'arch.json').write_text(json.dumps(meta, indent=1))
  if not complete(entry):  # absent, half-written, or from an older version
    shutil.rmtree(entry, ignore_errors=True)
  try:
    os.rename(staging, entry)
  except OSError:  # another process finished the same entry first
    shutil.rmtree(staging, ignore_errors=True)


def discard_entry(entry: Path) -> None:
  """Removes an entry; renamed away first so no reader sees it half-deleted."""
  doomed = _private_name(entry)
  try:
    os.rename(entry, doomed)
  except OSError:  # already gone (another process discarded it)
    return
  shutil.rmtree(doomed, ignore_errors=True)


_TEMP_NAMES = (
  re.compile(r'.+\.tmp-(?:(?P<host>[A-Za-z0-9_.]+)-)?(?P<pid>\d+)-[0-9a-f]+'),  # entries
  re.compile(r'\..+\.tmp|\.tmp-.+'),  # spectral_jax.artifacts atomic files (old and new names)
  re.compile(r'.+\.(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)\.part'),  # downloads (HOST has no dots)
  re.compile(r'.+\.part'),  # downloads of older versions
)


def _newest_mtime(path: Path) -> float:
  times = [path.lstat().st_mtime]
  if path.is_dir() and not path.is_symlink():
    times += [p.lstat().st_mtime for p in path.rglob('*')]
  return max(times)


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except OSError:  # exists, owned by someone else
    return True
  return True


def remove_stale_temporaries(cache_dir: Path, stale_after: float = STALE_AFTER) -> list[Path]:
  """Removes temporaries of our atomic writers left in ``cache_dir`` (and its ``params/``)
  by killed runs; returns them.

  Stale = older than this run and either idle for ``stale_after`` seconds (a live writer
  keeps touching its files) or written by a dead process of this host.
  """
  removed = []
  now = time.time()
  for folder in (cache_dir, cache_dir / 'params'):
    try:
      children = list(folder.iterdir())
    except OSError:
      continue
    for child in children:
      match = next((m for p in _TEMP_NAMES if (m := p.fullmatch(child.name))), None)
      if match is None:
        continue
      try:
        newest = _newest_mtime(child)
      except OSError:  # vanished meanwhile: its writer finished
        continue
      groups = match.groupdict()
      dead_here = (
        groups.get('pid') is not None
        and groups.get('host') == _HOST
        and int(groups['pid']) != os.getpid()
        and not _pid_alive(int(groups['pid']))
      )
      if newest >= _RUN_START or not (dead_here or now - newest > stale_after):
        continue
      if child.is_dir() and not child.is_symlink():
        shutil.rmtree(child, ignore_errors=True)
      else:
        try:
          child.unlink(missing_ok=True)
        except OSError:  # a read-only shared cache: not ours to clean
          continue
      removed.append(child)
  return removed
