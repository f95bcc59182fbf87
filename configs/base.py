"""Defaults shared by every config: ``spectral_jax.settings``' dataclasses, as a ConfigDict.

Every other config starts from ``get_config()`` here (``spectral_jax.config_dict.default_config``):
the dataclasses are the one source of every default and of its one line of documentation.
"""

import ml_collections

from spectral_jax import config_dict

METHOD_ARGS = config_dict.METHOD_ARGS
with_method = config_dict.with_method


def get_config() -> ml_collections.ConfigDict:
  return config_dict.default_config()
