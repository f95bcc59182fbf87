"""Defaults shared by every config: ``spectral_jax.settings``' dataclasses, as a ConfigDict.

Every other config starts from ``get_config()`` here (``spectral_jax.settings.default_config``):
the dataclasses are the one source of every default and of its one line of documentation.
"""

import ml_collections

from spectral_jax import settings

METHOD_ARGS = settings.METHOD_ARGS
with_method = settings.with_method


def get_config() -> ml_collections.ConfigDict:
  return settings.default_config()
