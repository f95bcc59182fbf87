"""Single-object segmentation on CUB, DUTS-TE, ECSSD or DUT-OMRON (the official protocol).

  python main.py --config=configs/object_seg.py --mode=segment --config.data.name=ECSSD \
      --config.data.root=/data/ECSSD --workdir=/tmp/ecssd
  # name: ECSSD (images/, ground_truth_mask/), DUTS-TE (DUTS-TE-Image/, DUTS-TE-Mask/),
  #       DUT-OMRON (DUT-OMRON-image/, pixelwiseGT-new-PNG/),
  #       CUB (test_images/, test_segmentations/; scored on the centred square crop)

Protocol: DINO ViT-S/16 keys, Laplacian K=2, Fiedler vector > 0 upsampled to the image,
dense-CRF refinement (w1=10, α=80, β=13, w2=3, γ=3, 5 iterations); metrics: mean per-image
IoU and accuracy, and maxFβ (β² = 0.3). --config.segment.crf=False skips the CRF.

Expected (paper, as tabulated by later work such as TokenCut; IoU): ECSSD 0.733,
DUTS-TE 0.514, DUT-OMRON 0.567; check the paper's Table 3 for CUB and the other metrics.

TokenCut saliency (its own input: PIL-Lanczos resize to round(H/16)·16 × round(W/16)·16, the
seed's 4-connected component upsampled to the image), plain or with the bilateral solver:
  python main.py --config=configs/object_seg.py:tokencut --mode=segment \
      --config.data.name=ECSSD --config.data.root=/data/ECSSD --workdir=/tmp/ecssd_tc
  python main.py --config=configs/object_seg.py:tokencut --mode=segment \
      --config.segment.refine=bilateral --config.data.name=DUT-OMRON \
      --config.data.root=/data/DUT-OMRON --workdir=/tmp/dutomron_tc_bs
The argument :tokencut sets refine=none (not the CRF). Published (TokenCut README, ViT-S/16),
IoU: TokenCut + BS .618 / .624 / .772 on DUT-OMRON / DUTS-TE / ECSSD; TokenCut alone .533 /
.576 / .712. maxF / accuracy: TokenCut + BS 69.7 / 89.7, 75.5 / 91.4, 87.4 / 93.4.

FOUND (CVPR 2023: a 1×1 conv decoder on DINO ViT-S/8 keys; its official evaluation: the full
image normalised and zero-padded, logits upsampled ×8 bilinearly, sigmoid > 0.5):
  python main.py --config=configs/object_seg.py:found --mode=segment \
      --config.found.evaluation_mode=single --config.data.name=DUTS-TE \
      --config.data.root=/data/DUTS-TE --workdir=/tmp/duts_found
The argument :found sets method=found, model.name=dino_vits8 with the 300-epoch ViT-S/8 file
FOUND uses, and refine=none. --config.found.evaluation_mode: multi (every pixel above 0.5, the
official default) | single (the largest component); --config.segment.refine=bilateral: FOUND's
"+BS" (its own post-processing and IoU > 0.5 gate); --config.found.decoder=FILE: another decoder
('' = FOUND's shipped decoder_weights.pt, downloaded once). Published (FOUND paper, single mode,
ViT-S/8; not measured here), maxFβ .708 / .763 / .955 on DUT-OMRON / DUTS-TE / ECSSD. The
official multi-mode maxFβ scores the soft map; this runner writes binary masks (maxFβ = Fβ).

Backbones (--config.model.name; README's table): dino_vit{s,b}{16,8}, dinov2_vit{s,b,l,g}14[_reg],
dinov3_vits16[plus] / dinov3_vitb16 / dinov3_vitl16 (gated: --config.model.checkpoint=FILE) and
dino_resnet50, for every method; no CorLoc is published here for the non-DINO ones (unmeasured).
"""

from spectral_jax import config_dict


def get_config(arg=None):
  config = config_dict.with_method(config_dict.default_config(), arg)
  config.data.source = 'saliency'
  config.data.name = 'ECSSD'
  config.spectral.K = 2
  # DSM's protocol; TokenCut and FOUND: refine none | bilateral.
  config.segment.crf = config.method == 'dsm'
  return config
