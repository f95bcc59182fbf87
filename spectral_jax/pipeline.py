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
from PIL import Image

from spectral_jax import parallel
from spectral_jax.data import datasets
from spectral_jax.models import extractor as extractor_lib
from spectral_jax.models import vit
from spectral_jax.models.extractor import FeatureExtractor
from spectral_jax.spectral import affinity, eigen, lost, tokencut


@dataclasses.dataclass
class ImageResult:
  """What the pipeline knows about one image. Arrays are numpy, on the host."""

  example: Any  # datasets.Example
  image: np.ndarray  # uint8 [H', W', 3], uncropped, at working resolution (see fit_tokens)
  patch_size: int
  patch_grid: tuple[int, int]
  features: Optional[np.ndarray] = None  # [h·w, D]
  eigenvalues: Optional[np.ndarray] = None  # [K'], K' = min(K, h·w − 1)
  eigenvectors: Optional[np.ndarray] = None  # [K', h·w]
  original_hw: Optional[tuple[int, int]] = None  # (H, W) of the file; None = image.shape
  # Object-discovery outputs of method 'tokencut' / 'lost' (see METHODS): 'patch_mask' bool
  # [h, w] (the seed's component), 'box' int64 [4] in working pixels, 'seed' (flat index);
  # LOST adds 'M' [h·w], its seed-expansion map.
  outputs: Optional[dict] = None
  # Other arrays of the backbone, rows like ``features`` (see models.extractor):
  # 'x_norm_patchtokens', 'k_rope' [h·w, D]; 'low_level' [(2h)·(2w), 256].
  extras: Optional[dict] = None

  @property
  def image_hw(self) -> tuple[int, int]:
    """(H, W) of the original image: the frame every output is given in."""
    return self.original_hw or (int(self.image.shape[0]), int(self.image.shape[1]))

  @property
  def resized(self) -> bool:
    return tuple(self.image_hw) != tuple(self.image.shape[:2])

  def box_to_original(self, box_xyxy) -> np.ndarray:
    """A box [x0, y0, x1, y1] (exclusive max) in working pixels → pixels of the original."""
    return scale_box(box_xyxy, self.image.shape[:2], self.image_hw)

  def mask_to_original(self, mask: np.ndarray) -> np.ndarray:
    """A mask [H', W'] at working resolution → [H, W] (nearest)."""
    return resize_mask(mask, self.image_hw)


