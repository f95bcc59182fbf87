"""The Python API: Deep Spectral Methods on images in memory or on disk, for notebooks and code.

  import spectral_jax as sj
  backbone = sj.load_backbone('dino_vits16')             # downloads the weights once
  result = sj.localize(backbone, 'photo.jpg')             # one image → one result
  results = sj.localize(backbone, [image_a, image_b])     # a list → a list, batched
  rgba = sj.remove_background(backbone, 'photo.jpg')

Images are paths, PIL images or uint8 arrays [H, W], [H, W, 1], [H, W, 3] or [H, W, 4]
(alpha dropped, as the file decoder does). Arrays and PIL images stay in memory (never written
to disk or re-encoded); files are decoded by the data layer. Every image goes through the
library's pipeline (working resolution, size buckets, batches) and the same per-image
functions as the CLI's runners, so a photo gives the CLI's box and mask. PIL images have their
EXIF orientation applied, as files do.

Keyword arguments map onto ``spectral_jax.settings`` (the CLI's defaults); a bad value raises
ValueError naming the parameter; an unusable image names it as ``images[i]``.

Coordinates: pixels of the original image; boxes are [x0, y0, x1, y1] with exclusive max (the
CLI's ``predictions.jsonl``); masks are [H, W]; eigenvectors are on the patch grid (h, w) of
the image at working resolution (``Backbone.max_tokens`` patches at most).

Long lists: ``progress=True`` shows a bar, ``progress=fn`` calls ``fn(done, total)`` after each
image (eigenvectors, localize, segment, discover); off by default.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, TypeVar, Union

import numpy as np
from PIL import Image, ImageOps

from spectral_jax import compile_cache, inference, pipeline
from spectral_jax.imaging import matting
from spectral_jax import settings as settings_lib
from spectral_jax.data import datasets, decode
from spectral_jax.errors import (
  BadImageError,
  ImageTooLargeError,
  MissingDependencyError,
  SettingError,
)
from spectral_jax.inference import Backbone
from spectral_jax.models.weights.errors import CheckpointError
from spectral_jax.results import cutout
from spectral_jax.results.types import Eigen, Localization, Objects

ImageLike = Union[str, os.PathLike, Image.Image, np.ndarray]
Images = Union[ImageLike, Sequence[ImageLike]]

METHODS = ('dsm',)  # eigenvectors(): the methods with Laplacian eigenvectors of their own
REFINES = settings_lib.REFINES  # 'none', 'crf', 'bilateral'
# precision: the CLI's table ('float32' = true float32 matmuls; 'bfloat16': bf16 operands).
PRECISIONS = settings_lib.PRECISIONS
# Settings of the CLI configs each function reproduces (configs/voc.py, configs/object_seg.py).
LOCALIZE_K = 5
SEGMENT_K = 2
EDIT_K = 5

# Library setting keys → how this API spells them.
PARAMETERS = {
  'spectral.K': 'K',
  'spectral.color_lambda': 'color_lambda',
  'method': 'method',
  'segment.refine': 'refine',
  'discover.max_objects': 'max_objects',
  'discover.method': 'method',
  'model.name': 'load_backbone(name=...)',
  'model.precision': 'precision',
  'data.max_pixels': 'Backbone.max_pixels',
  'data.max_tokens': 'Backbone.max_tokens',
  'found.decoder': 'decoder',
  'found.evaluation_mode': 'evaluation_mode',
}

# How this API takes a checkpoint file the library could not obtain.
CHECKPOINT_PARAMETERS = {'model.checkpoint': 'checkpoint', 'found.decoder': 'decoder'}

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

T = TypeVar('T')


def _settings(build: Callable[[], T]) -> T:
  """Builds settings; a SettingError becomes a ValueError naming this API's parameter."""
  try:
    return build()
  except SettingError as e:
    raise ValueError(e.named(PARAMETERS.get(e.key, e.key))) from e


def _calling(run: Callable[[], T]) -> T:
  """Runs the library; its image errors name the API's knob for a limit."""
  try:
    return run()
  except ImageTooLargeError as e:
    knob = PARAMETERS.get(e.setting, e.setting)
    raise ImageTooLargeError(
      e.path, f'{e.reason}; raise {knob} to process it', e.setting, e.limit
    ) from e
  except SettingError as e:
    raise ValueError(e.named(PARAMETERS.get(e.key, e.key))) from e
  except MissingDependencyError as e:
    raise MissingDependencyError(
      e.feature, f"{e.install}, or pass refine='none' / crf=False"
    ) from e


