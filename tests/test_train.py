"""Tests for spectral_jax.training.loop and the semantic pseudo-label → self-training path.

The proof test builds a small synthetic dataset with known regions (64×64 images, 2–3
coloured shapes: square = 1, disk = 2, triangle = 3 on a random dull background),
makes pseudo-labels with the semantic pipeline and self-trains a tiny ViT DeepLabV3+ on them.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image

from spectral_jax import artifacts
from spectral_jax.training import loop
from spectral_jax.training import saving
from spectral_jax.models import segmenter, vit
from spectral_jax.spectral import clustering
from spectral_jax.tasks import evaluate, semantic
from spectral_jax.tasks import train as train_task
from tests.conftest import PARITY

SHAPE_COLOURS = np.array([[220, 40, 40], [40, 60, 220], [40, 200, 60]], np.float32)
TINY = vit.ViTArch(patch_size=8, embed_dim=32, num_heads=2, depth=2, num_pos=64)
COMMON = ('mode', 'method', 'model', 'num_images', 'num_processed', 'num_failed')


def make_image(rng: np.random.Generator, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
  bg = rng.uniform(70, 180, size=3)
  image = np.broadcast_to(bg, (size, size, 3)).astype(np.float32).copy()
  gt = np.zeros((size, size), np.uint8)
  yy, xx = np.mgrid[:size, :size]
  for cls in rng.permutation(3)[: rng.integers(2, 4)] + 1:
    cy, cx = rng.integers(14, size - 14, size=2)
    r = rng.integers(7, 12)
    if cls == 1:
      m = (abs(yy - cy) <= r) & (abs(xx - cx) <= r)
    elif cls == 2:
      m = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    else:
      m = (yy >= cy - r) & (yy <= cy + r) & (abs(xx - cx) <= (yy - cy + r) / 2)
    image[m] = SHAPE_COLOURS[cls - 1] + rng.normal(0, 10, size=3)
    gt[m] = cls
  image += rng.normal(0, 6, image.shape)
  return np.clip(image, 0, 255).astype(np.uint8), gt


def synthetic(n: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
  rng = np.random.default_rng(seed)
  return [make_image(rng) for _ in range(n)]


def tiny_model(num_classes: int = 4) -> segmenter.DeepLabV3Plus:
  return segmenter.DeepLabV3Plus(
    TINY, num_classes=num_classes, channels=32, low_level_channels=8, dropout=0.1
  )


def tiny_config(**kw) -> loop.TrainConfig:
  base = dict(
    steps=6,
    batch_size=4,
    learning_rate=1e-3,
    crop_size=32,
    scale=(0.3, 1.0),
    eval_every=3,
    checkpoint_every=3,
    log_every=1,
    num_workers=2,
  )
  return loop.TrainConfig(**{**base, **kw})


# --------------------------------------------------------------------------------------
# Optimiser and schedule


def test_weight_decay_only_on_matrices():
  cfg = loop.TrainConfig(learning_rate=0.1, weight_decay=0.5, steps=10)
  params = {'kernel': jnp.ones((2, 3)), 'bias': jnp.ones(3), 'scale': jnp.ones(3)}
  tx = loop.create_optimizer(cfg)
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)  # Adam part is 0 for zero grads
  np.testing.assert_allclose(updates['kernel'], -0.1 * 0.5, rtol=1e-6)
  np.testing.assert_array_equal(updates['bias'], 0.0)
  np.testing.assert_array_equal(updates['scale'], 0.0)


def test_learning_rate_decays_linearly_to_zero():
  sched = loop.learning_rate_schedule(loop.TrainConfig())
  assert float(sched(0)) == pytest.approx(2e-4)
  assert float(sched(2500)) == pytest.approx(1e-4)
  assert float(sched(5000)) == 0.0 and float(sched(6000)) == 0.0


def test_from_dict_rejects_unknown_options():
  assert loop.TrainConfig.from_dict({'scale': [0.5, 1.0]}).scale == (0.5, 1.0)
  with pytest.raises(ValueError, match='unknown train options'):
    loop.TrainConfig.from_dict({'stpes': 3})


# --------------------------------------------------------------------------------------
# Data order


def test_batch_plan_is_a_seeded_permutation_per_epoch():
  n, b = 10, 3  # 3 steps per epoch, the last example of each epoch dropped
  epoch0 = np.concatenate([loop.batch_plan(s, n, b, seed=1)[1] for s in range(3)])
  assert len(set(epoch0)) == 9
  epoch1 = np.concatenate([loop.batch_plan(s, n, b, seed=1)[1] for s in range(3, 6)])
  assert not np.array_equal(epoch0, epoch1)
  np.testing.assert_array_equal(loop.batch_plan(4, n, b, 1)[1], loop.batch_plan(4, n, b, 1)[1])
  assert loop.batch_plan(4, n, b, 1)[0] == 1
  with pytest.raises(ValueError, match='cannot fill one batch'):
    loop.batch_plan(0, 2, 3, 1)


def test_train_batches_depend_only_on_step():
  data = synthetic(8)
  cfg = tiny_config()
  full = dict(loop.train_batches(data, cfg, 0, 4))
  tail = dict(loop.train_batches(data, cfg, 2, 4))
  for step in (2, 3):
    np.testing.assert_array_equal(full[step]['image'], tail[step]['image'])
    np.testing.assert_array_equal(full[step]['label'], tail[step]['label'])
  assert full[0]['image'].shape == (4, 32, 32, 3) and full[0]['label'].dtype == np.int32


# --------------------------------------------------------------------------------------
# Training loop: resume, best checkpoint


def _params(summary):
  return jax.tree.map(
    np.asarray,
    (summary['state'].params, summary['state'].opt_state, summary['state'].batch_stats),
  )


def test_killed_run_resumes_to_the_same_parameters(tmp_path):
  data = synthetic(12)
  cfg = tiny_config()
  model = tiny_model()
  straight = loop.train_and_evaluate(cfg, model, data[:8], data[8:], tmp_path / 'a')
  # Killed after step 4: the last checkpoint is step 3, so step 4 is recomputed on resume.
  killed = loop.train_and_evaluate(cfg, model, data[:8], data[8:], tmp_path / 'b', stop_after=4)
  assert killed['step'] == 4
  resumed = loop.train_and_evaluate(cfg, model, data[:8], data[8:], tmp_path / 'b')
  assert resumed['step'] == straight['step'] == 6
  for a, b in zip(jax.tree.leaves(_params(straight)), jax.tree.leaves(_params(resumed))):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
  # The best checkpoint (by val mIoU) is kept next to the latest ones.
  log = [r for r in artifacts.read_jsonl(tmp_path / 'a' / 'train_log.jsonl') if 'val_miou' in r]
  best = max(log, key=lambda r: r['val_miou'])
  assert straight['best_val_miou'] == pytest.approx(best['val_miou'])
  mngr = saving.checkpoint_manager(tmp_path / 'a' / 'checkpoints', read_only=True)
  assert straight['best_step'] in mngr.all_steps() and 6 in mngr.all_steps()
  # Resuming with another data order is refused instead of silently diverging.
  with pytest.raises(ValueError, match='cannot resume exactly'):
    loop.train_and_evaluate(tiny_config(seed=7), model, data[:8], data[8:], tmp_path / 'b')


def test_score_confusion_identity_and_hungarian():
  conf = np.array([[5, 0, 0], [0, 0, 4], [0, 3, 0]])
  assert loop.score_confusion(conf, hungarian=False)['miou'] == 1 / 3
  out = loop.score_confusion(conf, hungarian=True)
  assert out['miou'] == 1.0 and out['matching'] == [(0, 0), (1, 2), (2, 1)]


# --------------------------------------------------------------------------------------
# Proof: pseudo-labels from known regions, then a few self-training steps


def _synthetic_eigs(gt: np.ndarray, rng: np.random.Generator, patch: int = 4, k: int = 5):
  """Laplacian eigenvectors [k, N] of synthetic patch features (class embedding + noise)."""
  g = gt.shape[0] // patch
  emb = np.random.default_rng(1).normal(size=(4, 16))
  frac = np.stack([(gt == c).reshape(g, patch, g, patch).mean((1, 3)) for c in range(4)], -1)
  f = frac.reshape(-1, 4) @ emb + 0.3 * rng.normal(size=(g * g, 16))
  f /= np.linalg.norm(f, axis=1, keepdims=True)
  w = np.maximum(f @ f.T, 0)
  # (D − W) v = λ D v through the symmetric form: v = D^-½ u (D-normalised, ascending).
  inv_sqrt = 1 / np.sqrt(w.sum(1))
  _, u = np.linalg.eigh(np.eye(len(w)) - inv_sqrt[:, None] * w * inv_sqrt[None])
  return (u[:, :k] * inv_sqrt[:, None]).T


def _colour_histogram(crops: list[np.ndarray]) -> np.ndarray:
  """Stand-in for the box CLS features: a 4×4×4 RGB histogram of each crop."""

  def one(crop):
    q = (crop // 64).reshape(-1, 3).astype(int)
    return np.bincount(q[:, 0] * 16 + q[:, 1] * 4 + q[:, 2], minlength=64).astype(np.float32)

  return np.stack([one(c) for c in crops])


def test_pseudo_labels_then_self_training_reach_stated_miou(tmp_path):
  """Pseudo-labels: val mIoU ≥ 0.50 (Hungarian); after 40 steps: val mIoU ≥ 0.45.

  Observed: 0.58 for the pseudo-labels and 0.55 after self-training; predicting
  background everywhere scores ~0.21 (background covers ~84 % of the pixels).
  """
  data = synthetic(32)
  train_part, val_part = data[:24], data[24:]
  rng = np.random.default_rng(0)
  vecs = [_synthetic_eigs(gt, rng) for _, gt in data]
  keys = jax.random.split(jax.random.PRNGKey(0), len(data))
  segs = clustering.multi_region_segments_batch(vecs, [(16, 16)] * len(data), keys, n_segments=4)
  boxes = [
    semantic.image_box_features(im, s, 4, _colour_histogram, num_erode=0, num_dilate=0)
    for (im, _), s in zip(data, segs)
  ]
  maps = semantic.semantic_maps(segs, boxes, n_clusters=3, seed=0)
  pseudo = semantic.score_maps(maps[24:], [gt for _, gt in val_part], n_pred=4, num_classes=4)
  assert pseudo['matching_kind'] == 'hungarian'
  assert pseudo['miou'] >= 0.50, pseudo

  lut = train_task.matching_lut(pseudo['matching'])
  labelled = [
    (im, semantic.resize_nearest(lut[m], im.shape[:2])) for (im, _), m in zip(train_part, maps[:24])
  ]
  cfg = tiny_config(
    steps=40,
    batch_size=8,
    learning_rate=5e-3,
    crop_size=32,
    eval_every=20,
    checkpoint_every=20,
    log_every=20,
  )
  out = loop.train_and_evaluate(cfg, tiny_model(), labelled, val_part, tmp_path)
  assert out['final']['miou'] >= 0.45, out['final']
  assert out['best_val_miou'] >= out['final']['miou']


# --------------------------------------------------------------------------------------
# Task runners (--mode=semantic / train / evaluate) on a VOC-like folder


def write_voc_like(root: Path) -> Path:
  """8 synthetic 128×128 images + GT in a VOC devkit layout; val = img6, img7."""
  for sub in ('JPEGImages', 'SegmentationClass', 'ImageSets/Segmentation'):
    (root / sub).mkdir(parents=True)
  rng = np.random.default_rng(0)
  for i in range(8):
    image, gt = make_image(rng, 128)
    Image.fromarray(image).save(root / 'JPEGImages' / f'img{i}.png')
    Image.fromarray(gt).save(root / 'SegmentationClass' / f'img{i}.png')
  (root / 'ImageSets/Segmentation/val.txt').write_text('img6\nimg7\n')
  return root


@pytest.fixture
def voc_like(tmp_path):
  """8 synthetic 128×128 images in a VOC layout; val = img6, img7; parity ViT-S/16 (2 blocks)."""
  from configs import voc_semantic  # pylint: disable=import-outside-toplevel

  root = write_voc_like(tmp_path / 'VOC2012')
  config = voc_semantic.get_config()
  config.data.root = str(root / 'JPEGImages')
  config.model.checkpoint = str(PARITY / 'checkpoint.pth')
  config.model.cache_dir = str(tmp_path / 'cache')
  config.semantic.n_segments = 3
  config.semantic.num_dilate = 1
  config.semantic.num_clusters = 3
  config.semantic.seeds = (0, 1)
  return config


def test_semantic_task_writes_maps_metrics_and_resumes(voc_like, tmp_path, monkeypatch):
  work = tmp_path / 'work'
  semantic.run(voc_like, work)
  stems = [f'img{i}' for i in range(8)]
  for sub, ext in (
    ('features', 'npz'),
    ('eigs', 'npz'),
    ('multi_region', 'png'),
    ('boxes', 'npz'),
    ('semantic', 'png'),
    ('semantic_seeds/1', 'png'),
  ):
    assert sorted(p.stem for p in (work / sub).glob(f'*.{ext}')) == stems, sub
  sem = semantic.read_png(work / 'semantic' / 'img0.png')
  assert sem.shape == (8, 8) and sem.max() <= 3  # patch grid; bg 0 + clusters 1..3
  n_panels = min(voc_like.output.num_panels, len(stems))
  assert len(list((work / 'panels').glob('semantic_*.png'))) == n_panels > 0
  result = json.loads((work / 'metrics.json').read_text())
  assert result['num_scored'] == 2 and set(result['seeds']) == {'0', '1'}  # val: img6, img7
  assert {k: result[k] for k in COMMON} == {
    'mode': 'semantic', 'method': 'dsm', 'model': 'dino_vits16',
    'num_images': 8, 'num_processed': 8, 'num_failed': 0,
  }  # fmt: skip
  assert result['matching_kind'] == 'majority'  # 4 labels vs 21 classes
  mious = [result['seeds'][s]['miou'] for s in ('0', '1')]
  assert result['miou_mean'] == pytest.approx(np.mean(mious))
  assert result['miou_std'] == pytest.approx(np.std(mious))
  assert len(result['per_class_iou']) == 21
  # A second run reuses every per-image artefact (no model is even loaded).
  monkeypatch.setattr(semantic.common, 'load_extractor', lambda *_: pytest.fail('recomputed'))
  semantic.run(voc_like, work)


def test_semantic_outputs_follow_the_eigenvectors_they_came_from(voc_like, tmp_path):
  """Eigenvectors recomputed with another K (extract, overwrite) make the semantic outputs
  stale: a semantic rerun stops; with overwrite its outputs, metrics.json included, go."""
  from spectral_jax import workdirs  # pylint: disable=import-outside-toplevel
  from spectral_jax.tasks import extract  # pylint: disable=import-outside-toplevel

  work = tmp_path / 'work'
  voc_like.semantic.seeds = (0,)
  semantic.run(voc_like, work)
  assert (work / 'metrics.json').exists()
  voc_like.spectral.K = 4
  voc_like.overwrite = True
  extract.run(voc_like, work)
  voc_like.overwrite = False
  with pytest.raises(workdirs.WorkdirError, match='spectral'):
    semantic.run(voc_like, work)
  voc_like.overwrite = True
  voc_like.semantic.gt_dir = str(tmp_path / 'no_gt')  # this run scores nothing
  semantic.run(voc_like, work)
  assert not (work / 'metrics.json').exists()  # not the K=5 run's matching
  assert len(list((work / 'semantic').glob('*.png'))) == 8
  voc_like.semantic.num_clusters = 200  # 8 images × at most 3 segments
  with pytest.raises(ValueError, match=r'num_clusters=200: the 8 images have only \d+ box'):
    semantic.run(voc_like, work)


@pytest.mark.slow
def test_train_and_evaluate_tasks(voc_like, tmp_path):
  """--mode=semantic → train → evaluate wiring (slow: compiles a ViT-S/16 segmenter)."""
  work = tmp_path / 'work'
  voc_like.semantic.seeds = (0,)
  semantic.run(voc_like, work)
  voc_like.train.update(
    steps=2, batch_size=2, crop_size=32, eval_every=2, checkpoint_every=2, num_workers=2
  )
  voc_like.segmenter.update(channels=16, low_level_channels=8)
  train_task.run(voc_like, work)
  summary = json.loads((work / 'train_metrics.json').read_text())
  assert summary['step'] == 2 and summary['best_step'] == 2
  voc_like.checkpoint = str(work)
  evaluate.run(voc_like, tmp_path / 'eval')
  scored = json.loads((tmp_path / 'eval' / 'evaluate_metrics.json').read_text())
  assert scored['step'] == 2 and scored['num_annotated'] == 2
  assert scored['miou'] == pytest.approx(summary['best_val_miou'])


@pytest.mark.parametrize(
  'name', ['dinov2_vits14_reg', pytest.param('dinov3_vits16', marks=pytest.mark.slow)]
)
def test_train_and_evaluate_on_dinov2_and_dinov3(name, tmp_path):
  """The ViT segmenter on a DINOv2 / DINOv3 backbone (their reference checkpoints, depth 2):
  --mode=train starts from the pretrained weights and --mode=evaluate scores the checkpoint.
  Pseudo-labels = the GT classes (cluster c ↔ class c)."""
  from configs import voc_semantic  # pylint: disable=import-outside-toplevel
  from spectral_jax.models import backbones  # pylint: disable=import-outside-toplevel
  from tests import backbones_data as bd  # pylint: disable=import-outside-toplevel

  root = write_voc_like(tmp_path / 'VOC2012')
  config = voc_semantic.get_config()
  config.data.root = str(root / 'JPEGImages')
  config.model.name = name
  config.model.checkpoint = str(bd.DATA / name / 'checkpoint.pth')
  config.model.cache_dir = str(tmp_path / 'cache')
  patch = backbones.BACKBONES[name].patch_size
  config.segmenter.update(channels=16, low_level_channels=8)
  config.train.update(
      steps=1, batch_size=2, crop_size=2 * patch, eval_every=1, checkpoint_every=1,
      num_workers=2, matching='[(0, 0), (1, 1), (2, 2), (3, 3)]',
  )  # fmt: skip
  work = tmp_path / 'work'
  (work / 'semantic').mkdir(parents=True)
  for path in sorted((root / 'SegmentationClass').glob('*.png')):
    Image.open(path).save(work / 'semantic' / path.name)
  config.train.crop_size = 2 * patch + 1
  bad = f'crop_size={2 * patch + 1}.*multiple of its patch size {patch}'
  with pytest.raises(ValueError, match=bad):
    train_task.run(config, work)
  config.train.crop_size = 2 * patch
  train_task.run(config, work)
  summary = json.loads((work / 'train_metrics.json').read_text())
  assert summary['step'] == 1
  _, pretrained = backbones.load_backbone_params(name, config.model.checkpoint)
  mngr = saving.checkpoint_manager(work / 'checkpoints', read_only=True)
  saved = mngr.restore(1, args=ocp.args.Composite(state=ocp.args.StandardRestore()))['state']
  mngr.close()
  # Started from the pretrained tree (same shapes), and the backbone trained (one step moved it).
  shapes = segmenter.shape_tree
  assert shapes(saved['params']['backbone']) == shapes(pretrained['params'])
  embed = saved['params']['backbone']['patch_embed']['kernel']
  delta = np.abs(np.asarray(embed) - pretrained['params']['patch_embed']['kernel']).max()
  assert 0 < delta <= 10 * config.train.learning_rate  # an Adam step moves ≈ lr per weight
  config.checkpoint = str(work)
  evaluate.run(config, tmp_path / 'eval')
  scored = json.loads((tmp_path / 'eval' / 'evaluate_metrics.json').read_text())
  assert scored['step'] == 1 and scored['num_annotated'] == 2
  assert scored['miou'] == pytest.approx(summary['best_val_miou'])


@pytest.mark.slow
def test_data_parallel_step_equals_single_device():
  """Two forced CPU devices: same loss and (global-batch) BatchNorm statistics as one device."""
  code = """
