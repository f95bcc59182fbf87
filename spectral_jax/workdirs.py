"""A workdir: one run at a time, and a record of the settings that made its outputs.

``workdir/.spectral_jax/`` holds

  lock[.process<i>]   host, PID and command of the run using the workdir (a second run on
                      a locked workdir stops; a lock whose PID is gone is taken over)
  <stage>.json        the settings each stage's outputs were made with (the config keys
                      that change them, the checkpoint's identity, the package version)

A rerun with the same settings resumes; with other settings it stops naming each changed
key, unless ``--config.overwrite=True``, which deletes that stage's outputs and recomputes.
The hidden folder also marks the directory as a workdir, so an image listing never reads a
workdir's outputs as inputs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

from absl import logging

from spectral_jax import artifacts
from spectral_jax.version import __version__ as VERSION  # noqa: F401  # re-exported

RECORD_DIR = '.spectral_jax'


class WorkdirError(RuntimeError):
  """A workdir that cannot be used as it is (locked, not writable, other settings)."""


def marker(workdir) -> Path:
  return Path(workdir) / RECORD_DIR


def is_workdir(folder) -> bool:
  return (Path(folder) / RECORD_DIR).is_dir()


def prepare(workdir) -> Path:
  """Creates the workdir (and its record folder) and checks it is a writable folder."""
  path = Path(workdir).expanduser()
  if path.exists() and not path.is_dir():
    raise WorkdirError(f'--workdir={workdir} is a file, not a folder: pass a folder path')
  try:
    marker(path).mkdir(parents=True, exist_ok=True)
    probe = marker(path) / f'{artifacts.TMP_PREFIX}probe-{os.getpid()}'
    probe.write_bytes(b'')
    probe.unlink()
  except OSError as e:
    raise WorkdirError(f'--workdir={workdir} is not writable ({e}): pass another folder') from e
  return path


# ----------------------------------------------------------------------------- the lock


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # someone else's live process
    return True
  return True


@contextlib.contextmanager
def locked(workdir, process_index: int = 0, process_count: int = 1) -> Iterator[Path]:
  """Holds ``workdir/.spectral_jax/lock`` (one per process of a multi-process run)."""
  name = 'lock' if process_count == 1 else f'lock.process{process_index}'
  path = marker(workdir) / name
  record = {
    'host': socket.gethostname(),
    'pid': os.getpid(),
    'started': time.strftime('%Y-%m-%d %H:%M:%S'),
    'command': ' '.join(sys.argv),
  }
  for _ in range(3):
    try:
      fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      holder = _read_lock(path)
      if holder.get('host') == record['host'] and not _pid_alive(int(holder.get('pid', -1))):
        logging.warning(
          'taking over the stale lock %s of PID %s (no longer running)', path, holder.get('pid')
        )
        path.unlink(missing_ok=True)
        continue
      raise WorkdirError(
        f'workdir {workdir} is in use by PID {holder.get("pid")} on {holder.get("host")} '
        f'since {holder.get("started")} ({holder.get("command", "?")}). Wait for that run, '
        f'use another --workdir, or delete {path} if that run no longer exists.'
      ) from None
    with os.fdopen(fd, 'w') as f:
      json.dump(record, f)
    break
  else:
    raise WorkdirError(f'could not take the lock {path}: another run keeps taking it')
  try:
    yield path
  finally:
    if _read_lock(path).get('pid') == record['pid']:
      path.unlink(missing_ok=True)


def _read_lock(path: Path) -> dict:
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    return {}


# ----------------------------------------------------------------------------- settings


def file_identity(path: str, previous: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
  """sha256 of a local file, reused from ``previous`` when path, size and mtime are the same."""
  p = Path(path).expanduser().absolute()
  st = p.stat()
  ident = {'path': str(p), 'size': st.st_size, 'mtime_ns': st.st_mtime_ns}
  if previous and all(previous.get(k) == v for k, v in ident.items()) and previous.get('sha256'):
    return dict(previous)
  digest = hashlib.sha256()
  with open(p, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return {**ident, 'sha256': digest.hexdigest()}


def _flat(tree: Any, prefix: str = '') -> dict[str, Any]:
  if isinstance(tree, Mapping):
    out = {}
    for key in sorted(tree):
      out.update(_flat(tree[key], f'{prefix}{key}.' if prefix or key else ''))
    return out
  if isinstance(tree, (list, tuple)):
    return {prefix.rstrip('.'): json.loads(json.dumps(list(tree)))}
  return {prefix.rstrip('.'): tree}


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
  """'key: old → new' for every setting that differs (identity fields compared by hash)."""
  a, b = _flat(old), _flat(new)
  out = []
  for key in sorted(set(a) | set(b)):
    if key.endswith(('.mtime_ns', '.size', '.path')) and '.checkpoint.' in f'.{key}':
      continue  # a copied or touched checkpoint with the same hash is the same checkpoint
    if a.get(key, '<unset>') != b.get(key, '<unset>'):
      out.append(f'{key}: {a.get(key, "<unset>")!r} → {b.get(key, "<unset>")!r}')
  return out


def record_path(workdir, stage: str) -> Path:
  return marker(workdir) / f'{stage}.json'


def read_record(workdir, stage: str) -> Optional[dict]:
  path = record_path(workdir, stage)
  if not path.exists():
    return None
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    return {'<unreadable record>': str(path)}


def check_settings(
  workdir,
  stage: str,
  settings: Mapping[str, Any],
  outputs: list[Path],
  overwrite: bool = False,
  leader: bool = True,
) -> None:
  """Resume, stop or (with ``overwrite``) delete ``outputs`` when the settings changed.

  ``outputs``: the files and folders the stage writes (deleted on overwrite). Outputs without
  any record (made by an older version, or by hand) count as other settings. A record without
  any output (a run that failed before writing one: no weights, a typo) is no reason to stop:
  the new settings replace it. Only the ``leader`` process deletes and writes records; the
  others only check.
  """
  workdir = Path(workdir)
  old = read_record(workdir, stage)
  present = [p for p in outputs if p.exists()]
  if not present:
    changes = []
  elif old is None:
    changes = [f'outputs without a settings record ({", ".join(p.name for p in present[:3])})']
  else:
    changes = differences(old, settings)
  if changes and not overwrite:
    raise WorkdirError(
      f'workdir {workdir} holds {stage} outputs made with other settings:\n  '
      + '\n  '.join(changes)
      + '\nUse another --workdir, or pass --config.overwrite=True to delete them and recompute.'
    )
  if changes and leader:
    logging.warning('%s: settings changed (%s); deleting its outputs', stage, '; '.join(changes))
    for p in present:
      if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
      else:
        p.unlink(missing_ok=True)
  if leader:
    artifacts.save_json(record_path(workdir, stage), dict(settings))
