"""The model's side of a request: one upload's features computed once (``FeatureCache``) and
the pipeline results of one request shared by its box, mask, cutout and eigenvectors
(``Analysis``). Everything here runs on the model's thread.

Why a feature cache: the page shows a box, a mask, a cutout and eigenvectors of one image,
each with the CLI's own settings (K = 5 for boxes and cutouts, K = 2 for masks, the user's K
and λ for the heat maps). Those settings change the eigen-solve, not the backbone's input, so
the forward pass (the cost) is kept for the last few inputs and every later solve on the same
pixels reuses it: the separate endpoints on one upload cost one forward pass too. A method
that feeds the model other pixels (TokenCut's and LOST's padded input, TokenCut's resized
saliency input) is another input, hence another forward pass, as on the CLI.
"""

from __future__ import annotations

import collections
import hashlib
import threading
from typing import Any, Optional, Sequence

import numpy as np

from spectral_jax import inference, pipeline
from spectral_jax.data import datasets
from spectral_jax.results import cutout as cutouts
from spectral_jax.results.types import Eigen, Localization
from spectral_jax.settings import EditSettings, MethodSettings, RefineSettings, SpectralSettings

# The CLI configs' settings each endpoint reproduces (as spectral_jax.api: voc.py, object_seg.py,
# edit.py).
LOCALIZE = SpectralSettings(K=5)
SEGMENT = SpectralSettings(K=2)
EDIT = SpectralSettings(K=5)

DEFAULT_ENTRIES = 4
DEFAULT_BYTES = 256 << 20


class FeatureCache:
  """A backbone's extractor with a memo of its last ``max_entries`` forward passes (at most
  ``max_bytes`` of outputs; a larger one is not kept), keyed by the sha256 of the model's
  input pixels, their shapes and the token length. Anything else is the extractor's own.
  ``runs`` counts forward passes, ``hits`` the passes saved."""

  def __init__(
    self, extractor: Any, max_entries: int = DEFAULT_ENTRIES, max_bytes: int = DEFAULT_BYTES
  ):
    self.extractor = extractor
    self.max_entries = int(max_entries)
    self.max_bytes = int(max_bytes)
    self.runs = 0
    self.hits = 0
    self._entries: collections.OrderedDict = collections.OrderedDict()
    self._sizes: dict = {}
    self._lock = threading.Lock()

  def __getattr__(self, name: str) -> Any:  # arch, name, variables, mesh, ...
    if name == 'extractor':  # not set yet (copying): no recursion
      raise AttributeError(name)
    return getattr(self.extractor, name)

  @staticmethod
  def key(crops: Sequence[np.ndarray], length: Optional[int], with_cls: bool) -> str:
    digest = hashlib.sha256(repr((length, bool(with_cls))).encode())
    for crop in crops:
      crop = np.ascontiguousarray(crop)
      digest.update(repr((crop.shape, crop.dtype.str)).encode())
      digest.update(memoryview(crop).cast('B'))
    return digest.hexdigest()

  def __call__(
    self, crops: Sequence[np.ndarray], length: Optional[int] = None, with_cls: bool = False
  ) -> dict:
    key = self.key(crops, length, with_cls)
    with self._lock:
      if key in self._entries:
        self._entries.move_to_end(key)
        self.hits += 1
        return dict(self._entries[key])
    out = self.extractor(crops, length, with_cls=with_cls)
    size = sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in out.values())
    with self._lock:
      self.runs += 1
      if size <= self.max_bytes and self.max_entries > 0:
        self._entries[key] = dict(out)
        self._sizes[key] = size
        while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
          old, _ = self._entries.popitem(last=False)
          del self._sizes[old]
    return out

  @property
  def bytes(self) -> int:
    return sum(self._sizes.values())

  def stats(self) -> dict:
    with self._lock:
      return {
        'entries': len(self._entries),
        'max_entries': self.max_entries,
        'bytes': self.bytes,
        'max_bytes': self.max_bytes,
        'hits': self.hits,
      }


class Analysis:
  """One decoded upload and the pipeline results it has needed so far, keyed by the pipeline's
  arguments: a request's box, mask, cutout and eigenvectors share a result where their
  settings agree (DSM's box and cutout, and the heat maps at K = 5, λ = 0, are one
  eigen-solve). Each output is what the API (``spectral_jax.inference``) gives: the same
  per-image functions on the same pipeline results."""

  def __init__(self, backbone: inference.Backbone, example: datasets.Example):
    self.backbone = backbone
    self.example = example
    self._results: dict = {}

  def result(
    self,
    spectral: SpectralSettings,
    method: MethodSettings = MethodSettings(),
    segment: bool = False,
  ) -> pipeline.ImageResult:
    key = (spectral, method, segment)
    if key not in self._results:
      (self._results[key],) = inference.results(
        self.backbone,
        [self.example],
        spectral,
        method,
        segment=segment,
        which_matrix='laplacian' if segment else '',
      )
    return self._results[key]

  def localization(self, method: str) -> Localization:
    """``inference.localize``'s box."""
    return inference.localization_of(self.result(LOCALIZE, MethodSettings(method)), LOCALIZE)

  def mask(self, method: str, refine: str) -> np.ndarray:
    """``inference.segment``'s mask, bool [H, W]."""
    settings = MethodSettings(method)
    r = self.result(SEGMENT, settings, segment=True)
    return inference.mask_of(r, settings, RefineSettings(refine=refine))

  def cutout(self, background: cutouts.Background = None) -> np.ndarray:
    """``inference.remove_background``'s cutout (RGBA) or composite (RGB)."""
    return inference.cutout_of(self.result(EDIT), self.backbone, EditSettings(), background)

  def eigen(self, spectral: SpectralSettings) -> Eigen:
    """``inference.eigenpairs``' eigenpairs."""
    return inference.eigen_of(self.result(spectral))
