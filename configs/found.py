"""FOUND (Siméoni et al., CVPR 2023): train its saliency head on an unlabelled image folder.

  python main.py --config=configs/found.py --mode=train --config.data.root=FOLDER --workdir=OUT
  # scored against ground-truth masks (IoU, accuracy, maxFβ of the single and multi masks):
  python main.py --config=configs/found.py --mode=train --config.data.root=FOLDER \
      --config.data.masks=MASKS --workdir=OUT
  # the training targets only (OUT/pseudo_masks/<stem>.png, 28 × 28, 0/255):
  python main.py --config=configs/found.py --mode=train --config.data.root=FOLDER \
      --config.train.steps=0 --workdir=OUT

Recipe (the official configs/found_DUTS-TR.yaml, config.train.*): DINO ViT-S/8 with the
300-epoch weights, frozen; a 1×1 conv head on the last block's keys; inputs resized to 224 × 224
(random scale U(0.1, 3), Gaussian blur with probability ½, numpy draws seeded by train.seed);
batch 50; AdamW lr 5e-2, weight decay 0.01, ×0.95 every 50 iterations; loss 1.5 · BCE against
the own prediction refined by the bilateral solver, + BCE against the background pseudo-masks
(found.bkg_th 0.3) for 100 iterations, then + 4.0 · BCE against the own prediction; 500 updates
(train.steps; the official loop runs max_iter + 1 = 501: --config.train.steps=501), at most 3
epochs. Outputs: OUT/decoder_weights.pt (the official file format: --config.found.decoder=
reads it), OUT/checkpoints/ (orbax; a killed run resumes exactly), OUT/train_log.jsonl,
OUT/train_metrics.json. The paper trains on DUTS-TR (10,553 images).

Expected (paper, FOUND trained on DUTS-TR; published, not measured here): maxFβ .708 / .763 /
.955 on DUT-OMRON / DUTS-TE / ECSSD.

Other targets for the same head (--config.found.targets=, made once at the un-augmented 224
input on the 28 × 28 grid and written as pseudo_masks; found recomputes its own on each
augmented batch, as the official): found (background discovery + solver), dsm (Fiedler mask,
config.spectral), tokencut (seed component + its bilateral solver, config.tokencut,
config.segment.bilateral_params), maskcut (union of up to 3 objects, config.discover, no CRF).
Cost per image to make them, relative to found (3 runs of
  python benchmarks/bench_found_targets.py --repeats 5
on the 3 fixture photos, 2-block ViT-S/8 fixture, 2 shared CPU cores, load ~5: noisy):
found 1 (0.12-0.19 s), dsm 0.7-0.9, tokencut 1.8-3.1 (its solver at 224), maskcut 3.1-6.8
(3 float64 eigen-solves). With the 12-block ViT the forward adds the same time to each.
"""

from spectral_jax import config_dict
from spectral_jax.models.weights import downloads


def get_config():
  config = config_dict.default_config()
  config.data.source = 'folder'
  config.model.name = 'dino_vits8'
  config.model.checkpoint = downloads.VARIANT_WEIGHTS['dino_vits8_300ep']
  config.method = 'found'  # --mode=segment with --config.found.decoder=OUT/decoder_weights.pt
  config.train = config_dict.found_train_config()
  return config
