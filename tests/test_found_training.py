"""FOUND's head training end to end (configs/found.py --mode=train, tasks/found_train.py): the
pseudo-masks against the official ones (tests/data/found), a training run on generated photos,
exact resume after a kill, both saved formats, another method's targets, the workdir record and
flag-named errors. The 2-block ViT-S/8 fixture stands in for the weights (no network)."""

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from spectral_jax import errors, pipeline, workdirs
from spectral_jax.spectral import found
from spectral_jax.spectral import found_background
from spectral_jax.tasks import common, found_train
from spectral_jax.tasks import segment as segment_task
from spectral_jax.tasks import train as train_task
from spectral_jax.training import found as found_train_lib
from spectral_jax.training import found_loop, found_targets

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / 'tests' / 'data' / 'found'
IMAGES = ROOT / 'tests' / 'data' / 'parity' / 'images'
IDS = ('astronaut', 'chelsea', 'coffee')


def _config_module():
  spec = importlib.util.spec_from_file_location('found_config', ROOT / 'configs' / 'found.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _config(root, cache, **train):
  config = _config_module().get_config()
  config.data.root = str(root)
  config.model.checkpoint = str(DATA / 'checkpoint.pth')
  config.model.cache_dir = str(cache)
  for key, value in train.items():
    config.train[key] = value
  return config


def _png(path):
  return np.asarray(Image.open(path))


@pytest.fixture(scope='module')
def cache(tmp_path_factory):
  return tmp_path_factory.mktemp('cache')


@pytest.fixture(scope='module')
def extractor(cache):
  return pipeline.load_extractor('dino_vits8', str(DATA / 'checkpoint.pth'), str(cache))


@pytest.fixture(scope='module')
def photos(tmp_path_factory):
  """Seven generated photos (a coloured ellipse on a smooth textured background) in
  ``images/``, the ellipses as GT masks in ``masks/``."""
  folder = tmp_path_factory.mktemp('photos')
  (folder / 'images').mkdir()
  (folder / 'masks').mkdir()
  rng = np.random.default_rng(0)
  for i in range(7):
    h, w = int(rng.integers(96, 160)), int(rng.integers(96, 160))
    yy, xx = np.mgrid[:h, :w]
    low = rng.uniform(0, 255, (4, 4, 3)).astype(np.uint8)
    bg = np.asarray(Image.fromarray(low).resize((w, h), Image.BICUBIC), np.float64)
    bg += rng.normal(0, 8, bg.shape)
    cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
    ry, rx = rng.uniform(0.15, 0.3) * h, rng.uniform(0.15, 0.3) * w
    inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
    bg[inside] = rng.uniform(0, 255, 3) + rng.normal(0, 4, (int(inside.sum()), 3))
    photo = np.clip(bg, 0, 255).astype(np.uint8)
    Image.fromarray(photo).save(folder / 'images' / f'photo{i}.png')
    Image.fromarray(inside.astype(np.uint8) * 255).save(folder / 'masks' / f'photo{i}.png')
  return folder / 'images'


# Few small iterations that cross every phase: 7 photos in batches of 3 (3, 3, 1 per epoch),
# background targets for 4 iterations then the self loss, checkpoints every 3, augmentation on.
RECIPE = dict(
  steps=8, batch_size=3, stop_bkg_loss=4, checkpoint_every=3, log_every=1, num_workers=2
)


@pytest.fixture(scope='module')
def trained(photos, cache, tmp_path_factory):
  workdir = tmp_path_factory.mktemp('trained')
  config = _config(photos, cache, **RECIPE)
  config.data.masks = str(photos.parent / 'masks')  # scored at the end
  train_task.run(config, workdir)
  return workdir


# ----------------------------------------------------------------------------------------------
# Targets
# ----------------------------------------------------------------------------------------------


def test_pseudo_masks_equal_the_official_and_the_record_guards_them(cache, tmp_path):
  """``--config.train.steps=0`` writes only the 28 × 28 targets: the official ones at the
  default bkg_th (0.3); another bkg_th in the same workdir stops, with overwrite it recomputes
  them (0.4, the official second threshold)."""
  workdir = tmp_path / 'out'
  config = _config(IMAGES, cache, steps=0)
  train_task.run(config, workdir)
  assert sorted(p.name for p in workdir.iterdir()) == ['.spectral_jax', 'pseudo_masks']
  for image_id in IDS:
    mask = _png(workdir / 'pseudo_masks' / f'{image_id}.png')
    assert mask.shape == (28, 28) and mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, np.load(DATA / f'{image_id}.npz')['pseudo_mask_th030'])
  config.found.bkg_th = 0.4
  with pytest.raises(workdirs.WorkdirError, match='found.bkg_th'):
    train_task.run(config, workdir)
  config.overwrite = True
  train_task.run(config, workdir)
  for image_id in IDS:
    mask = _png(workdir / 'pseudo_masks' / f'{image_id}.png')
    np.testing.assert_array_equal(mask, np.load(DATA / f'{image_id}.npz')['pseudo_mask_th040'])