def cls_batch(extractor, crops: Sequence[np.ndarray], bucket_tokens: int = 64) -> np.ndarray:
  """Final-normed CLS tokens [n, D] of uint8 crops [h, w, 3] (multiples of the patch size) from
  a ViT extractor (DINO, DINOv2 or DINOv3).

  Crops share token-count buckets (the CLS token attends only to real patches, so the
  result equals the unpadded forward) and group sizes are padded to powers of two, so
  boxes of every size and count compile a bounded number of shapes.
  """
  p = extractor.arch.patch_size
  out = np.zeros((len(crops), extractor.arch.embed_dim), np.float32)
  groups = collections.defaultdict(list)
  for i, crop in enumerate(crops):
    groups[bucket_length((crop.shape[0] // p, crop.shape[1] // p), bucket_tokens)].append(i)
  for length, members in groups.items():
    size = 1 << (len(members) - 1).bit_length()
    group = [crops[i] for i in members] + [crops[members[-1]]] * (size - len(members))
    cls = extractor(group, length, with_cls=True)['cls']
    out[members] = np.asarray(cls)[: len(members)]
  return out


# Loads a registry backbone (DINO via the converted-params cache; see ``models.extractor``).
load_extractor = extractor_lib.load


class TooLargeError(ValueError):
  """An image above ``data.max_tokens`` patches with ``data.resize_large=False``."""


def working_size(image_hw, patch_size: int, max_tokens: int) -> tuple[int, int]:
  """(H', W') with at most ``max_tokens`` whole patches, aspect kept; (H, W) if it fits."""
  h, w = int(image_hw[0]), int(image_hw[1])
  if (h // patch_size) * (w // patch_size) <= max_tokens:
    return h, w
  scale = np.sqrt(max_tokens * patch_size * patch_size / (h * w))
  while True:  # rounding can leave a patch too many: shrink by 0.5 % until it fits
    size = max(int(h * scale), 1), max(int(w * scale), 1)
    if (size[0] // patch_size) * (size[1] // patch_size) <= max_tokens:
      return size
    scale *= 0.995


def fit_tokens(
    image: np.ndarray, patch_size: int, max_tokens: int, resize: bool = True, name: str = ''
) -> np.ndarray:
  """The image at working resolution: downscaled (antialiased bicubic) to ``max_tokens``
  patches if it has more, else unchanged. ``resize=False`` raises TooLargeError instead."""
  size = working_size(image.shape[:2], patch_size, max_tokens)
  if size == tuple(image.shape[:2]):
    return image
  tokens = (image.shape[0] // patch_size) * (image.shape[1] // patch_size)
  if not resize:
    raise TooLargeError(
        f'{name}: {image.shape[1]}x{image.shape[0]} has {tokens} patches, above '
        f'data.max_tokens={max_tokens}, and data.resize_large=False'
    )
  logging.info(
      '%s: %dx%d (%d patches) downscaled to %dx%d for the model; outputs are given at %dx%d',
      name, image.shape[1], image.shape[0], tokens, size[1], size[0], image.shape[1],
      image.shape[0],
  )
  return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.BICUBIC))


def scale_box(box_xyxy, from_hw, to_hw) -> np.ndarray:
  """Box [x0, y0, x1, y1] (exclusive max) from one pixel frame to another, covering the same
  area (floor of the minimum, ceiling of the maximum), clipped to the target image."""
  if tuple(from_hw) == tuple(to_hw):
    return np.asarray(box_xyxy)
  sy, sx = to_hw[0] / from_hw[0], to_hw[1] / from_hw[1]
  x0, y0, x1, y1 = (float(v) for v in box_xyxy)
  return np.array(
      [
          max(int(np.floor(x0 * sx)), 0),
          max(int(np.floor(y0 * sy)), 0),
          min(int(np.ceil(x1 * sx)), to_hw[1]),
          min(int(np.ceil(y1 * sy)), to_hw[0]),
      ]
  )


def resize_mask(mask: np.ndarray, to_hw) -> np.ndarray:
  """Nearest-neighbour resize of a 2-D mask or label map to (H, W)."""
  if tuple(mask.shape[:2]) == tuple(to_hw):
    return mask
  rows = np.minimum((np.arange(to_hw[0]) + 0.5) * mask.shape[0] / to_hw[0], mask.shape[0] - 1)
  cols = np.minimum((np.arange(to_hw[1]) + 0.5) * mask.shape[1] / to_hw[1], mask.shape[1] - 1)
  return mask[rows.astype(int)[:, None], cols.astype(int)[None, :]]


# Fewest patches an image needs: eigenvector 1 (the Fiedler vector) of K' >= 2 needs 3 nodes.
MIN_TOKENS = 3


@dataclasses.dataclass(frozen=True)
class ImageLimits:
  """What ``data.*`` allows per image (see configs/base.py)."""

  max_pixels: int = 8192 * 8192
  max_tokens: int = 6400
  resize_large: bool = True
  min_tokens: int = MIN_TOKENS


def _decode(example, patch_size: int, limits: ImageLimits):
  """(example, working image, original (H, W), error) — errors are returned, never raised."""
  try:
    image = datasets.load_image(example, min_side=patch_size, max_pixels=limits.max_pixels)
    original = (int(image.shape[0]), int(image.shape[1]))
    name = example.label
    image = fit_tokens(image, patch_size, limits.max_tokens, limits.resize_large, name)
    tokens = (image.shape[0] // patch_size) * (image.shape[1] // patch_size)
    if tokens < limits.min_tokens:
      size = f'{image.shape[1]}x{image.shape[0]}'
      if (image.shape[0], image.shape[1]) != original:  # too elongated to downscale
        size = (
            f'{original[1]}x{original[0]}, downscaled to {size} for '
            f'data.max_tokens={limits.max_tokens},'
        )
      raise datasets.decode.BadImageError(
          name,
          f'{size} has {tokens} patches of {patch_size} px; at least {limits.min_tokens} '
          'are needed',
      )
    return example, image, original, None
  except (OSError, ValueError, MemoryError) as e:  # one bad image must not stop a dataset run
    return example, None, None, e


def decoded(
    examples: Sequence[Any],
    patch_size: int,
    limits: ImageLimits = ImageLimits(),
    workers: int = 4,
    on_error: Optional[Callable[[Any, Exception], None]] = None,
) -> Iterator[tuple[Any, np.ndarray, tuple[int, int]]]:
  """(example, working image, original (H, W)) per readable image, decoded in background
  threads, in order, a bounded window ahead (large images are downscaled in the thread, so
  the window holds working-size images only)."""
  window = max(2 * workers, 8)
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    pending = collections.deque()
    it = iter(examples)
    for ex in it:
      pending.append(pool.submit(_decode, ex, patch_size, limits))
      if len(pending) >= window:
        yield from _finish(pending.popleft(), on_error)
    while pending:
      yield from _finish(pending.popleft(), on_error)


def _finish(future, on_error):
  example, image, original, error = future.result()
  if error is not None:
    # A BadImageError names its image already: its reason only, after the name.
    logging.warning('skipping %s: %s', example.label, getattr(error, 'reason', error))
    if on_error is not None:
      on_error(example, error)
    return
  yield example, image, original


def bucket_length(grid: tuple[int, int], step: int) -> int:
  """A grid's token count h·w rounded up to a multiple of ``step`` (0 = exact)."""
  n = grid[0] * grid[1]
  return -(-n // step) * step if step > 0 else n


# Largest B·N² of a batch's affinity matrices (float32: 256 MiB per copy).
MAX_BATCH_PAIRS = 1 << 26


def batch_capacity(length: int, batch_size: int, batch_tokens: int) -> int:
  """Images per batch at ``length`` tokens: ≤ batch_size, B·L ≤ batch_tokens, B·L² bounded."""
  return max(1, min(batch_size, batch_tokens // length, MAX_BATCH_PAIRS // (length * length)))


def size_batches(
    items: Iterable[tuple[Any, np.ndarray, Any]],
    patch_size: int,
    batch_size: int,
    bucket_tokens: int = 0,
    same_grid: bool = False,
    batch_tokens: int = 1 << 15,
    spectral_k: int = 0,
    preprocess: str = 'crop',
) -> Iterator[list[tuple[Any, np.ndarray, Any]]]:
  """Groups images by bucketed token count (or by exact patch grid if ``same_grid``) of their
  model input (``input_grid`` for ``preprocess``).

  A group is emitted when its token budget is full (``batch_capacity``), the rest at the
  end; memory stays bounded by (number of buckets) × one batch. Images with no more than
  ``spectral_k`` patches group by their exact count (their K is clamped to count − 1).
  """
  groups: dict[Any, list] = collections.defaultdict(list)
  for item in items:
    grid = input_grid(item[1].shape[:2], patch_size, preprocess)
    n = grid[0] * grid[1]
    if same_grid:
      key, length = grid, n
    elif spectral_k and n <= spectral_k:
      key, length = ('exact', n), n
    else:
      key = length = bucket_length(grid, bucket_tokens)
    groups[key].append(item)
    if len(groups[key]) >= batch_capacity(length, batch_size, batch_tokens):
      yield groups.pop(key)
  yield from groups.values()


def _pad_rows(array: np.ndarray, n: int) -> np.ndarray:
  """Repeats the last row up to n rows (device-count padding of per-image inputs)."""
  return np.concatenate([array, np.repeat(array[-1:], n - len(array), axis=0)])


def _eigs_of_features(
    feats, n_valid, images_lr, color_lambda: float, k: int, which_matrix: str, solver: str
):
  """feats [B, N, D] with real tokens first and n_valid [B] → ([B, K], [B, K, N])."""
  n = feats.shape[1]
  valid = jnp.arange(n)[None, :] < n_valid[:, None]
  if images_lr is None:
    w = jax.vmap(affinity.feature_affinity)(feats * valid[..., None])
  else:
    w = jax.vmap(affinity.combined_affinity, in_axes=(0, 0, None))(feats, images_lr, color_lambda)
  if which_matrix == 'affinity':
    return eigen.affinity_eigs(w, k, solver=solver)
  # Padded nodes: isolated with eigenvalue above the real spectrum (see eigen.pad_affinities).
  pad = ~valid
  w = w * (valid[:, :, None] & valid[:, None, :]) + jax.vmap(jnp.diag)(pad * eigen.PAD_SELF_LOOP)
  return eigen.laplacian_eigs(w, k, solver=solver, n_valid=n_valid)


@functools.lru_cache(maxsize=None)
def _eigs_step(mesh, with_color: bool, color_lambda: float, k: int, which_matrix: str, solver: str):
  """The jitted eigen step. On a mesh every device solves its own shard with
  ``shard_map``: under plain SPMD, the batched Lanczos loop would all-reduce its stopping
  test across devices every iteration. (A CPU host passes no mesh: see
  ``spectral_decomposition``.)"""

  def step(feats, n_valid, images_lr=None):
    return _eigs_of_features(feats, n_valid, images_lr, color_lambda, k, which_matrix, solver)

  if mesh is None:
    return jax.jit(step)
  spec = parallel.batch_sharding(mesh).spec
  return jax.jit(
      jax.shard_map(
          step,
          mesh=mesh,
          in_specs=(spec,) * (3 if with_color else 2),
          out_specs=spec,
          check_vma=False,
      )
  )


def spectral_decomposition(
    feats: jax.Array,
    n_valid: np.ndarray,
    images: Sequence[np.ndarray],
    grid_hw,
    k: int,
    color_lambda: float = 0.0,
    which_matrix: str = 'laplacian',
    solver: str = 'auto',
) -> tuple[jax.Array, jax.Array]:
  """Eigenpairs for a batch: feats [B, N, D] (real tokens first) → ([B, K], [B, K, N]).

  Returns device arrays without waiting for them. The colour and affinity variants need
  every image of the batch on the same grid.
  """
  if which_matrix not in ('laplacian', 'affinity'):
    raise ValueError(f"spectral.which_matrix={which_matrix!r}: use 'laplacian' or 'affinity'")
  images_lr = None
  if color_lambda > 0:
    lr = np.stack([affinity.color_image_for_grid(im, grid_hw) for im in images])
    images_lr = jnp.asarray(_pad_rows(lr, len(feats)))
  solver = eigen.resolve_solver(solver, feats.shape[1], k, smallest=int(np.min(n_valid)))
  n_valid = jnp.asarray(_pad_rows(np.asarray(n_valid), len(feats)))
  sharding = feats.sharding
  mesh = sharding.mesh if isinstance(sharding, jax.sharding.NamedSharding) else None
  if mesh is not None and mesh.size > 1 and jax.default_backend() == 'cpu':
    # jaxlib's batched CPU eigh (inside Lanczos and dense) blocks on the shared intra-op
    # thread pool; several CPU devices doing so at once deadlock once they hold every pool
    # thread (seen with 2 devices on 2 cores). On a CPU, one device solves the batch.
    feats = jax.device_put(feats, mesh.devices.flat[0])
    mesh = None
  step = _eigs_step(mesh, images_lr is not None, color_lambda, k, which_matrix, solver)
  return step(feats, n_valid) if images_lr is None else step(feats, n_valid, images_lr)


# ----------------------------------------------------------------------------------------------
# Methods: one table of how each one builds its input and turns keys into outputs
# ----------------------------------------------------------------------------------------------

PREPROCESS = ('crop', 'pad', 'resize')


def prepare_input(image: np.ndarray, patch_size: int, preprocess: str = 'crop') -> np.ndarray:
  """The model input [h·P, w·P, 3] of a working-resolution image uint8 [H, W, 3].

  'crop': uint8 top-left crop to ⌊H/P⌋·P × ⌊W/P⌋·P (Deep Spectral Methods).
  'pad': float32 ImageNet-normalised, THEN zero-padded bottom/right to ⌈H/P⌉·P × ⌈W/P⌉·P
    (TokenCut's and LOST's object discovery: the padding is the mean colour).
  'resize': uint8 PIL-Lanczos-resized to round(H/P)·P × round(W/P)·P, halves to even
    (TokenCut's saliency path).
  """
  if preprocess == 'crop':
    return vit.crop_to_patches(image, patch_size)
  if preprocess == 'pad':
    return tokencut.padded_input(image, patch_size)
  if preprocess == 'resize':
    return tokencut.saliency_input(image, patch_size)
  raise ValueError(f'preprocess={preprocess!r}: use one of {PREPROCESS}')


def input_grid(image_hw, patch_size: int, preprocess: str = 'crop') -> tuple[int, int]:
  """The patch grid (h, w) that ``prepare_input`` gives an (H, W) image, without building it."""
  h, w, p = int(image_hw[0]), int(image_hw[1]), int(patch_size)
  if preprocess == 'crop':
    return h // p, w // p
  if preprocess == 'pad':
    return -(-h // p), -(-w // p)
  if preprocess == 'resize':
    sh, sw = tokencut.saliency_size(h, w, p)
    return sh // p, sw // p
  raise ValueError(f'preprocess={preprocess!r}: use one of {PREPROCESS}')


def _tokencut_device(
    feats, n_valid, *, solver: str, tau: float = 0.2, eps: float = 1e-5, tol: float = 1e-6
):
  """Graph, (λ0, λ1, λ2) and vectors, TokenCut's bipartition and seed (equal to
  ``tokencut.discover``'s device part). Eigenvector 1 comes back oriented the TokenCut way."""
  w = tokencut.binary_graph(feats, n_valid, tau=tau, eps=eps)
  vals, vecs = eigen.laplacian_eigs(w, 3, solver=solver, n_valid=n_valid, tol=tol)
  v, part, seed = tokencut.bipartition(vecs[:, 1], n_valid)
  return dict(eigenvalues=vals, eigenvectors=vecs.at[:, 1].set(v), part=part, seed=seed)


def _tokencut_host(out: dict, grid, patch_size: int, image_hw) -> dict:
  comp = tokencut.seed_component(tokencut.as_grid(out['part'], grid), out['seed'])
  box = tokencut.box_from_mask(comp, patch_size, image_hw)
  return dict(patch_mask=comp, box=box, seed=int(out['seed']))


def _lost_device(feats, n_valid, *, solver: str, k_patches: int = 100):
  """Degrees, the stable order, seed expansion and the map M (``lost.discover``'s device part)."""
  del solver  # LOST has no eigenproblem
  degree, order = lost.degree_order(feats, n_valid)
  seed, _, _, m = lost.expansion(feats, n_valid, order, k_patches=k_patches)
  return dict(seed=seed, M=m, degree=degree)


def _lost_host(out: dict, grid, patch_size: int, image_hw) -> dict:
  m = tokencut.as_grid(out['M'], grid)
  comp = tokencut.seed_component(m > 0, out['seed'])  # M_s > 0 always (see lost.py)
  box = tokencut.box_from_mask(comp, patch_size, image_hw)
  return dict(patch_mask=comp, box=box, seed=int(out['seed']), M=m.ravel())


@dataclasses.dataclass(frozen=True)
class Method:
  """How a method builds its input (``prepare_input``) and turns a batch of keys into outputs.

  ``device``: (keys [B, L, D], n_valid [B], solver=, **params) → dict of [B, ...] arrays, jitted
  and batched (None: Deep Spectral Methods' eigenpairs, ``spectral_decomposition``).
  ``host``: (one image's slice of those arrays (numpy), grid, P, working (H, W)) → the
  ``ImageResult.outputs`` dict. ``preprocess`` is the object-discovery input,
  ``segment_preprocess`` the one of the method's mask (segment mode).
  """

  name: str
  preprocess: str
  segment_preprocess: str
  has_eigenvectors: bool
  device: Optional[Callable] = None
  host: Optional[Callable] = None


METHODS = {
    'dsm': Method('dsm', 'crop', 'crop', True),
    # Object discovery pads; the saliency masks of the paper's segmentation table resize.
    'tokencut': Method('tokencut', 'pad', 'resize', True, _tokencut_device, _tokencut_host),
    'lost': Method('lost', 'pad', 'pad', False, _lost_device, _lost_host),
}


def get_method(name: str) -> Method:
  if name not in METHODS:
    raise ValueError(f'method={name!r}: use one of {sorted(METHODS)}')
  return METHODS[name]


@functools.lru_cache(maxsize=None)
def _method_step(mesh, name: str, solver: str, params: tuple):
  """The jitted device part of a method (per-device shards under shard_map on a mesh)."""
  step = functools.partial(METHODS[name].device, solver=solver, **dict(params))
  if mesh is None:
    return jax.jit(step)
  spec = parallel.batch_sharding(mesh).spec
  return jax.jit(
      jax.shard_map(step, mesh=mesh, in_specs=(spec, spec), out_specs=spec, check_vma=False)
  )


def method_outputs(
    method: Method, feats: jax.Array, n_valid: np.ndarray, solver: str = 'auto', params=None
) -> dict:
  """A method's device part on a batch: feats [B, L, D] (real tokens first), n_valid [B] →
  dict of [B, ...] device arrays, not waited for."""
  params = tuple(sorted((params or {}).items()))
  if method.name == 'tokencut':
    solver = eigen.resolve_solver(solver, feats.shape[1], 3, smallest=int(np.min(n_valid)))
  n_valid = jnp.asarray(_pad_rows(np.asarray(n_valid, np.int32), len(feats)))
  sharding = feats.sharding
  mesh = sharding.mesh if isinstance(sharding, jax.sharding.NamedSharding) else None
  if mesh is not None and mesh.size > 1 and jax.default_backend() == 'cpu':
    feats = jax.device_put(feats, mesh.devices.flat[0])  # see spectral_decomposition
    mesh = None
  if mesh is not None and mesh.size == 1:
    mesh = None
  return _method_step(mesh, method.name, solver, params)(feats, n_valid)


@dataclasses.dataclass
class _InFlight:
  """A batch whose device work has been dispatched but not waited for."""

  batch: list
  grids: list
  feats: jax.Array
  vals: Optional[jax.Array]
  vecs: Optional[jax.Array]
  outputs: Optional[dict] = None  # a method's device outputs (Method.device)
  extras: Optional[dict] = None  # the extractor's other arrays [B, r·length, C]


def _dispatch(
    extractor: FeatureExtractor,
    batch: list,
    bucket_tokens: int,
    spectral_k: int,
    color_lambda: float,
    which_matrix: str,
    solver: str,
    method: Method = METHODS['dsm'],
    preprocess: str = 'crop',
    method_params: Optional[dict] = None,
) -> _InFlight:
  p = extractor.arch.patch_size
  crops = [prepare_input(item[1], p, preprocess) for item in batch]
  grids = [(c.shape[0] // p, c.shape[1] // p) for c in crops]
  tokens = [h * w for h, w in grids]
  length = max(bucket_length(grids[0], bucket_tokens), max(tokens))
  out = extractor(crops, length if min(tokens) > spectral_k else max(tokens))
  feats = out['k']
  extras = {key: value for key, value in out.items() if key != 'k'} or None
  vals = vecs = None
  if method.device is not None:
    outputs = method_outputs(method, feats, np.array(tokens), solver, method_params)
    return _InFlight(batch, grids, feats, None, None, outputs, extras)
  if spectral_k:
    # Tiny images (no more patches than K) come in batches of one token count: K' = N − 1.
    k = min(spectral_k, min(tokens) - 1)
    if k < spectral_k:
      logging.info(
          '%s: %d patches, so %d eigenvectors instead of spectral.K=%d',
          ', '.join(str(item[0].id) for item in batch), min(tokens), k, spectral_k,
      )
    vals, vecs = spectral_decomposition(
        feats,
        np.array(tokens),
        [item[1] for item in batch],
        grids[0],
        k,
        color_lambda,
        which_matrix,
        solver,
    )
  return _InFlight(batch, grids, feats, vals, vecs, extras=extras)


def _nonfinite(result: ImageResult) -> str:
  for name in ('features', 'eigenvalues', 'eigenvectors'):
    value = getattr(result, name)
    if value is not None and not np.isfinite(value).all():
      return name
  return ''


def _collect(
    job: _InFlight, patch_size: int, on_error=None, method: Method = METHODS['dsm']
) -> Iterator[ImageResult]:
  feats = np.asarray(job.feats)
  outputs = None
  if job.outputs is not None:
    outputs = {key: np.asarray(value) for key, value in job.outputs.items()}
    job.vals, job.vecs = outputs.pop('eigenvalues', None), outputs.pop('eigenvectors', None)
  vals = None if job.vals is None else np.asarray(job.vals)
  vecs = None if job.vecs is None else np.asarray(job.vecs)
  extras = {key: np.asarray(value) for key, value in (job.extras or {}).items()}
  for i, (example, image, original) in enumerate(job.batch):
    n = job.grids[i][0] * job.grids[i][1]
    result = ImageResult(
        example,
        image,
        patch_size,
        job.grids[i],
        feats[i, :n],
        None if vals is None else vals[i],
        None if vecs is None else vecs[i, :, :n],
        original,
    )
    if extras:  # r rows per feature cell (4 for the ResNet's stride-4 low_level)
      result.extras = {
          key: value[i, : n * (value.shape[1] // feats.shape[1])] for key, value in extras.items()
      }
    bad = _nonfinite(result)
    if bad:  # NaN weights or an overflow: never a box from NaN eigenvectors
      error = FloatingPointError(f'non-finite {bad} (NaN or inf) for {example.label}')
      logging.warning('skipping %s: %s', example.id, error)
      if on_error is not None:
        on_error(example, error)
      continue
    if outputs is not None:
      try:
        mine = {key: value[i] for key, value in outputs.items()}
        result.outputs = method.host(mine, job.grids[i], patch_size, image.shape[:2])
      except ValueError as error:  # e.g. a seed outside its own side: never a made-up box
        logging.warning('skipping %s: %s', example.id, error)
        if on_error is not None:
          on_error(example, error)
        continue
    yield result


def run_images(
    extractor: FeatureExtractor,
    examples: Sequence[Any],
    *,
    batch_size: int,
    limits: ImageLimits = ImageLimits(),
    spectral_k: int = 0,
    color_lambda: float = 0.0,
    which_matrix: str = 'laplacian',
    solver: str = 'auto',
    bucket_tokens: int = 32,
    batch_tokens: int = 1 << 15,
    on_error: Optional[Callable[[Any, Exception], None]] = None,
    method: str = 'dsm',
    preprocess: str = '',
    method_params: Optional[dict] = None,
) -> Iterator[ImageResult]:
  """Features (and eigenpairs if spectral_k > 0) for every readable image.

  ``method`` (see METHODS): 'dsm' (Deep Spectral Methods: cropped input, ``spectral_k``
  eigenpairs), 'tokencut' (eigenpairs λ0..λ2 and ``outputs``) or 'lost' (``outputs`` only),
  with ``method_params`` (tokencut: tau, eps; lost: k_patches); ``preprocess`` overrides the
  method's input ('crop' | 'pad' | 'resize', see ``prepare_input``). Every method shares the
  batching, token budget, working resolution and error handling below.

  Images above ``limits.max_tokens`` patches run downscaled (``fit_tokens``; results carry
  ``original_hw`` to map outputs back). Images run as patch sequences padded to token counts
  rounded up to ``bucket_tokens``, so a dataset with many sizes compiles a few shapes
  (500×375 and 375×500 share one); batches hold at most ``batch_size`` images and
  ``batch_tokens`` tokens. The colour and affinity variants batch images of the same grid
  only. Decoding runs in threads ahead of the device, and the next batch is dispatched before
  the previous one's results are handed out, so host work overlaps device work. Unreadable,
  too small or non-finite images go to ``on_error`` and are not yielded.
  """
  p = extractor.arch.patch_size
  spec = get_method(method)
  preprocess = preprocess or spec.preprocess
  if preprocess not in PREPROCESS:
    raise ValueError(f'preprocess={preprocess!r}: use one of {PREPROCESS}')
  if spec.device is not None:  # the method's own graph: no DSM eigenpairs or colour term
    spectral_k, color_lambda, which_matrix = 0, 0.0, 'laplacian'
  same_grid = color_lambda > 0 or which_matrix != 'laplacian'
  if same_grid:
    bucket_tokens = 0
  if spectral_k or spec.device is not None:
    limits = dataclasses.replace(limits, min_tokens=max(limits.min_tokens, MIN_TOKENS))
  items = decoded(examples, p, limits, on_error=on_error)
  in_flight = None
  batches = size_batches(
      items, p, batch_size, bucket_tokens, same_grid, batch_tokens, spectral_k, preprocess
  )
  for batch in batches:
    job = _dispatch(
        extractor,
        batch,
        bucket_tokens,
        spectral_k,
        color_lambda,
        which_matrix,
        solver,
        spec,
        preprocess,
        method_params,
    )
    if in_flight is not None:
      yield from _collect(in_flight, p, on_error, spec)
    in_flight = job
  if in_flight is not None:
    yield from _collect(in_flight, p, on_error, spec)


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
    return (
        f'{self.bar.desc}: {self.bar.n} images in {time.perf_counter() - self.start:.1f} s '
        f'({self.rate:.2f} images/s)'
    )
