"""main.py and configs/: the CLI as users run it (subprocess, a generated checkpoint)."""

import importlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import PARITY

ROOT = Path(__file__).parent.parent


def run_main(*args, cwd=ROOT):
  return subprocess.run(
    [sys.executable, 'main.py', *args], cwd=cwd, capture_output=True, text=True, timeout=600
  )


def test_demo_command_runs(tmp_path):
  """The README demo, with the parity checkpoint instead of the downloaded weights."""
  out = tmp_path / 'demo'
  proc = run_main(
    '--config=configs/demo.py',
    '--mode=localize',
    f'--workdir={out}',
    f'--config.model.checkpoint={PARITY / "checkpoint.pth"}',
    f'--config.model.cache_dir={tmp_path / "cache"}',
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = (out / 'predictions.jsonl').read_text().splitlines()
  assert len(lines) == 5
  for line in lines:
    record = json.loads(line)
    h, w = record['image_size']
    x0, y0, x1, y1 = record['box_xyxy']
    assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
  assert len(list((out / 'panels').glob('*.png'))) == 5
  assert 'images/s' in proc.stdout
  # The compiled shapes are kept for the next run.
  assert list((tmp_path / 'cache' / 'xla').iterdir())


def test_unreachable_weights_give_the_fix(tmp_path):
  proc = run_main(
    '--config=configs/demo.py',
    '--mode=localize',
    f'--workdir={tmp_path}',
    '--config.model.checkpoint=http://127.0.0.1:9/dino.pth',
    f'--config.model.cache_dir={tmp_path / "cache"}',
  )
  assert proc.returncode != 0
  assert '--config.model.checkpoint=/path/to/dino.pth' in proc.stderr
  assert 'Traceback' not in proc.stderr  # one screen: the message, the fix
  assert str(tmp_path / 'cache') in proc.stderr  # where a copied file is found with no flag


def test_bad_config_value_is_named(tmp_path):
  proc = run_main(
    '--config=configs/demo.py',
    '--mode=localize',
    f'--workdir={tmp_path}',
    '--config.spectral.which_matrix=banana',
    f'--config.model.checkpoint={PARITY / "checkpoint.pth"}',
    f'--config.model.cache_dir={tmp_path / "cache"}',
  )
  assert proc.returncode != 0
  assert 'which_matrix' in proc.stderr
  # A user error is its message, not a traceback (that comes with --verbosity=1).
  assert 'Traceback' not in proc.stderr and 'error: --config.spectral.which_matrix' in proc.stderr


@pytest.mark.parametrize('name', ['base', 'folder', 'demo', 'voc', 'coco20k', 'object_seg'])
def test_configs_load_and_document_their_command(name):
  module = importlib.import_module(f'configs.{name}')
  config = module.get_config()
  assert config.model.name == 'dino_vits16'
  if name != 'base':
    assert 'python main.py --config=configs/' in module.__doc__


def test_unprepared_tfds_dataset_prints_the_prepare_command(tmp_path):
  proc = run_main(
    '--config=configs/voc.py',
    '--mode=localize',
    f'--workdir={tmp_path}',
    f'--config.data.tfds_dir={tmp_path / "tfds"}',
  )
  assert proc.returncode != 0
  assert 'voc/2012' in proc.stderr and 'download_and_prepare' in proc.stderr
  assert 'tensorflow' in proc.stderr.lower()


# ----------------------------------------------------------------------------- field readiness


def parity_flags(tmp_path, root=None):
  return [
    f'--config.data.root={root or PARITY / "images"}',
    f'--config.model.checkpoint={PARITY / "checkpoint.pth"}',
    f'--config.model.cache_dir={tmp_path / "cache"}',
  ]


def peak_rss_run(*args):
  """main.py in a child; (completed process, the child's peak RSS in bytes)."""
  probe = (
    'import resource, subprocess, sys;'
    'p = subprocess.run(sys.argv[1:], capture_output=True, text=True);'
    'sys.stdout.write(p.stdout); sys.stderr.write(p.stderr);'
    'print("PEAK_RSS_KB", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss);'
    'sys.exit(p.returncode)'
  )
  proc = subprocess.run(
    [sys.executable, '-c', probe, sys.executable, 'main.py', *args],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=900,
  )
  kb = int(proc.stdout.rsplit('PEAK_RSS_KB', 1)[1].split()[0])
  return proc, kb * 1024


def test_large_photos_run_in_bounded_memory_with_outputs_in_their_frame(tmp_path):
  """A 12 MP JPEG and a 20000×300 panorama (which would need 157 GB and 37 GB of dense
  attention and affinity) beside VOC-sized photos: one run, under 8 GB, original frames."""
  from PIL import Image  # pylint: disable=import-outside-toplevel

  rng = np.random.default_rng(0)
  folder = tmp_path / 'photos'
  folder.mkdir()
  base = np.array(Image.open(PARITY / 'images' / 'coffee.png'))
  Image.fromarray(base).resize((4000, 3000)).save(folder / 'phone.jpg', quality=90)
  pano = rng.integers(0, 255, (300, 20000, 3), dtype=np.uint8)
  pano[:, 9000:11000] = 255
  Image.fromarray(pano).save(folder / 'pano.jpg', quality=80)
  for name in ('astronaut', 'chelsea'):
    Image.open(PARITY / 'images' / f'{name}.png').save(folder / f'{name}.jpg')
  out = tmp_path / 'out'
  proc, peak = peak_rss_run(
    '--config=configs/folder.py',
    '--mode=localize',
    f'--workdir={out}',
    *parity_flags(tmp_path, folder),
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert peak < 8 * 2**30, f'peak RSS {peak / 2**30:.1f} GB'
  lines = (out / 'predictions.jsonl').read_text().splitlines()
  records = {r['id']: r for r in map(json.loads, lines)}
  sizes = {
    'phone': [3000, 4000],
    'pano': [300, 20000],
    'astronaut': [512, 512],
    'chelsea': [300, 451],
  }
  assert {k: r['image_size'] for k, r in records.items()} == sizes
  for r in records.values():
    x0, y0, x1, y1 = r['box_xyxy']
    assert 0 <= x0 < x1 <= r['image_size'][1] and 0 <= y0 < y1 <= r['image_size'][0]
  assert 'downscaled' in proc.stderr and '4000x3000' in proc.stderr  # logged with both sizes
  # The same photo at its own size and at 4000×3000 gives the same box, scaled.
  small = records['astronaut']['box_xyxy']
  assert small[2] > small[0]
  proc = run_main(
    '--config=configs/folder.py',
    '--mode=segment',
    f'--workdir={tmp_path / "seg"}',
    *parity_flags(tmp_path, folder / 'phone.jpg'),
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  mask = np.array(Image.open(tmp_path / 'seg' / 'masks' / 'phone.png'))
  assert mask.shape == (3000, 4000) and set(np.unique(mask)) <= {0, 255}
  proc = run_main(
    '--config=configs/folder.py',
    '--mode=localize',
    f'--workdir={tmp_path / "skip"}',
    '--config.data.resize_large=False',
    *parity_flags(tmp_path, folder),
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  skipped = [json.loads(line) for line in (tmp_path / 'skip' / 'skipped.jsonl').open()]
  assert sorted(s['id'] for s in skipped) == ['pano', 'phone']
  assert all('resize_large=False' in s['error'] for s in skipped)


def test_thumbnails_never_end_the_run(tmp_path):
  """The README's edit example (colour term) on a thumbnail, K=40, and a one-patch image."""
  from PIL import Image  # pylint: disable=import-outside-toplevel

  folder = tmp_path / 'thumbs'
  folder.mkdir()
  photo = Image.open(PARITY / 'images' / 'chelsea.png')
  photo.resize((64, 64)).save(folder / 'thumb.png')
  photo.resize((16, 16)).save(folder / 'tiny.png')
  photo.save(folder / 'chelsea.png')
  proc = run_main(
    '--config=configs/edit.py',
    '--mode=edit',
    f'--workdir={tmp_path / "edit"}',
    '--config.spectral.color_lambda=10',
    '--config.edit.background=white',
    *parity_flags(tmp_path, folder),
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert (tmp_path / 'edit' / 'composite' / 'thumb.png').exists()
  assert (tmp_path / 'edit' / 'composite' / 'chelsea.png').exists()
  skipped = [json.loads(line) for line in (tmp_path / 'edit' / 'skipped.jsonl').open()]
  assert [s['id'] for s in skipped] == ['tiny'] and 'tiny.png' in skipped[0]['error']
  proc = run_main(
    '--config=configs/folder.py',
    '--mode=localize',
    f'--workdir={tmp_path / "k40"}',
    '--config.spectral.K=40',
    *parity_flags(tmp_path, folder),
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  ids = [json.loads(line)['id'] for line in (tmp_path / 'k40' / 'predictions.jsonl').open()]
  assert sorted(ids) == ['chelsea', 'thumb']


@pytest.mark.parametrize(
  'flag,value',
  [
    ('data.limit', '-1'),
    ('spectral.color_lambda', 'nan'),
    ('data.max_pixels', '0'),
    ('data.bucket_tokens', '1000000'),
    ('model.precision', 'float16'),
    ('data.masks', '/no/such/masks'),
  ],
)
def test_bad_config_values_are_named_before_anything_loads(tmp_path, flag, value):
  proc = run_main(
    '--config=configs/folder.py',
    '--mode=localize',
    f'--workdir={tmp_path / "out"}',
    f'--config.{flag}={value}',
    *parity_flags(tmp_path),
  )
  assert proc.returncode != 0
  assert f'--config.{flag}' in proc.stderr
  assert not (tmp_path / 'cache').exists()  # the weights were never converted


def test_nan_weights_give_no_box(tmp_path):
  import safetensors.numpy  # pylint: disable=import-outside-toplevel

  from spectral_jax.models.weights import checkpoints

  state = checkpoints.read_state_dict(PARITY / 'checkpoint.pth')
  state['blocks.0.mlp.fc1.weight'][:] = np.nan
  bad = tmp_path / 'nan.safetensors'
  safetensors.numpy.save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(bad))
  out = tmp_path / 'out'
  proc = run_main(
    '--config=configs/folder.py',
    '--mode=localize',
    f'--workdir={out}',
    f'--config.data.root={PARITY / "images"}',
    f'--config.model.checkpoint={bad}',
    f'--config.model.cache_dir={tmp_path / "cache"}',
  )
  assert not (out / 'predictions.jsonl').exists() or not (out / 'predictions.jsonl').read_text()
  skipped = [json.loads(line) for line in (out / 'skipped.jsonl').open()]
  assert len(skipped) == 3 and all('non-finite' in s['error'] for s in skipped)
  json.loads((out / 'metrics.json').read_text())  # strict JSON (no NaN)
  assert proc.returncode == 0 or 'non-finite' in proc.stderr


def test_paths_home_single_file_and_workdir_inside_the_root(tmp_path):
  folder = tmp_path / 'home' / 'imgs'
  folder.mkdir(parents=True)
  for name in ('astronaut', 'coffee'):
    (folder / f'{name}.png').write_bytes((PARITY / 'images' / f'{name}.png').read_bytes())
  env = {**__import__('os').environ, 'HOME': str(tmp_path / 'home')}
  cmd = [
    sys.executable,
    'main.py',
    '--config=configs/folder.py',
    '--mode=localize',
    '--workdir=~/imgs/out',
    '--config.data.root=~/imgs',
    f'--config.model.checkpoint={PARITY / "checkpoint.pth"}',
    f'--config.model.cache_dir={tmp_path / "cache"}',
  ]
  for _ in range(2):  # the rerun must not list the workdir's panels as new images
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
  lines = (folder / 'out' / 'predictions.jsonl').read_text().splitlines()
  assert sorted(json.loads(line)['id'] for line in lines) == ['astronaut', 'coffee']
  assert not (ROOT / '~').exists()
  proc = run_main(
    '--config=configs/folder.py',
    '--mode=segment',
    f'--workdir={tmp_path / "one"}',
    *parity_flags(tmp_path, folder / 'coffee.png'),
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert [p.name for p in (tmp_path / 'one' / 'masks').iterdir()] == ['coffee.png']


def test_hostile_ids_and_long_names_stay_inside_the_workdir(tmp_path):
  from PIL import Image  # pylint: disable=import-outside-toplevel

  devkit = tmp_path / 'VOCdevkit' / 'VOC2007'
  for sub in ('JPEGImages', 'Annotations', 'ImageSets/Main'):
    (devkit / sub).mkdir(parents=True)
  xml = (
    '<annotation><filename>x.jpg</filename><size><width>300</width><height>200</height>'
    '</size><object><name>cat</name><bndbox><xmin>10</xmin><ymin>10</ymin><xmax>100</xmax>'
    '<ymax>100</ymax></bndbox></object></annotation>'
  )
  image = Image.open(PARITY / 'images' / 'chelsea.png').convert('RGB').crop((0, 0, 300, 200))
  escape = tmp_path / 'escape'
  escape.mkdir()
  image.save(escape / 'evil.jpg')
  (escape / 'evil.xml').write_text(xml)
  long_name = 'a' * 240
  image.save(devkit / 'JPEGImages' / f'{long_name}.jpg')
  (devkit / 'Annotations' / f'{long_name}.xml').write_text(xml)
  (devkit / 'ImageSets/Main/trainval.txt').write_text(f'../../../escape/evil\n{long_name}\n')
  out = tmp_path / 'out'
  for mode in ('extract', 'segment'):
    proc = run_main(
      '--config=configs/voc.py',
      f'--mode={mode}',
      f'--workdir={out}',
      f'--config.data.root={tmp_path / "VOCdevkit"}',
      '--config.data.year=2007',
      *parity_flags(tmp_path)[1:],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
  assert sorted(p.name for p in escape.iterdir()) == ['evil.jpg', 'evil.xml']
  masks = sorted(p.name for p in (out / 'masks').iterdir())
  assert len(masks) == 2 and 'escape__evil.png' in masks
  assert all(len(name.encode()) <= 255 - 16 for name in masks)
  assert len(list((out / 'eigs').iterdir())) == 2


def _main(*args, timeout=120):
  return subprocess.run(
    [sys.executable, 'main.py', *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
  )


def test_help_lists_modes_and_shipped_configs():
  proc = _main('--help')
  for word in (
    'localize',
    'segment',
    'discover',
    'serve',
    'demo',
    'voc',
    'object_seg',
    '--config_help',
  ):
    assert word in proc.stdout, word
  # Each verb and download on a line of its own, with its one line of help.
  from spectral_jax import verbs

  for verb, spec in verbs.VERBS.items():
    assert f'  {verb:<9} {spec.help}' in proc.stdout.splitlines(), verb
  assert any(line.startswith('  download ') for line in proc.stdout.splitlines())


def test_a_key_typo_is_one_line_naming_the_closest_key(tmp_path):
  proc = _main(
    '--config=configs/demo.py',
    '--mode=localize',
    f'--workdir={tmp_path}',
    '--config.model.nam=dino_vits8',
  )
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and '--config.model.name' in lines[0], proc.stderr
  assert 'Traceback' not in proc.stderr
  assert not (tmp_path / '.spectral_jax').exists()  # nothing started


def test_config_help_lists_every_key_with_its_default_and_doc():
  proc = _main('--config=voc', '--config_help')
  assert proc.returncode == 0
  assert '--config.spectral.K=5' in proc.stdout and 'Fiedler' in proc.stdout
  assert '--config.discover.method=' in proc.stdout and '--config.promerge.stride=4' in proc.stdout
