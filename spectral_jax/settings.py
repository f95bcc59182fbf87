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

from spectral_jax.discovery_settings import (  # noqa: F401  # part of this module's interface
  DISCOVER_DTYPES,
  DISCOVER_METHODS,
  DISCOVER_SOLVERS,
  FOUND_MODES,
  FOUND_TARGETS,
  MAX_OBJECTS,
  DiscoverSettings,
  FoundSettings,
  PromergeSettings,
)
from spectral_jax.errors import SettingError  # noqa: F401
from spectral_jax.setting_checks import _check, _field, _is_int, _is_number  # noqa: F401


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
  bucket_tokens: int = _field(
    -1, 'pad token counts up to multiples of this; 0 = exact; -1 = geometric (×1.26) buckets'
  )

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
      f'use -1 (geometric buckets), 0 (exact token counts) or a step up to {MAX_BUCKET_TOKENS}',
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
  paths: tuple = _field((), 'folder source: image files and folders read in place of data.root')
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
    _check(
      isinstance(self.paths, (tuple, list)) and all(isinstance(p, str) and p for p in self.paths),
      'data.paths',
      self.paths,
      'must be a tuple of image files or folders',
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
