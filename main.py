"""Deep Spectral Methods in JAX: one entry point for every mode.

  python main.py --config=configs/voc.py --mode=localize --workdir=/tmp/voc12
  python main.py --config=configs/folder.py --mode=extract \
      --config.data.root=IMAGES_DIR --workdir=OUT

Any config value can be overridden with --config.<key>=<value>.
"""

import importlib
from pathlib import Path

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from spectral_jax import io, workdirs
from spectral_jax.models import checkpoints
from spectral_jax.tasks import common

MODES = ('extract', 'localize', 'segment', 'semantic', 'train', 'evaluate', 'edit', 'discover')

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Path to a configs/*.py file.', lock_config=True
)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where outputs (and resume state) are written.')
_MODE = flags.DEFINE_enum('mode', 'extract', MODES, 'What to run.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config = _CONFIG.value
  common.check_config(config)  # flag-named errors before anything loads
  workdir = workdirs.prepare(_WORKDIR.value)
  # Persistent compilation cache: a resumed or repeated run loads its compiled shapes.
  cache_dir = config.model.cache_dir or checkpoints.default_cache_dir()
  jax.config.update('jax_compilation_cache_dir', str(Path(cache_dir).expanduser() / 'xla'))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  dist = config.distributed
  if dist.enabled:  # multi-host: JAX's own distributed runtime
    timeout = dist.get('timeout_s', 300)
    logging.warning(
        'process %s waiting up to %d s for %s processes at %s',
        dist.process_id if dist.process_id >= 0 else '(auto)',
        timeout,
        dist.num_processes or '(auto)',
        dist.coordinator_address or '(auto)',
    )
    jax.distributed.initialize(
        dist.coordinator_address or None,
        dist.num_processes or None,
        None if dist.process_id < 0 else dist.process_id,
        initialization_timeout=timeout,
    )
  logging.info(
      'JAX process %d/%d, local devices: %s',
      jax.process_index(),
      jax.process_count(),
      jax.local_devices(),
  )
  task = importlib.import_module(f'spectral_jax.tasks.{_MODE.value}')
  with workdirs.locked(workdir, jax.process_index(), jax.process_count()):
    if jax.process_index() == 0:
      io.clean_stale_temporaries(workdir)
    task.run(config, str(workdir))


if __name__ == '__main__':
  app.run(main)