import jax, numpy as np
import tests.test_train as T
from spectral_jax.training import loop as train
assert jax.device_count() == 2
data, cfg, model = T.synthetic(4), T.tiny_config(), T.tiny_model()
state = train.create_train_state(model, cfg, jax.random.PRNGKey(0))
batch = next(train.train_batches(data, cfg, 0, 1))[1]
out = {}
for n in (2, 1):
  step = train.compiled_train_step(model, train.create_optimizer(cfg),
                                   train.data_mesh(jax.devices()[:n]))
  out[n] = step(state, batch)
np.testing.assert_allclose(out[2][1]['loss'], out[1][1]['loss'], rtol=1e-6)
for a, b in zip(jax.tree.leaves(out[2][0].batch_stats), jax.tree.leaves(out[1][0].batch_stats)):
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
assert out[2][0].params['classifier']['kernel'].sharding.spec == jax.sharding.PartitionSpec()
"""
  env = {
    **os.environ,
    'XLA_FLAGS': '--xla_force_host_platform_device_count=2',
    'JAX_PLATFORMS': 'cpu',
  }
  subprocess.run(
    [sys.executable, '-c', code], check=True, env=env, cwd=Path(__file__).parent.parent
  )


def test_matching_is_checked_and_stored_with_the_checkpoints(tmp_path):
  """A resume with another cluster→class matching would train on other labels: it stops."""
  (tmp_path / 'metrics.json').write_text(json.dumps({'miou': 0.1}))  # evaluate-like: no matching
  with pytest.raises(FileNotFoundError, match='no cluster matching'):
    train_task.read_matching('', tmp_path)
  with pytest.raises(ValueError, match='classes must lie in 0..20'):
    train_task.read_matching('[(0, 0), (1, 21)]', tmp_path, num_classes=21)
  with pytest.raises(ValueError, match='train.matching'):
    train_task.read_matching('[(0, 0', tmp_path)
  pairs = train_task.read_matching('[(0, 0), (1, 15)]', tmp_path, num_classes=21)
  ckpt = tmp_path / 'checkpoints'
  ckpt.mkdir()
  train_task.check_stored_matching(ckpt, pairs)
  assert json.loads((ckpt / 'matching.json').read_text()) == [[0, 0], [1, 15]]
  train_task.check_stored_matching(ckpt, pairs)  # the same matching resumes
  with pytest.raises(ValueError, match='trained with the cluster matching'):
    train_task.check_stored_matching(ckpt, [(0, 0), (1, 3)])


def test_train_log_is_trimmed_to_the_resumed_step_and_nan_stops(tmp_path):
  log = tmp_path / 'train_log.jsonl'
  artifacts.save_jsonl(log, [{'step': s, 'loss': 1.0} for s in (10, 20, 30)])
  loop._trim_log(log, 20)  # pylint: disable=protected-access
  assert [r['step'] for r in artifacts.read_jsonl(log)] == [10, 20]
  with pytest.raises(FloatingPointError, match='diverged at step 7: loss'):
    # pylint: disable-next=protected-access
    loop._check_finite({'loss': float('nan'), 'acc': 0.5}, 7, tiny_config())


def _dinov2_train_setup(tmp_path):
  """A VOC-like folder, GT copied as pseudo-labels (cluster c = class c), the depth-2
  DINOv2 reference checkpoint: the cheapest --mode=train run."""
  from configs import voc_semantic  # pylint: disable=import-outside-toplevel
  from tests import backbones_data as bd  # pylint: disable=import-outside-toplevel

  root = write_voc_like(tmp_path / 'VOC2012')
  config = voc_semantic.get_config()
  config.data.root = str(root / 'JPEGImages')
  config.model.name = 'dinov2_vits14_reg'
  config.model.checkpoint = str(bd.DATA / 'dinov2_vits14_reg' / 'checkpoint.pth')
  config.model.cache_dir = str(tmp_path / 'cache')
  config.segmenter.update(channels=16, low_level_channels=8)
  config.train.update(
      steps=1, batch_size=2, crop_size=28, eval_every=1, checkpoint_every=1, num_workers=2,
      matching='[(0, 0), (1, 1), (2, 2), (3, 3)]',
  )  # fmt: skip
  work = tmp_path / 'work'
  (work / 'semantic').mkdir(parents=True)
  for path in sorted((root / 'SegmentationClass').glob('*.png')):
    Image.open(path).save(work / 'semantic' / path.name)
  return config, root, work


def test_train_reruns_follow_the_settings_and_unusable_val_items_are_skipped(tmp_path):
  """A rerun with other training settings stops (overwrite retrains); an identical rerun of a
  finished run keeps its final scores; val images or GT that cannot be scored are skipped and
  counted; a checkpoint of other ASPP rates (same shapes) is refused by --mode=evaluate."""
  from spectral_jax import workdirs  # pylint: disable=import-outside-toplevel

  config, root, work = _dinov2_train_setup(tmp_path)
  with pytest.raises(ValueError, match='run --mode=semantic first'):
    train_task.run(config, tmp_path / 'no_labels')
  config.semantic.val_list = str(tmp_path / 'all.txt')  # every labelled image is a val image
  (tmp_path / 'all.txt').write_text('\n'.join(f'img{i}' for i in range(8)))
  with pytest.raises(ValueError, match='are val images'):
    train_task.run(config, work)
  config.semantic.val_list = ''
  train_task.run(config, work)
  first = json.loads((work / 'train_metrics.json').read_text())
  assert first['step'] == 1 and 'miou' in first and first['num_scored'] == 2
  train_task.run(config, work)  # nothing left to train: the final scores stay
  again = json.loads((work / 'train_metrics.json').read_text())
  assert again['miou'] == pytest.approx(first['miou'])
  assert again['per_class_iou'] == pytest.approx(first['per_class_iou'])

  config.train.learning_rate = 1e-3
  with pytest.raises(workdirs.WorkdirError, match='learning_rate'):
    train_task.run(config, work)
  config.train.log_every = 7  # how often it logs changes no result: not a difference
  config.overwrite = True
  train_task.run(config, work)
  lrs = [r['learning_rate'] for r in artifacts.read_jsonl(work / 'train_log.jsonl') if 'loss' in r]
  assert lrs == [pytest.approx(1e-3)]  # retrained from scratch with the new rate

  # img6's GT of another size, img7's image truncated: both skipped, counted, not fatal.
  Image.fromarray(np.zeros((40, 48), np.uint8)).save(root / 'SegmentationClass' / 'img6.png')
  jpeg = root / 'JPEGImages' / 'img7.png'
  jpeg.write_bytes(jpeg.read_bytes()[:200])
  config.overwrite = False
  config.checkpoint = str(work)
  evaluate.run(config, tmp_path / 'eval')
  scored = json.loads((tmp_path / 'eval' / 'evaluate_metrics.json').read_text())
  assert scored['num_annotated'] == 2 and scored['num_scored'] == 0 and scored['num_skipped'] == 2
  assert {k: scored[k] for k in COMMON} == {
    'mode': 'evaluate', 'method': 'dsm', 'model': 'dinov2_vits14_reg',
    'num_images': 2, 'num_processed': 0, 'num_failed': 2,
  }  # fmt: skip
  config.segmenter.aspp_rates = (1, 2, 3)
  with pytest.raises(ValueError, match='aspp_rates'):
    evaluate.run(config, tmp_path / 'eval2')


def test_semantic_and_training_settings_are_checked_with_the_flag_named():
  from configs import voc_semantic  # pylint: disable=import-outside-toplevel

  cases = [
    ('semantic', 'seeds', (), 'semantic.seeds'),
    ('semantic', 'n_segments', 1, 'semantic.n_segments'),
    ('semantic', 'num_clusters', 0, 'semantic.num_clusters'),
    ('semantic', 'num_clusters', 300, 'at most 254'),
    ('semantic', 'cluster_method', 'dbscan', 'cluster_method'),
    ('', 'method', 'tokencut', 'config.method'),
    ('train', 'weight_decay', float('nan'), 'train.weight_decay'),
    ('train', 'eval_every', -1, 'train.eval_every'),
    ('segmenter', 'dropout', 1.5, 'segmenter.dropout'),
    ('segmenter', 'channels', 0, 'segmenter.channels'),
  ]
  for section, key, value, message in cases:
    config = voc_semantic.get_config()
    (config[section] if section else config)[key] = value
    check = (
      semantic.check_semantic_config
      if section in ('semantic', '')
      else (train_task.check_train_config)
    )
    with pytest.raises(ValueError, match=message):
      check(config)
  semantic.check_semantic_config(voc_semantic.get_config())  # the defaults pass
  train_task.check_train_config(voc_semantic.get_config())


def test_unscorable_ground_truth_is_named_and_skipped(tmp_path):
  """Oracle: files written here with a known defect each (size, labels, mode, bytes)."""
  good = np.zeros((8, 10), np.uint8)
  good[2:5, 3:7] = 15
  good[0, 0] = 255
  files = {
    'good': good,
    'small': np.zeros((6, 10), np.uint8),
    'label30': np.full((8, 10), 30, np.uint8),
    'rgb': np.zeros((8, 10, 3), np.uint8),
  }
  paths = {}
  for name, array in files.items():
    paths[name] = tmp_path / f'{name}.png'
    Image.fromarray(array).save(paths[name])
  paths['garbage'] = tmp_path / 'garbage.png'
  paths['garbage'].write_bytes(b'\x89PNG not really')
  sizes = {name: (8, 10) for name in paths}
  loaded, skipped = semantic.load_scorable_gts(paths, sizes)
  assert list(loaded) == ['good']
  np.testing.assert_array_equal(loaded['good'], good)
  assert sorted(skipped) == ['garbage', 'label30', 'rgb', 'small']
  for name, reason in skipped.items():
    assert str(paths[name]) in reason
  assert '[30]' in skipped['label30'] and '(6, 10)' in skipped['small']
