"""``python -m spectral_jax --config=... --mode=... --workdir=...``: the same CLI as main.py."""

from spectral_jax import cli

if __name__ == '__main__':
  cli.run()
