"""Any folder of images (recursive), optionally scored against boxes or masks.

Extract features and eigenvectors:
  python main.py --config=configs/folder.py --mode=extract --config.data.root=IMAGES_DIR \
      --config.model.name=dino_vits16 --config.model.checkpoint=FILE --workdir=OUT
Localize objects (CorLoc if --config.data.boxes=VOC_XML_DIR or COCO.json is given):
  python main.py --config=configs/folder.py --mode=localize --config.data.root=IMAGES_DIR \
      --workdir=OUT
Segment the main object (IoU/acc/maxFβ if --config.data.masks=MASKS_DIR is given):
  python main.py --config=configs/folder.py --mode=segment --config.data.root=IMAGES_DIR \
      --workdir=OUT

There is no paper number for an arbitrary folder; the outputs are described in README.md.
"""

from configs import base


def get_config():
  config = base.get_config()
  config.data.source = 'folder'
  return config
