"""``--mode=serve``: the web demo and HTTP API (``spectral_jax/web.py``) on one loaded backbone.

  python main.py --config=configs/folder.py --mode=serve --config.serve.port=8000

Needs no ``data.root``; ``--workdir`` is optional (default: a temporary folder, deleted at
exit). The backbone is loaded once, then the server answers until interrupted (Ctrl-C or
SIGTERM). Nothing is written to the workdir: uploads are decoded in memory.
"""

from __future__ import annotations

import signal
import threading

from absl import logging

from spectral_jax import api, web


def _settings(config):
  s = config.get('serve', None)
  get = (lambda key, default: s.get(key, default)) if s is not None else (lambda k, d: d)
  return dict(
      host=get('host', '127.0.0.1'),
      port=int(get('port', 8000)),
      max_upload_bytes=int(get('max_upload_bytes', 32 << 20)),
      max_queue=int(get('max_queue', 32)),
      timeout=float(get('timeout', 300.0)),
  )


def make_server(config, backbone: api.Backbone) -> web.Server:
  """The server of ``config.serve`` on ``backbone``, bound but not yet serving."""
  opts = _settings(config)
  for key in ('max_upload_bytes', 'max_queue', 'timeout'):
    if opts[key] <= 0:
      raise ValueError(f'--config.serve.{key}={opts[key]!r}: must be > 0')
  if not 0 <= opts['port'] <= 65535:
    raise ValueError(f"--config.serve.port={opts['port']!r}: use 0..65535 (0 = any free port)")
  try:
    return web.Server(backbone, max_pixels=config.data.max_pixels, **opts)
  except OSError as e:  # port taken, address not local, ...
    raise OSError(
        f"cannot listen on {opts['host']}:{opts['port']} ({e}); pass another "
        '--config.serve.port (0 = any free port) or --config.serve.host'
    ) from e


def run(config, workdir: str) -> None:
  del workdir  # held (locked) by the CLI; the server writes nothing there
  opts = _settings(config)
  if not web.is_loopback(opts['host']):
    logging.warning(
        'serve.host=%s: the server is reachable from other machines, without authentication',
        opts['host'],
    )
  backbone = api.load_backbone(
      config.model.name,
      config.model.checkpoint or None,
      precision=config.model.precision,
      cache_dir=config.model.cache_dir or None,
  )
  backbone.max_tokens = config.data.max_tokens  # the CLI's memory policy applies here too
  server = make_server(config, backbone)

  def stop(signum, frame):  # SIGTERM: finish like Ctrl-C (workdir lock released)
    del signum, frame
    threading.Thread(target=server.shutdown, daemon=True).start()

  if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGTERM, stop)
  # print, not only log: scripts wait for this line (port 0 picks a free port).
  print(f'spectral_jax: serving {backbone.name} on {server.url}', flush=True)
  logging.info('serving %r on %s', backbone, server.url)
  try:
    server.serve_forever(poll_interval=0.2)
  except KeyboardInterrupt:
    pass
  finally:
    server.server_close()
    logging.info('server stopped')
