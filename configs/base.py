"""Defaults shared by every config; other configs start from ``get_config()`` here."""

import ml_collections

from spectral_jax.models import weights_cache

METHOD_ARGS = ('dsm', 'tokencut', 'lost', 'tokencut_vits8', 'lost_vits8')


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  # A workdir remembers the settings of its outputs; a rerun with other settings stops
  # unless overwrite=True, which deletes the outdated outputs and recomputes them.
  config.overwrite = False

  # Multi-process runs (one process per host): JAX's distributed runtime. On TPU pods, SLURM
  # and similar clusters the empty values are detected automatically.
  config.distributed = ml_collections.ConfigDict()
  config.distributed.enabled = False
  config.distributed.coordinator_address = ''  # host:port of process 0
  config.distributed.num_processes = 0
  config.distributed.process_id = -1
  config.distributed.timeout_s = 300  # how long a process waits for its peers at start-up

  config.model = ml_collections.ConfigDict()
  # dino_vits16 | dino_vits8 | dino_vitb16 | dino_vitb8 | dinov2_* | dinov3_* | dino_resnet50
  # (every name of spectral_jax/models/backbones.py)
  config.model.name = 'dino_vits16'
  config.model.checkpoint = ''  # local .pth/.safetensors file or URL; '' = official weights
  config.model.cache_dir = ''  # '' = $SPECTRAL_JAX_CACHE or ~/.cache/spectral_jax
  config.model.feature_block = -1  # block whose keys are the features
  # ViT matmuls: 'highest' (= 'float32', exact parity) | 'bfloat16' (bf16 operands, float32
  # accumulation and features; identical boxes on the benchmark images; faster only with bf16
  # units: GPU, TPU, AMX CPUs; slower on other CPUs) | 'high' / 'default' (TF32 / bf16
  # passes on GPU/TPU)
  config.model.precision = 'highest'

  config.data = ml_collections.ConfigDict()
  config.data.source = 'folder'  # folder | voc | coco20k | saliency | tfds | demo
  config.data.root = ''
  config.data.name = ''  # dataset name within a source (e.g. ECSSD, voc/2007)
  config.data.year = 2012
  config.data.split = 'trainval'
  config.data.boxes = ''  # folder source: VOC-XML folder or COCO JSON file
  config.data.masks = ''  # folder source: folder of ground-truth masks
  config.data.annotations = ''  # coco20k: instances_train2014.json ('' = under root)
  config.data.tfds_dir = ''  # tfds data_dir ('' = $TFDS_DATA_DIR or ~/tensorflow_datasets)
  config.data.no_hard = False  # drop difficult/truncated VOC boxes, skip images left with none
  config.data.limit = 0  # 0 = all images
  config.data.max_pixels = 8192 * 8192  # larger files are refused before decoding
  # Working resolution: an image with more patches than this runs downscaled (aspect kept;
  # outputs in the original's pixels). 6,400 = 640×640 at patch 8, so no image of VOC, COCO
  # or the saliency sets changes. resize_large=False skips such images instead.
  config.data.max_tokens = 6400
  config.data.resize_large = True
  config.data.batch_size = 8  # images per forward (same size bucket)
  config.data.batch_tokens = 32768  # and at most this many tokens per forward
  config.data.bucket_tokens = -1  # pad token counts up to multiples of this; -1 = by backend

  config.spectral = ml_collections.ConfigDict()
  config.spectral.K = 5
  config.spectral.color_lambda = 0.0
  config.spectral.which_matrix = 'laplacian'  # laplacian | affinity
  config.spectral.solver = 'auto'  # auto | dense | lanczos (block Krylov)

  # Object discovery method (localize, segment; extract where it has eigenvectors):
  # dsm = Deep Spectral Methods (cropped input, Laplacian eigenvectors),
  # tokencut = TokenCut (padded input; segment: its saliency path, Lanczos-resized input),
  # lost = LOST (padded input, seed expansion). See spectral_jax/pipeline.py METHODS.
  config.method = 'dsm'
  config.tokencut = ml_collections.ConfigDict()
  config.tokencut.tau = 0.2  # official --tau: similarity threshold of the binary graph
  config.tokencut.eps = 1e-5  # official --eps: weight of the edges below tau
  config.lost = ml_collections.ConfigDict()
  config.lost.k_patches = 100  # official --k_patches: lowest-degree patches tried for expansion

  config.segment = ml_collections.ConfigDict()
  # Mask refinement for any method: none | crf (dense CRF) | bilateral (TokenCut's bilateral
  # solver, mask = output > 0.5). crf=True is the older spelling of refine='crf'.
  config.segment.refine = 'none'
  config.segment.bilateral_params = dict(
      sigma_spatial=16, sigma_luma=16, sigma_chroma=8
  )  # TokenCut's README values (the solver function's own defaults 24/4/4 are not used)
  config.segment.crf = False  # dense-CRF refinement of object masks (pydensecrf2)
  config.segment.crf_params = dict(
      w1=10.0, alpha=80.0, beta=13.0, w2=3.0, gamma=3.0, iterations=5
  )  # the official values

  # --mode=discover: MaskCut (CutLER's pseudo-mask settings; maskcut_protocol.md).
  config.discover = ml_collections.ConfigDict()
  config.discover.max_objects = 3  # cuts per image (the official N)
  config.discover.fixed_size = 480  # every image is resized to this square
  config.discover.tau = 0.15  # edge threshold on the cosine of keys
  config.discover.eps = 1e-5  # weight of a non-edge
  config.discover.crf = True  # MaskCut's dense CRF + IoU filter (the released pseudo-labels)
  config.discover.solver = 'auto'  # auto | jax | lapack | arpack (auto: arpack on CPU)
  config.discover.dtype = 'float64'  # eigen-solve precision (the official: float64)
  config.discover.workers = 0  # CRF processes; 0 = auto (up to 8 when crf and many images)

  # --mode=serve: the local web demo and HTTP API (spectral_jax/web.py).
  config.serve = ml_collections.ConfigDict()
  config.serve.host = '127.0.0.1'  # localhost only; '0.0.0.0' exposes it (no authentication)
  config.serve.port = 8000  # 0 = any free port (printed at start)
  config.serve.max_upload_bytes = 32 * 1024 * 1024  # larger uploads get 413
  config.serve.max_queue = 32  # requests admitted at once (running or waiting); more get 503
  config.serve.timeout = 300.0  # seconds a request waits for the model before a 503

  config.output = ml_collections.ConfigDict()
  config.output.features = True  # write features/<stem>.npz
  config.output.num_panels = 8  # PNG panels for the first N images
  return config


def with_method(config: ml_collections.ConfigDict, arg=None) -> ml_collections.ConfigDict:
  """Applies a config-file argument (``--config=configs/voc.py:tokencut``): dsm (default),
  tokencut or lost with ViT-S/16, or tokencut_vits8 / lost_vits8 with the 300-epoch ViT-S/8
  file those methods use (Deep Spectral Methods' dino_vits8 is another file)."""
  arg = arg or 'dsm'
  if arg not in METHOD_ARGS:
    raise ValueError(f'config argument {arg!r}: use one of {METHOD_ARGS}')
  config.method = arg.split('_')[0]
  if arg.endswith('_vits8'):
    config.model.name = 'dino_vits8'
    config.model.checkpoint = weights_cache.VARIANT_WEIGHTS['dino_vits8_300ep']
  return config
