"""Official weights by URL: the registry of files and their pinned sizes and sha256, and
downloads checked against them.

A download streams into a private ``<name>.<host>-<pid>.part`` (hashed on the way) and is
renamed into place only once its size and sha256 check out, so the cache folder never holds a
partial or unverified download. A file put there by hand is used as given (a warning says when
it is not the published one). Each checked file's digest is kept in ``<file>.sha256``.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import socket
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Optional

from absl import logging

from spectral_jax import artifacts as spectral_io
from spectral_jax.models.weights.errors import CheckpointError, missing_file

__all__ = [
  'WEIGHTS',
  'VARIANT_WEIGHTS',
  'FILES',
  'PINNED',
  'pinned',
  'default_cache_dir',
  'sha256_file',
  'download',
  'official_file',
  'is_url',
  'url_filename',
  'resolve_checkpoint',
]

# The host, as temporaries name their writer (with its pid): see cache.remove_stale_temporaries.
HOST = re.sub(r'[^A-Za-z0-9_]', '_', socket.gethostname())[:40] or 'host'

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


def offline() -> bool:
  """``$SPECTRAL_JAX_OFFLINE`` set (1/true/yes): nothing is fetched from beyond this machine
  (file:// and loopback URLs still are); a missing file fails at once, with the fix, instead
  of after a network timeout."""
  return os.environ.get('SPECTRAL_JAX_OFFLINE', '').strip().lower() in ('1', 'true', 'yes', 'on')


def _local_url(url: str) -> bool:
  parsed = urllib.parse.urlparse(url)
  return parsed.scheme == 'file' or parsed.hostname in ('127.0.0.1', 'localhost', '::1')


def default_cache_dir() -> Path:
  """``$SPECTRAL_JAX_CACHE`` or ``~/.cache/spectral_jax``."""
  env = os.environ.get('SPECTRAL_JAX_CACHE')
  return Path(env).expanduser() if env else Path.home() / '.cache' / 'spectral_jax'


def _stamp_key(stat: os.stat_result) -> str:
  # The inode and ctime too: a copy with the same size and a restored mtime (cp -p, rsync -t)
  # is another file; ctime cannot be set back.
  return f'{stat.st_size} {stat.st_mtime_ns} {stat.st_ino} {stat.st_ctime_ns}'


def sha256_file(path: Path) -> str:
  """The sha256 of ``path``, remembered in ``<path>.sha256`` (with its size, mtime, inode and
  ctime): a multi-GB checkpoint is hashed once, not on every run; a changed file again."""
  key = _stamp_key(path.stat())
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
  if sha256 is not None and actual_sha256 is not None:
    if not actual_sha256.startswith(sha256.lower()):  # a prefix: from the file's name
      return f'sha256 {actual_sha256} != expected {sha256}' + '…' * (len(sha256) < 64)
  return None


def name_digest(file_name: str) -> Optional[str]:
  """The sha256 prefix a file name carries by torch.hub's convention (``name-<hex>.pth``,
  as DINOv3's files): at least 8 hex digits before the extension, one of them a letter (so a
  step count or a date, ``ckpt-00010000.pth``, is not taken for one); None without one."""
  match = re.search(r'-([0-9a-f]{8,64})\.[A-Za-z0-9]+$', file_name)
  return match.group(1) if match and re.search('[a-f]', match.group(1)) else None


def expected(url: str, size: int | None = None, sha256: str | None = None):
  """(size, sha256, where the sha256 comes from) that a file from ``url`` is checked against:
  the arguments, else the pins, else a sha256 prefix in the file's name."""
  known_size, known_sha256 = pinned(url)
  size, sha256 = size or known_size, sha256 or known_sha256
  in_name = name_digest(url_filename(url))
  if sha256 is None and in_name:
    return size, in_name, "the sha256 prefix in its name (torch.hub's)"
  return size, sha256, 'its published checksum'


