"""Typed settings, one frozen dataclass per concern: the one source of every default.

``configs/base.py`` builds the CLI's ConfigDict from these classes (``default_config``); each
CLI runner converts its ConfigDict once (``from_config``); the Python API maps its keyword
arguments onto the same classes; the HTTP server its query parameters. Below the front-ends
only these objects travel. Each class checks its own values once, in ``__post_init__``, and
raises ``errors.SettingError`` carrying the setting's dotted key (``spectral.K``), which each
front-end spells in its own terms.

A field's ``help`` metadata is its one line of documentation (``--config_help`` lists them).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from spectral_jax.errors import SettingError


def _field(default: Any, help_text: str) -> Any:
  return dataclasses.field(default=default, metadata={'help': help_text})


def _check(ok: bool, key: str, value: Any, reason: str) -> None:
  if not ok:
    raise SettingError(key, value, reason)


def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# model.precision → the ViT's matmul precision: 'float32' (= 'highest', true float32, the
# default) keeps parity; 'bfloat16' runs the ViT matmuls on bf16 operands with float32
# accumulation; 'high' / 'default' let accelerators use TF32/bf16 passes.
PRECISIONS = {
  'float32': 'highest',
  'bfloat16': 'bfloat16',
  'highest': 'highest',
  'high': 'high',
  'default': 'default',
}
SOLVERS = ('auto', 'dense', 'lanczos')
WHICH_MATRICES = ('laplacian', 'affinity')
REFINES = ('none', 'crf', 'bilateral')
MAX_BUCKET_TOKENS = 4096
# Fewest patches an image needs: eigenvector 1 (the Fiedler vector) of K' >= 2 needs 3 nodes.
MIN_TOKENS = 3


@dataclasses.dataclass(frozen=True)
class ModelSettings:
  """Which backbone, which weights, and how its matmuls run."""

  name: str = _field('dino_vits16', 'backbone: every name of spectral_jax/models/backbones.py')
  checkpoint: str = _field('', "local .pth/.safetensors file or URL; '' = official weights")
  cache_dir: str = _field('', "weights cache; '' = $SPECTRAL_JAX_CACHE or ~/.cache/spectral_jax")
  feature_block: int = _field(-1, 'block whose keys are the features (-1 = the last)')
  precision: str = _field(
    'highest', "ViT matmuls: 'highest' (= 'float32', parity) | 'bfloat16' | 'high' | 'default'"
  )

  def __post_init__(self):
    _check(
      self.precision in PRECISIONS,
      'model.precision',
      self.precision,
      f'use one of {sorted(PRECISIONS)}',
    )
    _check(_is_int(self.feature_block), 'model.feature_block', self.feature_block, 'use an int')


@dataclasses.dataclass(frozen=True)
class ImageLimits:
  """What one image may be: larger files are refused, larger grids run downscaled."""

  max_pixels: int = _field(8192 * 8192, 'larger files are refused before decoding')
  max_tokens: int = _field(
    6400, 'images with more patches run downscaled (aspect kept; outputs in original pixels)'
  )
  resize_large: bool = _field(True, 'False: skip images above max_tokens instead')
  min_tokens: int = _field(MIN_TOKENS, 'fewest patches an image needs')

  def __post_init__(self):
    _check(
      _is_int(self.max_pixels) and self.max_pixels > 0,
      'data.max_pixels',
      self.max_pixels,
      'must be > 0',
    )
    _check(
      _is_int(self.max_tokens) and self.max_tokens >= 16,
      'data.max_tokens',
      self.max_tokens,
      'must be >= 16 patches',
    )


@dataclasses.dataclass(frozen=True)
class BatchSettings:
  """How images are grouped into forwards."""

  batch_size: int = _field(8, 'images per forward (same size bucket)')
  batch_tokens: int = _field(32768, 'and at most this many tokens per forward')
  bucket_tokens: int = _field(-1, 'pad token counts up to multiples of this; -1 = by backend')

  def __post_init__(self):
    _check(
      _is_int(self.batch_size) and self.batch_size >= 1,
      'data.batch_size',
      self.batch_size,
      'must be >= 1',
    )
    _check(
      _is_int(self.bucket_tokens) and -1 <= self.bucket_tokens <= MAX_BUCKET_TOKENS,
      'data.bucket_tokens',
      self.bucket_tokens,
      f'use -1 (by backend), 0 (exact token counts) or a step up to {MAX_BUCKET_TOKENS}',
    )
    _check(
      _is_int(self.batch_tokens) and self.batch_tokens >= 16,
      'data.batch_tokens',
      self.batch_tokens,
      'must be >= 16',
    )


@dataclasses.dataclass(frozen=True)
class SpectralSettings:
  """The patch graph and its eigenvectors (Deep Spectral Methods)."""

  K: int = _field(5, 'eigenvectors per image, 2..64 (eigenvector 1 is the Fiedler vector)')  # pylint: disable=invalid-name
  color_lambda: float = _field(0.0, 'weight of the KNN colour affinity (0 = off; paper: 10)')
  which_matrix: str = _field('laplacian', 'laplacian | affinity')
  solver: str = _field('auto', 'auto | dense | lanczos (block Krylov)')

  def __post_init__(self):
    _check(
      _is_int(self.K) and 2 <= self.K <= 64,
      'spectral.K',
      self.K,
      'use 2..64 (eigenvector 1 is the Fiedler vector)',
    )
    _check(
      _is_number(self.color_lambda) and self.color_lambda >= 0,
      'spectral.color_lambda',
      self.color_lambda,
      'must be a finite number >= 0',
    )
    _check(
      self.which_matrix in WHICH_MATRICES,
      'spectral.which_matrix',
      self.which_matrix,
      'use laplacian or affinity',
    )
    _check(self.solver in SOLVERS, 'spectral.solver', self.solver, f'use one of {SOLVERS}')


@dataclasses.dataclass(frozen=True)
class TokenCutSettings:
  """TokenCut's knobs under their official names."""

  tau: float = _field(0.2, 'official --tau: similarity threshold of the binary graph')
  eps: float = _field(1e-5, 'official --eps: weight of the edges below tau')

  def __post_init__(self):
    _check(_is_number(self.tau), 'tokencut.tau', self.tau, 'use a finite number')
    _check(_is_number(self.eps) and self.eps > 0, 'tokencut.eps', self.eps, 'use a number > 0')


