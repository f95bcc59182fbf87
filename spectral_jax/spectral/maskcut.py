"""MaskCut: multi-object discovery by iterated normalized cuts (CutLER's pseudo-mask generator).

Written from ``shared/reference/maskcut_protocol.md`` (our own description of the official
numerics; CutLER's code is not used). The stages, each a public function:

* :func:`preprocess` - Pillow LANCZOS resize of the photo to a ``fixed_size`` square (aspect
  ratio not kept), snapped to the patch grid.
* :func:`discover` - up to ``max_objects`` cuts per image, batched over images of one grid: per
  iteration one jitted call builds the binary key graph of every image (keys of already found
  patches zeroed); ``(D − A) x = λ D x`` is solved in float64 by default, as the official, by
  ``spectral.eigen.ncut_pairs`` (see :func:`cut_graphs`); the bipartition, the side rule, the
  4-connected component of the seed and the overlap/size filter run on the host.
* :func:`to_image_masks` - kept patch masks → disjoint ``S × S`` masks → optional dense CRF
  (``spectral_jax.imaging.crf``) with its IoU filter → the original image size (Pillow bicubic of the
  0/255 mask, relative threshold).
* :func:`run` / :func:`run_iter` - all of the above from uint8 photos and a
  :class:`spectral_jax.pipeline.FeatureExtractor`; what ``--mode=discover`` needs.

Score of an object: ``1 − Ncut(M)``, with ``Ncut(M) = cut(M, M̄)/vol(M) + cut(M, M̄)/vol(M̄)``
the normalized-cut value of an iteration's component ``M`` against the rest, on the very binary
graph ``A`` that iteration cut (degrees include the ``eps`` non-edges). A cleanly separated
object has ``Ncut ≈ 0`` (score ≈ 1); a subset no better separated than a random one of the
complete graph has ``Ncut ≈ 1`` (score ≈ 0), so a score near or below 0 flags "no object
here". It is not calibrated and not used to drop anything (the official rules decide which
objects exist); an image whose cuts keep nothing, or whose masks vanish after subtraction, CRF
or resizing, gets zero objects.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from typing import Any, Iterable, Iterator, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
from scipy import ndimage

from spectral_jax.imaging import crf as dense_crf
from spectral_jax.imaging import resample
from spectral_jax.spectral import eigen

__all__ = [
  'FIXED_SIZE',
  'TAU',
  'EPS',
  'MAX_OBJECTS',
  'CRF_PARAMS',
  'MaskCutCRF',
  'MaskCutResult',
  'Discovery',
  'preprocess',
  'SOLVERS',
  'cut_graphs',
  'choose_side',
  'seed_component',
  'discover',
  'upsample_masks',
  'crf_refine',
  'resize_to_original',
  'to_image_masks',
  'run',
  'run_iter',
]

FIXED_SIZE = 480
TAU = 0.15
EPS = 1e-5  # weight of a non-edge: keeps the graph complete, hence connected
MAX_OBJECTS = 3
MIN_AREA_FRACTION = 0.01  # candidates of ≤ 1 % of the grid are dropped at iterations ≥ 2
MAX_OVERLAP = 0.5  # candidates with IoU > 0.5 against the previous kept mask are dropped


_OFFICIAL_CRF = dense_crf.MASKCUT_PARAMS


@dataclasses.dataclass(frozen=True)
class MaskCutCRF:
  """MaskCut's CRF (not DSM's): softmax unary of the 0/1 mask, 10 mean-field iterations; the
  defaults are ``crf.MASKCUT_PARAMS`` in pydensecrf's names, plus the IoU filter."""

  gaussian_sxy: float = _OFFICIAL_CRF.gamma
  gaussian_compat: float = _OFFICIAL_CRF.w2
  bilateral_sxy: float = _OFFICIAL_CRF.alpha
  bilateral_srgb: float = _OFFICIAL_CRF.beta
  bilateral_compat: float = _OFFICIAL_CRF.w1
  iterations: int = _OFFICIAL_CRF.iterations
  min_iou: float = 0.5  # the refined mask is emptied when IoU(mask, refined) < 0.5

  @property
  def pairwise(self) -> dense_crf.CRFParams:
    """The pairwise terms and iterations as :func:`spectral_jax.imaging.crf.infer` takes them."""
    return dense_crf.CRFParams(
      w1=self.bilateral_compat,
      alpha=self.bilateral_sxy,
      beta=self.bilateral_srgb,
      w2=self.gaussian_compat,
      gamma=self.gaussian_sxy,
      iterations=self.iterations,
    )


