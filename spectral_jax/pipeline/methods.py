"""The method table: how each method builds its model input and turns a batch of keys into
outputs on the device (Deep Spectral Methods' eigenpairs, TokenCut, LOST, FOUND's decoder). A new
method is one entry of ``METHODS``."""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from spectral_jax import parallel
from spectral_jax.errors import SettingError
from spectral_jax.models import vit
from spectral_jax.spectral import affinity, eigen, found, lost, tokencut


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


FOUND_ARCH = (8, 384)  # (patch size, width): DINO ViT-S/8, the only backbone of FOUND's decoder


def _found_check(extractor) -> None:
  arch = extractor.arch
  if (arch.patch_size, getattr(arch, 'embed_dim', None)) != FOUND_ARCH:
    raise SettingError(
      'model.name',
      getattr(extractor, 'name', type(arch).__name__),
      "FOUND's decoder reads DINO ViT-S/8 keys (patch 8, width 384): load dino_vits8 with "
      "FOUND's 300-epoch file (configs/voc.py:found sets both)",
    )


def _found_device(feats, n_valid, *, solver: str, weight: tuple, bias: float):
  """The decoder's 1×1 convolution on the keys: logits [B, L] (padded tokens too: the host
  keeps the first h·w). ``weight``: the decoder's D floats as a tuple (hashable: the jitted step
  is cached per decoder)."""
  del n_valid, solver  # no graph
  return dict(logits=found.decoder_logits(feats, jnp.asarray(weight, jnp.float32), bias))


FOUND_LOGITS = 'found_logits'  # the host output that marks a FOUND result (results.masks)


def _found_host(out: dict, grid, patch_size: int, image_hw) -> dict:
  """FOUND's object discovery (§4): the largest 4-connected component of sigmoid > 0.5 at patch
  resolution and its box (None if no patch is foreground: the official code fails there);
  ``score``: the mean probability of that component's patches (not in the official code)."""
  logits = np.asarray(out['logits'][: grid[0] * grid[1]], np.float32).reshape(grid)
  box = found.discovery_box(logits, image_hw, patch_size)
  comp = np.zeros(grid, bool)
  if box is not None:  # the component inside the box: found.discovery_box's largest label
    labeled, _ = ndimage.label(found.multi_mask(logits))
    comp = labeled == np.bincount(labeled[labeled != 0]).argmax()
  return {
    FOUND_LOGITS: logits,
    'patch_mask': comp,
    'box': box,
    'score': found.mask_score(logits, comp),
  }


@dataclasses.dataclass(frozen=True)
class Method:
  """How a method builds its input (``prepare_input``) and turns a batch of keys into outputs.

  ``device``: (keys [B, L, D], n_valid [B], solver=, **params) → dict of [B, ...] arrays, jitted
  and batched (None: Deep Spectral Methods' eigenpairs, ``spectral_decomposition``).
  ``host``: (one image's slice of those arrays (numpy), grid, P, working (H, W)) → the
  ``ImageResult.outputs`` dict. ``preprocess`` is the object-discovery input,
  ``segment_preprocess`` the one of the method's mask (segment mode). ``check``: (extractor)
  → None, raises SettingError for a backbone the method cannot use.
  """

  name: str
  preprocess: str
  segment_preprocess: str
  has_eigenvectors: bool
  device: Optional[Callable] = None
  host: Optional[Callable] = None
  check: Optional[Callable] = None


METHODS = {
  'dsm': Method('dsm', 'crop', 'crop', True),
  # Object discovery pads; the saliency masks of the paper's segmentation table resize.
  'tokencut': Method('tokencut', 'pad', 'resize', True, _tokencut_device, _tokencut_host),
  'lost': Method('lost', 'pad', 'pad', False, _lost_device, _lost_host),
  # FOUND's evaluation input (saliency and object discovery): the full image, padded.
  'found': Method('found', 'pad', 'pad', False, _found_device, _found_host, _found_check),
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