# ----------------------------------------------------------------------------- loading


def load_backbone(
  name: str = 'dino_vits16',
  checkpoint: Optional[Union[str, os.PathLike]] = None,
  *,
  precision: str = 'float32',
  cache_dir: Optional[Union[str, os.PathLike]] = None,
) -> Backbone:
  """Loads a DINO ViT (``dino_vits16``, ``dino_vits8``, ``dino_vitb16``, ``dino_vitb8``), or
  another backbone of the registry (DINOv2 / DINOv3 / ResNet-50).

  Args:
    name: the architecture.
    checkpoint: a local .pth/.safetensors file or a URL; None = the official weights,
      downloaded once into ``cache_dir``.
    precision: matmul precision: 'float32' (true float32, as the official code and the
      CLI's default 'highest'), 'bfloat16' (bf16 ViT matmuls, float32 accumulation and
      features; ViTs only), 'high' or 'default' (TF32/bf16 passes on GPUs).
    cache_dir: weights and converted-params cache (None = $SPECTRAL_JAX_CACHE or
      ~/.cache/spectral_jax).
  """
  ckpt = '' if checkpoint is None else os.fspath(checkpoint)
  if ckpt and '://' not in ckpt and not Path(ckpt).expanduser().is_file():
    raise FileNotFoundError(f'checkpoint={checkpoint!r} does not exist')
  model = _settings(
    lambda: settings_lib.ModelSettings(
      name=name,
      checkpoint=ckpt,
      cache_dir='' if cache_dir is None else str(Path(cache_dir).expanduser()),
      precision=precision,
    )
  )
  # Compiled shapes persist across notebook restarts and scripts (<cache_dir>/xla).
  compile_cache.enable(model.cache_dir or None)
  try:
    return inference.load_backbone(model, precision)
  except CheckpointError as e:
    knob = CHECKPOINT_PARAMETERS.get(e.setting, e.setting)
    raise CheckpointError(
      f"{e}\n  pass it with {knob}='/path/to/{e.file_name or 'FILE'}'", e.setting, e.file_name
    ) from e


# ----------------------------------------------------------------------------- inputs


def _example(i: int, item: Any, where: str) -> datasets.Example:
  """One image → an Example: a file by path, pixels in memory otherwise (never written)."""
  if isinstance(item, (str, os.PathLike)):
    path = Path(item).expanduser()
    if path.is_dir():
      raise ValueError(
        f'{where}: {os.fspath(item)!r} is a folder; pass image files (a list of paths), '
        'or run the CLI with --config.data.root=FOLDER'
      )
    if not path.is_file():
      raise ValueError(f'{where}: no such image file {os.fspath(item)!r}')
    return inference.from_file(path, f'{where}: {os.fspath(item)}', i)
  if isinstance(item, Image.Image):
    try:  # a lazily opened PIL image decodes here: truncated or corrupt data fails now
      img = ImageOps.exif_transpose(item) or item  # what the file decoder does with EXIF
      rgb = decode.to_rgb_array(img, where)
    except (OSError, SyntaxError, Image.DecompressionBombError) as e:
      raise ValueError(f'{where}: unreadable PIL image ({e})') from e
  elif isinstance(item, np.ndarray) or hasattr(item, '__array__'):
    rgb = decode.rgb_array(np.asarray(item), where)
  else:
    raise ValueError(f'{where}: a {type(item).__name__}; pass a path, a PIL image or a uint8 array')
  return inference.in_memory(rgb, where, i)


def _examples(images: Images, what: str = 'images') -> tuple[bool, list[datasets.Example]]:
  """(one image given?, an Example per image named ``images[i]``)."""
  single = not isinstance(images, (list, tuple))
  items = [images] if single else list(images)
  if not items:
    raise ValueError(f'{what}: an empty list; pass an image or a list of images')
  return single, [
    _example(i, item, what if single else f'{what}[{i}]') for i, item in enumerate(items)
  ]


Progress = Union[bool, Callable[[int, int], None]]


