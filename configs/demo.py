"""The demo: localize and segment objects in photos that ship with scikit-image.

  python main.py --config=configs/demo.py --mode=localize --workdir=/tmp/spectral_demo
  python main.py --config=configs/demo.py --mode=segment --workdir=/tmp/spectral_demo_seg

Downloads DINO ViT-S/16 once (or pass --config.model.checkpoint=FILE) and writes
predictions.jsonl, masks/ and one PNG panel per image (image | eigenvectors 1–4 | box or
mask) under the workdir. No ground truth ships with these photos, so no metric is printed;
on the astronaut, the box covers the person.

Backbones (--config.model.name; README's table): dino_vit{s,b}{16,8}, dinov2_vit{s,b,l,g}14[_reg],
dinov3_vits16[plus] / dinov3_vitb16 / dinov3_vitl16 (gated: --config.model.checkpoint=FILE) and
dino_resnet50, for every method; no CorLoc is published here for the non-DINO ones (unmeasured).
"""

from spectral_jax import config_dict


def get_config():
  config = config_dict.default_config()
  config.data.source = 'demo'
  config.spectral.K = 5
  config.output.num_panels = 6
  return config
