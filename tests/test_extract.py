"""tasks/extract.py: the file format, and features/eigenvectors equal to the official outputs."""

import numpy as np
import pytest

from spectral_jax.tasks import common, extract
from tests.conftest import PARITY, PARITY_IDS


@pytest.fixture(scope='module')
def extracted(tmp_path_factory):
  from configs import folder  # pylint: disable=import-outside-toplevel

  config = folder.get_config()
  config.data.root = str(PARITY / 'images')
  config.model.checkpoint = str(PARITY / 'checkpoint.pth')
  workdir = tmp_path_factory.mktemp('extract')
  config.model.cache_dir = str(workdir / 'cache')
  extract.run(config, workdir)
  return workdir


@pytest.mark.parametrize('image_id', PARITY_IDS)
def test_features_file(extracted, manifest, image_id):
  info = manifest['images'][image_id]
  with np.load(extracted / 'features' / f'{image_id}.npz') as f:
    assert f['k'].dtype == np.float32
    assert tuple(f['patch_grid']) == tuple(info['patch_grid'])
    assert tuple(f['image_size']) == (info['height'], info['width'])
    ref = np.load(PARITY / f'{image_id}.npz')['k']
    assert f['k'].shape == ref.shape
    assert np.abs(f['k'] - ref).max() <= 1e-4 * np.abs(ref).max()
  assert (extracted / 'panels' / f'{image_id}.png').exists()


@pytest.mark.parametrize('image_id', PARITY_IDS)
def test_eigs_file(extracted, image_id):
  ref = np.load(PARITY / f'{image_id}.npz')
  with np.load(extracted / 'eigs' / f'{image_id}.npz') as f:
    assert f['eigenvalues'].shape == (5,)
    assert f['eigenvectors'].shape == ref['loc_eigenvectors'].shape
    np.testing.assert_allclose(f['eigenvalues'], ref['loc_eigenvalues'], atol=1e-4)
    fiedler, ref_fiedler = f['eigenvectors'][1], ref['loc_eigenvectors'][1]
    cos = fiedler @ ref_fiedler / np.linalg.norm(fiedler) / np.linalg.norm(ref_fiedler)
    assert cos >= 0.999  # same sign too: the sign rule is applied


def test_second_run_recomputes_nothing(extracted, monkeypatch):
  from configs import folder  # pylint: disable=import-outside-toplevel

  config = folder.get_config()
  config.data.root = str(PARITY / 'images')
  config.model.checkpoint = str(PARITY / 'checkpoint.pth')

  def no_model(*_):
    raise AssertionError('the model was loaded although every image is done')

  monkeypatch.setattr(common, 'load_extractor', no_model)
  before = {p: p.stat().st_mtime_ns for p in extracted.glob('*/*.npz')}
  extract.run(config, extracted)
  assert {p: p.stat().st_mtime_ns for p in extracted.glob('*/*.npz')} == before


@pytest.mark.parametrize(
  'setting,overrides',
  [
    ('color', {'color_lambda': 10.0}),
    ('affinity', {'which_matrix': 'affinity'}),
    ('seg', {'K': 2}),
  ],
)
def test_other_official_settings(tmp_path, setting, overrides):
  from configs import folder  # pylint: disable=import-outside-toplevel

  config = folder.get_config()
  config.data.root = str(PARITY / 'images')
  config.data.limit = 2
  config.model.checkpoint = str(PARITY / 'checkpoint.pth')
  config.model.cache_dir = str(tmp_path / 'cache')
  config.output.features = False
  config.spectral.update(overrides)
  extract.run(config, tmp_path)
  for image_id in ('astronaut', 'chelsea'):
    ref = np.load(PARITY / f'{image_id}.npz')
    with np.load(tmp_path / 'eigs' / f'{image_id}.npz') as f:
      vals, vecs = f['eigenvalues'], f['eigenvectors']
    ref_vals, ref_vecs = ref[f'{setting}_eigenvalues'], ref[f'{setting}_eigenvectors']
    np.testing.assert_allclose(vals, ref_vals, atol=1e-4 * max(1.0, np.abs(ref_vals).max()))
    i = 0 if setting == 'affinity' else 1  # the vector each task uses
    cos = vecs[i] @ ref_vecs[i] / np.linalg.norm(vecs[i]) / np.linalg.norm(ref_vecs[i])
    assert cos >= 0.999
