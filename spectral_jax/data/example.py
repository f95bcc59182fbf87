"""`Example`: one image of a dataset (a file, a tfds record or pixels in memory), not yet
decoded, with its annotations."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class TfdsRef:
  """Where a tfds record lives: the prepared builder directory, the split and the index."""

  builder_dir: str
  split: str
  index: int


@dataclasses.dataclass(frozen=True, eq=False)
class Example:
  """One image of a dataset, not yet decoded.

  Attributes:
    id: output stem (file stem; folder-relative path with '/' -> '__' for `image_folder`).
    path: image file, or None for a tfds record (`tfds_ref`).
    image_hw: (H, W) of the stored image when known without decoding, else None.
    boxes: [n, 4] float64 xyxy GT boxes in pixels, or None when the dataset has none.
    labels: class name per box, or None.
    mask_path: GT mask file, or None.
    center_crop: score after cropping prediction and GT mask to the centred min-side square
      (CUB protocol). Images are NOT cropped for the model: the official code extracts
      features from the full image and crops only at evaluation.
    apply_exif: honour EXIF orientation when decoding (False where annotations exist).
    tfds_ref: record location for tfds datasets.
    gt_error: set when the image's annotation exists but cannot be read (scored as skipped).
    pixels: the decoded image, RGB uint8 [H, W, 3], for an image given in memory (the Python
      API, an HTTP upload): never written to disk or re-encoded; `path` is then None and `name`
      is what errors call it.
    name: how errors and logs name an in-memory image (e.g. 'images[2]').
  """

  id: str
  path: str | None
  image_hw: tuple[int, int] | None = None
  boxes: np.ndarray | None = None
  labels: tuple[str, ...] | None = None
  mask_path: str | None = None
  center_crop: bool = False
  apply_exif: bool = True
  tfds_ref: TfdsRef | None = None
  gt_error: str | None = None  # why the ground truth of an annotated image is unusable
  pixels: np.ndarray | None = None
  name: str | None = None

  @property
  def label(self) -> str:
    """How logs and errors name the image: its file, its in-memory name, else its id."""
    return str(self.path or self.name or self.id)

  @property
  def gt_boxes(self) -> np.ndarray | None:
    """Alias of `boxes`."""
    return self.boxes
