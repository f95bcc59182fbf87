"""Multi-object discovery with MaskCut (CutLER's pseudo-mask generator) on a folder of images.

  python main.py --config=configs/discover.py --mode=discover --config.data.root=IMAGES_DIR \
      --config.model.name=dino_vitb8 --workdir=OUT
  # The protocol's check (any folder config works; --config.discover.crf=False skips the CRF):
  python main.py --config=configs/folder.py --mode=discover --config.discover.max_objects=3 \
      --config.discover.tau=0.15 --config.discover.fixed_size=480 --config.discover.crf=False \
      --config.data.root=IMAGES --config.model.name=dino_vits16 --config.model.checkpoint=CKPT \
      --workdir=OUT
  # Class-agnostic AP / AP50 / AR100 (metrics.json) against COCO instances, VOC XMLs or masks:
  python main.py --config=configs/discover.py --mode=discover --config.data.root=val2017 \
      --config.data.boxes=instances_val2017.json --workdir=OUT

Writes OUT/instances.json (COCO instances, one class "fg", RLE masks with bbox, area and a
1 − Ncut score), OUT/instance_maps/<id>.png and OUT/panels/discover_<id>.png; see
spectral_jax/tasks/discover.py. Settings (configs/base.py, config.discover): max_objects 3,
fixed_size 480, tau 0.15, eps 1e-5, crf True (the released pseudo-labels' path): CutLER's README
command for its ImageNet pseudo-labels, with ViT-B/8 keys (this config's model).

Published numbers: none for MaskCut's masks themselves. CutLER's README reports zero-shot
class-agnostic detection of detectors *trained* on these pseudo-masks (ImageNet-1K, ViT-B/8,
tau 0.15, N 3, then self-training), AP50 | AR box: COCO 21.1 | 29.6 (Mask R-CNN) and
21.9 | 32.7 (Cascade), COCO20K 21.6 | 30.0 and 22.4 | 33.1, VOC 36.6 | 41.0 and 36.9 | 44.3,
LVIS 7.7 | 18.7 and 8.4 | 21.8, UVO 29.8 | 38.4 and 31.7 | 42.8 (more sets in
shared/reference/maskcut_protocol.md §7). They need a detector and ImageNet; the AP this mode
measures is that of the raw MaskCut masks, which is expected to be lower.

Backbones (--config.model.name; README's table): every DINO, DINOv2 and DINOv3 ViT of the
registry (DINOv3 gated: --config.model.checkpoint=FILE).
"""

from spectral_jax import config_dict


def get_config():
  config = config_dict.default_config()
  config.data.source = 'folder'
  config.model.name = 'dino_vitb8'  # CutLER's pseudo-label backbone
  config.discover.max_objects = 3
  config.discover.fixed_size = 480
  config.discover.tau = 0.15
  config.discover.crf = True
  return config
