"""The batched per-image pipeline shared by every mode and front-end: decoded images (files
read by the data layer, or pixels in memory) → working resolution → token batches → ViT
features → each method's device step (eigenpairs, TokenCut, LOST, FOUND's decoder) →
``ImageResult`` records.

One module per concern: ``geometry`` (working resolution, box and mask frames), ``decoding``
(threads ahead of the device), ``batching`` (token buckets), ``methods`` (the method table),
``run`` (dispatch and collection), ``progress`` (the bar). The names below are its interface.
"""

from spectral_jax.models.extractor import FeatureExtractor, load as load_extractor
from spectral_jax.pipeline.batching import (
  GEOMETRIC,
  MAX_BATCH_PAIRS,
  batch_capacity,
  bucket_length,
  cls_batch,
  ladder_length,
  padded_count,
  size_batches,
)
from spectral_jax.pipeline.decoding import decoded
from spectral_jax.pipeline.geometry import fit_tokens, resize_mask, scale_box, working_size
from spectral_jax.pipeline.methods import (
  FOUND_ARCH,
  FOUND_LOGITS,
  METHODS,
  PREPROCESS,
  Method,
  get_method,
  input_grid,
  method_outputs,
  prepare_input,
  spectral_decomposition,
)
from spectral_jax.pipeline.progress import Progress, count
from spectral_jax.pipeline.run import ImageResult, run_images
from spectral_jax.settings import MIN_TOKENS, ImageLimits

__all__ = [
  'FeatureExtractor',
  'load_extractor',
  'GEOMETRIC',
  'MAX_BATCH_PAIRS',
  'batch_capacity',
  'bucket_length',
  'cls_batch',
  'ladder_length',
  'padded_count',
  'size_batches',
  'decoded',
  'fit_tokens',
  'resize_mask',
  'scale_box',
  'working_size',
  'FOUND_ARCH',
  'FOUND_LOGITS',
  'METHODS',
  'PREPROCESS',
  'Method',
  'get_method',
  'input_grid',
  'method_outputs',
  'prepare_input',
  'spectral_decomposition',
  'Progress',
  'count',
  'ImageResult',
  'run_images',
  'MIN_TOKENS',
  'ImageLimits',
]
