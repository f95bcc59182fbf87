"""ProMerge (Prompt and Merge, ECCV 2024): training-free multi-object discovery.

Written from ``shared/reference/promerge_protocol.md`` (our own description of the official
numerics of facebookresearch/ProMerge; its code is not used). The stages, each a public function:

* :func:`seed_positions` / :func:`prompt_masks` - one prompt per patch on a stride-4 lattice:
  its cosine affinity to every patch thresholded at ``bipartition_tau``; one jitted batched
  matmul for all prompts of all images (protocol §2.1).
* :func:`border_sides` - the side test: border lines more than half set; 2 or more make a
  background prompt (§2.2).
* :func:`prompt_candidates` - 4-connected components of the foreground prompts, all labelled in
  one scipy call, kept largest first while ≥ ``cc_maskarea_tau`` × the seed's own (§2.3).
* :func:`background_mask` - majority vote of the background prompts (§3).
* :func:`cascade_filter` - smallest-first foreground filter against the background (§4).
* :func:`merge_candidates` - largest-first merging by overlap or mean-key similarity (§5).
* :func:`promerge` - all of the above on the keys of one image → :class:`PromergeResult`.
* :func:`to_image_masks` - clusters → 8× nearest upsampling → MaskCut's dense CRF, hole filling
  and IoU filter (``crf=True``, the official path; §6) or nothing of that (``crf=False``, §7) →
  the original image size (Pillow bicubic of the 0/255 mask, relative threshold).
* :func:`run` / :func:`run_iter` - from uint8 photos and a
  :class:`spectral_jax.pipeline.FeatureExtractor`, with :mod:`maskcut`'s calling convention.

Reused from :mod:`spectral_jax.spectral.maskcut` (the protocol says ProMerge's resize, CRF and
final resize are MaskCut's): :func:`maskcut.preprocess` (LANCZOS to 480²),
:func:`maskcut.crf_refine` (the same CRF, hole filling and IoU filter; ProMerge's
``crf_iou_tau`` is MaskCut's ``min_iou``), :func:`maskcut.upsample_masks` (nearest; called per
cluster because ProMerge's clusters may overlap and must not be made disjoint) and
:func:`maskcut.resize_to_original`.

Score of an object (the official writes a constant 1.0): ``within − across`` on the cluster's
patches ``c`` with normalised keys ``g`` (the §2 normalisation) and the background mean ``b̄``
(§3): ``within = Σ_{i≠j ∈ c} g_i·g_j / |c|²``, the mean pairwise cosine inside the object with
each patch's self-similarity counted as 0 (so a one-patch object has ``within = 0`` and large
coherent objects approach their mean cosine), and ``across = ḡ_c · b̄``, the mean cosine between
the object's patches and the background's. It lies in [−2, 2]; a coherent object unlike the
background scores high, a fragment that looks like the background low. It is not calibrated and
drops nothing (the official rules decide which objects exist).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from spectral_jax.settings import PromergeSettings


__all__ = [
  'FEATURE_DIM',
  'PATCH_SIZE',
  'Candidates',
  'CascadeResult',
  'MergeResult',
  'PromergeResult',
  'PromergeSettings',
  'background_mask',
  'border_sides',
  'cascade_filter',
  'merge_candidates',
  'object_scores',
  'promerge',
  'prompt_candidates',
  'prompt_masks',
  'seed_positions',
]

PATCH_SIZE = 8  # the official hard-codes ViT-B/8 (patch 8, keys of width 768)
FEATURE_DIM = 768
NORM_EPS = 1e-5  # ‖k‖ + 1e-5 in the key normalisation
MIN_BACKGROUND_FRACTION = 0.1  # an image whose background vote holds < 10 % gets no masks
MIN_BORDER_SIDES = 2  # a prompt map with ≥ 2 border lines more than half set is background


@dataclasses.dataclass
class Candidates:
  """The prompts of one image and the candidates split from them (protocol §2); S prompts."""

  seeds: np.ndarray  # int [S, 2]: (row, col) of each prompt, row outer
  affinity: np.ndarray  # float32 [S, h, w]: cosine of every patch with the prompt's patch
  masks: np.ndarray  # bool [S, h, w]: affinity > bipartition_tau
  sides: np.ndarray  # int [S]: border lines more than half set
  background: np.ndarray  # bool [S]: a background prompt (sides ≥ 2)
  components: np.ndarray  # int [S]: 4-connected components (0 for background prompts)
  on_own_component: np.ndarray  # bool [S]: the prompt's patch lies in its own map
  cand_masks: np.ndarray  # bool [M, h, w]: candidates, prompt order then largest first
  cand_seed: np.ndarray  # int [M]: the prompt each candidate comes from
  cand_area: np.ndarray  # int [M]: patches per candidate


@dataclasses.dataclass
class CascadeResult:
  """The foreground filter (protocol §4), aligned with ``order`` (area ascending, stable)."""

  order: np.ndarray  # int [M]: candidate indices in the filter's order
  new_bg_ratio: np.ndarray  # float64 [M]: |new ∩ background| / |new| (NaN: nothing new)
  fg_bg_sim: np.ndarray  # float64 [M]: (mean normalised key of the candidate) · b̄
  kept: np.ndarray  # bool [M]: accepted


@dataclasses.dataclass
class MergeResult:
  """The merge (protocol §5) of the F accepted candidates into C clusters."""

  masks: np.ndarray  # bool [C, h, w]: clusters by size descending, then first patch
  joined_by_ioa: np.ndarray  # int [F]: clusters each candidate joined by IoA > intersection tau
  joined_by_dino: np.ndarray  # int [F]: … by IoA > merge_ioa_tau and similarity ≥ dino tau only


@dataclasses.dataclass
class PromergeResult:
  """Everything ProMerge computed for one image on an (h, w) patch grid.

  ``skipped`` names why the image has no clusters ('' when it has some, or when the filter or
  the merge left nothing): 'no candidate', 'no background prompt', 'small background'; the
  stages after it are then None.
  """

  grid_hw: tuple[int, int]
  candidates: Candidates
  skipped: str = ''
  bg_vote: np.ndarray | None = None  # float64 [h, w]: share of background prompts set
  background: np.ndarray | None = None  # bool [h, w]: vote > 1/2
  bg_mean: np.ndarray | None = None  # float64 [D]: mean normalised key over the background
  cascade: CascadeResult | None = None
  filtered: np.ndarray | None = None  # bool [F, h, w]: accepted, area descending (stable)
  merge: MergeResult | None = None
  scores: np.ndarray | None = None  # float64 [C]: see the module doc

  @property
  def clusters(self) -> np.ndarray:
    """bool [C, h, w] (C = 0 when the image was skipped or nothing survived)."""
    if self.merge is None:
      return np.zeros((0,) + tuple(self.grid_hw), bool)
    return self.merge.masks


# ----------------------------------------------------------------------------------------------
# Prompts (device part)
# ----------------------------------------------------------------------------------------------


def seed_positions(grid_hw: tuple[int, int], stride: int = 4) -> np.ndarray:
  """int [S, 2]: (row, col) for rows 0, stride, … and cols 0, stride, …, row outer."""
  h, w = grid_hw
  rr, cc = np.meshgrid(np.arange(0, h, stride), np.arange(0, w, stride), indexing='ij')
  return np.stack([rr.reshape(-1), cc.reshape(-1)], 1)


@functools.partial(jax.jit, static_argnames=('dtype',))
def _affinity(keys, seeds, tau, dtype):
  """keys f32 [B, N, D], seeds int [S] (flat) → (G f32 [B, N, D], cos f32, cos > tau [B, S, N]).

  G is float32 (the official's); the dot products of its rows run in ``dtype``: float64 makes
  ours the exact cosine of the float32 G, so only the official's own float32 rounding (~3e-7)
  can separate us at the threshold, where XLA's float32 dot on a CPU adds ~1.5e-6.
  """
  g = keys / (jnp.linalg.norm(keys, axis=-1, keepdims=True) + jnp.float32(NORM_EPS))
  gd = g.astype(dtype)
  aff = jnp.einsum('bsd,bnd->bsn', gd[:, seeds], gd, precision=jax.lax.Precision.HIGHEST)
  return g, aff.astype(jnp.float32), aff > tau


def prompt_masks(
  keys: np.ndarray,
  grid_hw: tuple[int, int],
  seeds: np.ndarray,
  tau: float = 0.2,
  dtype: str = 'float64',
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Affinity maps of all prompts of a batch of images in one jitted call (protocol §2.1).

  Args:
    keys: float32 [B, N, D] (or [N, D]) last-block keys, row-major tokens, CLS dropped.
    grid_hw: (h, w), h·w = N.
    seeds: int [S, 2] (row, col) of the prompts (:func:`seed_positions`).
    tau: ``bipartition_tau``; a patch is set when its cosine is > tau (strict), tau rounded to
      float32 first as the official's comparison of a float32 tensor with a Python float does.
    dtype: precision of the dot products ('float64' default, or 'float32').

  Returns:
    (G float32 [B, N, D] the normalised keys, affinity float32 [B, S, h, w], masks bool
    [B, S, h, w]); without the batch axis when ``keys`` had none.
  """
  if dtype not in ('float32', 'float64'):
    raise ValueError(f'dtype must be float32 or float64, got {dtype!r}')
  keys = np.asarray(keys, np.float32)
  single = keys.ndim == 2
  keys = keys[None] if single else keys
  h, w = grid_hw
  if keys.shape[1] != h * w:
    raise ValueError(f'keys have {keys.shape[1]} tokens, grid {grid_hw} has {h * w}')
  flat = np.asarray(seeds)[:, 0] * w + np.asarray(seeds)[:, 1]
  with jax.enable_x64(dtype == 'float64'):
    out = _affinity(
        jnp.asarray(keys), jnp.asarray(flat, jnp.int32),
        np.dtype(dtype).type(np.float32(tau)), dtype,
    )  # fmt: skip
    g, aff, masks = (np.asarray(v) for v in out)
  shape = (len(keys), len(flat), h, w)
  aff, masks = aff.reshape(shape), masks.reshape(shape)
  return (g[0], aff[0], masks[0]) if single else (g, aff, masks)


# ----------------------------------------------------------------------------------------------
# Host rules
# ----------------------------------------------------------------------------------------------


def border_sides(masks: np.ndarray) -> np.ndarray:
  """int [...]: border lines (top, right, bottom, left) of bool [..., h, w] more than half set.

  The official rounds each line's fraction half to even, so exactly half does not count; with
  integer counts that is ``2 · ones > length``.
  """
  m = np.asarray(masks, bool)
  h, w = m.shape[-2:]
  lines = [(m[..., 0, :], w), (m[..., :, -1], h), (m[..., -1, :], w), (m[..., :, 0], h)]
  return sum((2 * line.sum(-1) > n).astype(np.int64) for line, n in lines)


# 4-connectivity inside each map, none across maps: one ndimage.label call for a stack.
_STACK_STRUCTURE = np.zeros((3, 3, 3), bool)
_STACK_STRUCTURE[1] = ndimage.generate_binary_structure(2, 1)


def prompt_candidates(
  masks: np.ndarray, seeds: np.ndarray, background: np.ndarray, cc_maskarea_tau: float = 0.5
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Split the foreground prompts' maps into candidates (protocol §2.3).

  Per non-background prompt: 4-connected components, the seed's own size ``s0`` (the
  highest-numbered component's when the seed is not set, as the official), components by size
  descending (stable: raster order of their first patch), taken while size ≥ tau · s0.

  Args:
    masks: bool [S, h, w] prompt maps; seeds int [S, 2]; background bool [S].

  Returns:
    (cand_masks bool [M, h, w], cand_seed int [M], cand_area int [M], components int [S],
    on_own_component bool [S]), candidates in prompt order, then largest first.
  """
  masks = np.asarray(masks, bool)
  s, h, w = masks.shape
  fg = masks & ~np.asarray(background, bool)[:, None, None]
  labels, total = ndimage.label(fg, structure=_STACK_STRUCTURE)
  sizes = np.bincount(labels.reshape(-1), minlength=total + 1)
  # Labels are global and raster ordered, so each map's labels are one consecutive run.
  per_map = labels.reshape(s, -1)
  first = np.where(fg.any((1, 2)), np.where(per_map > 0, per_map, total + 1).min(1), 0)
  last = per_map.max(1)
  components = np.where(fg.any((1, 2)), last - first + 1, 0)
  own = labels[np.arange(s), seeds[:, 0], seeds[:, 1]]
  cand, cand_seed = [], []
  for i in np.flatnonzero(components):
    lab = np.arange(first[i], last[i] + 1)
    size = sizes[lab]
    s0 = sizes[own[i]] if own[i] > 0 else sizes[last[i]]
    order = np.argsort(-size, kind='stable')
    small = size[order] < cc_maskarea_tau * s0
    stop = int(np.argmax(small)) if small.any() else len(order)
    for j in order[:stop]:
      cand.append(labels[i] == lab[j])
      cand_seed.append(i)
  cand_masks = np.array(cand, bool).reshape(-1, h, w)
  area = cand_masks.reshape(len(cand_masks), -1).sum(1).astype(np.int64)
  return cand_masks, np.array(cand_seed, np.int64), area, components, own > 0


def background_mask(masks: np.ndarray, background: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(vote float64 [h, w], background bool [h, w]): share of background prompts set, > 1/2.

  Strict majority with integer counts (an exact half-vote is not background).
  """
  bg = np.asarray(masks, bool)[np.asarray(background, bool)]
  count = bg.sum(0)
  n = len(bg)
  vote = count / n if n else np.zeros(count.shape)
  return vote, 2 * count > n


def cascade_filter(
  cand_masks: np.ndarray,
  background: np.ndarray,
  g: np.ndarray,
  bg_mean: np.ndarray,
  iou_filter_tau: float = 0.8,
  foreground_include_tau: float = 0.1,
) -> CascadeResult:
  """Smallest-first foreground filter (protocol §4).

  A running union U of the accepted candidates; candidate m is accepted iff
  ``|new ∩ background| / |new| < iou_filter_tau`` with ``new = m \\ U`` (nothing new rejects)
  and ``(mean of g over m) · bg_mean < foreground_include_tau``.

  Args:
    cand_masks: bool [M, h, w]; background bool [h, w]; g float [N, D] normalised keys;
    bg_mean: float [D], the mean of g over the background.
  """
  m = np.asarray(cand_masks, bool)
  m = m.reshape(len(m), int(np.prod(m.shape[1:])))
  area = m.sum(1)
  order = np.argsort(area, kind='stable')
  # (mean of g over m) · b̄ = m · (g b̄) / |m|: one mat-vec for all candidates (float64).
  proj = np.asarray(g, np.float64) @ np.asarray(bg_mean, np.float64)
  sim = (m.astype(np.float64) @ proj) / np.maximum(area, 1)
  bg = np.asarray(background, bool).reshape(-1)
  union = np.zeros(m.shape[1], bool)
  ratio = np.full(len(m), np.nan)
  kept = np.zeros(len(m), bool)
  for t, i in enumerate(order):
    new = m[i] & ~union
    n_new = int(new.sum())
    if n_new:
      ratio[t] = int((new & bg).sum()) / n_new  # exact for the strict test (4/5 == 0.8)
    kept[t] = n_new > 0 and ratio[t] < iou_filter_tau and sim[i] < foreground_include_tau
    if kept[t]:
      union |= m[i]
  return CascadeResult(order=order, new_bg_ratio=ratio, fg_bg_sim=sim[order], kept=kept)


def _first_patch(flat: np.ndarray) -> np.ndarray:
  return np.where(flat.any(1), flat.argmax(1), flat.shape[1])


def merge_candidates(
  filtered: np.ndarray,
  g: np.ndarray,
  intersection_merge_tau: float = 0.5,
  merge_ioa_tau: float = 0.1,
  dino_merge_tau: float = 0.1,
) -> MergeResult:
  """Largest-first merging of the accepted candidates into clusters (protocol §5).

  Candidate m matches cluster c when ``ioa = |c ∩ m| / |m| > intersection_merge_tau``, or
  ``ioa > merge_ioa_tau`` and ``mean(g over m) · mean(g over c) ≥ dino_merge_tau``; m and all
  its matches become one cluster, else m starts one. Overlaps come from one boolean mat-vec per
  candidate; mean keys only where the similarity decides.

  Args:
    filtered: bool [F, h, w], the accepted candidates in merge order (area descending).
    g: float [N, D] normalised keys.
  """
  f = np.asarray(filtered, bool)
  shape = f.shape[1:]
  flat = f.reshape(len(f), int(np.prod(shape)))
  g64 = np.asarray(g, np.float64)
  mean = lambda x: (x.astype(np.float64) @ g64) / x.sum()  # pylint: disable=C3001
  clusters = np.zeros((0, flat.shape[1]), bool)
  means: list[np.ndarray | None] = []
  by_ioa = np.zeros(len(f), np.int64)
  by_dino = np.zeros(len(f), np.int64)
  for t, m in enumerate(flat):
    size = int(m.sum())
    inter = clusters.astype(np.int64) @ m.astype(np.int64) if len(clusters) else np.zeros(0, int)
    ioa = inter / size
    overlap = ioa > intersection_merge_tau
    maybe = np.flatnonzero(~overlap & (ioa > merge_ioa_tau))
    similar = np.zeros(len(clusters), bool)
    if len(maybe):
      m_mean = mean(m)
      for c in maybe:
        if means[c] is None:
          means[c] = mean(clusters[c])
        similar[c] = float(m_mean @ means[c]) >= dino_merge_tau
    matched = overlap | similar
    by_ioa[t], by_dino[t] = int(overlap.sum()), int(similar.sum())
    new = m | clusters[matched].any(0)
    clusters = np.concatenate([clusters[~matched], new[None]])
    means = [mu for mu, hit in zip(means, matched) if not hit] + [None]
  masks = clusters.reshape((-1,) + shape)
  area = clusters.sum(1)
  order = np.lexsort((_first_patch(clusters), -area))
  return MergeResult(masks=masks[order], joined_by_ioa=by_ioa, joined_by_dino=by_dino)


def object_scores(clusters: np.ndarray, g: np.ndarray, bg_mean: np.ndarray) -> np.ndarray:
  """float64 [C]: ``within − across`` per cluster (module doc).

  ``within = (‖Σ_c g‖² − Σ_c ‖g‖²) / |c|²``, ``across = mean(g over c) · bg_mean``.
  """
  if not len(clusters):
    return np.zeros(0)
  c = np.asarray(clusters, bool).reshape(len(clusters), -1).astype(np.float64)
  g64 = np.asarray(g, np.float64)
  n = c.sum(1)
  total = c @ g64
  within = ((total**2).sum(1) - c @ (g64**2).sum(1)) / n**2
  across = (total / n[:, None]) @ np.asarray(bg_mean, np.float64)
  return within - across


def promerge(
  keys: np.ndarray,
  grid_hw: tuple[int, int],
  settings: PromergeSettings = PromergeSettings(),
  prompts: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> PromergeResult:
  """ProMerge's patch-level stages (protocol §2–5) on the keys of one image.

  Args:
    keys: float32 [N, D] last-block keys (row-major grid, CLS dropped).
    grid_hw: (h, w) patch grid, h·w = N.
    settings: the official knobs.
    prompts: (G, affinity, masks) of :func:`prompt_masks` for this image when already computed
      (batched); computed here otherwise.
  """
  h, w = grid_hw
  seeds = seed_positions(grid_hw, settings.stride)
  if prompts is None:
    prompts = prompt_masks(keys, grid_hw, seeds, settings.bipartition_tau)
  g, affinity, masks = prompts
  sides = border_sides(masks)
  is_bg = sides >= MIN_BORDER_SIDES
  cand_masks, cand_seed, cand_area, comps, on_own = prompt_candidates(
    masks, seeds, is_bg, settings.cc_maskarea_tau
  )
  cands = Candidates(
      seeds=seeds, affinity=affinity, masks=masks, sides=sides, background=is_bg,
      components=comps, on_own_component=on_own, cand_masks=cand_masks, cand_seed=cand_seed,
      cand_area=cand_area,
  )  # fmt: skip
  result = PromergeResult(grid_hw=(h, w), candidates=cands)
  if not len(cand_masks):
    result.skipped = 'no candidate'
    return result
  if not is_bg.any():
    result.skipped = 'no background prompt'
    return result
  vote, background = background_mask(masks, is_bg)
  result.bg_vote, result.background = vote, background
  if background.sum() / (h * w) < MIN_BACKGROUND_FRACTION:
    result.skipped = 'small background'
    return result
  g64 = np.asarray(g, np.float64)
  result.bg_mean = g64[background.reshape(-1)].mean(0)
  cascade = cascade_filter(
      cand_masks, background, g64, result.bg_mean, settings.iou_filter_tau,
      settings.foreground_include_tau,
  )  # fmt: skip
  result.cascade = cascade
  accepted = cascade.order[cascade.kept]  # smallest first; re-sorted largest first (stable)
  accepted = accepted[np.argsort(-cand_area[accepted], kind='stable')]
  result.filtered = cand_masks[accepted]
  result.merge = merge_candidates(
      result.filtered, g64, settings.intersection_merge_tau, settings.merge_ioa_tau,
      settings.dino_merge_tau,
  )  # fmt: skip
  result.scores = object_scores(result.merge.masks, g64, result.bg_mean)
  return result
