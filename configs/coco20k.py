"""Object localization (CorLoc) on COCO20k: 19,817 COCO train2014 images (LOST's list, shipped).

  # From a COCO folder (train2014/ and annotations/instances_train2014.json under root):
  python main.py --config=configs/coco20k.py --mode=localize --config.data.root=/data/COCO \
      --workdir=/tmp/coco20k_loc
  # Or from the prepared tfds dataset coco/2014 (filtered to the list):
  python main.py --config=configs/coco20k.py --mode=localize --workdir=/tmp/coco20k_loc

Boxes [x, y, x+w, y+h] rounded as the official code does; crowd boxes dropped.
Expected (paper, ViT-S/16, as tabulated by later work such as TokenCut): CorLoc 52.2.
"""

from configs import base


def get_config():
  config = base.get_config()
  config.data.source = 'coco20k'
  config.spectral.K = 5
  return config
