"""The Python API: Deep Spectral Methods on images in memory or on disk, for notebooks and code.

  import spectral_jax as sj
  backbone = sj.load_backbone('dino_vits16')             # downloads the weights once
  result = sj.localize(backbone, 'photo.jpg')             # one image → one result
  results = sj.localize(backbone, [image_a, image_b])     # a list → a list, batched
  rgba = sj.remove_background(backbone, 'photo.jpg')

Images are paths, PIL images or uint8 arrays [H, W], [H, W, 1], [H, W, 3] or [H, W, 4]
(alpha dropped, as the file decoder does). They go through the same pipeline as the command
line (``common.run_images``: decoding, working resolution, size buckets, batches) and the same
per-image functions as its task runners, so a photo gives the CLI's box and mask. Arrays and
PIL images are written losslessly (PNG) to a private temporary folder and decoded from there
like files; PIL images have their EXIF orientation applied, as files do.

Coordinates: pixels of the original image; boxes are [x0, y0, x1, y1] with exclusive max (the
CLI's ``predictions.jsonl``); masks are [H, W]; eigenvectors are on the patch grid (h, w) of
the image at working resolution (``data.max_tokens`` patches at most, see configs/base.py).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
from PIL import Image, ImageOps

from spectral_jax import pipeline
from spectral_jax.data import datasets, decode
from spectral_jax.spectral import maskcut, segments
from spectral_jax.tasks import common
from spectral_jax.tasks import edit as edit_task
from spectral_jax.tasks import localize as localize_task
from spectral_jax.tasks import segment as segment_task

ImageLike = Union[str, os.PathLike, Image.Image, np.ndarray]
Images = Union[ImageLike, Sequence[ImageLike]]

METHODS = ('dsm',)  # eigenvectors(): the methods with Laplacian eigenvectors of their own
REFINES = segment_task.REFINES  # 'none', 'crf', 'bilateral'
# precision: the CLI's table ('float32' = true float32 matmuls; 'bfloat16': bf16 operands).
PRECISIONS = common.PRECISIONS
# Settings of the CLI configs each function reproduces (configs/voc.py, configs/object_seg.py).
LOCALIZE_K = 5
SEGMENT_K = 2
EDIT_K = 5

__all__ = [
    'Backbone',
    'Eigen',
    'Localization',
    'Objects',
    'load_backbone',
    'localize_methods',
    'eigenvectors',
    'localize',
    'segment',
    'discover',
    'remove_background',
]


# ----------------------------------------------------------------------------- results


@dataclasses.dataclass
class Backbone:
  """A loaded DINO ViT: the jitted model and its parameters, reused across calls.

  Compiled shapes are kept, so later calls on images of similar sizes run without compiling.
  """

  name: str
  extractor: pipeline.FeatureExtractor
  checkpoint: Optional[str] = None
  precision: str = 'float32'
  # The memory policy (configs/base.py data.max_tokens): larger images run downscaled.
  max_tokens: int = 6400
  # Files above this many pixels are refused before decoding (data.max_pixels).
  max_pixels: int = decode.DEFAULT_MAX_PIXELS

  @property
  def patch_size(self) -> int:
    return self.extractor.arch.patch_size

  def __repr__(self) -> str:
    a = self.extractor.arch  # ViT archs have depth and width; a ResNet's differ
    shape = ''.join(
        f'{k}={getattr(a, f)}, ' for k, f in (('depth', 'depth'), ('dim', 'embed_dim'))
        if hasattr(a, f)
    )
    return (
        f'Backbone({self.name!r}, {shape}patch={a.patch_size}, '
        f'precision={self.precision!r}, checkpoint={self.checkpoint!r})'
    )


@dataclasses.dataclass
class Eigen:
  """Eigenpairs of one image's patch graph (the Laplacian of the DINO-key affinity).

  eigenvalues: float32 [K'] ascending (K' = K, or h·w − 1 for a tiny image).
  eigenvectors: float32 [K', h, w] on the patch grid, D-orthonormal and sign-fixed as the
    official code; eigenvectors[1] is the Fiedler vector.
  patch_grid: (h, w). patch_size: P (pixels per patch side, at working resolution).
  image_size: (H, W) of the original image. working_size: (H', W') the model saw (smaller
    than image_size only when the image had more than data.max_tokens patches); patch (i, j)
    covers rows i·P..(i+1)·P and columns j·P..(j+1)·P of it.
  """

  eigenvalues: np.ndarray
  eigenvectors: np.ndarray
  patch_grid: tuple[int, int]
  patch_size: int
  image_size: tuple[int, int]
  working_size: tuple[int, int]


@dataclasses.dataclass
class Localization:
  """The main object's box.

  box_xyxy: (x0, y0, x1, y1) in pixels of the original image, exclusive max (the CLI's
    predictions.jsonl).
  score: 1 − λ₁, λ₁ the Fiedler eigenvalue of the normalized Laplacian (it relaxes the
    normalized cut; TokenCut: of its own graph; LOST: 1, uninformative): near 1 for a clean
    cut, lower otherwise. Uncalibrated; for ranking, not thresholding.
  image_size: (H, W) of the original image.
  """

  box_xyxy: tuple[int, int, int, int]
  score: float
  image_size: tuple[int, int]


@dataclasses.dataclass
class Objects:
  """MaskCut's objects in one image, in discovery order (n ≤ max_objects, 0 if none).

  masks: bool [n, H, W], disjoint, at the original size.
  boxes: int64 [n, 4], (x0, y0, x1, y1) of each mask, exclusive max.
  scores: float64 [n], 1 − Ncut of the cut that found each object (uncalibrated; near or
    below 0 means the cut separated nothing).
  image_size: (H, W).
  """

  masks: np.ndarray
  boxes: np.ndarray
  scores: np.ndarray
  image_size: tuple[int, int]


# ----------------------------------------------------------------------------- loading


def load_backbone(
    name: str = 'dino_vits16',
    checkpoint: Optional[Union[str, os.PathLike]] = None,
    *,
    precision: str = 'float32',
    cache_dir: Optional[Union[str, os.PathLike]] = None,
) -> Backbone:
  """Loads a DINO ViT (``dino_vits16``, ``dino_vits8``, ``dino_vitb16``, ``dino_vitb8``), or
  another backbone ``pipeline.load_extractor`` knows (the DINOv2 / DINOv3 / ResNet-50 registry).

  Args:
    name: the architecture.
    checkpoint: a local .pth/.safetensors file or a URL; None = the official weights,
      downloaded once into ``cache_dir``.
    precision: matmul precision: 'float32' (true float32, as the official code and the
      CLI's default 'highest'), 'bfloat16' (bf16 ViT matmuls, float32 accumulation and
      features; DINO ViTs only), 'high' or 'default' (TF32/bf16 passes on GPUs).
    cache_dir: weights and converted-params cache (None = $SPECTRAL_JAX_CACHE or
      ~/.cache/spectral_jax).
  """
  if precision not in PRECISIONS:
    raise ValueError(f'precision={precision!r}: use one of {sorted(PRECISIONS)}')
  ckpt = '' if checkpoint is None else os.fspath(checkpoint)
  if ckpt and '://' not in ckpt:
    ckpt = str(Path(ckpt).expanduser())
    if not Path(ckpt).is_file():
      raise FileNotFoundError(f'checkpoint={checkpoint!r} does not exist')
  extractor = pipeline.load_extractor(
      name,
      ckpt,
      '' if cache_dir is None else str(Path(cache_dir).expanduser()),
      PRECISIONS[precision],
  )
  return Backbone(name, extractor, ckpt or None, precision)


# ----------------------------------------------------------------------------- inputs


def _config(backbone: Backbone, k: int, color_lambda: float = 0.0):
  """The CLI's defaults (configs/base.py) with this backbone and spectral settings."""
  from configs import base  # pylint: disable=import-outside-toplevel  # installed with us

  config = base.get_config()
  config.model.name = backbone.name
  config.model.precision = PRECISIONS[backbone.precision]
  config.spectral.K = k
  config.spectral.color_lambda = float(color_lambda)
  config.data.max_tokens = int(backbone.max_tokens)
  config.data.max_pixels = int(backbone.max_pixels)
  return config


def _rgb_of_array(array: np.ndarray, where: str) -> np.ndarray:
  """uint8 [H, W], [H, W, 1|3|4] → RGB uint8 [H, W, 3] (the file decoder's conversions)."""
  if array.dtype != np.uint8:
    raise ValueError(
        f'{where}: dtype {array.dtype}; pass uint8 pixels in 0..255 '
        '(e.g. (x * 255).round().astype(np.uint8) for floats in [0, 1])'
    )
  if array.ndim == 3 and array.shape[2] == 1:
    array = array[:, :, 0]
  if array.ndim == 2:
    return np.repeat(array[:, :, None], 3, axis=2)
  if array.ndim == 3 and array.shape[2] in (3, 4):
    return np.ascontiguousarray(array[:, :, :3])  # alpha dropped, as decode.to_rgb_array
  raise ValueError(f'{where}: shape {array.shape}; use [H, W], [H, W, 3] or [H, W, 4]')


class _Inputs:
  """Images → ``datasets.Example`` records (paths), arrays written as PNG to a temporary folder.

  Cheap checks (type, dtype, shape, existence, size) fail here, naming the item; decoding
  errors found later name it through ``error``.
  """

  def __init__(self, images: Images, patch_size: int, what: str = 'images'):
    self.single = not isinstance(images, (list, tuple))
    items = [images] if self.single else list(images)
    if not items:
      raise ValueError(f'{what}: an empty list; pass an image or a list of images')
    self._tmp = None
    self.examples = []
    for i, item in enumerate(items):
      where = what if self.single else f'{what}[{i}]'
      self.examples.append(self._example(i, item, where, patch_size))
    self.index = {ex.id: i for i, ex in enumerate(self.examples)}
    self.where = {ex.id: (what if self.single else f'{what}[{i}]') for i, ex in
                  enumerate(self.examples)}

  def _folder(self) -> Path:
    if self._tmp is None:
      self._tmp = tempfile.TemporaryDirectory(prefix='spectral_jax_api_')
    return Path(self._tmp.name)

  def _example(self, i: int, item: Any, where: str, patch_size: int) -> datasets.Example:
    image_id = f'{i:06d}'
    if isinstance(item, (str, os.PathLike)):
      path = Path(item).expanduser()
      if path.is_dir():
        raise ValueError(
            f'{where}: {os.fspath(item)!r} is a folder; pass image files (a list of paths), '
            'or run the CLI with --config.data.root=FOLDER'
        )
      if not path.is_file():
        raise ValueError(f'{where}: no such image file {os.fspath(item)!r}')
      return datasets.Example(id=image_id, path=str(path))
    if isinstance(item, Image.Image):
      try:  # a lazily opened PIL image decodes here: truncated or corrupt data fails now
        img = ImageOps.exif_transpose(item) or item  # what the file decoder does with EXIF
        rgb = decode.to_rgb_array(img, where)
      except (OSError, SyntaxError, Image.DecompressionBombError) as e:
        raise ValueError(f'{where}: unreadable PIL image ({e})') from e
    elif isinstance(item, np.ndarray) or hasattr(item, '__array__'):
      rgb = _rgb_of_array(np.asarray(item), where)
    else:
      raise ValueError(
          f'{where}: a {type(item).__name__}; pass a path, a PIL image or a uint8 array'
      )
    if min(rgb.shape[:2]) < patch_size:
      raise ValueError(
          f'{where}: {rgb.shape[1]}x{rgb.shape[0]} pixels; the minimum side is {patch_size} '
          '(one patch)'
      )
    path = self._folder() / f'{image_id}.png'
    Image.fromarray(rgb).save(path, compress_level=1)  # lossless: decodes to the same pixels
    return datasets.Example(id=image_id, path=str(path))

  def error(self, example, e: Exception) -> None:
    """``on_error`` of the pipeline: an unusable image stops the call, naming it (not the
    temporary file an array or PIL image was written to)."""
    message = str(e).replace('--config.data.max_pixels', 'Backbone.max_pixels')
    if self._tmp is not None and example.path.startswith(self._tmp.name):
      message = message.replace(f'{example.path}: ', '').replace(example.path, 'the image')
    raise ValueError(f'{self.where[example.id]}: {message}') from e

  def close(self) -> None:
    if self._tmp is not None:
      self._tmp.cleanup()
      self._tmp = None

  def __enter__(self) -> '_Inputs':
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def output(self, results: list) -> Any:
    return results[0] if self.single else results


def localize_methods() -> tuple[str, ...]:
  """Methods ``localize`` and ``segment`` accept (``pipeline.METHODS``): dsm, tokencut, lost."""
  return ('dsm',) + tuple(m for m in pipeline.METHODS if m != 'dsm')


def _check_method(method: str, supported: Sequence[str] = METHODS, what: str = '') -> None:
  if method not in supported:
    raise ValueError(
        f'method={method!r}: {what or "supported methods are"} {", ".join(supported)}'
    )


def _results(
    backbone: Backbone,
    inputs: _Inputs,
    config,
    which_matrix: str = '',
    method: str = 'dsm',
    segment: bool = False,
) -> list:
  """``pipeline.ImageResult`` per input, in input order (the pipeline yields by size bucket);
  exactly the CLI's call (``config.method`` and its input rule, as ``--mode=localize`` or,
  with ``segment``, ``--mode=segment``)."""
  config.method = method
  stream = common.run_images(
      config,
      backbone.extractor,
      inputs.examples,
      inputs.error,
      which_matrix=which_matrix,
      **localize_task.method_args(config, segment=segment),
  )
  out: list = [None] * len(inputs.examples)
  for r in stream:
    out[inputs.index[r.example.id]] = r
  return out


# ----------------------------------------------------------------------------- functions


def eigenvectors(
    backbone: Backbone,
    images: Images,
    *,
    K: int = 5,  # pylint: disable=invalid-name  # the paper's name
    method: str = 'dsm',
    color_lambda: float = 0.0,
) -> Union[Eigen, list[Eigen]]:
  """The K smallest eigenpairs of each image's patch graph (``--mode=extract``'s eigs).

  Args:
    backbone: from ``load_backbone``.
    images: one image or a list (see the module docstring).
    K: eigenpairs per image, 2..64.
    method: 'dsm' (Deep Spectral Methods: Laplacian of the DINO-key affinity).
    color_lambda: weight of the KNN colour affinity added to the feature affinity (0 = off;
      the paper's colour variant uses 10).
  Returns:
    An ``Eigen`` (eigenvalues [K], eigenvectors [K, h, w]) per image; one for one image, a
    list for a list.
  """
  _check_method(method, METHODS, 'eigenvectors supports')
  if not isinstance(K, int) or not 2 <= K <= 64:
    raise ValueError(f'K={K!r}: use an int in 2..64 (eigenvector 1 is the Fiedler vector)')
  if not np.isfinite(color_lambda) or color_lambda < 0:
    raise ValueError(f'color_lambda={color_lambda!r}: use a finite number >= 0')
  with _Inputs(images, backbone.patch_size) as inputs:
    rs = _results(backbone, inputs, _config(backbone, K, color_lambda))
  return inputs.output(
      [
          Eigen(
              r.eigenvalues,
              r.eigenvectors.reshape(len(r.eigenvectors), *r.patch_grid),
              tuple(r.patch_grid),
              r.patch_size,
              tuple(int(v) for v in r.image_hw),
              (int(r.image.shape[0]), int(r.image.shape[1])),
          )
          for r in rs
      ]
  )


def localize(
    backbone: Backbone, images: Images, *, method: str = 'dsm'
) -> Union[Localization, list[Localization]]:
  """The main object's box per image (``--mode=localize``, configs/voc.py settings: K = 5).

  'dsm': the Fiedler vector > 0 (minority side after the sign rule), its largest 8-connected
  patch component, that component's box; the same functions as the CLI, hence its boxes.
  'tokencut' / 'lost' (where ``localize_methods()`` lists them): the seed's component of
  TokenCut's bipartition or LOST's seed expansion (``pipeline.METHODS``), its box.

  Returns:
    A ``Localization`` (box_xyxy in original pixels, exclusive max; score; image_size) per
    image; one for one image, a list for a list. LOST has no eigenvalue: its score is 1.
  """
  _check_method(method, localize_methods())
  with _Inputs(images, backbone.patch_size) as inputs:
    config = _config(backbone, LOCALIZE_K)
    out = []
    for r in _results(backbone, inputs, config, method=method):
      box, _, score = localize_task.localization(r, config.spectral.which_matrix)
      out.append(
          Localization(
              tuple(int(v) for v in box), score, tuple(int(v) for v in r.image_hw)
          )
      )
  return inputs.output(out)


def segment(
    backbone: Backbone, images: Images, *, method: str = 'dsm', refine: str = 'none'
) -> Union[np.ndarray, list[np.ndarray]]:
  """The main object's mask per image (``--mode=segment``, configs/object_seg.py: K = 2).

  Args:
    method: 'dsm' (Fiedler vector > 0), 'tokencut' (its saliency path: Lanczos resize, seed
      component) or 'lost' (seed expansion), as ``--config.method``.
    refine: 'none', 'crf' (the official dense CRF; needs the ``crf`` extra, pydensecrf2) or
      'bilateral' (TokenCut's bilateral solver, mask = output > 0.5).
  Returns:
    bool [H, W] at the original size per image; one for one image, a list for a list.
  """
  _check_method(method, localize_methods(), 'segment supports')
  if refine not in segment_task.REFINES:
    raise ValueError(f'refine={refine!r}: use one of {", ".join(segment_task.REFINES)}')
  with _Inputs(images, backbone.patch_size) as inputs:
    config = _config(backbone, SEGMENT_K)
    config.method = method
    preprocess = localize_task.method_args(config, segment=True)['preprocess']
    out = []
    for r in _results(backbone, inputs, config, 'laplacian', method, segment=True):
      out.append(np.asarray(segment_task.final_mask(r, refine, preprocess, config)[1], bool))
  return inputs.output(out)


def _mask_box(mask: np.ndarray) -> list[int]:
  ys, xs = np.nonzero(mask)
  return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


def discover(
    backbone: Backbone, images: Images, *, max_objects: int = 3, crf: bool = False
) -> Union[Objects, list[Objects]]:
  """Up to ``max_objects`` objects per image by MaskCut (CutLER's iterated normalized cuts).

  Args:
    max_objects: cuts per image (CutLER: 3).
    crf: MaskCut's dense CRF and IoU filter (``--mode=discover``'s default, the released
      pseudo-labels; needs the ``crf`` extra). Off by default here: without it the masks are
      the cuts resized to the image.
  Returns:
    ``Objects`` (masks [n, H, W], boxes [n, 4], scores [n]) per image; one for one image, a
    list for a list.
  """
  if not isinstance(max_objects, int) or not 1 <= max_objects <= 255:
    raise ValueError(f'max_objects={max_objects!r}: use an int in 1..255')
  config = _config(backbone, LOCALIZE_K)
  d = config.get('discover', None)
  kw = {} if d is None else dict(tau=d.tau, fixed_size=d.fixed_size, dtype=d.dtype,
                                 solver=d.solver)
  with _Inputs(images, backbone.patch_size) as inputs:
    arrays = []
    for ex in inputs.examples:
      try:
        arrays.append(
            datasets.load_image(
                ex, min_side=backbone.patch_size, max_pixels=config.data.max_pixels
            )
        )
      except (OSError, ValueError) as e:
        inputs.error(ex, e)
    found = maskcut.run(
        backbone.extractor,
        arrays,
        max_objects=max_objects,
        crf=crf,
        batch_size=config.data.batch_size,
        **kw,
    )
  out = []
  for image, d_ in zip(arrays, found):
    boxes = np.array([_mask_box(m) for m in d_.masks], np.int64).reshape(-1, 4)
    out.append(
        Objects(np.asarray(d_.masks, bool), boxes, np.asarray(d_.scores, np.float64),
                (int(image.shape[0]), int(image.shape[1])))
    )
  return inputs.output(out)


def _background(background: Any) -> edit_task.Background:
  """None | colour ('white', '#RRGGBB', 'r,g,b', (r, g, b)) | image (path, PIL, uint8 array)."""
  if background is None:
    return None
  if isinstance(background, str):
    return edit_task.resolve_background(background)
  if isinstance(background, os.PathLike):
    return decode.load_rgb(background)
  if isinstance(background, Image.Image):
    return decode.to_rgb_array(background, 'background')
  if isinstance(background, tuple) and len(background) == 3:
    try:
      from spectral_jax import edit  # pylint: disable=import-outside-toplevel

      return edit.parse_color(background)
    except ValueError as e:
      raise ValueError(f'background={background!r}: {e}') from e
  if isinstance(background, np.ndarray):
    return _rgb_of_array(background, 'background')
  raise ValueError(
      f'background: a {type(background).__name__}; pass a colour, a path, a PIL image or a '
      'uint8 array'
  )


def remove_background(
    backbone: Backbone, image: ImageLike, *, background: Any = None
) -> np.ndarray:
  """Cuts the main object out (``--mode=edit`` with configs/edit.py's defaults).

  Fiedler foreground patches → trimap → closed-form matting → blur-fusion colours.

  Args:
    image: one image (path, PIL image or uint8 array).
    background: None for a cutout; else a colour ('white', '#RRGGBB', 'r,g,b' or an (r, g, b)
      tuple) or an image (path, PIL, uint8 array; cover-resized) to composite onto.
  Returns:
    uint8 [H, W, 4] RGBA (un-premultiplied) without a background, else uint8 [H, W, 3].
  """
  if isinstance(image, (list, tuple)):
    raise ValueError('remove_background takes one image; call it once per image')
  bg = _background(background)
  opts = edit_task.EditOptions()
  with _Inputs(image, backbone.patch_size, 'image') as inputs:
    config = _config(backbone, EDIT_K)
    (r,) = _results(backbone, inputs, config)
    original = (
        datasets.load_image(r.example, max_pixels=config.data.max_pixels) if r.resized else r.image
    )
  patch_mask = edit_task.foreground_patches(r.eigenvectors, r.patch_grid, opts, config.seed)
  working = r.image.shape[:2]
  cell = max(r.patch_size * r.patch_grid[0] // patch_mask.shape[0], 1)
  mask = pipeline.resize_mask(
      segments.upsample_patch_mask(patch_mask, working, cell), original.shape[:2]
  )
  band = r.patch_size * original.shape[0] / working[0]  # one patch, in pixels of the original
  out = edit_task.edit_image(original, mask, band, opts, bg)
  return out['composite'] if bg is not None else out['cutout']
