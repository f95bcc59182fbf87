"""``--mode=train``: self-training of DeepLabV3+ on the semantic pseudo-labels.

Backbone (``segmenter.backbone``): 'vit' = the ViT of ``model.name`` (default: any DINO,
DINOv2 or DINOv3 ViT of the registry, its patch tokens through the final norm), or
'dino_resnet50' = the official network, DeepLabV3+ on DINO's dilated ResNet-50 (output
stride 8, ASPP rates 12/24/36, conv1/bn1/layer1–3 frozen), pretrained weights from
``segmenter.backbone_checkpoint`` ('' = the official ``dino_resnet50_pretrain.pth``, downloaded
into ``model.cache_dir``).

Train set: every image with a pseudo-label (``workdir/semantic`` by default) that is not
in the val list; pseudo-label clusters are mapped to classes with the matching found by
``--mode=semantic`` (``workdir/metrics.json``) or given in ``train.matching``. Val set:
the images with GT (VOC val). Checkpoints and ``train_log.jsonl`` go to the workdir;
``train_metrics.json`` gets the final and best val mIoU.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from spectral_jax import parallel
from spectral_jax import artifacts
from spectral_jax.training import loop
from spectral_jax.data import datasets
from spectral_jax.models import backbones, segmenter
from spectral_jax.models import extractor as extractor_lib
from spectral_jax.tasks import common, found_train, semantic

# Keys of config.train that are not TrainConfig hyper-parameters.
TASK_KEYS = ('pseudo_labels', 'matching')
SEGMENTER_BACKBONES = ('vit', 'dino_resnet50')


class PseudoLabelDataset:
  """(image, class label map at image resolution) pairs, loaded lazily."""

  def __init__(self, examples: Sequence[Any], label_dir: Path, lut: np.ndarray, min_side: int):
    self.examples, self.label_dir, self.lut, self.min_side = examples, label_dir, lut, min_side

  def __len__(self) -> int:
    return len(self.examples)

  def __getitem__(self, i: int) -> loop.Example:
    ex = self.examples[i]
    try:
      image = datasets.load_image(ex, min_side=self.min_side)
      label = self.lut[semantic.read_png(self.label_dir / f'{ex.id}.png')]
    except Exception as e:  # decoded fine when its pseudo-label was made: changed since
      raise ValueError(
        f'training image {ex.id}: {e}; restore the file and rerun (training resumes from '
        'the last checkpoint)'
      ) from e
    return image, semantic.resize_nearest(label, image.shape[:2])


class GTDataset:
  """(image, GT label map) pairs (255 = void), loaded lazily. An item that cannot be scored
  (unreadable image, GT unreadable, of another size or with labels ≥ ``num_classes``)
  raises a ValueError naming the image: ``loop.evaluate`` skips and counts it."""

  def __init__(
    self,
    examples: Sequence[Any],
    gts: dict[str, Path],
    min_side: int,
    num_classes: int = semantic.NUM_VOC_CLASSES,
  ):
    self.examples, self.gts, self.min_side = examples, gts, min_side
    self.num_classes = num_classes

  def __len__(self) -> int:
    return len(self.examples)

  def __getitem__(self, i: int) -> loop.Example:
    ex = self.examples[i]
    try:
      image = datasets.load_image(ex, min_side=self.min_side)
      gt = semantic.checked_gt(self.gts[ex.id], self.num_classes, image.shape[:2])
    except (ValueError, OSError) as e:
      raise ValueError(f'val image {ex.id}: {e}') from e
    return image, gt


def matching_lut(matching: Sequence[Sequence[int]], n_labels: int = 256) -> np.ndarray:
  """Cluster → class lookup table; clusters absent from the matching map to 0 (official)."""
  lut = np.zeros(n_labels, np.uint8)
  for cluster, cls in matching:
    lut[int(cluster)] = int(cls)
  return lut


def read_matching(spec: str, workdir: Path, num_classes: int = 256) -> list[tuple[int, int]]:
  """Cluster → class pairs from ``train.matching`` or from semantic's ``metrics.json``."""
  if spec:
    try:
      pairs = [tuple(int(v) for v in p) for p in ast.literal_eval(spec)]
    except (ValueError, SyntaxError, TypeError) as e:
      raise ValueError(
        f'--config.train.matching={spec!r}: write pairs like "[(0, 0), (1, 15)]"'
      ) from e
  else:
    path = workdir / 'metrics.json'
    record = json.loads(path.read_text()) if path.exists() else {}
    if 'matching' not in record:
      raise FileNotFoundError(
        f'no train.matching given and no cluster matching in {path}: run --mode=semantic '
        'with GT in this workdir first, or pass --config.train.matching="[(0, 0), ...]"'
      )
    pairs = [tuple(int(v) for v in p) for p in record['matching']]
  bad = [p for p in pairs if len(p) != 2 or not 0 <= p[1] < num_classes or p[0] < 0]
  if bad:
    raise ValueError(
      f'cluster matching {bad[:3]}: classes must lie in 0..{num_classes - 1} '
      f'(--config.segmenter.num_classes={num_classes})'
    )
  return pairs


