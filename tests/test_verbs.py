"""The short verbs (``spectral-jax localize|segment|cutout|discover IMAGE... --out DIR``,
``download``): the same files as the matching ``--mode``, one line per image, errors in the
verb's own flags. Subprocesses as users run them, with the parity checkpoint."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spectral_jax import verbs, workdirs
from spectral_jax.models import backbones
from spectral_jax.models.weights import downloads
from tests.conftest import PARITY

ROOT = Path(__file__).parent.parent
CKPT = str(PARITY / 'checkpoint.pth')
COMMON = ('mode', 'method', 'model', 'num_images', 'num_processed', 'num_failed')


def spectral_jax(*args, cache_dir: Path, cwd=ROOT):
  env = dict(os.environ, SPECTRAL_JAX_CACHE=str(cache_dir))
  return subprocess.run(
    [sys.executable, '-m', 'spectral_jax', *args],
    cwd=cwd,
    capture_output=True,
    text=True,
    timeout=600,
    env=env,
  )


@pytest.fixture(scope='module')
def photos(tmp_path_factory):
  """A folder of two parity photos and a corrupt file, and one photo outside it."""
  root = tmp_path_factory.mktemp('photos')
  folder = root / 'folder'
  folder.mkdir()
  shutil.copy(PARITY / 'images' / 'astronaut.png', folder / 'astronaut.png')
  shutil.copy(PARITY / 'images' / 'coffee.png', folder / 'coffee.png')
  (folder / 'broken.jpg').write_bytes(b'not a jpeg at all')
  (folder / 'notes.txt').write_text('not an image, and not named like one')
  single = root / 'chelsea.png'
  shutil.copy(PARITY / 'images' / 'chelsea.png', single)
  return folder, single


def test_localize_verb_writes_the_modes_files_and_one_line_per_image(tmp_path, photos):
  folder, single = photos
  out = tmp_path / 'verb'
  proc = spectral_jax(
    'localize', str(folder), str(single), '--out', str(out), '--checkpoint', CKPT,
    cache_dir=tmp_path / 'cache',
  )  # fmt: skip
  assert proc.returncode == 0, proc.stderr[-3000:]
  predictions = {
    json.loads(line)['id']: json.loads(line)
    for line in (out / 'predictions.jsonl').read_text().splitlines()
  }
  assert sorted(predictions) == ['chelsea', 'folder__astronaut', 'folder__coffee']
  lines = [line for line in proc.stdout.splitlines() if line.startswith(str(folder.parent))]
  assert len(lines) == 4  # three photos and the corrupt file, in order
  assert lines[0].startswith(f'{folder / "astronaut.png"}: box ')
  assert 'x0={} y0={} x1={} y1={}'.format(*predictions['folder__astronaut']['box_xyxy']) in lines[0]
  assert lines[1].startswith(f'{folder / "broken.jpg"}: skipped')
  assert lines[3].startswith(f'{single}: box ')
  # The bar ends at its total: the skipped file is counted.
  assert '4/4' in proc.stderr
  # Log lines are plain, and each is said once (the report lists the inputs again, quietly).
  ignored = f'warning: {folder}: ignored 1 file that is not an image (.txt: 1)'
  assert proc.stderr.count('not an image') == 1 and ignored in proc.stderr
  # The same files as --mode=localize on the same photo.
  mode_out = tmp_path / 'mode'
  proc = subprocess.run(
    [sys.executable, 'main.py', '--config=configs/folder.py', '--mode=localize',
     f'--workdir={mode_out}', f'--config.data.root={single}', f'--config.model.checkpoint={CKPT}'],
    cwd=ROOT, capture_output=True, text=True, timeout=600,
    env=dict(os.environ, SPECTRAL_JAX_CACHE=str(tmp_path / 'cache')),
  )  # fmt: skip
  assert proc.returncode == 0, proc.stderr[-3000:]
  mode_record = json.loads((mode_out / 'predictions.jsonl').read_text())
  assert mode_record['box_xyxy'] == predictions['chelsea']['box_xyxy']
  assert {p.name for p in mode_out.iterdir()} <= {p.name for p in out.iterdir()}
  # metrics.json: the keys every mode starts with; detections name their files.
  metrics = json.loads((out / 'metrics.json').read_text())
  assert {k: metrics[k] for k in COMMON} == {
    'mode': 'localize', 'method': 'dsm', 'model': 'dino_vits16',
    'num_images': 4, 'num_processed': 3, 'num_failed': 1,
  }  # fmt: skip
  detections = json.loads((out / 'detections.json').read_text())
  assert sorted(d['file_name'] for d in detections) == [
    'astronaut.png',
    'chelsea.png',
    'coffee.png',
  ]
  for d in detections:
    stem = Path(d['file_name']).stem
    x0, y0, x1, y1 = predictions[stem if stem == 'chelsea' else f'folder__{stem}']['box_xyxy']
    assert d['bbox'] == [x0, y0, x1 - x0, y1 - y0]


@pytest.mark.parametrize('verb', ['segment', 'cutout', 'discover'])
def test_other_verbs(tmp_path, photos, verb):
  folder, single = photos
  out = tmp_path / 'out'
  # The photo and the corrupt file: metrics.json counts it as failed.
  args = [verb, str(single), str(folder / 'broken.jpg'), '--out', str(out), '--checkpoint', CKPT]
  if verb == 'discover':
    args += ['--max-objects', '2', '--config.discover.crf=False']
  proc = spectral_jax(*args, cache_dir=tmp_path / 'cache')
  assert proc.returncode == 0, proc.stderr[-3000:]
  metrics = json.loads((out / 'metrics.json').read_text())
  mode, method = {'segment': ('segment', 'dsm'), 'cutout': ('edit', 'dsm')}.get(
    verb, ('discover', 'maskcut')
  )
  assert {k: metrics[k] for k in COMMON} == {
    'mode': mode, 'method': method, 'model': 'dino_vits16',
    'num_images': 2, 'num_processed': 1, 'num_failed': 1,
  }  # fmt: skip
  (line,) = [line for line in proc.stdout.splitlines() if line.startswith(f'{single}: ')]
  if verb == 'segment':
    mask = np.asarray(Image.open(out / 'masks' / 'chelsea.png'))
    assert mask.shape == np.asarray(Image.open(single)).shape[:2]
    assert str(out / 'masks' / 'chelsea.png') in line
    assert f'({100 * np.mean(mask > 0):.0f} % of the image)' in line
    (det,) = json.loads((out / 'detections.json').read_text())
    assert det['file_name'] == 'chelsea.png'
  elif verb == 'cutout':
    cut = Image.open(out / 'cutout' / 'chelsea.png')
    assert cut.mode == 'RGBA' and str(out / 'cutout' / 'chelsea.png') in line
  else:
    instances = json.loads((out / 'instances.json').read_text())
    anns = instances['annotations']
    assert 1 <= len(anns) <= 2
    assert line.startswith(f'{single}: {len(anns)} object')
    x, y, w, h = anns[0]['bbox']
    assert f'x0={round(x)} y0={round(y)} x1={round(x + w)} y1={round(y + h)}' in line
    detections = json.loads((out / 'detections.json').read_text())
    assert [d['file_name'] for d in detections] == ['chelsea.png'] * len(anns)
    assert [d['bbox'] for d in detections] == [a['bbox'] for a in anns]


def test_verb_errors_speak_the_verbs_flags(tmp_path, photos):
  folder, single = photos
  proc = spectral_jax(
    'localize', str(tmp_path / 'nowhere.jpg'), '--out', str(tmp_path / 'o'), cache_dir=tmp_path
  )
  assert proc.returncode == 2 and 'no such image file or folder' in proc.stderr
  assert str(tmp_path / 'nowhere.jpg') in proc.stderr and 'Traceback' not in proc.stderr
  url = 'http://127.0.0.1:9/dino_deitsmall16_pretrain.pth'
  proc = spectral_jax(
    'localize', str(single), '--out', str(tmp_path / 'o'), '--checkpoint', url,
    cache_dir=tmp_path / 'cache',
  )  # fmt: skip
  assert proc.returncode == 1 and 'Traceback' not in proc.stderr
  assert '--checkpoint=/path/to/dino_deitsmall16_pretrain.pth' in proc.stderr
  assert '--config.model.checkpoint' not in proc.stderr
  assert str(tmp_path / 'cache') in proc.stderr
  # The failed run blocks nothing: the same --out works at once.
  proc = spectral_jax(
    'localize', str(single), '--out', str(tmp_path / 'o'), '--checkpoint', CKPT,
    '--method', 'tokencut', cache_dir=tmp_path / 'cache',
  )  # fmt: skip
  assert proc.returncode == 0, proc.stderr[-3000:]
  proc = spectral_jax(
    'localize', str(single), '--out', str(tmp_path / 'o'), '--method', 'nope', cache_dir=tmp_path
  )
  assert proc.returncode == 2 and "invalid choice: 'nope'" in proc.stderr
  # Other settings in the same --out: the fix is the verb's --overwrite.
  proc = spectral_jax(
    'localize', str(single), '--out', str(tmp_path / 'o'), '--checkpoint', CKPT,
    cache_dir=tmp_path / 'cache',
  )  # fmt: skip
  assert proc.returncode == 1 and '--overwrite' in proc.stderr, proc.stderr


def test_plan_maps_flags_onto_config_keys(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  Path('a.jpg').write_bytes(b'')
  Path('b').mkdir()
  plan = verbs.plan(
    ['prog', 'discover', 'a.jpg', 'b', '--out', 'o', '--method', 'promerge', '--model',
     'dino_vitb8', '--max-objects', '4', '--config.discover.crf=False', '-q'],
    'configs/folder.py',
  )  # fmt: skip
  assert plan.argv[:3] == ['prog', '--config=configs/folder.py', '--mode=discover']
  assert '--config.discover.method=promerge' in plan.argv
  assert '--config.model.name=dino_vitb8' in plan.argv
  assert '--config.discover.max_objects=4' in plan.argv
  assert "--config.data.paths=('a.jpg', 'b')" in plan.argv
  assert plan.argv[-1] == '--config.discover.crf=False' and '--verbosity=-1' in plan.argv
  assert plan.in_own_words('pass --config.model.name=x or --workdir') == 'pass --model=x or --out'
  # A method that picks its own weights goes through the config argument (folder:found).
  found = verbs.plan(['prog', 'localize', 'a.jpg', '--out', 'o', '--method', 'found'], 'f.py')
  assert found.argv[1] == '--config=f.py:found'
  # Flags the user did not pass are still the verb's words for their keys (offline weights).
  message = 'pass it with --config.model.checkpoint=/path/to/x.pth'
  assert found.in_own_words(message) == 'pass it with --checkpoint=/path/to/x.pth'
  assert '--max-objects' not in found.in_own_words('--config.discover.max_objects')


def test_verb_help_names_the_inputs_and_every_backbone():
  text = verbs._parser('localize', verbs.VERBS['localize']).format_help()
  assert 'image files and folders (recursive)' in ' '.join(text.split())
  for name in backbones.BACKBONES:  # what --model takes, without opening the README
    assert name in text


def test_other_inputs_in_the_same_out_are_named_as_the_verbs_argument(tmp_path):
  a, b = tmp_path / 'a.jpg', tmp_path / 'b.jpg'
  a.touch()
  b.touch()
  out = tmp_path / 'o'
  # The settings check's own message: one input (data.root), then two (data.root '').
  workdirs.check_settings(out, 'localize', {'data': {'root': str(a)}}, [])
  (out / 'predictions.jsonl').write_text('{}\n')
  with pytest.raises(workdirs.WorkdirError) as e:
    workdirs.check_settings(out, 'localize', {'data': {'root': ''}}, [out / 'predictions.jsonl'])
  plan = verbs.plan(['prog', 'localize', str(a), str(b), '--out', str(out)], 'f.py')
  assert plan.in_own_words(str(e.value)).splitlines() == [
    f'--out {out} holds localize outputs made with other settings:',
    f"  IMAGE_OR_FOLDER: '{a}' → (several)",
    'Use another --out, or pass --overwrite to delete them and recompute.',
  ]


# ------------------------------------------------------------------------------------ download


def test_download_prints_path_size_and_sha256(tmp_path, monkeypatch, capsys):
  payload = np.random.default_rng(0).bytes(5000)
  source = tmp_path / 'www' / 'weights.pth'
  source.parent.mkdir()
  source.write_bytes(payload)
  digest = hashlib.sha256(payload).hexdigest()
  url = source.as_uri()
  monkeypatch.setattr(downloads, 'WEIGHTS', {'tiny': url})
  monkeypatch.setitem(downloads.PINNED, url, (len(payload), digest))
  assert verbs.download(['prog', 'download', 'tiny', '--cache-dir', str(tmp_path / 'c')]) == 0
  out = capsys.readouterr().out
  assert f'tiny: {tmp_path / "c" / "weights.pth"} ({len(payload)} bytes, sha256 {digest})' in out
  assert (tmp_path / 'c' / 'weights.pth').read_bytes() == payload
  # A file that does not match its pin is refused, and nothing is left in the cache.
  monkeypatch.setitem(downloads.PINNED, url, (len(payload), '0' * 64))
  (tmp_path / 'c' / 'weights.pth').unlink()
  assert verbs.download(['prog', 'download', 'tiny', '--cache-dir', str(tmp_path / 'c')]) == 1
  assert 'sha256' in capsys.readouterr().err and not list((tmp_path / 'c').iterdir())


def test_download_reports_a_hand_placed_copy_that_is_not_the_published_file(
  tmp_path, monkeypatch, capsys
):
  url = 'http://127.0.0.1:9/decoder_weights.pt'  # nothing listens: the copy is all there is
  monkeypatch.setattr(downloads, 'WEIGHTS', {'tiny': url})
  monkeypatch.setitem(downloads.PINNED, url, (2689, 'ab' * 32))
  (tmp_path / 'decoder_weights.pt').write_bytes(b'mine')
  status = verbs.download(['prog', 'download', 'tiny', '--cache-dir', str(tmp_path)])
  captured = capsys.readouterr()
  assert status == 1 and f'tiny: {tmp_path / "decoder_weights.pt"} (4 bytes' in captured.out
  assert 'is not the published file (size 4 != expected 2689)' in captured.err
  assert 'delete it and rerun' in captured.err and 'WARNING' not in captured.err
  assert (tmp_path / 'decoder_weights.pt').read_bytes() == b'mine'  # never replaced


def test_download_unreachable_names_size_sha256_and_cache(tmp_path, monkeypatch, capsys):
  url = 'http://127.0.0.1:9/dino_deitsmall16_pretrain.pth'
  monkeypatch.setattr(downloads, 'WEIGHTS', {'dino_vits16': url})
  monkeypatch.setitem(downloads.PINNED, url, (1234, 'ab' * 32))
  status = verbs.download(['prog', 'download', 'dino_vits16', '--cache-dir', str(tmp_path)])
  err = capsys.readouterr().err
  assert status == 1 and url in err and '1234 bytes' in err and 'ab' * 32 in err
  assert str(tmp_path / 'dino_deitsmall16_pretrain.pth') in err


def test_download_lists_every_registry_name(capsys):
  assert verbs.download(['prog', 'download', '--list']) == 0
  out = capsys.readouterr().out
  for name in list(downloads.WEIGHTS) + list(downloads.VARIANT_WEIGHTS) + list(downloads.FILES):
    assert name in out
  for name in ('dinov2_vits14', 'dinov2_vitg14_reg', 'dino_resnet50'):  # every open backbone
    line = next(line for line in out.splitlines() if line.startswith(name + ' '))
    assert backbones.BACKBONES[name].url in line
  assert 'access request first: dinov3_vits16' in out  # gated: named, never fetched


def test_download_of_gated_weights_says_how_to_get_them(capsys):
  with pytest.raises(SystemExit) as e:
    verbs.download(['prog', 'download', 'dinov3_vitb16'])
  err = capsys.readouterr().err
  assert e.value.code == 2 and 'gated' in err and '--checkpoint FILE' in err
