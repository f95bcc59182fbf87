"""The error type shared by the checkpoint readers, cache and façade."""

from __future__ import annotations

from pathlib import Path

HINT = "--config.model.checkpoint=/path/to/file.pth"


class CheckpointError(RuntimeError):
  """A checkpoint could not be obtained, parsed or matched to the model."""


def missing_file(path: Path) -> FileNotFoundError:
  return FileNotFoundError(
      f"Checkpoint file not found: {path}. Pass an existing checkpoint with {HINT}"
  )
