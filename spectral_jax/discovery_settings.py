"""Settings of the object-discovery methods with their own knobs: MaskCut and ProMerge
(``--mode=discover``) and FOUND (``--config.method=found`` and its training targets).
``spectral_jax.settings`` gathers them with the others."""

from __future__ import annotations

import dataclasses

from spectral_jax.setting_checks import _check, _field, _is_int, _is_number


DISCOVER_SOLVERS = ('auto', 'jax', 'lapack', 'arpack')
DISCOVER_DTYPES = ('float32', 'float64')
MAX_OBJECTS = 255  # instance maps are uint8
DISCOVER_METHODS = ('maskcut', 'promerge')


@dataclasses.dataclass(frozen=True)
class DiscoverSettings:
  """--mode=discover: MaskCut (CutLER's pseudo-mask settings; maskcut_protocol.md)."""

  method: str = _field('maskcut', 'maskcut | promerge (ProMerge: dino_vitb8, config.promerge)')
  max_objects: int = _field(3, 'cuts per image (the official N)')
  fixed_size: int = _field(480, 'every image is resized to this square')
  tau: float = _field(0.15, 'edge threshold on the cosine of keys')
  eps: float = _field(1e-5, 'weight of a non-edge')
  crf: bool = _field(True, "MaskCut's dense CRF + IoU filter (the released pseudo-labels)")
  solver: str = _field('auto', 'auto | jax | lapack | arpack (auto: arpack on CPU)')
  dtype: str = _field('float64', 'eigen-solve precision (the official: float64)')
  workers: int = _field(0, 'CRF processes; 0 = auto (up to 8 when crf and many images)')

  def __post_init__(self):
    _check(
      self.method in DISCOVER_METHODS,
      'discover.method',
      self.method,
      f'use one of {DISCOVER_METHODS}',
    )
    _check(
      _is_int(self.max_objects) and 1 <= self.max_objects <= MAX_OBJECTS,
      'discover.max_objects',
      self.max_objects,
      f'use 1..{MAX_OBJECTS}',
    )
    _check(
      _is_int(self.fixed_size) and self.fixed_size >= 32,
      'discover.fixed_size',
      self.fixed_size,
      'use an int >= 32 pixels',
    )
    _check(
      _is_number(self.tau) and -1.0 <= self.tau < 1.0,
      'discover.tau',
      self.tau,
      'use a cosine threshold in [-1, 1)',
    )
    _check(
      self.solver in DISCOVER_SOLVERS,
      'discover.solver',
      self.solver,
      f'use one of {DISCOVER_SOLVERS}',
    )
    _check(
      self.dtype in DISCOVER_DTYPES,
      'discover.dtype',
      self.dtype,
      f'use one of {DISCOVER_DTYPES}',
    )
    _check(
      _is_number(self.eps) and 0 < self.eps < 1,
      'discover.eps',
      self.eps,
      'use a weight in (0, 1)',
    )
    _check(
      _is_int(self.workers) and self.workers >= 0,
      'discover.workers',
      self.workers,
      'use 0 (auto) or a number of processes',
    )


@dataclasses.dataclass(frozen=True)
class PromergeSettings:
  """The official knobs (names and defaults of the released parser / ``run_script.sh``).

  ``crf_iou_tau`` is a flag the official defines but does not read (its CRF filter uses a
  literal 0.5, the same value); here it is read. ``crf`` is the project's switch: False skips
  the CRF, hole filling and IoU filter (protocol §7; not an official mode).
  """

  fixed_size: int = _field(480, 'every image is resized (LANCZOS) to this square')
  stride: int = _field(4, 'prompt lattice step in patches (225 prompts at 480)')
  bipartition_tau: float = _field(0.2, "a prompt's mask: cosine of keys above this")
  vit_feat: str = _field('k', "features: the last block's keys (the only official choice)")
  cc_maskarea_tau: float = _field(0.5, 'component area fraction kept as a candidate')
  iou_filter_tau: float = _field(0.8, 'cascade filter: IoU above which a candidate is redundant')
  foreground_include_tau: float = _field(0.1, 'cascade filter: background overlap allowed')
  intersection_merge_tau: float = _field(0.5, 'merge: overlap fraction that merges two masks')
  merge_ioa_tau: float = _field(0.1, 'merge: intersection-over-area gate')
  dino_merge_tau: float = _field(0.1, 'merge: cosine of mean keys that merges two masks')
  crf_iou_tau: float = _field(0.5, 'CRF filter: IoU below which a refined mask is dropped')
  crf: bool = True

  def __post_init__(self):
    _check(
      self.vit_feat == 'k',
      'promerge.vit_feat',
      self.vit_feat,
      "the official runs the keys ('k') only",
    )
    _check(
      _is_int(self.stride) and self.stride >= 1,
      'promerge.stride',
      self.stride,
      'use a positive int',
    )
    _check(
      _is_int(self.fixed_size) and self.fixed_size >= 8,
      'promerge.fixed_size',
      self.fixed_size,
      'use an int >= 8 (one patch of ViT-B/8)',
    )
    for key in (
      'bipartition_tau',
      'cc_maskarea_tau',
      'iou_filter_tau',
      'foreground_include_tau',
      'intersection_merge_tau',
      'merge_ioa_tau',
      'dino_merge_tau',
      'crf_iou_tau',
    ):
      value = getattr(self, key)
      _check(_is_number(value), f'promerge.{key}', value, 'use a finite number')


FOUND_MODES = ('single', 'multi')
FOUND_TARGETS = ('found', 'dsm', 'tokencut', 'maskcut')


@dataclasses.dataclass(frozen=True)
class FoundSettings:
  """FOUND (CVPR 2023): a 1×1 head on DINO ViT-S/8 keys (--config.method=found; its training:
  configs/found.py --mode=train)."""

  decoder: str = _field(
    '', "decoder file: FOUND's decoder_weights.pt or our saved head; '' = the official file"
  )
  evaluation_mode: str = _field('multi', 'single (largest component) | multi (official default)')
  bkg_th: float = _field(0.3, 'background threshold of the training targets (official 0.3)')
  targets: str = _field(
    'found', 'training targets: found (its background discovery) | dsm | tokencut | maskcut'
  )

  def __post_init__(self):
    _check(
      self.evaluation_mode in FOUND_MODES,
      'found.evaluation_mode',
      self.evaluation_mode,
      f'use one of {FOUND_MODES}',
    )
    _check(
      _is_number(self.bkg_th) and -1.0 <= self.bkg_th <= 1.0,
      'found.bkg_th',
      self.bkg_th,
      'use a cosine threshold in [-1, 1]',
    )
    _check(
      self.targets in FOUND_TARGETS,
      'found.targets',
      self.targets,
      f'use one of {FOUND_TARGETS}',
    )