@dataclasses.dataclass(frozen=True)
class LostSettings:
  """LOST's knob under its official name."""

  k_patches: int = _field(100, 'official --k_patches: lowest-degree patches tried for expansion')

  def __post_init__(self):
    _check(
      _is_int(self.k_patches) and self.k_patches >= 1,
      'lost.k_patches',
      self.k_patches,
      'use an int >= 1',
    )


@dataclasses.dataclass(frozen=True)
class MethodSettings:
  """The object-discovery method of localize / segment / extract and its knobs."""

  name: str = _field('dsm', 'dsm | tokencut | lost | found (spectral_jax/pipeline METHODS)')
  tokencut: TokenCutSettings = TokenCutSettings()
  lost: LostSettings = LostSettings()
  # FOUND's decoder file and evaluation mode (the weights are read by results.boxes.method_args).
  found: 'FoundSettings' = dataclasses.field(default_factory=lambda: FoundSettings())

  def params(self) -> dict:
    """The method's device parameters (``pipeline.run_images``' ``method_params``)."""
    if self.name == 'tokencut':
      return dict(tau=self.tokencut.tau, eps=self.tokencut.eps)
    if self.name == 'lost':
      return dict(k_patches=self.lost.k_patches)
    return {}


@dataclasses.dataclass(frozen=True)
class BilateralParams:
  """TokenCut's README values (the solver function's own defaults 24/4/4 are not used)."""

  sigma_spatial: float = 16
  sigma_luma: float = 16
  sigma_chroma: float = 8


@dataclasses.dataclass(frozen=True)
class CRFParams:
  """DSM's dense-CRF values (the official ones)."""

  w1: float = 10.0
  alpha: float = 80.0
  beta: float = 13.0
  w2: float = 3.0
  gamma: float = 3.0
  iterations: int = 5


@dataclasses.dataclass(frozen=True)
class RefineSettings:
  """Mask refinement for any method."""

  refine: str = _field('none', 'none | crf (dense CRF) | bilateral (TokenCut bilateral solver)')
  crf: bool = _field(False, "older spelling of refine='crf'")
  bilateral_params: BilateralParams = BilateralParams()
  crf_params: CRFParams = CRFParams()

  def __post_init__(self):
    _check(self.refine in REFINES, 'segment.refine', self.refine, f'use one of {REFINES}')
    _check(
      not (self.crf and self.refine not in ('none', 'crf')),
      'segment.crf',
      self.crf,
      f'and segment.refine={self.refine!r}: choose one (segment.crf=True means '
      "refine='crf'; set segment.crf=False)",
    )

  @property
  def mode(self) -> str:
    """refine, with the older ``crf=True`` meaning 'crf'."""
    return 'crf' if self.crf else self.refine


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


EDIT_FOREGROUNDS = ('blur_fusion', 'image')


