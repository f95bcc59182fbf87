"""Folder listings: image files of a folder (workdirs excluded), image/mask pairing, and the
saliency sets' standard layouts (ECSSD, DUTS-TE, DUT-OMRON, CUB)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence, Union

from absl import logging

from spectral_jax.data.example import Example

PathLike = Union[str, os.PathLike]
IMAGE_EXTENSIONS = (
  '.jpg',
  '.jpeg',
  '.png',
  '.bmp',
  '.webp',
  '.gif',
  '.tif',
  '.tiff',
  '.ppm',
  '.pgm',
  '.pbm',
)
# A folder holding this entry is a spectral_jax workdir: never listed as input.
WORKDIR_MARKER = '.spectral_jax'


# name -> (candidate sub-folders of root, images dir, masks dir, centre crop)
_SALIENCY_LAYOUTS: dict[str, tuple[tuple[str, ...], str, str, bool]] = {
  'ECSSD': (('', 'ECSSD'), 'images', 'ground_truth_mask', False),
  'DUTS-TE': (('', 'DUTS-TE', 'DUTS/DUTS-TE'), 'DUTS-TE-Image', 'DUTS-TE-Mask', False),
  'DUT-OMRON': (('', 'DUT-OMRON', 'DUT_OMRON'), 'DUT-OMRON-image', 'pixelwiseGT-new-PNG', False),
  'CUB': (('', 'CUB_200_2011', 'CUB'), 'test_images', 'test_segmentations', True),
}


def _list_images(folder: Path, exclude: Sequence[PathLike] = ()) -> list[Path]:
  """Image files under `folder` (recursive, symlinked folders followed once), sorted by path.

  Hidden files and folders are skipped, and so are spectral_jax workdirs (``exclude`` and any
  folder holding ``WORKDIR_MARKER``), so outputs written inside `folder` never become inputs.
  Files with other extensions are counted in one log line.
  """
  excluded = {os.path.realpath(p) for p in exclude}
  seen_dirs: set[tuple[int, int]] = set()
  images, others = [], {}
  for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
    st = os.stat(dirpath)
    if (st.st_dev, st.st_ino) in seen_dirs:  # a symlink loop or a second link to a folder
      dirnames[:] = []
      continue
    seen_dirs.add((st.st_dev, st.st_ino))
    if WORKDIR_MARKER in dirnames or os.path.realpath(dirpath) in excluded:
      dirnames[:] = []
      continue
    dirnames[:] = sorted(d for d in dirnames if not d.startswith('.'))
    for name in filenames:
      if name.startswith('.'):
        continue
      suffix = os.path.splitext(name)[1].lower()
      if suffix in IMAGE_EXTENSIONS:
        images.append(Path(dirpath) / name)
      else:
        others[suffix or '(none)'] = others.get(suffix or '(none)', 0) + 1
  if others:
    n = sum(others.values())
    logging.warning(
      '%s: ignored %d %s (%s)',
      folder,
      n,
      'file that is not an image' if n == 1 else 'files that are not images',
      ', '.join(f'{k}: {v}' for k, v in sorted(others.items())),
    )
  return sorted(images)


def _by_stem(paths: Sequence[Path], what: str) -> dict[str, Path]:
  out: dict[str, Path] = {}
  for p in paths:
    if p.stem in out:
      raise ValueError(f'two {what} files share the stem {p.stem!r}: {out[p.stem]} and {p}')
    out[p.stem] = p
  return out


def _pair_masks(images: Sequence[Path], masks_dir: Path, what: str) -> dict[str, Path]:
  """Stem -> mask path for `images`; logs unpaired files on both sides."""
  masks = _by_stem(_list_images(masks_dir), f'{what} mask')
  stems = {p.stem for p in images}
  no_mask = [p.name for p in images if p.stem not in masks]
  no_image = sorted(s for s in masks if s not in stems)
  if no_mask:
    logging.warning(
      '%s: %d images without a mask in %s, e.g. %s', what, len(no_mask), masks_dir, no_mask[:3]
    )
  if no_image:
    logging.warning('%s: %d masks without an image, e.g. %s', what, len(no_image), no_image[:3])
  return masks


def saliency_folder(name: str, root: PathLike, center_crop: bool | None = None) -> list[Example]:
  """Image/mask pairs of ECSSD, DUTS-TE, DUT-OMRON or CUB, paired by file stem.

  Layouts (under `root`, or under root/<dataset folder> as in the official config):
    ECSSD: images/, ground_truth_mask/;  DUTS-TE: DUTS-TE-Image/, DUTS-TE-Mask/;
    DUT-OMRON: DUT-OMRON-image/, pixelwiseGT-new-PNG/;
    CUB: test_images/, test_segmentations/ (class sub-folders allowed).
  Images without a mask are dropped (logged). `center_crop` defaults to True for CUB only.
  The official code pairs sorted lists by position; pairing by stem is the same when the
  folders are complete and safe when they are not.
  """
  if name not in _SALIENCY_LAYOUTS:
    raise ValueError(
      f'unknown saliency dataset {name!r}; choose one of {sorted(_SALIENCY_LAYOUTS)}'
    )
  prefixes, img_sub, mask_sub, crop_default = _SALIENCY_LAYOUTS[name]
  root = Path(root)
  tried = []
  for prefix in prefixes:
    base = root / prefix if prefix else root
    if (base / img_sub).is_dir() and (base / mask_sub).is_dir():
      break
    tried.append(str(base / img_sub))
  else:
    raise FileNotFoundError(f'{name}: no {img_sub}/ and {mask_sub}/ found; tried {tried}')
  crop = crop_default if center_crop is None else center_crop
  images = _list_images(base / img_sub)
  _by_stem(images, f'{name} image')
  masks = _pair_masks(images, base / mask_sub, name)
  examples = [
    Example(
      id=p.stem, path=str(p), mask_path=str(masks[p.stem]), center_crop=crop, apply_exif=False
    )
    for p in images
    if p.stem in masks
  ]
  if not examples:
    raise ValueError(f'{name}: no image/mask pairs under {base}')
  logging.info('%s: %d image/mask pairs from %s', name, len(examples), base)
  return examples