def check_stored_matching(checkpoint_dir: Path, matching: list[tuple[int, int]]) -> None:
  """The matching a training run uses is stored beside its checkpoints; a resume with
  another matching would train on other labels, so it stops."""
  path = checkpoint_dir / 'matching.json'
  current = [list(p) for p in matching]
  if path.exists():
    stored = json.loads(path.read_text())
    if stored != current:
      raise ValueError(
        f'{checkpoint_dir} was trained with the cluster matching {stored}, this run has '
        f'{current}; use another --workdir, or pass --config.train.matching with the stored one'
      )
    return
  if parallel.is_main_process():
    artifacts.save_json(path, current)


def check_train_config(config) -> None:
  """Flag-named errors for training settings, before anything loads."""
  t = config.train
  for flag, minimum in (('batch_size', 1), ('num_workers', 1), ('crop_size', 16), ('steps', 1)):
    value = t.get(flag, minimum)
    if not isinstance(value, int) or value < minimum:
      raise ValueError(f'--config.train.{flag}={value!r}: must be an integer >= {minimum}')
  for flag in ('eval_every', 'checkpoint_every', 'log_every'):  # 0 = per epoch / never
    value = t.get(flag, 0)
    if not isinstance(value, int) or value < 0:
      raise ValueError(f'--config.train.{flag}={value!r}: must be an integer >= 0')
  lr = t.get('learning_rate', 1e-4)
  if not isinstance(lr, (int, float)) or not np.isfinite(lr) or lr <= 0:
    raise ValueError(f'--config.train.learning_rate={lr!r}: must be a finite number > 0')
  decay = t.get('weight_decay', 0.0)
  if not isinstance(decay, (int, float)) or not np.isfinite(decay) or decay < 0:
    raise ValueError(f'--config.train.weight_decay={decay!r}: must be a finite number >= 0')
  check_segmenter_config(config)
  if config.segmenter.num_classes < 2:
    raise ValueError(f'--config.segmenter.num_classes={config.segmenter.num_classes}: must be >= 2')
  check_segmenter_backbone(config)


def check_segmenter_config(config) -> None:
  """Flag-named errors for the segmenter's sizes (train and evaluate)."""
  s = config.segmenter
  for flag in ('channels', 'low_level_channels'):
    value = s.get(flag, 1)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f'--config.segmenter.{flag}={value!r}: must be an integer >= 1')
  dropout = s.get('dropout', 0.0)
  if not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
    raise ValueError(f'--config.segmenter.dropout={dropout!r}: must lie in [0, 1)')


def segmenter_backbone(config) -> str:
  return config.segmenter.get('backbone', 'vit')


def check_segmenter_backbone(config, mode: str = 'train') -> None:
  """Flag-named errors for the segmenter's backbone, before anything loads."""
  kind = segmenter_backbone(config)
  if kind not in SEGMENTER_BACKBONES:
    raise ValueError(
      f'--config.segmenter.backbone={kind!r}: use one of {", ".join(SEGMENTER_BACKBONES)} '
      "('vit' = the DINO ViT of model.name)"
    )
  if kind == 'vit':
    try:
      extractor_lib.require_vit(config.model.name, mode)
    except ValueError as e:
      raise ValueError(
        f'{e}; for the official ResNet-50 segmenter use --config.segmenter.backbone='
        'dino_resnet50 (or --config=configs/voc_semantic.py:resnet50)'
      ) from None
    entry = backbones.BACKBONES.get(config.model.name)
    crop = config.train.get('crop_size', 224) if mode == 'train' else 0
    patch = entry.patch_size if entry else 1
    if isinstance(crop, int) and crop % patch:
      raise ValueError(
        f'--config.train.crop_size={crop}: the ViT segmenter on {config.model.name} needs a '
        f'multiple of its patch size {patch} (e.g. {crop // patch * patch or patch})'
      )
  rates = tuple(config.segmenter.get('aspp_rates', ()))
  if not all(isinstance(r, int) and r >= 1 for r in rates):
    raise ValueError(f'--config.segmenter.aspp_rates={rates!r}: positive integers, or () = auto')