def _progress(progress: Progress, total: int, what: str) -> Optional[pipeline.Progress]:
  """``progress=True``: a bar (tqdm); a callable: called ``(done, total)`` after each image;
  False: nothing."""
  if progress is False or progress is None:
    return None
  if progress is not True and not callable(progress):
    raise ValueError(f'progress={progress!r}: use True (a bar), False or a callable(done, total)')
  return pipeline.Progress(
    total, what, callback=None if progress is True else progress, bar=progress is True
  )


def _with_progress(progress: Progress, total: int, what: str, run: Callable[[Any], T]) -> T:
  bar = _progress(progress, total, what)
  try:
    return _calling(lambda: run(bar))
  finally:
    if bar is not None:
      bar.close()


def _output(single: bool, values: list) -> Any:
  return values[0] if single else values


def localize_methods() -> tuple[str, ...]:
  """Methods ``localize`` and ``segment`` accept (``pipeline.METHODS``): dsm, tokencut, lost,
  found."""
  return ('dsm',) + tuple(m for m in pipeline.METHODS if m != 'dsm')


def _check_method(method: str, supported: Sequence[str], what: str = '') -> None:
  if method not in supported:
    raise ValueError(f'method={method!r}: {what or "supported methods are"} {", ".join(supported)}')


def _method(method: str, decoder: Any = None, evaluation_mode: str = 'multi'):
  """MethodSettings of ``method``; FOUND's ``decoder`` (None = the official file) and
  ``evaluation_mode`` belong to method='found' only."""
  if method != 'found' and (decoder is not None or evaluation_mode != 'multi'):
    raise ValueError(
      f"decoder= and evaluation_mode= are FOUND's: pass method='found' (not {method!r})"
    )
  if decoder is not None and not isinstance(decoder, (str, os.PathLike)):
    raise ValueError(f'decoder: a {type(decoder).__name__}; pass the path of a decoder file')
  path = '' if decoder is None else os.fspath(decoder)
  found = _settings(
    lambda: settings_lib.FoundSettings(
      decoder=str(Path(path).expanduser()) if path else '', evaluation_mode=evaluation_mode
    )
  )
  return settings_lib.MethodSettings(method, found=found)


# ----------------------------------------------------------------------------- functions