CRF_PARAMS = MaskCutCRF()


@dataclasses.dataclass
class MaskCutResult:
  """Everything MaskCut computed for one image; T = max_objects iterations, (h, w) the grid.

  ``patch_masks[t]`` is the kept mask of iteration t (all false when dropped); it is what
  :func:`to_image_masks` turns into pixels. The other arrays are per-iteration diagnostics.
  """

  grid_hw: Tuple[int, int]
  patch_masks: np.ndarray  # bool [T, h, w]: kept component (before the pixel subtraction)
  kept: np.ndarray  # bool [T]: the candidate survived the overlap/size filter
  scores: np.ndarray  # float64 [T]: 1 − Ncut of the candidate component (see module doc)
  eigenvalues: np.ndarray  # float [T, 2]: λ2, λ3 of (D − A) x = λ D x
  eigenvectors: np.ndarray  # float [T, h·w]: the 2nd eigenvector, D-normalised, solver's sign
  masked: np.ndarray  # bool [T, h, w]: patches whose keys were zeroed for this iteration
  edges: np.ndarray  # int [T]: entries of A equal to 1 (both triangles and the diagonal)
  bipartition: np.ndarray  # bool [T, h, w]: x > mean(x)
  corners: np.ndarray  # int [T]: grid corners inside the bipartition
  reversed: np.ndarray  # bool [T]: the object is the complement of the bipartition
  seed: np.ndarray  # int [T]: flat (row-major) seed index
  foreground: np.ndarray  # bool [T, h, w]: the chosen side
  component: np.ndarray  # bool [T, h, w]: 4-connected component of the seed (the candidate)


@dataclasses.dataclass
class Discovery:
  """Final objects of one image: non-empty masks at the original size, in discovery order."""

  masks: np.ndarray  # bool [K, H, W], K ≤ max_objects (0 when nothing was found)
  scores: np.ndarray  # float64 [K]
  iterations: np.ndarray  # int [K]: which cut iteration each object comes from
  result: MaskCutResult  # the per-iteration record
  image_s: np.ndarray  # uint8 [S, S, 3]: the resized image (ViT and CRF input)
  masks_s: np.ndarray  # bool [T, S, S]: disjoint cut masks at S × S (before CRF)


# ----------------------------------------------------------------------------------------------
# Preprocessing
# ----------------------------------------------------------------------------------------------


def preprocess(
  image: np.ndarray, fixed_size: int = FIXED_SIZE, patch_size: int = 16
) -> Tuple[np.ndarray, np.ndarray, Tuple[int, int]]:
  """uint8 [H, W, 3] → (image_s [S, S, 3], image_vit [G·P, G·P, 3], grid (G, G)).

  ``image_s`` is Pillow's LANCZOS resize to S × S (aspect ratio not kept; small images are
  enlarged), rounded to uint8 like Pillow does; the CRF sees it. ``image_vit`` is it snapped to
  the patch grid, G = round(S / P) (a second LANCZOS resize only when G·P ≠ S; for S = 480 and
  P ∈ {8, 16} it is ``image_s`` itself).
  """
  pil = Image.fromarray(np.asarray(image, np.uint8)).convert('RGB')
  pil = pil.resize((fixed_size, fixed_size), Image.Resampling.LANCZOS)
  g = int(round(fixed_size / patch_size))
  image_s = np.array(pil)
  if g * patch_size == fixed_size:
    return image_s, image_s, (g, g)
  snapped = pil.resize((g * patch_size, g * patch_size), Image.Resampling.LANCZOS)
  return image_s, np.array(snapped), (g, g)


