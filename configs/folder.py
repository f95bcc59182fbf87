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

Any method (--config.method=dsm|tokencut|lost), any refinement
(--config.segment.refine=none|crf|bilateral), e.g. TokenCut boxes and bilateral-solver masks:
  python main.py --config=configs/folder.py --mode=localize --config.method=tokencut \
      --config.data.root=IMAGES_DIR --config.model.name=dino_vits16 \
      --config.model.checkpoint=FILE --workdir=OUT
  python main.py --config=configs/folder.py --mode=segment --config.method=tokencut \
      --config.segment.refine=bilateral --config.data.root=IMAGES_DIR --workdir=OUT

There is no paper number for an arbitrary folder; the outputs are described in README.md.

Backbones (--config.model.name; README's table): dino_vit{s,b}{16,8}, dinov2_vit{s,b,l,g}14[_reg],
dinov3_vits16[plus] / dinov3_vitb16 / dinov3_vitl16 (gated: --config.model.checkpoint=FILE) and
dino_resnet50, for every method; no CorLoc is published here for the non-DINO ones (unmeasured).
"""

from spectral_jax import config_dict


def get_config(arg=None):
  config = config_dict.with_method(config_dict.default_config(), arg)
  config.data.source = 'folder'
  return config
