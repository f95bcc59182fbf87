"""Shared fixtures: the parity data (outputs of the official code) and task configs."""

import json
import shutil
from pathlib import Path

import pytest

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
