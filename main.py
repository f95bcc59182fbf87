"""Deep Spectral Methods in JAX: one entry point for every mode.

  python main.py --config=configs/voc.py --mode=localize --workdir=/tmp/voc12
  python main.py --config=configs/folder.py --mode=extract \
      --config.data.root=IMAGES_DIR --workdir=OUT

Any config value can be overridden with --config.<key>=<value>. The same command line is
``python -m spectral_jax`` and, once installed, ``spectral-jax`` (spectral_jax/cli.py), where
--config also takes a shipped config's name (--config=voc).
"""

from spectral_jax import cli

if __name__ == '__main__':
  cli.run()
