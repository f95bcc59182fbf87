"""``--mode=evaluate --config.checkpoint=DIR``: val mIoU of a saved segmenter checkpoint.

The model is built from the config (backbone ``segmenter.backbone``: the ViT of
``model.name`` or the DINO ResNet-50; head ``segmenter``); a checkpoint of another
architecture fails naming the mismatching parameter. Scores
the best step (by val mIoU) unless ``checkpoint_step`` ≥ 0; predictions are already
class ids, so no matching is applied. Writes ``workdir/evaluate_metrics.json`` (never
``metrics.json``, which holds semantic's matching that training reads), which starts with the
keys of every mode's metrics (``common.run_metrics``), then ``num_annotated`` (val images),
``num_scored``, ``num_skipped`` and the mIoU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spectral_jax import parallel
from spectral_jax import artifacts
from spectral_jax.training import loop
from spectral_jax.training import saving
from spectral_jax.models import backbones, resnet
from spectral_jax.tasks import common, reporting
from spectral_jax.tasks import train as train_task


def model_arch(model) -> Any:
  """ViT architecture of ``config.model`` (no weight loading for official names)."""
  if model.name in backbones.BACKBONES and not model.checkpoint:
    return backbones.BACKBONES[model.name].arch
  return common.load_extractor(model).arch  # depth and grid come from the file


def segmenter_arch(config) -> Any:
  """Backbone architecture of the segmenter (weights come from the segmenter checkpoint)."""
  if train_task.segmenter_backbone(config) == 'vit':
    return model_arch(config.model)
  if not config.segmenter.get('backbone_checkpoint', ''):
    return resnet.ResNetArch()  # the official file: ResNet-50 (3, 4, 6, 3)
  return train_task.load_backbone(config)[0]  # blocks per stage come from the file


def run(config, workdir) -> None:
  common.check_config(config)
  train_task.check_segmenter_backbone(config, 'evaluate')
  train_task.check_segmenter_config(config)
  if not config.checkpoint:
    raise ValueError(
      '--mode=evaluate needs --config.checkpoint=DIR (a train workdir or its checkpoints/ folder)'
    )
  directory = Path(config.checkpoint)
  if (directory / 'checkpoints').is_dir():
    directory = directory / 'checkpoints'
  arch = segmenter_arch(config)
  model = train_task.build_model(config, arch)
  step = config.checkpoint_step if config.checkpoint_step >= 0 else None
  variables, step = saving.restore_variables(directory, model, step)
  examples = {ex.id: ex for ex in common.examples_from_config(config.data, workdir)}
  val = train_task.val_dataset(config, examples, arch.patch_size)
  if not len(val):
    raise ValueError('no images with GT to evaluate on (set --config.semantic.gt_dir)')
  result = loop.evaluate(model, variables, val, config.segmenter.num_classes)
  if not parallel.is_main_process():  # every process scored a share; the sums agree
    return
  # The keys every metrics file starts with; each val image has GT, so an unusable one is
  # both failed and skipped (num_skipped: annotated but not scored, as in localize).
  kind = train_task.segmenter_backbone(config)
  head = reporting.run_metrics(
    'evaluate', config.get('method', 'dsm'), config.model.name if kind == 'vit' else kind,
    val.examples, workdir, result['num_scored'],
  )  # fmt: skip
  head['num_failed'] = max(head['num_failed'], result['num_skipped'])
  head.update(result, num_annotated=len(val), checkpoint=str(directory), step=step)
  artifacts.save_json(Path(workdir) / 'evaluate_metrics.json', head)
  common.log_summary(
    f'evaluate: val mIoU {100 * result["miou"]:.1f} on {len(val)} images (checkpoint step {step})'
  )
