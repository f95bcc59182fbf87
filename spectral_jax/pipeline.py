"""The per-image pipeline shared by every mode: decode → ViT features → eigenvectors.

Images are decoded in background threads while the device computes, grouped by
cropped size (one compiled forward per size) and run in batches. Task runners
consume ``ImageResult`` records and decide what to write; nothing here knows
about workdirs or configs beyond the plain arguments it is given.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import time
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from absl import logging

from spectral_jax.data import datasets
from spectral_jax.models import checkpoints, vit
from spectral_jax.spectral import affinity, eigen


@dataclasses.dataclass
class ImageResult:
  """What the pipeline knows about one image. Arrays are numpy, on the host."""
  example: Any  # datasets.Example
  image: np.ndarray  # uint8 [H, W, 3], uncropped
  patch_size: int
  patch_grid: tuple[int, int]
  features: Optional[np.ndarray] = None  # [h·w, D]
  eigenvalues: Optional[np.ndarray] = None  # [K]
  eigenvectors: Optional[np.ndarray] = None  # [K, h·w]


@dataclasses.dataclass
class FeatureExtractor:
  """A DINO ViT with its parameters and one jitted forward (compiled once per input size)."""
  arch: vit.ViTArch
  params: Any
  precision: str = 'highest'
  feature_block: int = -1
  compiled_shapes: set = dataclasses.field(default_factory=set)

  def __post_init__(self):
    self._model = vit.VisionTransformer(self.arch, precision=self.precision)
    self._forward = jax.jit(self._features, static_argnames=('with_cls',))

  def _features(self, params, images_uint8, with_cls=False):
    out = self._model.apply({'params': params}, vit.normalize(images_uint8),
                            feature_block=self.feature_block, with_cls=with_cls)
    return {key: out[key] for key in (('k', 'cls') if with_cls else ('k',))}

  def __call__(self, images_uint8: np.ndarray, with_cls: bool = False) -> dict[str, jax.Array]:
    """Features of a batch of equal-size cropped images: uint8 [B, H, W, 3]."""
    shape = (images_uint8.shape, with_cls)
    if shape not in self.compiled_shapes:
      self.compiled_shapes.add(shape)
      logging.info('compiling the ViT forward for input %s (%d shapes so far)',
                   images_uint8.shape, len(self.compiled_shapes))
    return self._forward(self.params, images_uint8, with_cls=with_cls)

  def cls_features(self, image_uint8: np.ndarray) -> np.ndarray:
    """Final-normed CLS token of one cropped image [H, W, 3] → [D]."""
    return np.asarray(self(image_uint8[None], with_cls=True)['cls'][0])


def load_extractor(name: str, checkpoint: str = '', cache_dir: str = '',
                   precision: str = 'highest', feature_block: int = -1) -> FeatureExtractor:
  """Loads (downloading if needed, via the orbax cache if present) a DINO backbone."""
  if name not in vit.ARCHS:
    raise ValueError(f'model.name={name!r}: use one of {sorted(vit.ARCHS)}')
  params, found = checkpoints.load_params(name, checkpoint or None, cache_dir or None)
  # Width, heads and patch size come from the name; depth and the pretrained grid from the file.
  arch = dataclasses.replace(vit.ARCHS[name], depth=found['depth'], num_pos=found['num_pos'])
  checkpoints.check_params(params, vit.abstract_params(arch))
  if not -arch.depth <= feature_block < arch.depth:
    raise ValueError(f'model.feature_block={feature_block} is outside a {arch.depth}-block model')
  return FeatureExtractor(arch, jax.device_put(params), precision, feature_block)


def _decode(example, max_pixels: int, min_side: int):
  try:
    return example, datasets.load_image(example, min_side=min_side, max_pixels=max_pixels), None
  except (OSError, ValueError) as e:  # one bad image must not stop a dataset run
    return example, None, e


def decoded(examples: Sequence[Any], max_pixels: int, min_side: int, workers: int = 4,
            on_error: Optional[Callable[[Any, Exception], None]] = None
            ) -> Iterator[tuple[Any, np.ndarray]]:
  """Decodes images in background threads, in order, a bounded window ahead."""
  window = max(2 * workers, 8)
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    pending = collections.deque()
    it = iter(examples)
    for ex in it:
      pending.append(pool.submit(_decode, ex, max_pixels, min_side))
      if len(pending) >= window:
        yield from _finish(pending.popleft(), on_error)
    while pending:
      yield from _finish(pending.popleft(), on_error)


def _finish(future, on_error):
  example, image, error = future.result()
  if error is not None:
    logging.warning('skipping %s: %s', example.path, error)
    if on_error is not None:
      on_error(example, error)
    return
  yield example, image


def size_batches(items: Iterable[tuple[Any, np.ndarray]], patch_size: int, batch_size: int
                 ) -> Iterator[list[tuple[Any, np.ndarray]]]:
  """Groups images by cropped size; a group is emitted when full, the rest at the end.

  Memory stays bounded by (number of distinct sizes) × batch_size images.
  """
  groups: dict[tuple[int, int], list] = collections.defaultdict(list)
  for example, image in items:
    key = (image.shape[0] // patch_size, image.shape[1] // patch_size)
    groups[key].append((example, image))
    if len(groups[key]) == batch_size:
      yield groups.pop(key)
  yield from groups.values()


@functools.partial(jax.jit, static_argnames=('k', 'which_matrix', 'solver'))
def _eigs_of_features(feats, images_lr, color_lambda, k: int, which_matrix: str, solver: str):
  if images_lr is None:
    w = jax.vmap(affinity.feature_affinity)(feats)
  else:
    w = jax.vmap(affinity.combined_affinity, in_axes=(0, 0, None))(feats, images_lr, color_lambda)
  if which_matrix == 'affinity':
    return eigen.affinity_eigs(w, k, solver=solver)
  return eigen.laplacian_eigs(w, k, solver=solver)


def spectral_decomposition(feats: jax.Array, images: Sequence[np.ndarray], grid_hw,
                           k: int, color_lambda: float = 0.0, which_matrix: str = 'laplacian',
                           solver: str = 'auto') -> tuple[np.ndarray, np.ndarray]:
  """Eigenpairs for a batch of equal-grid images: feats [B, N, D] → ([B, K], [B, K, N])."""
  if which_matrix not in ('laplacian', 'affinity'):
    raise ValueError(f"spectral.which_matrix={which_matrix!r}: use 'laplacian' or 'affinity'")
  images_lr = None
  if color_lambda > 0:
    images_lr = jnp.asarray(np.stack([affinity.color_image_for_grid(im, grid_hw) for im in images]))
  vals, vecs = _eigs_of_features(feats, images_lr, color_lambda, k, which_matrix, solver)
  return np.asarray(vals), np.asarray(vecs)


def run_images(extractor: FeatureExtractor, examples: Sequence[Any], *, batch_size: int,
               max_pixels: int, spectral_k: int = 0, color_lambda: float = 0.0,
               which_matrix: str = 'laplacian', solver: str = 'auto',
               on_error: Optional[Callable[[Any, Exception], None]] = None
               ) -> Iterator[ImageResult]:
  """Features (and eigenpairs if spectral_k > 0) for every readable image."""
  p = extractor.arch.patch_size
  items = decoded(examples, max_pixels=max_pixels, min_side=p, on_error=on_error)
  for batch in size_batches(items, p, batch_size):
    crops = np.stack([vit.crop_to_patches(image, p) for _, image in batch])
    grid = (crops.shape[1] // p, crops.shape[2] // p)
    feats = extractor(crops)['k']
    vals = vecs = None
    if spectral_k:
      vals, vecs = spectral_decomposition(feats, [im for _, im in batch], grid, spectral_k,
                                          color_lambda, which_matrix, solver)
    feats = np.asarray(feats)
    for i, (example, image) in enumerate(batch):
      yield ImageResult(example, image, p, grid, feats[i],
                        None if vals is None else vals[i], None if vecs is None else vecs[i])


class Progress:
  """A progress bar with images/s; ``summary()`` for the end-of-run log line."""

  def __init__(self, total: int, desc: str):
    self.start = time.perf_counter()
    self.bar = tqdm.tqdm(total=total, desc=desc, unit='img', mininterval=2.0)

  def update(self, n: int = 1) -> None:
    self.bar.update(n)

  @property
  def rate(self) -> float:
    return self.bar.n / max(time.perf_counter() - self.start, 1e-9)

  def summary(self) -> str:
    self.bar.close()
    return f'{self.bar.desc}: {self.bar.n} images in {time.perf_counter() - self.start:.1f} s ' \
           f'({self.rate:.2f} images/s)'
