"""The package version: one source for ``spectral_jax.__version__``, the wheel's metadata
(pyproject.toml reads it statically) and the settings records of a workdir."""

__version__ = '0.2.0'
