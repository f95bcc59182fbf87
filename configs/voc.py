"""Object localization (CorLoc) on PASCAL VOC07 or VOC12 trainval, the official protocol.

  # From the prepared tfds dataset (voc/2012, train+validation = 11,540 images):
  python main.py --config=configs/voc.py --mode=localize --workdir=/tmp/voc12_loc
  # VOC07 (5,011 images), or from a VOCdevkit folder instead of tfds:
  python main.py --config=configs/voc.py --mode=localize --config.data.year=2007 \
      --config.data.root=/data/VOCdevkit --workdir=/tmp/voc07_loc

Protocol: DINO ViT-S/16 keys, Laplacian K=5, no colour term; Fiedler vector > 0 (minority
side), largest 8-connected component, its box; CorLoc = % of images whose box has IoU ≥ 0.5
with any ground-truth box (VOC boxes shifted −1 on xmin/ymin as LOST does; all boxes kept, as
the official README command does; --config.data.no_hard=True drops difficult/truncated ones).

Expected (paper, ViT-S/16, as tabulated by later work such as TokenCut): CorLoc 62.7 on VOC07
and 66.4 on VOC12. A user report on the official tracker (issue #9) gives 61.6 (paper) vs 56.7
(reproduced) for ViT-B/16 on VOC07.

TokenCut and LOST through the same pipeline (config argument after the file name):
  python main.py --config=configs/voc.py:tokencut --mode=localize --workdir=/tmp/voc12_tc
  python main.py --config=configs/voc.py:lost --mode=localize --config.data.year=2007 \
      --workdir=/tmp/voc07_lost
  # :tokencut_vits8 / :lost_vits8 = ViT-S/8 with the 300-epoch file those papers use.
Published CorLoc (READMEs, ViT-S/16, VOC07 / VOC12): TokenCut 68.8 / 72.1 (S/8: 67.3 / 71.6),
LOST 61.9 / 64.0 (S/8: 55.5 / 57.0); DSM 62.7 / 66.4. Both methods: tau 0.2, eps 1e-5
(--config.tokencut.*), k_patches 100 (--config.lost.k_patches), input normalised then
zero-padded (no crop), the seed's 4-connected component, its box.

FOUND (CVPR 2023; a 1×1 conv decoder on DINO ViT-S/8 keys, the same padded input; its
``evaluate_uod.sh`` rule: the largest 4-connected component of sigmoid > 0.5 at patch
resolution, its box; score = the mean probability of that component's patches):
  python main.py --config=configs/voc.py:found --mode=localize --config.data.year=2007 \
      --workdir=/tmp/voc07_found
  # :found = method found, dino_vits8 with the 300-epoch file; decoder --config.found.decoder
  # ('' = FOUND's shipped decoder_weights.pt, downloaded once).
FOUND's CorLoc is in its paper (single-object discovery table); it is not recorded or measured
here. Images where no patch is foreground are skipped (skipped.jsonl; the official code fails).

Backbones (--config.model.name; README's table): dino_vit{s,b}{16,8}, dinov2_vit{s,b,l,g}14[_reg],
dinov3_vits16[plus] / dinov3_vitb16 / dinov3_vitl16 (gated: --config.model.checkpoint=FILE) and
dino_resnet50, for every method; no CorLoc is published here for the non-DINO ones (unmeasured).
"""

from spectral_jax import config_dict


def get_config(arg=None):
  config = config_dict.with_method(config_dict.default_config(), arg)
  config.data.source = 'voc'  # with data.root: a VOCdevkit folder; without: tfds voc/<year>
  config.data.year = 2012
  config.data.split = 'trainval'  # devkit ImageSets/Main list (tfds: train+validation)
  config.spectral.K = 5
  config.data.bucket_tokens = 32  # few repeated sizes: fine steps pad less than the ladder
  return config