def test_other_methods_targets_train_the_head(cache, extractor, tmp_path):
  """targets=dsm: the Fiedler masks of the 224 inputs are the pseudo-masks, and they train the
  head; tokencut and maskcut write masks of the grid too."""
  config = _config(IMAGES, cache, steps=2, batch_size=3, log_every=1)
  config.found.targets = 'dsm'
  train_task.run(config, tmp_path / 'dsm')
  images = found_targets.training_images(
    [np.asarray(Image.open(IMAGES / f'{i}.png').convert('RGB')) for i in IDS]
  )
  expected = found_targets.dsm_targets(extractor, images)
  for image_id, want in zip(IDS, expected):
    got = _png(tmp_path / 'dsm' / 'pseudo_masks' / f'{image_id}.png')
    np.testing.assert_array_equal(got, want.astype(np.uint8) * 255)
    assert 0 < want.mean() < 1
  log = (tmp_path / 'dsm' / 'train_log.jsonl').read_text().splitlines()
  log = [json.loads(line) for line in log]
  assert [r['step'] for r in log] == [1, 2] and all(np.isfinite(r['loss']) for r in log)
  assert found.read_decoder(tmp_path / 'dsm' / 'decoder_weights.pt', 384)[0].shape == (384,)
  metrics = json.loads((tmp_path / 'dsm' / 'train_metrics.json').read_text())
  assert metrics['targets'] == 'dsm' and metrics['step'] == 2
  for method in ('tokencut', 'maskcut'):
    masks = found_targets.make_targets(method, extractor, images)
    assert masks.shape == (3, 28, 28) and masks.dtype == bool and masks.any()


# ----------------------------------------------------------------------------------------------
# Training, resume, saved formats
# ----------------------------------------------------------------------------------------------


def _agreement(head, extractor, images, targets):
  """Fraction of grid cells where sigmoid(logits) > 0.5 equals the target."""
  x = np.stack([found_background.train_input(im) for im in images])
  keys, _ = found_background.keys_and_cls_attention(extractor, x)
  logits = np.asarray(found.decoder_logits(keys, head['weight'], head['bias']))
  return float(np.mean((logits > 0) == targets.reshape(len(images), -1)))


def test_training_lowers_the_loss(trained, photos, extractor):
  """The logged loss falls (mean of the last 3 updates below half that of the first 3), and
  the head agrees with the written pseudo-masks of the un-augmented inputs far better than at
  its initialisation."""
  log = [json.loads(line) for line in (trained / 'train_log.jsonl').read_text().splitlines()]
  assert [r['step'] for r in log] == list(range(1, 9))
  losses = [r['loss'] for r in log]
  assert np.mean(losses[-3:]) < 0.5 * np.mean(losses[:3]), losses
  assert all(r['lr'] == pytest.approx(5e-2) for r in log)  # StepLR: ×0.95 after 50
  ids = sorted(p.stem for p in photos.iterdir())
  images = found_targets.training_images(
    [np.asarray(Image.open(photos / f'{i}.png').convert('RGB')) for i in ids]
  )
  targets = np.stack([_png(trained / 'pseudo_masks' / f'{i}.png') > 127 for i in ids])
  assert 0 < targets.mean() < 1
  initial = found_train_lib.init_head(jax.random.key(0), 384)
  final = found_train_lib.load_head(trained / 'decoder_weights.pt')
  before = _agreement(initial, extractor, images, targets)
  after = _agreement(final, extractor, images, targets)
  assert after > before + 0.2, (before, after)
  metrics = json.loads((trained / 'train_metrics.json').read_text())
  assert metrics['step'] == 8 and metrics['images'] == 7 and metrics['loss'] == losses[-1]


def test_a_killed_run_resumes_exactly(trained, photos, cache, tmp_path):
  """Killed after 5 updates (newest checkpoint: 3), resumed: the head, the optimiser's
  trajectory and the log equal the uninterrupted run's, bit for bit."""
  workdir = tmp_path / 'killed'
  config = _config(photos, cache, **RECIPE)
  summary = found_train.run(config, workdir, stop_after=5)
  assert summary['stopped'] and summary['step'] == 5
  assert not (workdir / 'decoder_weights.pt').exists()
  assert found_loop.restore_head(workdir / 'checkpoints')[1] == 3
  train_task.run(config, workdir)
  assert (workdir / 'decoder_weights.pt').read_bytes() == (
    trained / 'decoder_weights.pt'
  ).read_bytes()
  assert (workdir / 'train_log.jsonl').read_text() == (trained / 'train_log.jsonl').read_text()
  a, step_a = found_loop.restore_head(workdir / 'checkpoints')
  b, step_b = found_loop.restore_head(trained / 'checkpoints')
  assert step_a == step_b == 8
  for key in ('weight', 'bias'):
    np.testing.assert_array_equal(a[key], b[key])


