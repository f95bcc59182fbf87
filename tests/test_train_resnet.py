"""Self-training with the official network: DeepLabV3+ on the dilated DINO ResNet-50.

The task runners (--mode=train, resume, --mode=evaluate) on the VOC-like folder of
``test_train.write_voc_like``, with the reference ResNet checkpoint (reduced [1,1,1,1]).
"""

import json
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image

from configs import voc_semantic
from spectral_jax import artifacts
from spectral_jax.training import loop
from spectral_jax.training import saving
from spectral_jax.models import backbones, resnet, vit
from spectral_jax.tasks import evaluate
from spectral_jax.tasks import train as train_task
from tests import backbones_data as bd
from tests.test_train import write_voc_like

CHECKPOINT = bd.DATA / 'dino_resnet50' / 'checkpoint.pth'


def resnet_config(tmp_path: Path):
  """configs/voc_semantic.py:resnet50 on the VOC-like folder, with tiny training settings."""
  root = write_voc_like(tmp_path / 'VOC2012')
  config = voc_semantic.get_config('resnet50')
  config.data.root = str(root / 'JPEGImages')
  config.model.cache_dir = str(tmp_path / 'cache')
  config.segmenter.backbone_checkpoint = str(CHECKPOINT)
  config.segmenter.update(channels=16, low_level_channels=8)
  config.train.update(
      steps=2, batch_size=2, crop_size=32, eval_every=2, checkpoint_every=1, num_workers=2,
      log_every=1, matching='[(0, 0), (1, 1), (2, 2), (3, 3)]',
  )  # fmt: skip
  return config


def test_config_selects_the_official_resnet_segmenter(tmp_path):
  config = voc_semantic.get_config('resnet50')
  assert config.segmenter.backbone == 'dino_resnet50'
  assert tuple(config.segmenter.aspp_rates) == (12, 24, 36)
  # The flag alone picks the output-stride-8 rates too; the ViT keeps its stride-16 ones.
  plain = voc_semantic.get_config()
  plain.segmenter.backbone = 'dino_resnet50'
  model = train_task.build_model(plain, resnet.ResNetArch())
  assert model.aspp_rates == (12, 24, 36) and model.unfrozen_backbone_layers == 1
  vit_model = train_task.build_model(voc_semantic.get_config(), vit.ARCHS['dino_vits16'])
  assert vit_model.aspp_rates == (6, 12, 18)
  # Evaluation needs no download for the official file: the arch is ResNet-50's.
  assert evaluate.segmenter_arch(config) == resnet.ResNetArch((3, 4, 6, 3))
  config.segmenter.backbone_checkpoint = str(CHECKPOINT)
  assert evaluate.segmenter_arch(config).layers == (1, 1, 1, 1)  # read from the file
  with pytest.raises(ValueError, match='config argument is resnet50'):
    voc_semantic.get_config('resnet18')
  bad = voc_semantic.get_config()
  bad.segmenter.backbone = 'resnet50'
  with pytest.raises(ValueError, match=r'--config.segmenter.backbone=.resnet50.: use one of'):
    train_task.check_train_config(bad)
  # A ViT segmenter on model.name=dino_resnet50 points at the segmenter flag.
  bad = voc_semantic.get_config()
  bad.model.name = 'dino_resnet50'
  with pytest.raises(ValueError, match='segmenter.backbone=dino_resnet50'):
    train_task.check_train_config(bad)
  bad.segmenter.backbone = 'dino_resnet50'
  train_task.check_train_config(bad)  # model.name does not matter for the ResNet segmenter


def _write_pseudo_labels(config, work: Path) -> None:
  """Pseudo-labels = the GT classes (cluster c ↔ class c), at half resolution like a patch map."""
  gt_dir = Path(config.data.root).parent / 'SegmentationClass'
  (work / 'semantic').mkdir(parents=True)
  for path in sorted(gt_dir.glob('*.png')):
    gt = np.asarray(Image.open(path))
    Image.fromarray(gt[::2, ::2]).save(work / 'semantic' / path.name)


def _state(work: Path, step: int) -> dict:
  mngr = saving.checkpoint_manager(work / 'checkpoints', read_only=True)
  try:
    return mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))['state']
  finally:
    mngr.close()


@pytest.mark.slow
def test_train_resume_evaluate_with_the_resnet_backbone(tmp_path, monkeypatch):
  """--mode=train stopped after step 1 (a preemption) → resumed to step 2 → --mode=evaluate.
  Frozen stages keep the pretrained weights (their BatchNorm statistics move), layer4 and
  the head train.

  Slow: one CPU compile of the ResNet train step (~15–40 s) and of the forward.
  """
  config = resnet_config(tmp_path)
  work = tmp_path / 'work'
  _write_pseudo_labels(config, work)
  straight = loop.train_and_evaluate
  monkeypatch.setattr(loop, 'train_and_evaluate', lambda *a, **kw: straight(*a, **kw, stop_after=1))
  train_task.run(config, work)
  assert json.loads((work / 'train_metrics.json').read_text())['step'] == 1

  _, pretrained = backbones.load_backbone_params('dino_resnet50', CHECKPOINT)
  saved = _state(work, 1)
  for name in ('conv1', 'bn1', 'layer1_0', 'layer3_0'):  # frozen: exactly the pretrained ones
    for a, b in zip(
      jax.tree.leaves(saved['params']['backbone'][name]),
      jax.tree.leaves(pretrained['params'][name]),
    ):
      np.testing.assert_array_equal(a, b)
  moved = lambda a, b: any(not np.array_equal(x, y) for x, y in zip(*map(jax.tree.leaves, (a, b))))
  assert moved(saved['params']['backbone']['layer4_0'], pretrained['params']['layer4_0'])
  assert moved(saved['batch_stats']['backbone']['bn1'], pretrained['batch_stats']['bn1'])

  # Resume: the run continues from the step-1 checkpoint to step 2 (same compiled step).
  monkeypatch.setattr(loop, 'train_and_evaluate', straight)
  train_task.run(config, work)
  summary = json.loads((work / 'train_metrics.json').read_text())
  assert summary['step'] == 2 and summary['best_step'] == 2
  steps = [r['step'] for r in artifacts.read_jsonl(work / 'train_log.jsonl') if 'loss' in r]
  assert steps == [1, 2]  # each step trained (and logged) once

  config.checkpoint = str(work)
  evaluate.run(config, tmp_path / 'eval')
  scored = json.loads((tmp_path / 'eval' / 'evaluate_metrics.json').read_text())
  assert scored['step'] == 2 and scored['num_annotated'] == 2
  assert scored['miou'] == pytest.approx(summary['best_val_miou'])
  # Any image size (official: original resolution, no crop to multiples of 8).
  model = train_task.build_model(config, evaluate.segmenter_arch(config))
  variables, _ = saving.restore_variables(work / 'checkpoints', model)
  image = np.random.default_rng(0).integers(0, 256, (53, 70, 3)).astype(np.uint8)
  pred = loop.predict(model, variables, image)
  assert pred.shape == (53, 70) and pred.max() < 21
  # The ViT segmenter cannot read this checkpoint: the error names the parameters.
  config.segmenter.backbone = 'vit'
  config.segmenter.aspp_rates = ()
  with pytest.raises(ValueError, match='different architecture'):
    evaluate.run(config, tmp_path / 'eval_vit')
