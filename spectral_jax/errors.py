"""The library's typed errors, in its own words.

The library names a setting by its key (``data.max_pixels``) and an image by the name it was
given; each front-end says the rest in its caller's terms: the CLI turns a key into its
``--config.`` flag, the Python API into its parameter, the HTTP server picks a status code by
type (``ImageTooLargeError`` → 413, other ``BadImageError`` and ``SettingError`` → 400). No
front-end rewrites or matches message text.
"""

from __future__ import annotations

from typing import Any, Optional


class SpectralJaxError(Exception):
  """Base class of every error the library raises on purpose."""


class SettingError(SpectralJaxError, ValueError):
  """A setting with a value the library cannot use.

  ``key``: the setting's dotted key (``spectral.K``, ``data.max_tokens``), the same in every
  front-end; ``value``: what was given; ``reason``: why it is refused and what would work.
  """

  def __init__(self, key: str, value: Any, reason: str):
    self.key, self.value, self.reason = key, value, reason
    super().__init__(f'{key}={value!r}: {reason}')

  def named(self, name: str) -> str:
    """The message with the setting spelled as the caller knows it (a flag, a parameter)."""
    return f'{name}={self.value!r}: {self.reason}'


class BadImageError(SpectralJaxError, ValueError):
  """An image (or mask) that exists but cannot be used. ``path``: its name (a file path, or
  what the caller called it); ``reason``: why."""

  def __init__(self, path: Any, reason: str):
    self.path = str(path)
    self.reason = reason
    super().__init__(f'{self.path}: {reason}' if self.path else reason)


class ImageTooLargeError(BadImageError):
  """An image above a size limit. ``setting``: the key of the limit (``data.max_pixels``,
  ``data.max_tokens``) that a caller raises to process it; ``limit``: its value."""

  def __init__(self, path: Any, reason: str, setting: str, limit: Optional[int] = None):
    self.setting, self.limit = setting, limit
    super().__init__(path, reason)


class MissingDependencyError(SpectralJaxError, ImportError):
  """An optional package a feature needs is not installed; ``install`` is the pip command."""

  def __init__(self, feature: str, install: str):
    self.feature, self.install = feature, install
    super().__init__(f'{feature} needs an optional package: {install}')