def load_backbone(config) -> tuple[Any, Any]:
  """(arch, pretrained variables) of the segmenter's backbone: {'params'} for a ViT, + the
  ResNet's 'batch_stats'."""
  if segmenter_backbone(config) == 'vit':
    extractor = common.load_extractor(config.model)  # pretrained ViT, arch checked
    return extractor.arch, extractor.variables
  extractor = extractor_lib.load(
    'dino_resnet50', config.segmenter.get('backbone_checkpoint', ''), config.model.cache_dir
  )  # arch (blocks per stage) read from the file; loaded strictly
  return extractor.arch, extractor.variables


def build_model(config, arch: Any) -> segmenter.DeepLabV3Plus:
  """The segmenter on ``arch`` (vit.ViTArch or resnet.ResNetArch); ``aspp_rates`` () picks
  the official rates of the backbone's output stride (ResNet 12/24/36, ViT 6/12/18)."""
  s = config.segmenter
  return segmenter.DeepLabV3Plus(
    arch,
    num_classes=s.num_classes,
    aspp_rates=tuple(s.aspp_rates) or segmenter.default_aspp_rates(arch),
    channels=s.channels,
    low_level_channels=s.low_level_channels,
    dropout=s.dropout,
    precision=s.precision,
    unfrozen_backbone_layers=s.get('unfrozen_backbone_layers', 1),
  )


def val_dataset(config, examples: dict, patch_size: int) -> GTDataset:
  gt_dir, val_list = semantic.voc_defaults(config)
  gts = semantic.gt_paths(gt_dir, val_list, list(examples))
  return GTDataset([examples[s] for s in gts], gts, patch_size, config.segmenter.num_classes)


def run(config, workdir) -> None:
  if config.get('train', {}).get('recipe', '') == 'found':  # configs/found.py: FOUND's head
    return found_train.run(config, workdir)
  workdir = Path(workdir)
  common.check_config(config)
  check_train_config(config)
  cfg = loop.TrainConfig.from_dict({k: v for k, v in config.train.items() if k not in TASK_KEYS})
  matching = read_matching(config.train.matching, workdir, config.segmenter.num_classes)
  examples = {ex.id: ex for ex in common.examples_from_config(config.data, workdir)}
  arch, backbone_params = load_backbone(config)
  model = build_model(config, arch)
  val = val_dataset(config, examples, arch.patch_size)
  val_ids = {ex.id for ex in val.examples}
  label_dir = Path(config.train.pseudo_labels or workdir / 'semantic')
  labelled = [s for s in sorted(examples) if (label_dir / f'{s}.png').exists()]
  train_ids = [s for s in labelled if s not in val_ids]
  if not labelled:
    raise ValueError(f'no pseudo-labels in {label_dir}: run --mode=semantic first')
  if not train_ids:
    raise ValueError(
      f'all {len(labelled)} pseudo-labelled images in {label_dir} are val images (they have '
      'GT): name the val images with --config.semantic.val_list'
    )
  if len(train_ids) < cfg.batch_size:
    raise ValueError(
      f'--config.train.batch_size={cfg.batch_size}: only {len(train_ids)} pseudo-labelled '
      'training images; lower the batch size or add images'
    )
  common.begin_stage(config, workdir, 'train')  # other settings: stop, or retrain (overwrite)
  (workdir / 'checkpoints').mkdir(parents=True, exist_ok=True)
  check_stored_matching(workdir / 'checkpoints', matching)
  lut = matching_lut(matching)
  train_set = PseudoLabelDataset([examples[s] for s in train_ids], label_dir, lut, arch.patch_size)
  common.log_summary(f'train: {len(train_set)} pseudo-labelled images, {len(val)} val images')
  summary = loop.train_and_evaluate(
    cfg, model, train_set, val, workdir, backbone_params=backbone_params
  )
  final = summary['final']
  if final is None and len(val):  # a rerun of a finished run: score the final weights again
    state = summary['state']
    final = loop.evaluate(model, {'params': state.params, 'batch_stats': state.batch_stats}, val)
  final = final or {}
  if not parallel.is_main_process():
    return
  artifacts.save_json(
    workdir / 'train_metrics.json',  # metrics.json holds the pseudo-label scores
    {
      'step': summary['step'],
      'best_step': summary['best_step'],
      'best_val_miou': summary['best_val_miou'],
      **final,
    },
  )
  common.log_summary(f'train: step {summary["step"]}, best val mIoU {summary["best_val_miou"]}')