def mismatch(path: Path, url: str) -> str | None:
  """How the file at ``path`` differs from what ``url`` should give (None: it does not, or
  nothing is known to check it against)."""
  size, sha256, _ = expected(url)
  return _verify(path, sha256, size)


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
  return CheckpointError(
    f'Could not download {name}{what} from {url}: {reason}.{where}',
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

  Streams into ``<name>.<host>-<pid>.part`` and renames atomically only after the size and
  sha256 (``expected``) check out, so the cache never holds a partial file. ``setting``: the
  key an offline user passes the file with instead (named in the error).
  """
  from tqdm import tqdm  # only needed when actually downloading

  cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
  dest = cache_dir.absolute() / url_filename(url)
  size, sha256, what = expected(url, size, sha256)
  if dest.is_file():
    # Downloads are checked before they are renamed into place, so a copy that does not match
    # was put there by hand (another build of the weights, a fine-tuned file): it is used as
    # given, never deleted or replaced, and the log says so.
    problem = _verify(dest, sha256, size)
    if problem is not None:
      logging.warning(
        '%s is not the published %s (%s): using it as given; delete it to download the '
        'official file',
        dest,
        dest.name,
        problem,
      )
    return dest
  try:
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.with_name(dest.name + '.sha256').unlink(missing_ok=True)  # of a copy now gone
    if not os.access(dest.parent, os.W_OK):
      raise PermissionError(f'no write permission on {dest.parent}')
  except OSError as e:
    why = (
      'is a file, not a folder' if dest.parent.is_file() else f'is not writable ({e.strerror or e})'
    )
    raise CheckpointError(
      f'Cannot download {dest.name}: the weights cache folder {dest.parent} {why}. Point '
      '$SPECTRAL_JAX_CACHE (or the model cache_dir setting) at a writable folder, or pass a '
      'local copy of the file.',
      setting,
      dest.name,
    ) from e
  if offline() and not _local_url(url):
    raise _unreachable(url, 'not fetched, as $SPECTRAL_JAX_OFFLINE is set', setting, dest)
  # Private to this process: two runs fetching the same file at once never mix their bytes.
  part = dest.with_name(f'{dest.name}.{HOST}-{os.getpid()}.part')
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
    reason = f'the URL is unreachable ({getattr(e, "reason", e)})'
    raise _unreachable(url, reason, setting, dest) from e
  except OSError as e:  # writing: a full disk, a quota
    part.unlink(missing_ok=True)
    raise CheckpointError(
      f'Cannot download {dest.name} into {dest.parent}: {e.strerror or e}. Free some space or '
      'point $SPECTRAL_JAX_CACHE (or the model cache_dir setting) at another folder, or pass a '
      'local copy of the file.',
      setting,
      dest.name,
    ) from e
  except BaseException:
    part.unlink(missing_ok=True)
    raise
  problem = _mismatch(part.stat().st_size, digest.hexdigest(), size, sha256)
  if problem is not None:
    part.unlink()
    raise CheckpointError(
      f'Downloaded {url} does not match {what} ({problem}); nothing was kept. Try again; if '
      'it persists, the file on the server changed (report it), or download it yourself and '
      'pass its path.',
      setting,
      dest.name,
    )
  inode = part.stat().st_ino
  try:
    os.replace(part, dest)
  except OSError as e:  # (Windows) another process holds a copy it has just put there
    part.unlink(missing_ok=True)
    if dest.is_file() and _verify(dest, sha256, size) is None:
      return dest
    raise CheckpointError(
      f'Cannot put the downloaded {dest.name} in place ({e.strerror or e}): rerun, or pass a '
      'local copy of the file.',
      setting,
      dest.name,
    ) from e
  stat = dest.stat()
  if stat.st_ino == inode:  # not replaced meanwhile by another process's copy
    _remember_sha256(dest, _stamp_key(stat), digest.hexdigest())
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
