"""``--mode=serve``: the web demo and HTTP API (``spectral_jax/app.py``) on one loaded backbone.

  python main.py --config=configs/folder.py --mode=serve --config.serve.port=8000

Needs no ``data.root``; ``--workdir`` is optional (default: a temporary folder, deleted at
exit). The backbone is loaded once, then the server answers until interrupted (Ctrl-C or
SIGTERM). Nothing is written to the workdir: uploads are decoded in memory.
"""

from __future__ import annotations

import os
import signal
import threading

from absl import logging

from spectral_jax import inference
from spectral_jax.server import app
from spectral_jax.tasks import common


def make_server(config, backbone: inference.Backbone) -> app.Server:
  """The server of ``config.serve`` on ``backbone``, bound but not yet serving."""
  run_settings = common.check_config(config)
  opts = run_settings.serve
  try:
    return app.Server(
      backbone,
      opts.host,
      opts.port,
      max_upload_bytes=opts.max_upload_bytes,
      max_queue=opts.max_queue,
      timeout=opts.timeout,
      max_pixels=run_settings.limits.max_pixels,
    )
  except OSError as e:  # port taken, address not local, ...
    raise OSError(
      f'cannot listen on {opts.host}:{opts.port} ({e}); pass another '
      '--config.serve.port (0 = any free port) or --config.serve.host'
    ) from e


def run(config, workdir: str) -> None:
  del workdir  # held (locked) by the CLI; the server writes nothing there
  run_settings = common.check_config(config)
  if not app.is_loopback(run_settings.serve.host):
    logging.warning(
      'serve.host=%s: the server is reachable from other machines, without authentication',
      run_settings.serve.host,
    )
  backbone = inference.load_backbone(run_settings.model)
  backbone.max_tokens = run_settings.limits.max_tokens  # the CLI's memory policy applies here
  server = make_server(config, backbone)

  def stop(signum, frame):  # SIGTERM: finish like Ctrl-C (workdir lock released)
    del signum, frame
    threading.Thread(target=server.shutdown, daemon=True).start()

  if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGTERM, stop)
  # print, not only log: scripts wait for this line (port 0 picks a free port).
  print(f'spectral_jax: serving {backbone.name} on {server.url} (PID {os.getpid()})', flush=True)
  logging.debug('serving %r on %s', backbone, server.url)  # the line above said it
  try:
    server.serve_forever(poll_interval=0.2)
  except KeyboardInterrupt:
    pass
  finally:
    server.server_close()
    logging.info('server stopped')
