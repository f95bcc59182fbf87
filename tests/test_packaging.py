"""The package as users install it: wheel → fresh venv → API and CLI from outside the repo.

Offline: the wheel is built with --no-build-isolation (setuptools and wheel from this
environment), installed with --no-index --no-deps into a fresh venv that sees this
environment's site-packages through a .pth file (so the installed dependency versions are
reused), and run from a directory outside the repository.
"""

import ast
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.conftest import MANIFEST, PARITY, PARITY_IDS

ROOT = Path(__file__).parent.parent
CKPT = PARITY / 'checkpoint.pth'


def _run(cmd, cwd, env, timeout=300):
  proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
  assert proc.returncode == 0, f'{cmd}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}'
  return proc


def _clean_env():
  env = dict(os.environ)
  env.pop('PYTHONPATH', None)  # nothing from the repository may leak in
  env.pop('VIRTUAL_ENV', None)
  env['JAX_PLATFORMS'] = env.get('JAX_PLATFORMS', 'cpu')
  return env


@pytest.fixture(scope='module')
def installed(tmp_path_factory):
  """(python, bin folder, scratch folder) of a fresh venv with the built wheel installed."""
  if importlib.util.find_spec('wheel') is None or importlib.util.find_spec('setuptools') is None:
    pytest.fail(
      'building the wheel offline needs setuptools and wheel: pip install -r requirements-test.txt'
    )
  tmp = tmp_path_factory.mktemp('packaging')
  # Build from a copy: an in-tree build would leave build/ and *.egg-info in the repository.
  src = tmp / 'src'
  ignore = shutil.ignore_patterns('__pycache__', '*.pyc')
  for name in ('spectral_jax', 'configs'):
    shutil.copytree(ROOT / name, src / name, ignore=ignore)
  for name in ('pyproject.toml', 'README.md'):
    shutil.copy(ROOT / name, src / name)
  env = _clean_env()
  dist = tmp / 'dist'
  _run(
    [
      sys.executable,
      '-m',
      'pip',
      'wheel',
      '--no-deps',
      '--no-build-isolation',
      '--no-index',
      '-q',
      '-w',
      str(dist),
      str(src),
    ],
    tmp,
    env,
  )
  (wheel,) = dist.glob('spectral_jax-*.whl')
  venv = tmp / 'venv'
  _run([sys.executable, '-m', 'venv', '--without-pip', str(venv)], tmp, env)
  python = venv / 'bin' / 'python'
  purelib = _run(
    [str(python), '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'], tmp, env
  ).stdout.strip()
  # This environment's packages (jax, ..., pip) after the venv's own: the wheel wins.
  Path(purelib, 'zz_reuse_deps.pth').write_text(sysconfig.get_paths()['purelib'] + '\n')
  _run(
    [str(python), '-m', 'pip', 'install', '-q', '--no-index', '--no-deps', str(wheel)],
    tmp,
    env,
  )
  work = tmp / 'elsewhere'
  work.mkdir()
  return python, venv / 'bin', work, env, wheel


def test_wheel_contents_and_version(installed):
  python, _, work, env, wheel = installed
  assert wheel.name.startswith('spectral_jax-0.2.0-')
  proc = _run(
    [
      str(python),
      '-c',
      textwrap.dedent("""
          import importlib.metadata, spectral_jax, spectral_jax.configs as configs
          import spectral_jax.workdirs as w
          print(spectral_jax.__file__, configs.__file__)
          assert spectral_jax.__version__ == importlib.metadata.version('spectral_jax')
          assert w.VERSION == spectral_jax.__version__
          import spectral_jax.data.datasets as d
          assert len(d.coco20k_filenames()) == 19817
      """),
    ],
    work,
    env,
  )
  venv = str(python.parent.parent)
  for path in proc.stdout.split():
    assert path.startswith(venv), proc.stdout  # the installed copy, not the repository's


def test_wheel_top_level_is_spectral_jax_alone(installed):
  """A wheel puts only spectral_jax into site-packages: the configs travel inside it."""
  wheel = installed[4]
  with zipfile.ZipFile(wheel) as z:
    names = z.namelist()
  top = {n.split('/')[0] for n in names if not n.split('/')[0].endswith('.dist-info')}
  assert top == {'spectral_jax'}, top
  assert 'spectral_jax/configs/voc.py' in names and 'spectral_jax/configs/base.py' in names
  with zipfile.ZipFile(wheel) as z:
    (record,) = [n for n in names if n.endswith('.dist-info/top_level.txt')] or [None]
    if record:
      assert z.read(record).decode().split() == ['spectral_jax']


def test_static_files_are_in_the_wheel(installed):
  """The demo page, the example photos and their licence travel in the wheel, and the installed
  package serves them (GET /examples/<name>.jpg reads them through importlib.resources)."""
  python, _, work, env, wheel = installed
  with zipfile.ZipFile(wheel) as z:
    names = set(z.namelist())
  static = ROOT / 'spectral_jax' / 'static'
  files = [p for p in static.rglob('*') if p.is_file() and '__pycache__' not in p.parts]
  assert len([p for p in files if p.suffix == '.jpg']) >= 3
  missing = [
    str(p)
    for p in files
    if 'spectral_jax/' + p.relative_to(ROOT / 'spectral_jax').as_posix() not in names
  ]
  assert not missing, missing
  assert 'spectral_jax/static/examples/README.md' in names
  proc = _run(
    [
      str(python),
      '-c',
      'from spectral_jax.server import routes; '
      'print(sorted(routes.example_files()), routes.example_files()["chelsea.jpg"][0]["license"])',
    ],
    work,
    env,
  )
  assert "'chelsea.jpg'" in proc.stdout and 'CC0' in proc.stdout, proc.stdout


