"""Writing results: atomic files, so a killed run never leaves a half-written output.

Every per-image artefact is written to a temporary file in the same folder and
renamed into place; "is this image done?" is then simply "does its file exist?".
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image


def _atomic_write(path: Path, write: Callable[[Any], None], mode: str = 'wb') -> Path:
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.tmp')
  try:
    with os.fdopen(fd, mode) as f:
      write(f)
    os.chmod(tmp, 0o644)  # mkstemp creates 0600; outputs are meant to be shared
    os.replace(tmp, path)
  except BaseException:
    Path(tmp).unlink(missing_ok=True)
    raise
  return path


def save_npz(path: Path, **arrays) -> Path:
  return _atomic_write(path, lambda f: np.savez(f, **arrays))


def save_png(path: Path, array: np.ndarray) -> Path:
  return _atomic_write(path, lambda f: Image.fromarray(array).save(f, format='PNG'))


def save_json(path: Path, obj: Any) -> Path:
  return _atomic_write(path, lambda f: json.dump(obj, f, indent=2, sort_keys=True), mode='w')


def save_jsonl(path: Path, records: list[dict]) -> Path:
  """Writes a whole JSON-lines file atomically."""
  lines = ''.join(json.dumps(r, sort_keys=True) + '\n' for r in records)
  return _atomic_write(path, lambda f: f.write(lines), mode='w')


def append_jsonl(path: Path, records: list[dict]) -> None:
  """Appends whole lines with one write + fsync; a torn last line is dropped on read."""
  if not records:
    return
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  data = ''.join(json.dumps(r, sort_keys=True) + '\n' for r in records)
  if path.exists() and path.stat().st_size and not _ends_with_newline(path):
    data = '\n' + data  # close a line torn by a killed writer; read_jsonl drops it
  with open(path, 'a') as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())


def _ends_with_newline(path: Path) -> bool:
  with open(path, 'rb') as f:
    f.seek(-1, os.SEEK_END)
    return f.read(1) == b'\n'


def read_jsonl(path: Path) -> list[dict]:
  """Reads complete records; lines torn by a killed writer are skipped."""
  path = Path(path)
  if not path.exists():
    return []
  records = []
  for line in path.read_text().splitlines(keepends=True):
    try:
      if line.endswith('\n'):
        records.append(json.loads(line))
    except json.JSONDecodeError:
      continue
  return records
