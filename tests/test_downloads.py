"""downloads: the URL registry and its pins, downloads checked against them (local HTTP
servers and file:// URLs only), and how a checkpoint argument resolves to a local file."""

import contextlib
import functools
import hashlib
import http.server
import os
import re
import socket
import threading
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

from spectral_jax.models import backbones
from spectral_jax.models.weights import downloads
from spectral_jax.models.weights.errors import CheckpointError


# --------------------------------------------------------------------------
# Download and resolution (local HTTP server only)
# --------------------------------------------------------------------------


@contextlib.contextmanager
def serve(directory: Path):
  class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
      pass

  handler = functools.partial(Quiet, directory=str(directory))
  server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  try:
    yield f'http://127.0.0.1:{server.server_address[1]}'
  finally:
    server.shutdown()
    server.server_close()


@pytest.fixture
def served_file(tmp_path):
  root = tmp_path / 'www'
  root.mkdir()
  payload = np.random.default_rng(2).bytes(300_000)
  (root / 'weights.pth').write_bytes(payload)
  with serve(root) as base:
    yield base + '/weights.pth', payload, root


def test_download_verified(tmp_path, served_file):
  url, payload, root = served_file
  cache_dir = tmp_path / 'cache_dir'
  sha = hashlib.sha256(payload).hexdigest()
  path = downloads.download(url, cache_dir, sha256=sha, size=len(payload))
  assert path == (cache_dir / 'weights.pth').absolute() and path.read_bytes() == payload
  # No .part left; the digest is remembered beside the file (hashed while downloading).
  assert sorted(p.name for p in cache_dir.iterdir()) == ['weights.pth', 'weights.pth.sha256']
  assert (cache_dir / 'weights.pth.sha256').read_text().split()[-1] == sha
  (root / 'weights.pth').unlink()  # server can no longer provide it: cache_dir is reused
  assert downloads.download(url, cache_dir, sha256=sha) == path
  # A copy put there by hand that is not the published file is checked (its new ctime makes
  # the remembered digest stale), used as given with a warning, and never deleted.
  path.write_bytes(b'x' * len(payload))
  with mock.patch.object(downloads.logging, 'warning') as warning:
    assert downloads.download(url, cache_dir, sha256=sha) == path
  assert 'is not the published' in warning.call_args.args[0]
  assert 'sha256 ' in warning.call_args.args[3] and path.read_bytes() == b'x' * len(payload)


def test_sha256_is_remembered_until_the_file_changes(tmp_path):
  path = tmp_path / 'big.pth'
  path.write_bytes(b'abc')
  true = hashlib.sha256(b'abc').hexdigest()
  assert downloads.sha256_file(path) == true
  stamp = tmp_path / 'big.pth.sha256'
  key = stamp.read_text().rsplit(' ', 1)[0]
  stamp.write_text(f'{key} {"e" * 64}\n')  # a remembered value is used without reading
  assert downloads.sha256_file(path) == 'e' * 64
  path.write_bytes(b'abd')  # a new mtime (and content): hashed again
  os.utime(path, ns=(1, 1))
  assert downloads.sha256_file(path) == hashlib.sha256(b'abd').hexdigest()
  stamp.write_text('garbage')  # an unreadable record is ignored
  assert downloads.sha256_file(path) == hashlib.sha256(b'abd').hexdigest()
  # Other bytes of the same size with the old mtime put back (cp -p, rsync -t, unzip): the
  # inode and ctime tell them apart.
  stat = path.stat()
  replacement = tmp_path / 'new.pth'
  replacement.write_bytes(b'xyz')
  os.utime(replacement, ns=(stat.st_atime_ns, stat.st_mtime_ns))
  replacement.replace(path)
  assert path.stat().st_mtime_ns == stat.st_mtime_ns and path.stat().st_size == 3
  assert downloads.sha256_file(path) == hashlib.sha256(b'xyz').hexdigest()


def test_download_wrong_hash_leaves_nothing(tmp_path, served_file):
  url, payload, _ = served_file
  cache = tmp_path / 'cache'
  with pytest.raises(CheckpointError, match='sha256'):
    downloads.download(url, cache, sha256='0' * 64)
  assert list(cache.iterdir()) == []


def test_a_hash_prefix_in_the_file_name_is_checked(tmp_path, served_file):
  """torch.hub's convention (DINOv3's files: name-<8 hex>.pth) is checked like a pin."""
  url, payload, root = served_file
  sha = hashlib.sha256(payload).hexdigest()
  assert downloads.name_digest('dinov3_vits16_pretrain_lvd1689m-08c60483.pth') == '08c60483'
  assert downloads.name_digest('model-cafe.pth') is None  # too short to be a digest
  assert downloads.name_digest('ckpt-00010000.pth') is None  # a step count, not a digest
  prefix = next(sha[:n] for n in range(8, 65) if re.search('[a-f]', sha[:n]))
  (root / f'w-{prefix}.pth').write_bytes(payload)
  (root / 'w-0badf00d.pth').write_bytes(payload)
  base = url.rsplit('/', 1)[0]
  got = downloads.download(f'{base}/w-{prefix}.pth', tmp_path / 'c')
  assert got.read_bytes() == payload
  with pytest.raises(CheckpointError, match='expected 0badf00d…') as e:
    downloads.download(f'{base}/w-0badf00d.pth', tmp_path / 'c')
  # It says where the expected value comes from, and the way out for a name that only looks
  # like a digest.
  assert 'the sha256 prefix in its name' in str(e.value)
  assert 'download it yourself and pass its path' in str(e.value)
  assert not (tmp_path / 'c' / 'w-0badf00d.pth').exists()


