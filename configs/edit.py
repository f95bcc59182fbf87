"""Background removal and compositing (the paper's image-editing application).

Cut the main object out of a photo (or every image in a folder) and put it on white:
  python main.py --config=configs/edit.py --mode=edit --config.data.root=PHOTO_OR_DIR \
      --config.edit.background=white --workdir=OUT

Writes OUT/cutout/<stem>.png (RGBA), OUT/composite/<stem>.png when edit.background is set
(an image file, a colour name, '#RRGGBB' or 'r,g,b'), and OUT/panels/edit_<stem>.png.
Eigenvectors are extracted first where OUT/eigs/<stem>.npz is missing (DINO ViT-S/16 by
default; pass --config.model.checkpoint=FILE offline). --config.model.name=dino_vits8 gives
a finer mask; --config.edit.segment=N picks segment N of a k-means eigen-segmentation
(edit.n_segments clusters, 0 = background) instead of the Fiedler vector.

Backbones (--config.model.name; README's table): every DINO, DINOv2 and DINOv3 ViT of the
registry (DINOv3 gated: --config.model.checkpoint=FILE).
"""

import ml_collections

from spectral_jax import config_dict


def get_config() -> ml_collections.ConfigDict:
  config = config_dict.default_config()
  config.data.source = 'folder'
  config.output.features = False  # editing needs only the eigenvectors
  config.output.num_panels = 8

  config.edit = ml_collections.ConfigDict()
  config.edit.background = ''  # '' = cutout only; image file | 'white' | '#RRGGBB' | 'r,g,b'
  config.edit.segment = -1  # -1 = Fiedler vector > 0; N ≥ 0 = eigen-segment N
  config.edit.n_segments = 4  # k-means clusters when edit.segment ≥ 0
  config.edit.band_px = 0.0  # trimap unknown band half-width in pixels; 0 = one patch
  config.edit.eps = 1e-6  # closed-form matting regulariser (Levin et al.: 1e-7 … 1e-5)
  config.edit.max_pixels = 1_000_000  # matting resolution cap; larger images are upsampled
  config.edit.levels = 0.05  # alpha ← clip((α − l) / (1 − 2l)) removes faint haze; 0 = off
  config.edit.foreground = 'blur_fusion'  # foreground colours: blur_fusion | image (F = I)
  return config
