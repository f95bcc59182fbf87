"""Writing results: atomic files, so a killed run never leaves a half-written output.

Every per-image artefact is written to a temporary file in the same folder and
renamed into place; "is this image done?" is then simply "does its file exist?".
Temporary names are short (``.tmp-*``), so an output name may use the whole 255 bytes a
file system allows, and ``clean_stale_temporaries`` removes those a killed run left.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from absl import logging
from PIL import Image

TMP_PREFIX = '.tmp-'
# Output names are <id><suffix> with suffixes up to 16 bytes ('edit_' + '.png', '.process12.npz').
MAX_ID_BYTES = 200


def safe_id(image_id: str) -> str:
  """An output stem that stays inside its folder and fits a file name.

  Path separators become '__', '.'/'..' components and control characters are dropped, a
  leading '.' is escaped (no hidden outputs), and ids longer than ``MAX_ID_BYTES`` bytes keep a
  prefix plus a hash of the whole id, so different long ids stay different.
  """
  parts = [p for p in re.split(r'[/\\]+', str(image_id)) if p not in ('', '.', '..')]
  stem = '__'.join(parts)
  stem = ''.join(c for c in stem if c.isprintable())
  if stem.startswith('.'):
    stem = '_' + stem
  stem = stem or 'image'
  raw = stem.encode('utf-8')
  if len(raw) > MAX_ID_BYTES:
    digest = hashlib.sha1(str(image_id).encode('utf-8', 'surrogateescape')).hexdigest()[:12]
    stem = raw[: MAX_ID_BYTES - 13].decode('utf-8', 'ignore') + '~' + digest
  return stem


def clean_stale_temporaries(folder: Path, min_age_s: float = 0.0) -> int:
  """Removes temporary files and folders of our atomic writers below ``folder``.

  Only names this module (``.tmp-*``) or the converted-params cache (``.*.tmp``) create are
  touched; the caller holds the workdir lock, so none of them belongs to a live run.
  """
  folder = Path(folder)
  if not folder.is_dir():
    return 0
  removed = 0
  now = time.time()
  for dirpath, dirnames, filenames in os.walk(folder):
    for name in list(dirnames) + filenames:
      if not (name.startswith(TMP_PREFIX) or (name.startswith('.') and name.endswith('.tmp'))):
        continue
      path = Path(dirpath) / name
      try:
        if now - path.lstat().st_mtime < min_age_s:
          continue
        if path.is_dir() and not path.is_symlink():
          shutil.rmtree(path, ignore_errors=True)
          dirnames.remove(name)
        else:
          path.unlink()
        removed += 1
      except OSError:
        continue
  if removed:
    logging.warning('removed %d temporary files left by a killed run under %s', removed, folder)
  return removed


def _atomic_write(path: Path, write: Callable[[Any], None], mode: str = 'wb') -> Path:
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=TMP_PREFIX)
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


def save_png(path: Path, array: np.ndarray, palette: np.ndarray | None = None) -> Path:
  """Writes an image; with ``palette`` (uint8 [n, 3]) a uint8 label map becomes a palette PNG:
  the same values when read back as indices, shown in colour by any viewer."""

  def write(f):
    image = Image.fromarray(array)
    if palette is not None:  # L → P keeps every value as its index
      image = image.convert('P')
      image.putpalette(np.asarray(palette, np.uint8).reshape(-1).tolist())
    image.save(f, format='PNG')

  return _atomic_write(path, write)


def save_text(path: Path, text: str) -> Path:
  return _atomic_write(path, lambda f: f.write(text), mode='w')


def save_json(path: Path, obj: Any) -> Path:
  text = json.dumps(obj, indent=2, sort_keys=True, allow_nan=False)  # NaN is not JSON
  return _atomic_write(path, lambda f: f.write(text), mode='w')


def save_jsonl(path: Path, records: list[dict]) -> Path:
  """Writes a whole JSON-lines file atomically."""
  lines = ''.join(json.dumps(r, sort_keys=True, allow_nan=False) + '\n' for r in records)
  return _atomic_write(path, lambda f: f.write(lines), mode='w')


def append_jsonl(path: Path, records: list[dict]) -> None:
  """Appends whole lines with one write + fsync; a torn last line is dropped on read."""
  if not records:
    return
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  data = ''.join(json.dumps(r, sort_keys=True, allow_nan=False) + '\n' for r in records)
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
