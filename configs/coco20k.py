"""Object localization (CorLoc) on COCO20k: 19,817 COCO train2014 images (LOST's list, shipped).

  # From a COCO folder (train2014/ and annotations/instances_train2014.json under root):
  python main.py --config=configs/coco20k.py --mode=localize --config.data.root=/data/COCO \
      --workdir=/tmp/coco20k_loc
  # Or from the prepared tfds dataset coco/2014 (filtered to the list):
  python main.py --config=configs/coco20k.py --mode=localize --workdir=/tmp/coco20k_loc

Boxes [x, y, x+w, y+h] rounded as the official code does; crowd boxes dropped.
Expected (paper, ViT-S/16, as tabulated by later work such as TokenCut): CorLoc 52.2.

TokenCut and LOST through the same pipeline (config argument after the file name):
  python main.py --config=configs/coco20k.py:tokencut --mode=localize \
      --config.data.root=/data/COCO --workdir=/tmp/coco20k_tc
  python main.py --config=configs/coco20k.py:lost --mode=localize \
      --config.data.root=/data/COCO --workdir=/tmp/coco20k_lost
  # :tokencut_vits8 / :lost_vits8 = ViT-S/8 with the 300-epoch file those papers use.
Published CorLoc (READMEs): TokenCut 58.8 (ViT-S/16), 60.7 (S/8); LOST 50.7 (S/16), 49.5 (S/8);
DSM 52.2.

Backbones (--config.model.name; README's table): dino_vit{s,b}{16,8}, dinov2_vit{s,b,l,g}14[_reg],
dinov3_vits16[plus] / dinov3_vitb16 / dinov3_vitl16 (gated: --config.model.checkpoint=FILE) and
dino_resnet50, for every method; no CorLoc is published here for the non-DINO ones (unmeasured).
"""

from spectral_jax import config_dict


def get_config(arg=None):
  config = config_dict.with_method(config_dict.default_config(), arg)
  config.data.source = 'coco20k'
  config.spectral.K = 5
  config.data.bucket_tokens = 32  # few repeated sizes: fine steps pad less than the ladder
  return config