@dataclasses.dataclass(frozen=True)
class EditSettings:
  """Background removal and compositing (--mode=edit, ``remove_background``)."""

  background: str = _field(
    '', "'' = cutout only; an image file or a colour ('white', '#RRGGBB', 'r,g,b')"
  )
  segment: int = _field(-1, '-1 = Fiedler vector > 0; N >= 0 = eigen-segment N')
  n_segments: int = _field(4, 'k-means clusters when edit.segment >= 0')
  band_px: float = _field(0.0, "half-width of the trimap's unknown band; 0 = one patch")
  eps: float = _field(1e-6, 'closed-form matting regulariser (Levin et al.: 1e-7 … 1e-5)')
  max_pixels: int = _field(1_000_000, 'matting resolution cap (larger: guided upsampling)')
  levels: float = _field(0.05, 'alpha <- clip((a - l) / (1 - 2l)): removes faint haze; 0 = off')
  foreground: str = _field('blur_fusion', 'foreground colours: blur_fusion | image (F = I)')

  def __post_init__(self):
    _check(
      self.foreground in EDIT_FOREGROUNDS,
      'edit.foreground',
      self.foreground,
      "use 'blur_fusion' or 'image'",
    )
    _check(
      _is_int(self.n_segments) and self.n_segments >= 2,
      'edit.n_segments',
      self.n_segments,
      'use an int >= 2',
    )
    _check(
      _is_int(self.segment) and self.segment < self.n_segments,
      'edit.segment',
      self.segment,
      f'use -1 or a segment below edit.n_segments={self.n_segments}',
    )


@dataclasses.dataclass(frozen=True)
class ServerSettings:
  """The local web demo and HTTP API (--mode=serve)."""

  host: str = _field('127.0.0.1', "localhost only; '0.0.0.0' exposes it (no authentication)")
  port: int = _field(8000, '0 = any free port (printed at start)')
  max_upload_bytes: int = _field(32 * 1024 * 1024, 'larger uploads get 413')
  max_queue: int = _field(32, 'requests admitted at once (running or waiting); more get 503')
  timeout: float = _field(300.0, 'seconds a request waits for the model before a 503')

  def __post_init__(self):
    for key in ('max_upload_bytes', 'max_queue', 'timeout'):
      value = getattr(self, key)
      _check(_is_number(value) and value > 0, f'serve.{key}', value, 'must be > 0')
    _check(
      _is_int(self.port) and 0 <= self.port <= 65535,
      'serve.port',
      self.port,
      'use 0..65535 (0 = any free port)',
    )


@dataclasses.dataclass(frozen=True)
class DatasetSettings:
  """Which images a CLI run reads (the data layer's sources)."""

  source: str = _field('folder', 'folder | voc | coco20k | saliency | tfds | demo')
  root: str = _field('', 'image folder, VOCdevkit, COCO root or saliency set root')
  name: str = _field('', 'dataset name within a source (e.g. ECSSD, voc/2007)')
  year: int = _field(2012, 'VOC year (2007 | 2012)')
  split: str = _field('trainval', 'dataset split')
  boxes: str = _field('', 'folder source: VOC-XML folder or COCO JSON file')
  masks: str = _field('', 'folder source: folder of ground-truth masks')
  annotations: str = _field('', "coco20k: instances_train2014.json ('' = under root)")
  tfds_dir: str = _field('', "tfds data_dir ('' = $TFDS_DATA_DIR or ~/tensorflow_datasets)")
  no_hard: bool = _field(False, 'drop difficult/truncated VOC boxes, skip images left with none')
  limit: int = _field(0, '0 = all images')

  def __post_init__(self):
    _check(
      _is_int(self.limit) and self.limit >= 0,
      'data.limit',
      self.limit,
      'must be >= 0 (0 = all images)',
    )


@dataclasses.dataclass(frozen=True)
class OutputSettings:
  """What a CLI run writes besides its results."""

  features: bool = _field(True, 'write features/<stem>.npz')
  num_panels: int = _field(8, 'PNG panels for the first N images')


@dataclasses.dataclass(frozen=True)
class DistributedSettings:
  """Multi-process runs (one process per host): JAX's distributed runtime. On TPU pods, SLURM
  and similar clusters the empty values are detected automatically."""

  enabled: bool = False
  coordinator_address: str = _field('', 'host:port of process 0')
  num_processes: int = 0
  process_id: int = -1
  timeout_s: int = _field(300, 'how long a process waits for its peers at start-up')


@dataclasses.dataclass(frozen=True)
class Settings:
  """Everything a run of the per-image pipeline needs, converted once from a front-end."""

  model: ModelSettings = ModelSettings()
  dataset: DatasetSettings = DatasetSettings()
  limits: ImageLimits = ImageLimits()
  batching: BatchSettings = BatchSettings()
  spectral: SpectralSettings = SpectralSettings()
  method: MethodSettings = MethodSettings()
  refine: RefineSettings = RefineSettings()
  discover: DiscoverSettings = DiscoverSettings()
  promerge: PromergeSettings = PromergeSettings()
  found: FoundSettings = FoundSettings()
  edit: EditSettings = EditSettings()
  serve: ServerSettings = ServerSettings()
  output: OutputSettings = OutputSettings()
  seed: int = 0


METHOD_NAMES = ('dsm', 'tokencut', 'lost', 'found')
