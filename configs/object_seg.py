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
"""

from configs import base


def get_config():
  config = base.get_config()
  config.data.source = 'saliency'
  config.data.name = 'ECSSD'
  config.spectral.K = 2
  config.segment.crf = True
  return config
