"""Shared fixtures: the parity data (outputs of the official code) and task configs."""

import json
import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest

# One XLA compilation cache for the test session (removed at its end): tests build the same
# small models again and again (each extractor jits its own forward), and CLI subprocesses that
# pass os.environ on share it (XLA_CACHE_ENV for the ones that build their own environment).
# Measured: tests/test_api.py + test_segment.py + test_localize.py 114 s → 82–86 s.
_OWN_XLA_CACHE = 'JAX_COMPILATION_CACHE_DIR' not in os.environ
if _OWN_XLA_CACHE:  # (not again when this module is imported a second time, or in a child)
  os.environ['JAX_COMPILATION_CACHE_DIR'] = tempfile.mkdtemp(prefix='spectral_jax_test_xla_')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.2')
# Nothing is fetched from beyond this machine, in this process or in the CLI subprocesses that
# inherit the environment (downloads are tested with file:// and loopback URLs).
os.environ['SPECTRAL_JAX_OFFLINE'] = '1'
XLA_CACHE_ENV = {
  key: os.environ[key]
  for key in ('JAX_COMPILATION_CACHE_DIR', 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS')
}


def pytest_sessionfinish(session, exitstatus):
  del session, exitstatus
  if _OWN_XLA_CACHE:
    shutil.rmtree(os.environ['JAX_COMPILATION_CACHE_DIR'], ignore_errors=True)


PARITY = Path(__file__).parent / 'data' / 'parity'
PARITY_IDS = ('astronaut', 'chelsea', 'coffee')
MANIFEST = json.loads((PARITY / 'manifest.json').read_text())


@pytest.fixture(scope='session')
def manifest():
  return MANIFEST


@pytest.fixture
def parity_config(tmp_path):
  """configs/folder.py on the parity photos with the parity checkpoint (official settings)."""
  from configs import folder  # pylint: disable=import-outside-toplevel

  config = folder.get_config()
  config.data.root = str(PARITY / 'images')
  config.model.checkpoint = str(PARITY / 'checkpoint.pth')
  config.model.cache_dir = str(tmp_path / 'cache')
  config.output.num_panels = 1
  return config


@pytest.fixture
def image_dir(tmp_path):
  """A writable copy of the parity photos."""
  out = tmp_path / 'images'
  shutil.copytree(PARITY / 'images', out)
  return out


@pytest.fixture(autouse=True)
def no_internet(monkeypatch):
  """Every test, in this process: fail loudly if anything tries to connect beyond the
  loopback interface (downloads are tested against local servers and file:// URLs only;
  the CLI's subprocesses inherit $SPECTRAL_JAX_OFFLINE)."""
  loopback = ('127.0.0.1', 'localhost', '::1')
  real_create, real_connect = socket.create_connection, socket.socket.connect

  def check(address):
    if isinstance(address, tuple) and address[0] not in loopback:  # (AF_UNIX: a path)
      raise AssertionError(f'test tried to reach {address}')

  def create_connection(address, *args, **kwargs):
    check(address)
    return real_create(address, *args, **kwargs)

  def connect(self, address):
    check(address)
    return real_connect(self, address)

  monkeypatch.setattr(socket, 'create_connection', create_connection)
  monkeypatch.setattr(socket.socket, 'connect', connect)