def test_the_head_reloads_in_both_formats(trained):
  head, step = found_loop.restore_head(trained / 'checkpoints')  # orbax
  assert step == 8 and head['weight'].shape == (384,) and head['weight'].dtype == np.float32
  weight, bias = found.read_decoder(trained / 'decoder_weights.pt', 384)  # the official file
  np.testing.assert_array_equal(weight, head['weight'])
  assert bias == head['bias']
  again = found_train_lib.load_head(trained / 'decoder_weights.pt')
  np.testing.assert_array_equal(np.asarray(again['weight']), head['weight'])


def test_the_saved_head_runs_as_found_decoder(trained, photos, cache, extractor, tmp_path):
  """``--config.found.decoder=OUT/decoder_weights.pt`` with --mode=segment (configs/found.py
  sets method=found): the runner's multi masks are the ones the training scored."""
  config = _config(photos, cache)
  config.found.decoder = str(trained / 'decoder_weights.pt')
  config.data.limit = 2
  segment_task.run(config, tmp_path / 'segment')
  head = found_train_lib.load_head(trained / 'decoder_weights.pt')
  for path in sorted(photos.iterdir())[:2]:
    image = np.asarray(Image.open(path).convert('RGB'))
    _, multi, _ = found_train._predict(extractor, head, image, 6400)
    mask = _png(tmp_path / 'segment' / 'masks' / path.name) > 0
    assert np.mean(mask == multi) >= 0.999


def test_a_rerun_resumes_and_other_settings_stop(trained, photos, cache, tmp_path):
  """A rerun of a finished run keeps its head, also with more epochs allowed (nb_epochs and
  steps are not settings of the outputs: StepLR does not depend on them); another learning
  rate stops."""
  workdir = tmp_path / 'copy'
  shutil.copytree(trained, workdir)
  before = (workdir / 'decoder_weights.pt').read_bytes()
  train_task.run(_config(photos, cache, **dict(RECIPE, nb_epochs=4)), workdir)
  assert (workdir / 'decoder_weights.pt').read_bytes() == before
  with pytest.raises(workdirs.WorkdirError, match='train.learning_rate'):
    train_task.run(_config(photos, cache, **dict(RECIPE, learning_rate=0.1)), workdir)


def test_scores_a_mask_folder(trained):
  """With data.masks, train_metrics.json holds IoU, accuracy and maxFβ of both modes."""
  metrics = json.loads((trained / 'train_metrics.json').read_text())
  for mode in found.MODES:
    assert metrics[mode]['n'] == 7
    for key in ('iou', 'acc', 'max_f'):
      assert 0.0 <= metrics[mode][key] <= 1.0
  assert metrics['multi']['max_f'] > 0


# ----------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
  'section, key, value, words',
  [
    ('train', 'batch_size', 0, '>= 1'),
    ('train', 'steps', -1, '>= 0'),
    ('train', 'blur_p', 1.5, '[0, 1]'),
    ('train', 'scale_range', (3.0, 0.1), 'lo <= hi'),
    ('train', 'learning_rate', 0.0, '> 0'),
    ('train', 'crop_size', 220, 'multiple of the patch size 8'),
    ('found', 'targets', 'magic', 'dsm'),
    ('found', 'bkg_th', 2.0, '[-1, 1]'),
    ('model', 'name', 'dinov2_vits14', 'DINO ViT'),
    ('model', 'feature_block', 5, 'last block'),
  ],
)
def test_a_bad_value_names_its_key(cache, tmp_path, section, key, value, words):
  config = _config(IMAGES, cache)
  config[section][key] = value
  with pytest.raises(errors.SettingError) as info:
    train_task.run(config, tmp_path / 'out')
  assert info.value.key == f'{section}.{key}' and words in info.value.reason
  assert common.user_message(info.value).startswith(f'--config.{section}.{key}=')
  assert not (tmp_path / 'out').exists()  # nothing loaded or written


def test_the_cli_runs_the_config_and_names_a_bad_flag(tmp_path):
  command = [
    sys.executable,
    str(ROOT / 'main.py'),
    f'--config={ROOT / "configs" / "found.py"}',
    '--mode=train',
    f'--config.data.root={IMAGES}',
    f'--workdir={tmp_path / "out"}',
    f'--config.model.checkpoint={DATA / "checkpoint.pth"}',
    f'--config.model.cache_dir={tmp_path / "cache"}',
    '--config.train.batch_size=0',
  ]
  result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert result.returncode == 1, result.stderr[-2000:]
  assert '--config.train.batch_size=0: use an int >= 1' in result.stderr
