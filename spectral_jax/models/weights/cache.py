"""Where checkpoint files and their conversions live: URL registry, downloads with size and
sha256 checks, and the cache of converted parameters.

Everything written here is written atomically (a private temporary name, renamed into
place), so processes sharing a cache never see half-written files. Temporaries left by
killed runs are removed by ``remove_stale_temporaries``; a cache entry that is
nevertheless unreadable (disk trouble, manual edits) is reported by ``read_entry`` and
rebuilt by ``checkpoints.load_params``.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import shutil
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

from spectral_jax import artifacts as spectral_io
from spectral_jax.models.weights.errors import CheckpointError, missing_file

__all__ = [
  'WEIGHTS',
  'FILES',
  'official_file',
  'default_cache_dir',
  'download',
  'resolve_checkpoint',
  'save_params',
  'restore_params',
  'read_entry',
  'write_entry',
  'discard_entry',
  'remove_stale_temporaries',
]

_DINO_URL = 'https://dl.fbaipublicfiles.com/dino/'
WEIGHTS: dict[str, str] = {
  'dino_vits16': _DINO_URL + 'dino_deitsmall16_pretrain/dino_deitsmall16_pretrain.pth',
  'dino_vits8': _DINO_URL + 'dino_deitsmall8_pretrain/dino_deitsmall8_pretrain.pth',
  'dino_vitb16': _DINO_URL + 'dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth',
  'dino_vitb8': _DINO_URL + 'dino_vitbase8_pretrain/dino_vitbase8_pretrain.pth',
}
# Other official files of the same architectures, passed as --config.model.checkpoint=URL.
# TokenCut and LOST load the 300-epoch ViT-S/8 (Deep Spectral Methods' dino_vits8 is the
# other file above); S/16 and B/16 are the same files in all three.
VARIANT_WEIGHTS: dict[str, str] = {
  'dino_vits8_300ep': _DINO_URL
  + 'dino_deitsmall8_300ep_pretrain/dino_deitsmall8_300ep_pretrain.pth',
}

# Other official files read beside a backbone: name → (URL, size in bytes, sha256). FOUND's
# shipped decoder (a 1×1 conv on DINO ViT-S/8 keys; --config.found.decoder='' means this file).
FILES: dict[str, tuple[str, int, str]] = {
  'found_decoder': (
    'https://github.com/valeoai/FOUND/raw/main/data/weights/decoder_weights.pt',
    2689,
    '47ff2a4af3dbc6c80cb832cc81f8ed8ae81809e52576d0de5f9c754cf46ef9b5',
  ),
}

# Pinned (size in bytes, sha256) of registry URLs: a download is checked against them (a None
# is not checked). Published values only, each with its source; where none is published the
# file is checked against nothing (docs/weights.md lists what is pinned and from where).
PINNED: dict[str, tuple[Optional[int], Optional[str]]] = {
  url: (size, digest) for url, size, digest in FILES.values()
}
PINNED.update({
  # Projects that download the official URL and check this sha256 (several agree); the size
  # from a download log (18,432 bytes = the patch-16 vs patch-8 tensors less than ViT-S/8).
  WEIGHTS['dino_vits16']: (
    86710517,
    '1566d50496f27f52f07fea6094fa29b2fdd6fae89da65bdd3ebc3b24ef6b7eb7',
  ),
  # A model registry that downloads the official URL and checks both (size also in two
  # download logs; torch.hub's hash-prefix check of a renamed copy agrees).
  WEIGHTS['dino_vits8']: (
    86728949,
    '55c8b267f479b614ec20858947ce361ba804846c193e20be74263a096bb6d75e',
  ),
  # Hugging Face LFS pointers of two independent uploads of this file (same sha256 and size).
  WEIGHTS['dino_vitb16']: (
    343242485,
    'bf34ad0f424b9029b593e8dc3ed553bf26e88bcba0d32bf3e62a6209cb64c85e',
  ),
  # Three projects' checksum records of this file agree; the size from one of them
  # (36,864 bytes = the patch-8 vs patch-16 tensors more than ViT-B/16).
  WEIGHTS['dino_vitb8']: (
    343279349,
    '575f0efc4838938314afa09897a62ed2b87919928b5edcd133abb907328995eb',
  ),
  # A third-party table of measured downloads (its DINOv2 rows equal the official pointers).
  VARIANT_WEIGHTS['dino_vits8_300ep']: (
    86728949,
    '10fee18a0e7714de9005f9d56975ca8993d5fb87dab867868e528132d2be176c',
  ),
  # The DINO ResNet-50: one project that pins the file it fetches from the official URL (no
  # size found).
  _DINO_URL + 'dino_resnet50_pretrain/dino_resnet50_pretrain.pth': (
    None,
    '156f8c4166a23dc2951ae811e39d76a06269c565932edf647c0187e65cd7aa7c',
  ),
})  # fmt: skip
# DINOv2 (backbones.py's URLs): a converter library pins each sha256 beside the official URL,
# and at least two unrelated projects record the same digest with this size (the CDN's
# Content-Length where one was logged).
_DINOV2_URL = 'https://dl.fbaipublicfiles.com/dinov2/'
PINNED.update({
  _DINOV2_URL + f'dinov2_vit{size}14/dinov2_vit{size}14{reg}_pretrain.pth': (nbytes, digest)
  for size, reg, nbytes, digest in [
    ('s', '', 88283115, 'b938bf1bc15cd2ec0feacfe3a1bb553fe8ea9ca46a7e1d8d00217f29aef60cd9'),
    ('b', '', 346378731, '0b8b82f85de91b424aded121c7e1dcc2b7bc6d0adeea651bf73a13307fad8c73'),
    ('l', '', 1217586395, 'd5383ea8f4877b2472eb973e0fd72d557c7da5d3611bd527ceeb1d7162cbf428'),
    ('g', '', 4546108579, 'baf8467e50af277596bbbafa06887c177ee899ab46033649c383577d7e9309d3'),
    ('s', '_reg4', 88291785, 'f433177089a681826f849f194ece3bb48f4d63fb38d32fc837e3dc7a4e5641fb'),
    ('b', '_reg4', 346393545, '73182a088cf94833c94b1666d1c99e02fe87e2007bff57b564fb6206e25dba71'),
    ('l', '_reg4', 1217607321, '36e4deffbaef061a2576705b0c36f93621e2ae20bf6274694821b0b492551b51'),
    ('g', '_reg4', 4546140349, '746ecb8c6301c645c5c855be91687d274587d6e48fdaec4a729753160b34a283'),
  ]
})  # fmt: skip


def pinned(url: str) -> tuple[Optional[int], Optional[str]]:
  """The pinned (size, sha256) of ``url``; (None, None) for a URL the registry does not pin."""
  return PINNED.get(url, (None, None))


_RUN_START = time.time()  # temporaries older than this run and idle for STALE_AFTER are stale
STALE_AFTER = 600.0  # seconds; live writers touch their files far more often
_HOST = re.sub(r'[^A-Za-z0-9_.]', '_', socket.gethostname())[:40] or 'host'


def default_cache_dir() -> Path:
  """``$SPECTRAL_JAX_CACHE`` or ``~/.cache/spectral_jax``."""
  env = os.environ.get('SPECTRAL_JAX_CACHE')
  return Path(env).expanduser() if env else Path.home() / '.cache' / 'spectral_jax'


# --------------------------------------------------------------------------
# Download and resolution
# --------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
  """The sha256 of ``path``, remembered in ``<path>.sha256`` (with its size and mtime): a
  multi-GB checkpoint is hashed once, not on every run; a changed file is hashed again."""
  stat = path.stat()
  key = f'{stat.st_size} {stat.st_mtime_ns}'
  stamp = path.with_name(path.name + '.sha256')
  try:
    recorded_key, digest = stamp.read_text().strip().rsplit(' ', 1)
    if recorded_key == key and re.fullmatch('[0-9a-f]{64}', digest):
      return digest
  except (OSError, ValueError):
    pass
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      h.update(chunk)
  digest = h.hexdigest()
  _remember_sha256(path, key, digest)
  return digest


def _remember_sha256(path: Path, key: str, digest: str) -> None:
  try:
    spectral_io.save_text(path.with_name(path.name + '.sha256'), f'{key} {digest}\n')
  except OSError:  # a read-only cache: hash again next time
    pass


def _mismatch(actual_size: int, actual_sha256: Optional[str], size, sha256) -> str | None:
  """A description of the mismatch, or None if the file is as expected."""
  if size is not None and actual_size != size:
    return f'size {actual_size} != expected {size}'
  if sha256 is not None and actual_sha256 is not None and actual_sha256 != sha256.lower():
    return f'sha256 {actual_sha256} != expected {sha256}'
  return None


def _verify(path: Path, sha256: str | None, size: int | None) -> str | None:
  """Return a description of the mismatch, or None if the file is as expected."""
  actual_size = path.stat().st_size
  if size is not None and actual_size != size:  # cheap first: no hashing of a wrong size
    return _mismatch(actual_size, None, size, sha256)
  return _mismatch(actual_size, sha256_file(path) if sha256 else None, size, sha256)


def url_filename(url: str) -> str:
  name = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name
  if not name:
    raise CheckpointError(f'cannot derive a file name from URL {url!r}')
  return name


def _unreachable(
  url: str,
  reason: object,
  setting: str = 'model.checkpoint',
  dest: Path | None = None,
  cached_problem: str | None = None,
) -> CheckpointError:
  name = url_filename(url)
  size, digest = pinned(url)
  what = ', '.join(
    part for part in (f'{size} bytes' if size else '', f'sha256 {digest}' if digest else '') if part
  )
  what = f' ({what})' if what else ''
  where = (
    f' Offline: download it on another machine and copy it to {dest}: every later run '
    "finds it there with no setting; or pass the file's path."
    if dest
    else ''
  )
  if cached_problem:  # a copy is there, but not this file: say so rather than "copy it there"
    where = f' The file already in {dest} is not this one ({cached_problem}).' + where
  return CheckpointError(
    f'Could not download {name}{what} from {url}: the URL is unreachable ({reason}).{where}',
    setting,
    name,
  )


def download(
  url: str,
  cache_dir: str | os.PathLike | None = None,
  sha256: str | None = None,
  size: int | None = None,
  timeout: float = 30.0,
  setting: str = 'model.checkpoint',
) -> Path:
  """Download ``url`` into ``cache_dir`` (reusing a cached copy) and return its path.

  Streams into ``<name>.part`` and renames atomically only after the size and
  sha256 (when given) check out, so the cache never holds a partial file. ``setting``: the
  key an offline user passes the file with instead (named in the error).
  """
  from tqdm import tqdm  # only needed when actually downloading

  cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
  dest = cache_dir.absolute() / url_filename(url)
  known_size, known_sha256 = pinned(url)
  size, sha256 = size or known_size, sha256 or known_sha256
  cached_problem = _verify(dest, sha256, size) if dest.is_file() else None
  if dest.is_file() and cached_problem is None:
    return dest
  # A copy that does not match (a truncated copy, another file of that name) stays until a
  # good download replaces it: an offline user's file is never deleted.
  if not dest.is_file():
    dest.with_name(dest.name + '.sha256').unlink(missing_ok=True)  # of a copy now gone
  dest.parent.mkdir(parents=True, exist_ok=True)
  # Private to this process: two runs fetching the same file at once never mix their bytes.
  part = dest.with_name(f'{dest.name}.{_HOST}-{os.getpid()}.part')
  digest = hashlib.sha256()  # hashed while streaming: the file is read once
  try:
    with urllib.request.urlopen(url, timeout=timeout) as response, open(part, 'wb') as out:
      total = response.headers.get('Content-Length')
      with tqdm(
        total=int(total) if total else None,
        unit='B',
        unit_scale=True,
        unit_divisor=1024,
        desc=dest.name,
      ) as bar:
        for chunk in iter(lambda: response.read(1 << 20), b''):
          out.write(chunk)
          digest.update(chunk)
          bar.update(len(chunk))
  except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError) as e:
    part.unlink(missing_ok=True)
    raise _unreachable(url, getattr(e, 'reason', e), setting, dest, cached_problem) from e
  except BaseException:
    part.unlink(missing_ok=True)
    raise
  problem = _mismatch(part.stat().st_size, digest.hexdigest(), size, sha256)
  if problem is not None:
    part.unlink()
    raise CheckpointError(
      f'Downloaded {url} does not match its published checksum ({problem}); nothing was '
      'kept. Try again; if it persists, the file on the server changed: report it.'
    )
  os.replace(part, dest)
  stat = dest.stat()
  _remember_sha256(dest, f'{stat.st_size} {stat.st_mtime_ns}', digest.hexdigest())
  return dest


def official_file(
  name: str, cache_dir: str | os.PathLike | None = None, setting: str = 'model.checkpoint'
) -> Path:
  """The cached copy of ``FILES[name]`` (downloaded once, size and sha256 checked). Offline:
  the CheckpointError of ``download`` says which file to fetch elsewhere."""
  url, size, sha256 = FILES[name]
  return download(url, cache_dir, sha256=sha256, size=size, setting=setting)


def is_url(value: str) -> bool:
  return re.match(r'^(https?|file)://', value) is not None


def resolve_checkpoint(
  model_name: str,
  checkpoint: str | os.PathLike | None = None,
  cache_dir: str | os.PathLike | None = None,
) -> Path:
  """Local file for a model: explicit path > explicit URL > registry URL."""
  if checkpoint is not None and str(checkpoint):
    if is_url(str(checkpoint)):
      return download(str(checkpoint), cache_dir)
    path = Path(checkpoint).expanduser()
    if not path.is_file():
      raise missing_file(path)
    return path.absolute()
  if model_name not in WEIGHTS:
    raise CheckpointError(
      f'Unknown model {model_name!r}; known models: {", ".join(sorted(WEIGHTS))}; or pass '
      'a checkpoint file'
    )
  return download(WEIGHTS[model_name], cache_dir)


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
    if model_name not in WEIGHTS:
      return None, None
    checkpoint = WEIGHTS[model_name]
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
  re.compile(r'.+\.(?P<host>[A-Za-z0-9_.]+)-(?P<pid>\d+)\.part'),  # downloads
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
        child.unlink(missing_ok=True)
      removed.append(child)
  return removed