# ----------------------------------------------------------------------------------------------
# The cut (device part)
# ----------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=('dtype', 'weights'))
def _graph_batch(keys, painted, tau, eps, dtype, weights):
  """keys f32 [B, N, D], painted bool [B, N] → edges bool [B, N, N] (+ A = where(edges, 1, eps))."""
  f = keys.astype(jnp.float32) * (1.0 - painted.astype(jnp.float32))[..., None]
  f = f / jnp.maximum(jnp.linalg.norm(f, axis=-1, keepdims=True), 1e-12)
  # The binary graph is the fragile step: float32 cosines at full precision, as the official.
  cos = jnp.einsum('bnd,bmd->bnm', f, f, precision=jax.lax.Precision.HIGHEST)
  edge = cos > tau
  if not weights:
    return edge
  return edge, jnp.where(edge, 1.0, eps).astype(dtype)


SOLVERS = eigen.NCUT_SOLVERS


def cut_graphs(
  keys: np.ndarray,
  painted: np.ndarray,
  tau: float = TAU,
  eps: float = EPS,
  dtype: str = 'float64',
  solver: str = 'auto',
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """One batched cut step: binary key graphs (built batched on the device) and the 2nd pair of
  ``(D − A) x = λ D x`` by :func:`spectral_jax.spectral.eigen.ncut_pairs` (the pairs of the
  official ``scipy.linalg.eigh(D − A, D)``, up to sign).

  Args:
    keys: float32 [B, N, D] patch keys (row-major grid order).
    painted: bool [B, N] patches whose keys are zeroed (found by earlier iterations).
    tau: cosine threshold (strict ``>``) for an edge of weight 1; other entries weigh ``eps``.
    dtype: 'float64' (the official solver's precision) or 'float32'; float32 cosines either way.
    solver: 'jax' (the graphs never leave the device) | 'lapack' | 'arpack' (per image on the
      host) | 'auto', see ``eigen.ncut_pairs``.

  Returns ``edges`` bool [B, N, N] (A = 1 there, eps elsewhere), ``eigenvalues`` [B, 2]
  (λ2, λ3) and ``x`` [B, N], the 2nd eigenvector, D-normalised, arbitrary sign.
  """
  if dtype not in ('float32', 'float64'):
    raise ValueError(f'dtype must be float32 or float64, got {dtype!r}')
  solver = eigen.resolve_ncut_solver(solver)
  keys, painted = np.asarray(keys, np.float32), np.asarray(painted, bool)
  on_device = solver == 'jax'
  with jax.enable_x64(dtype == 'float64'):
    out = _graph_batch(
      jnp.asarray(keys), jnp.asarray(painted), np.float32(tau), float(eps), dtype, on_device
    )
    if on_device:  # the weights stay on the device
      edge, graphs = out
    else:  # one dense host graph at a time
      edge = np.asarray(out)
      graphs = (np.where(e, 1.0, eps).astype(dtype) for e in edge)
    lam, x = eigen.ncut_pairs(graphs, dtype, solver)
  return np.asarray(edge), lam, x


# ----------------------------------------------------------------------------------------------
# Host rules
# ----------------------------------------------------------------------------------------------


def choose_side(x: np.ndarray, grid_hw: Tuple[int, int]) -> Tuple[np.ndarray, int, bool, int]:
  """Bipartition and object side of one eigenvector x [h·w] (sign-free rule, protocol §2.6–2.7).

  Returns (bipartition bool [h·w] = x > mean(x), corners, reversed, seed): the object is the
  complement when ≥ 3 grid corners are in the bipartition, else the side holding argmax |x|;
  the seed is the extreme patch of that side (argmax x, or argmin x when reversed).
  """
  h, w = grid_hw
  x = np.asarray(x, np.float64)
  bip = x > x.mean()  # the plain mean over all patches, zeroed ones included
  corners = int(bip[[0, w - 1, (h - 1) * w, h * w - 1]].sum())
  s0 = int(np.argmax(np.abs(x)))
  rev = corners >= 3 or not bip[s0]
  seed = int(np.argmin(x) if rev else np.argmax(x))
  return bip, corners, bool(rev), seed


def seed_component(fg: np.ndarray, seed: int) -> np.ndarray:
  """4-connected component (scipy's default structure) of bool [h, w] holding the flat seed."""
  labels, _ = ndimage.label(fg)
  lab = labels.reshape(-1)[seed]
  return labels == lab if lab > 0 else np.zeros_like(fg)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
  union = np.logical_or(a, b).sum()
  return float(np.logical_and(a, b).sum() / union) if union else 0.0


def _ncut_score(edge: np.ndarray, m: np.ndarray, eps: float) -> float:
  """1 − Ncut(M, M̄) on A = where(edge, 1, eps); M empty or everything → 0 (no separation)."""
  m = m.reshape(-1)
  if not m.any() or m.all():
    return 0.0
  a_in = np.where(edge[m], 1.0, eps)  # rows of M
  vol_m = a_in.sum()
  cut = a_in[:, ~m].sum()
  vol_rest = np.where(edge[~m], 1.0, eps).sum()
  return float(1.0 - cut / vol_m - cut / vol_rest)


def discover(
  keys: np.ndarray,
  grid_hw: Tuple[int, int],
  max_objects: int = MAX_OBJECTS,
  tau: float = TAU,
  eps: float = EPS,
  dtype: str = 'float64',
  solver: str = 'auto',
) -> List[MaskCutResult]:
  """MaskCut's iterated cuts (protocol §2–3) for a batch of images on one patch grid.

  Args:
    keys: float32 [B, N, D] last-block keys, N = h·w tokens in row-major order (CLS dropped).
    grid_hw: (h, w) patch grid.
    max_objects: number of iterations T (the official N, 3).
    tau: edge threshold on the cosine of keys (0.15 as in CutLER's README command).
    dtype, solver: precision and route of the eigen-solve, see :func:`cut_graphs`.

  Returns:
    one :class:`MaskCutResult` per image; ``patch_masks`` [T, h, w] holds the kept masks.
  """
  keys = np.asarray(keys, np.float32)
  h, w = grid_hw
  b, n = keys.shape[:2]
  if n != h * w:
    raise ValueError(f'keys have {n} tokens, grid {grid_hw} has {h * w}')
  t_max = int(max_objects)
  painted = np.zeros((b, n), bool)
  prev = np.zeros((b, n), bool)
  rec = {
    'patch_masks': np.zeros((b, t_max, n), bool),
    'kept': np.zeros((b, t_max), bool),
    'scores': np.zeros((b, t_max)),
    'eigenvalues': np.zeros((b, t_max, 2)),
    'eigenvectors': np.zeros((b, t_max, n)),
    'masked': np.zeros((b, t_max, n), bool),
    'edges': np.zeros((b, t_max), np.int64),
    'bipartition': np.zeros((b, t_max, n), bool),
    'corners': np.zeros((b, t_max), np.int64),
    'reversed': np.zeros((b, t_max), bool),
    'seed': np.zeros((b, t_max), np.int64),
    'foreground': np.zeros((b, t_max, n), bool),
    'component': np.zeros((b, t_max, n), bool),
  }
  for t in range(t_max):
    edge, lam, x = cut_graphs(keys, painted, tau, eps, dtype, solver)
    for i in range(b):
      bip, corners, rev, seed = choose_side(x[i], grid_hw)
      fg = ~bip if rev else bip
      comp = seed_component(fg.reshape(h, w), seed).reshape(-1)
      drop = t > 0 and (_iou(prev[i], comp) > MAX_OVERLAP or comp.sum() / n <= MIN_AREA_FRACTION)
      kept_mask = np.zeros(n, bool) if drop else comp
      rec['masked'][i, t] = painted[i]
      rec['edges'][i, t] = edge[i].sum()
      rec['eigenvalues'][i, t] = lam[i]
      rec['eigenvectors'][i, t] = x[i]
      rec['bipartition'][i, t] = bip
      rec['corners'][i, t] = corners
      rec['reversed'][i, t] = rev
      rec['seed'][i, t] = seed
      rec['foreground'][i, t] = fg
      rec['component'][i, t] = comp
      rec['kept'][i, t] = not drop
      rec['patch_masks'][i, t] = kept_mask
      rec['scores'][i, t] = _ncut_score(edge[i], comp, eps)
      painted[i] |= kept_mask
      prev[i] = kept_mask
  grid_fields = ('patch_masks', 'masked', 'bipartition', 'foreground', 'component')
  out = []
  for i in range(b):
    fields = {k: (v[i].reshape(t_max, h, w) if k in grid_fields else v[i]) for k, v in rec.items()}
    out.append(MaskCutResult(grid_hw=(h, w), **fields))
  return out


# ----------------------------------------------------------------------------------------------
# Back to pixels
# ----------------------------------------------------------------------------------------------


def upsample_masks(patch_masks: np.ndarray, size_hw: Tuple[int, int]) -> np.ndarray:
  """bool [T, h, w] → disjoint bool [T, S_h, S_w]: nearest upsampling, earlier masks win.

  Nearest follows torch's rule ``src = floor(dst · h / S_h)`` in integers
  (``imaging.resample.floor_index``: a P × P block per patch when S is a multiple of the grid);
  each mask then loses the union of the earlier ones.
  """
  pm = np.asarray(patch_masks, bool)
  _, h, w = pm.shape
  sh, sw = size_hw
  up = pm[:, resample.floor_index(sh, h)][:, :, resample.floor_index(sw, w)]
  out = np.zeros_like(up)
  seen = np.zeros(up.shape[1:], bool)
  for t in range(up.shape[0]):
    out[t] = up[t] & ~seen
    seen |= up[t]
  return out


def crf_refine(
  image_s: np.ndarray, mask_s: np.ndarray, params: MaskCutCRF = CRF_PARAMS
) -> Tuple[np.ndarray, np.ndarray, np.ndarray, float]:
  """MaskCut's CRF step on one S × S mask (protocol §4 steps 1–5), through ``spectral_jax.imaging.crf``.

  Args:
    image_s: uint8 [S, S, 3], the resized image (:func:`preprocess`).
    mask_s: bool [S, S], a mask of :func:`upsample_masks`.

  Returns:
    (crf_map, filled, refined, iou): the CRF argmax bool [S, S]; it with holes filled
    (4-connected background); ``refined`` = filled, or all false when IoU(mask, filled) < 0.5;
    the IoU (NaN when both are empty).
  """
  q = dense_crf.infer(image_s, dense_crf.unary_softmax(mask_s), params.pairwise)
  crf_map = q.argmax(0).reshape(np.shape(mask_s)).astype(bool)
  filled = ndimage.binary_fill_holes(crf_map)
  union = np.logical_or(mask_s, filled).sum()
  iou = float(np.logical_and(mask_s, filled).sum() / union) if union else float('nan')
  refined = np.zeros_like(filled) if iou < params.min_iou else filled  # NaN is not < 0.5
  return crf_map, filled, refined, iou


def resize_to_original(mask_s: np.ndarray, image_hw: Tuple[int, int]) -> np.ndarray:
  """bool [S, S] → bool [H, W]: Pillow bicubic of the 0/255 mask, kept where > max / 2.

  The threshold is relative to the resized mask's own maximum, so a tiny mask whose resized
  peak stays below 255 survives; an empty mask stays empty.
  """
  hh, ww = image_hw
  pil = Image.fromarray(np.asarray(mask_s, np.uint8) * 255, mode='L')
  r = np.asarray(pil.resize((ww, hh), Image.Resampling.BICUBIC))
  peak = int(r.max())
  return r > peak / 2 if peak > 0 else np.zeros((hh, ww), bool)


def to_image_masks(
  patch_masks: np.ndarray,
  image_hw: Tuple[int, int],
  size_s: Tuple[int, int] = (FIXED_SIZE, FIXED_SIZE),
  image_s: Optional[np.ndarray] = None,
  crf: bool = False,
  crf_params: MaskCutCRF = CRF_PARAMS,
) -> Tuple[np.ndarray, np.ndarray]:
  """Kept patch masks [T, h, w] → (final bool [T, H, W], cut masks bool [T, S, S]).

  ``crf=True`` (CutLER's pseudo-label path) refines each S × S mask with :func:`crf_refine` on
  ``image_s`` (uint8 [S, S, 3], required) before the resize; dropped, emptied and vanished
  masks are all-false planes (callers skip them: see :func:`run`).
  """
  masks_s = upsample_masks(patch_masks, size_s)
  if crf and image_s is None:
    raise ValueError('crf=True needs image_s, the resized image')
  final = np.zeros((masks_s.shape[0],) + tuple(image_hw), bool)
  for t, m in enumerate(masks_s):
    if crf:
      m = crf_refine(image_s, m, crf_params)[2]
    final[t] = resize_to_original(m, image_hw)
  return final, masks_s


# ----------------------------------------------------------------------------------------------
# End to end
# ----------------------------------------------------------------------------------------------


def run_iter(
  extractor: Any,
  images: Iterable[np.ndarray],
  max_objects: int = MAX_OBJECTS,
  tau: float = TAU,
  fixed_size: int = FIXED_SIZE,
  crf: bool = False,
  batch_size: int = 8,
  dtype: str = 'float64',
  solver: str = 'auto',
) -> Iterator[Discovery]:
  """Photos → objects, streamed: yields one :class:`Discovery` per image, in order.

  Args:
    extractor: a ``pipeline.FeatureExtractor`` (keys of the last block: ``feature_block=-1``).
    images: uint8 [H_i, W_i, 3] photos (any sizes: all are resized to ``fixed_size``²).
    max_objects, tau, fixed_size: MaskCut's N, tau and resize (defaults: CutLER's 3, 0.15, 480).
    crf: CutLER's pseudo-label path (CRF + IoU filter) when True.
    batch_size: images per ViT forward and per batched cut.
    dtype, solver: the eigen-solve, see :func:`cut_graphs`.
  """
  p = extractor.arch.patch_size
  chunk = []
  for image in itertools.chain(images, [None]):
    if image is not None:
      chunk.append(np.asarray(image))
    if not chunk or (image is not None and len(chunk) < batch_size):
      continue
    prepped = [preprocess(im, fixed_size, p) for im in chunk]
    grid = prepped[0][2]
    n = grid[0] * grid[1]
    keys = np.asarray(extractor([pr[1] for pr in prepped], n)['k'])[: len(chunk), :n]
    results = discover(keys, grid, max_objects, tau, dtype=dtype, solver=solver)
    for im, (image_s, _, _), res in zip(chunk, prepped, results):
      final, masks_s = to_image_masks(
        res.patch_masks, im.shape[:2], image_s.shape[:2], image_s, crf
      )
      keep = np.flatnonzero(final.reshape(len(final), -1).any(1))
      yield Discovery(
        masks=final[keep],
        scores=res.scores[keep],
        iterations=keep,
        result=res,
        image_s=image_s,
        masks_s=masks_s,
      )
    chunk = []


def run(extractor: Any, images: Sequence[np.ndarray], **kwargs) -> List[Discovery]:
  """:func:`run_iter` as a list: one :class:`Discovery` per image, in order.

  Each holds the non-empty final masks [K, H, W] with their scores and iteration indices
  (K = 0 when MaskCut finds nothing), plus the per-iteration record. For large datasets use
  :func:`run_iter` (a Discovery keeps its S × S image and masks).
  """
  return list(run_iter(extractor, images, **kwargs))