def test_every_package_folder_is_listed_in_pyproject():
  """pyproject lists packages by hand (configs/ is mapped into the package): none may be left
  out of a wheel."""
  listed = set(
    tomllib.loads((ROOT / 'pyproject.toml').read_text())['tool']['setuptools']['packages']
  )
  found = {
    '.'.join(p.parent.relative_to(ROOT).parts) for p in (ROOT / 'spectral_jax').rglob('__init__.py')
  }
  assert found | {'spectral_jax.configs'} == listed


def test_configs_import_only_ml_collections_and_spectral_jax():
  for path in sorted((ROOT / 'configs').glob('*.py')):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        roots = {a.name.split('.')[0] for a in node.names}
      elif isinstance(node, ast.ImportFrom):
        roots = {(node.module or '').split('.')[0]} if not node.level else {'(relative)'}
      else:
        continue
      assert roots <= {'ml_collections', 'spectral_jax'}, (path.name, roots)


def test_a_foreign_configs_package_in_the_working_directory_changes_nothing(tmp_path):
  """Hydra, mmdet or detectron layouts have their own configs/ package: the CLI's config names
  and the API must not import it."""
  (tmp_path / 'configs').mkdir()
  (tmp_path / 'configs' / '__init__.py').write_text('raise ImportError("foreign configs")\n')
  (tmp_path / 'configs' / 'base.py').write_text('raise ImportError("foreign base")\n')
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  code = textwrap.dedent("""
      import spectral_jax, spectral_jax.api
      from spectral_jax import cli
      print(cli.resolve_config('voc'))
  """)
  proc = subprocess.run(
    [sys.executable, '-c', code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.strip() == str(ROOT / 'configs' / 'voc.py')


def test_installed_api_and_cli_give_the_parity_boxes(installed, tmp_path):
  python, bin_dir, work, env, _ = installed
  paths = [str(PARITY / 'images' / f'{i}.png') for i in PARITY_IDS]
  cache = tmp_path / 'cache'
  script = textwrap.dedent(f"""
      import json, spectral_jax
      b = spectral_jax.load_backbone('dino_vits16', checkpoint={str(CKPT)!r},
                                     cache_dir={str(cache)!r})
      print(json.dumps([list(r.box_xyxy) for r in spectral_jax.localize(b, {paths!r})]))
  """)
  # The API run fills the CLI's persistent compilation cache (cache/xla): same shapes, so the
  # CLI run below compiles nothing.
  api_env = dict(
    env,
    JAX_COMPILATION_CACHE_DIR=str(cache / 'xla'),
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
  )
  proc = _run([str(python), '-c', script], work, api_env)
  api_boxes = json.loads(proc.stdout.strip().splitlines()[-1])
  expected = [MANIFEST['images'][i]['loc_box_xyxy'] for i in PARITY_IDS]
  assert api_boxes == expected

  out = tmp_path / 'out'
  _run(
    [
      str(python),
      '-m',
      'spectral_jax',
      '--config=folder',
      '--mode=localize',
      f'--config.data.root={PARITY / "images"}',
      f'--config.model.checkpoint={CKPT}',
      f'--config.model.cache_dir={cache}',
      f'--workdir={out}',
    ],
    work,
    env,
  )
  records = {
    r['id']: r['box_xyxy']
    for r in map(json.loads, (out / 'predictions.jsonl').read_text().splitlines())
  }
  assert [records[i] for i in PARITY_IDS] == expected


def test_console_script_resolves_shipped_configs(installed, tmp_path):
  _, bin_dir, work, env, _ = installed
  proc = subprocess.run(
    [
      str(bin_dir / 'spectral-jax'),
      '--config=nonesuch',
      '--mode=localize',
      f'--workdir={tmp_path}',
    ],
    cwd=work,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode != 0
  for name in ('folder', 'voc', 'demo', 'object_seg', 'edit'):
    assert name in proc.stderr
  # A config found by name, checked before anything loads (an unknown value is named).
  proc = subprocess.run(
    [
      str(bin_dir / 'spectral-jax'),
      '--config=voc',
      '--mode=localize',
      '--config.spectral.which_matrix=banana',
      f'--workdir={tmp_path}',
    ],
    cwd=work,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode != 0 and 'which_matrix' in proc.stderr, proc.stderr[-2000:]


def test_config_names_resolve_to_the_shipped_files(tmp_path, monkeypatch):
  from absl import app  # pylint: disable=import-outside-toplevel
  from spectral_jax import cli  # pylint: disable=import-outside-toplevel

  voc = str(ROOT / 'configs' / 'voc.py')
  assert cli.resolve_config('voc') == voc
  assert cli.resolve_config('voc.py') == voc
  assert cli.resolve_config('voc:arg') == voc + ':arg'
  assert cli.resolve_argv(['prog', '--config', 'folder', '--mode=localize']) == [
    'prog',
    '--config',
    str(ROOT / 'configs' / 'folder.py'),
    '--mode=localize',
  ]
  own = tmp_path / 'mine.py'
  own.write_text('')
  assert cli.resolve_config(str(own)) == str(own)  # a file is never replaced
  monkeypatch.chdir(tmp_path)  # the README's relative path from elsewhere: the shipped file
  assert cli.resolve_config('configs/voc.py') == voc
  assert cli.resolve_config('other/voc.py') == 'other/voc.py'  # left for config_flags to report
  with pytest.raises(app.UsageError, match='shipped configs: .*folder.*voc'):
    cli.resolve_config('nonesuch')
  assert {'base', 'folder', 'voc', 'demo', 'edit', 'object_seg'} <= set(cli.shipped_configs())