def test_an_unwritable_cache_folder_is_named_with_the_fix(tmp_path, served_file):
  url, _, _ = served_file
  not_a_folder = tmp_path / 'cache'
  not_a_folder.write_text('a file where the cache folder should be')
  with pytest.raises(CheckpointError, match='SPECTRAL_JAX_CACHE') as e:
    downloads.download(url, not_a_folder)
  assert f'the weights cache folder {not_a_folder} is a file, not a folder' in str(e.value)
  assert e.value.file_name == 'weights.pth'  # the front-ends add how to pass a local copy


def closed_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def test_download_unreachable(tmp_path, served_file):
  url, _, _ = served_file
  cache = tmp_path / 'cache'
  for bad in (
    f'http://127.0.0.1:{closed_port()}/dino_deitsmall16_pretrain.pth',
    url.replace('weights.pth', 'missing.pth'),
  ):  # 404
    with pytest.raises(CheckpointError) as e:
      downloads.download(bad, cache, timeout=5)
    msg = str(e.value)
    assert 'unreachable' in msg and bad in msg and str(cache) in msg
    # The library names the setting and the file; each front-end spells how to pass it.
    assert e.value.setting == 'model.checkpoint' and e.value.file_name == bad.rsplit('/', 1)[1]
    assert '--config' not in msg
  assert not any(cache.iterdir())


def test_resolve_checkpoint(tmp_path, served_file, monkeypatch):
  url, payload, _ = served_file
  local = tmp_path / 'local.pth'
  local.write_bytes(b'x')
  assert downloads.resolve_checkpoint('dino_vits16', local) == local.absolute()
  got = downloads.resolve_checkpoint('dino_vits16', url, cache_dir=tmp_path / 'c')
  assert got.read_bytes() == payload
  # Registry name: an already-cached file is used without touching the network.
  monkeypatch.setenv('SPECTRAL_JAX_CACHE', str(tmp_path / 'env_cache'))
  assert downloads.default_cache_dir() == tmp_path / 'env_cache'
  cached = tmp_path / 'env_cache' / 'dino_deitsmall16_pretrain.pth'
  cached.parent.mkdir()
  cached.write_bytes(b'weights')
  # (not the published file: used as given, with a warning, as a file dropped there offline)
  assert downloads.resolve_checkpoint('dino_vits16') == cached.absolute()
  with pytest.raises(CheckpointError, match='dino_vitb8'):
    downloads.resolve_checkpoint('resnet50')


def test_registry_urls():
  base = 'https://dl.fbaipublicfiles.com/dino/'
  assert downloads.WEIGHTS == {
    'dino_vits16': base + 'dino_deitsmall16_pretrain/dino_deitsmall16_pretrain.pth',
    'dino_vits8': base + 'dino_deitsmall8_pretrain/dino_deitsmall8_pretrain.pth',
    'dino_vitb16': base + 'dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth',
    'dino_vitb8': base + 'dino_vitbase8_pretrain/dino_vitbase8_pretrain.pth',
  }


def test_pinned_values_are_well_formed_and_documented():
  docs = (Path(__file__).parent.parent / 'docs' / 'weights.md').read_text()
  registry = {b.name: b.url for b in backbones.BACKBONES.values() if not b.gated}
  registry.update({**downloads.WEIGHTS, **downloads.VARIANT_WEIGHTS})
  registry.update({k: v[0] for k, v in downloads.FILES.items()})
  for name, url in registry.items():
    assert f'`{name}`' in docs, name  # every registry file has a row, pinned or not
    size, digest = pinned = downloads.pinned(url)
    if pinned == (None, None):
      continue
    assert size is None or (isinstance(size, int) and size > 0)
    assert digest is None or re.fullmatch('[0-9a-f]{64}', digest), digest
    shown = [v for v in (str(size) if size else None, digest and digest[:8]) if v]
    row = next(line for line in docs.splitlines() if line.startswith(f'| `{name}`'))
    assert all(v in row for v in shown), (name, row)
  assert set(downloads.PINNED) <= set(registry.values())  # no pin for a URL the registry lacks


def test_offline_fetches_nothing_from_beyond_this_machine(tmp_path, served_file, monkeypatch):
  monkeypatch.setenv('SPECTRAL_JAX_OFFLINE', '1')
  with pytest.raises(CheckpointError) as e:  # at once: no connection is even tried
    downloads.resolve_checkpoint('dino_vits16', cache_dir=tmp_path)
  assert 'not fetched, as $SPECTRAL_JAX_OFFLINE is set' in str(e.value)
  assert str(tmp_path / 'dino_deitsmall16_pretrain.pth') in str(e.value)  # where to put it
  url, payload, _ = served_file  # a local mirror is still used
  assert downloads.download(url, tmp_path / 'c').read_bytes() == payload
  monkeypatch.setenv('SPECTRAL_JAX_OFFLINE', '0')
  assert not downloads.offline()


def test_no_test_can_reach_beyond_the_loopback_interface():
  """conftest's guard (TEST-NET-1 address: nothing is sent either way)."""
  with pytest.raises(AssertionError, match='tried to reach'):
    socket.create_connection(('192.0.2.1', 80), timeout=1)
  with socket.socket() as s, pytest.raises(AssertionError, match='tried to reach'):
    s.connect(('192.0.2.1', 80))
