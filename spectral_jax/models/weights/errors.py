"""The error type shared by the checkpoint readers, cache and façade."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from spectral_jax.errors import SpectralJaxError


class CheckpointError(SpectralJaxError, RuntimeError):
  """A checkpoint could not be obtained, parsed or matched to the model.

  ``setting``: the key a caller passes a local file with (``model.checkpoint``,
  ``found.decoder``); ``file_name``: the file that would fix it, when known. The message is in
  the library's words; each front-end adds how to pass the file in its own terms (a
  ``--config.`` flag, a parameter).
  """

  def __init__(
    self, message: str, setting: str = 'model.checkpoint', file_name: Optional[str] = None
  ):
    self.setting, self.file_name = setting, file_name
    super().__init__(message)


class MissingCheckpointError(CheckpointError, FileNotFoundError):
  """A checkpoint path that does not exist."""


def missing_file(path: Path, setting: str = 'model.checkpoint') -> CheckpointError:
  return MissingCheckpointError(f'Checkpoint file not found: {path}', setting, Path(path).name)