def eigenvectors(
  backbone: Backbone,
  images: Images,
  *,
  K: int = 5,  # pylint: disable=invalid-name  # the paper's name
  method: str = 'dsm',
  color_lambda: float = 0.0,
  progress: Progress = False,
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
  spectral = _settings(lambda: settings_lib.SpectralSettings(K=K, color_lambda=color_lambda))
  single, examples = _examples(images)
  found = _with_progress(
    progress,
    len(examples),
    'eigenvectors',
    lambda bar: inference.eigenpairs(backbone, examples, spectral, bar),
  )
  return _output(single, found)


def localize(
  backbone: Backbone,
  images: Images,
  *,
  method: str = 'dsm',
  decoder: Any = None,
  progress: Progress = False,
) -> Union[Localization, list[Localization]]:
  """The main object's box per image (``--mode=localize``, configs/voc.py settings: K = 5).

  'dsm': the Fiedler vector > 0 (minority side after the sign rule), its largest 8-connected
  patch component, that component's box; the same functions as the CLI, hence its boxes.
  'tokencut' / 'lost' (where ``localize_methods()`` lists them): the seed component of
  TokenCut's bipartition or LOST's seed expansion (``pipeline.METHODS``), its box.
  'found': FOUND's object-discovery box (the largest 4-connected component of its decoder's
  mask at patch resolution; needs ``load_backbone('dino_vits8', <300-epoch file>)``), with
  ``decoder`` a decoder file (None = FOUND's shipped file, downloaded once into the backbone's
  cache_dir). An image where no patch is foreground raises ValueError (no box).

  Returns:
    A ``Localization`` (box_xyxy in original pixels, exclusive max; score; image_size) per
    image; one for one image, a list for a list. LOST has no eigenvalue: its score is 1;
    FOUND's is the mean probability of the component's patches.
  """
  _check_method(method, localize_methods())
  method_settings = _method(method, decoder)
  spectral = settings_lib.SpectralSettings(K=LOCALIZE_K)
  single, examples = _examples(images)
  found = _with_progress(
    progress,
    len(examples),
    'localize',
    lambda bar: inference.localize(backbone, examples, method_settings, spectral, bar),
  )
  return _output(single, found)


def segment(
  backbone: Backbone,
  images: Images,
  *,
  method: str = 'dsm',
  refine: str = 'none',
  evaluation_mode: str = 'multi',
  decoder: Any = None,
  progress: Progress = False,
) -> Union[np.ndarray, list[np.ndarray]]:
  """The main object's mask per image (``--mode=segment``, configs/object_seg.py: K = 2).

  Args:
    method: 'dsm' (Fiedler vector > 0), 'tokencut' (its saliency path: Lanczos resize, seed
      component), 'lost' (seed expansion) or 'found' (FOUND's decoder on DINO ViT-S/8 keys,
      its official evaluation), as ``--config.method``.
    refine: 'none', 'crf' (the official dense CRF; needs the ``crf`` extra, pydensecrf2) or
      'bilateral' (TokenCut's bilateral solver, mask = output > 0.5; FOUND: its "+BS", with
      its own post-processing and IoU gate).
    evaluation_mode: FOUND's 'multi' (every pixel above 0.5, the official default) or 'single'
      (the largest component) (``--config.found.evaluation_mode``).
    decoder: FOUND's decoder file (None = its shipped file, downloaded once).
  Returns:
    bool [H, W] at the original size per image; one for one image, a list for a list.
  """
  _check_method(method, localize_methods(), 'segment supports')
  method_settings = _method(method, decoder, evaluation_mode)
  refine_settings = _settings(lambda: settings_lib.RefineSettings(refine=refine))
  spectral = settings_lib.SpectralSettings(K=SEGMENT_K)
  single, examples = _examples(images)
  found = _with_progress(
    progress,
    len(examples),
    'segment',
    lambda bar: inference.segment(
      backbone, examples, method_settings, refine_settings, spectral, bar
    ),
  )
  return _output(single, found)


def discover(
  backbone: Backbone,
  images: Images,
  *,
  max_objects: int = 3,
  crf: bool = False,
  method: str = 'maskcut',
  progress: Progress = False,
) -> Union[Objects, list[Objects]]:
  """The objects of each image: MaskCut (CutLER's iterated normalized cuts, up to
  ``max_objects``) or ProMerge (``method='promerge'``: prompts and merging, any number of
  objects; needs ``load_backbone('dino_vitb8')`` as the official).

  Args:
    max_objects: MaskCut's cuts per image (CutLER: 3).
    method: 'maskcut' or 'promerge' (``--config.discover.method``).
    crf: MaskCut's dense CRF and IoU filter (``--mode=discover``'s default, the released
      pseudo-labels; needs the ``crf`` extra). Off by default here: without it the masks are
      the cuts resized to the image.
  Returns:
    ``Objects`` (masks [n, H, W], boxes [n, 4], scores [n]) per image; one for one image, a
    list for a list.
  """
  if not isinstance(max_objects, int) or isinstance(max_objects, bool):
    raise ValueError(f'max_objects={max_objects!r}: use an int in 1..255')
  options = _settings(
    lambda: settings_lib.DiscoverSettings(method=method, max_objects=max_objects, crf=bool(crf))
  )
  single, examples = _examples(images)
  found = _with_progress(
    progress,
    len(examples),
    'discover',
    lambda bar: inference.discover(backbone, examples, options, progress=bar),
  )
  return _output(single, found)


def _background(background: Any) -> cutout.Background:
  """None | colour ('white', '#RRGGBB', 'r,g,b', (r, g, b)) | image (path, PIL, uint8 array)."""
  if background is None:
    return None
  if isinstance(background, str):
    try:
      return cutout.resolve_background(background)
    except SettingError as e:
      raise ValueError(e.named('background')) from e
  if isinstance(background, os.PathLike):
    return decode.load_rgb(background)
  if isinstance(background, Image.Image):
    return decode.to_rgb_array(background, 'background')
  if isinstance(background, tuple) and len(background) == 3:
    try:
      return matting.parse_color(background)
    except ValueError as e:
      raise ValueError(f'background={background!r}: {e}') from e
  if isinstance(background, np.ndarray):
    return decode.rgb_array(background, 'background')
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
  _, (example,) = _examples(image, 'image')
  spectral = settings_lib.SpectralSettings(K=EDIT_K)
  return _calling(
    lambda: inference.remove_background(
      backbone, example, settings_lib.EditSettings(), bg, spectral
    )
  )


__all__ += ['BadImageError', 'ImageTooLargeError']
