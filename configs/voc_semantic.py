"""Unsupervised semantic segmentation on PASCAL VOC 2012 (official §4, §7).

Paper (Melas-Kyriazi et al., CVPR 2022, Table 4 as quoted in the issues): VOC2012 val
mIoU 30.8 ± 2.7 before self-training, 37.2 ± 3.8 after self-training.
Users of the official code report ~20–24 without self-training (issues #6, #10).

1. Pseudo-labels (features + eigs of all 17,125 JPEGImages, then segments, boxes, box CLS
   features, 20 clusters; scored on the 1,449 val images with Hungarian matching):
  python main.py --config=configs/voc_semantic.py --mode=semantic \
      --config.data.root=VOCdevkit/VOC2012/JPEGImages --workdir=OUT
2. Self-training on the pseudo-labels of the 15,676 non-val images (matching read from
   OUT/metrics.json), best checkpoint by val mIoU under OUT/checkpoints:
  python main.py --config=configs/voc_semantic.py --mode=train \
      --config.data.root=VOCdevkit/VOC2012/JPEGImages --workdir=OUT
3. Score a saved checkpoint (best step unless --config.checkpoint_step is set):
  python main.py --config=configs/voc_semantic.py --mode=evaluate \
      --config.data.root=VOCdevkit/VOC2012/JPEGImages --config.checkpoint=OUT/checkpoints \
      --workdir=OUT/eval

SegmentationClass/ and ImageSets/Segmentation/val.txt are found next to JPEGImages/;
override with --config.semantic.gt_dir / --config.semantic.val_list.

Self-training network. Default (``segmenter.backbone='vit'``): DeepLabV3+ on the ViT of
model.name (low-level = block 8, out = block 12 through the final norm, stride = the patch
size, ASPP 6/12/18). Backbones: every ViT of the registry (dino_vits16/8, dino_vitb16/8,
dinov2_vit{s,b,l,g}14[_reg] with train.crop_size a multiple of 14, dinov3_vits16[plus],
dinov3_vitb16, dinov3_vitl16 with --config.model.checkpoint=FILE), e.g.
  python main.py --config=configs/voc_semantic.py --mode=semantic \
      --config.model.name=dinov2_vits14_reg --config.data.root=VOCdevkit/VOC2012/JPEGImages \
      --workdir=OUT
  python main.py --config=configs/voc_semantic.py --mode=train \
      --config.model.name=dinov2_vits14_reg --config.data.root=VOCdevkit/VOC2012/JPEGImages \
      --workdir=OUT
No mIoU is stated for them (unmeasured: no pretrained weights or VOC here). The official
default network (train.yaml ``model.name: resnet50``) is DeepLabV3+ on DINO's dilated
ResNet-50 (low-level = layer1, 256 ch, stride 4; out = layer4, 2048 ch, stride 8; ASPP
12/24/36; conv1, bn1, layer1–3 frozen, layer4 + head trained; BatchNorm statistics updated in
training): select it with the config argument ``:resnet50`` (or
--config.segmenter.backbone=dino_resnet50, which picks the same ASPP rates):
  python main.py --config=configs/voc_semantic.py:resnet50 --mode=train \
      --config.data.root=VOCdevkit/VOC2012/JPEGImages --workdir=OUT
  python main.py --config=configs/voc_semantic.py:resnet50 --mode=evaluate \
      --config.data.root=VOCdevkit/VOC2012/JPEGImages --config.checkpoint=OUT/checkpoints \
      --workdir=OUT/eval
Step 1 (--mode=semantic) runs on the ViT of model.name. The ResNet weights are the
official dino_resnet50_pretrain.pth (downloaded into model.cache_dir), or a local file / URL
given with --config.segmenter.backbone_checkpoint=FILE. The paper's self-trained 37.2 (above)
is taken to be this network (the official default; not confirmed from the paper's text).
"""

import ml_collections

from spectral_jax import config_dict


def get_config(arg=None) -> ml_collections.ConfigDict:
  """``arg``: None (ViT segmenter) or 'resnet50' (the official DINO ResNet-50 segmenter)."""
  config = config_dict.default_config()
  config.data.source = 'folder'
  config.spectral.K = 5  # README: eigs with --K 5

  config.semantic = ml_collections.ConfigDict()
  config.semantic.n_segments = 15  # multi-region k-means clusters per image
  config.semantic.adaptive = False  # eigengap choice of the segment count instead
  config.semantic.num_erode = 2
  config.semantic.num_dilate = 5
  config.semantic.num_clusters = 20  # dataset clusters; +1 background = 21 labels
  config.semantic.pca_dim = 0
  config.semantic.cluster_method = 'kmeans'  # kmeans (JAX, full batch) | minibatch (sklearn)
  config.semantic.seeds = (0,)  # several seeds → mean ± std in metrics.json
  config.semantic.gt_dir = ''  # '' = <data.root>/../SegmentationClass
  config.semantic.val_list = ''  # '' = <data.root>/../ImageSets/Segmentation/val.txt

  config.train = ml_collections.ConfigDict()
  config.train.steps = 5000
  config.train.batch_size = 96
  config.train.learning_rate = 2e-4
  config.train.weight_decay = 1e-8
  config.train.crop_size = 224
  config.train.seed = 1
  config.train.eval_every = 0  # 0 = every epoch
  config.train.checkpoint_every = 500
  config.train.log_every = 50
  config.train.num_workers = 8
  config.train.pseudo_labels = ''  # '' = <workdir>/semantic
  config.train.matching = ''  # '' = from <workdir>/metrics.json; or "[(0, 0), (1, 15), ...]"

  config.segmenter = ml_collections.ConfigDict()
  config.segmenter.num_classes = 21
  config.segmenter.backbone = 'vit'  # vit (DINO ViT of model.name) | dino_resnet50 (official)
  config.segmenter.backbone_checkpoint = ''  # dino_resnet50: local .pth or URL; '' = official
  config.segmenter.unfrozen_backbone_layers = 1  # ResNet: trained last children (< 0: all)
  config.segmenter.aspp_rates = ()  # () = by output stride: ViT (6, 12, 18), ResNet (12, 24, 36)
  config.segmenter.channels = 256
  config.segmenter.low_level_channels = 48
  config.segmenter.dropout = 0.5
  config.segmenter.precision = 'default'  # training matmuls may use TF32/bf16 passes

  config.checkpoint = ''  # --mode=evaluate: checkpoint directory
  config.checkpoint_step = -1  # -1 = best (else latest)
  if arg == 'resnet50':
    config.segmenter.backbone = 'dino_resnet50'
    config.segmenter.aspp_rates = (12, 24, 36)  # output stride 8
  elif arg:
    raise ValueError(f'configs/voc_semantic.py:{arg}: the config argument is resnet50 or none')
  return config
