"""``--mode=serve``: a local web page and HTTP API on one loaded backbone (standard library only).

The endpoints, their options and handlers are the routing table (``routes.ROUTES``; GET
/openapi.json and /docs describe it); this module is the HTTP plumbing: admission, bodies,
limits, the model's thread, JSON errors. An image is the raw request body (any
``Content-Type``) or the multipart field ``image``; options are query parameters or multipart
fields. Errors are JSON ``{"error": "...", "status": N}`` with a 4xx/5xx status.

Why this shape: the model is one jitted function on one device, so a single worker thread owns
it and runs requests one at a time, in arrival order; handler threads only read, decode and
encode. At most ``max_queue`` requests are admitted at once (running or waiting, counted
before the body is decoded, so memory stays bounded); more are answered 503 at once. Uploads
above ``max_upload_bytes`` get 413, images above ``max_pixels`` 413, undecodable ones 400.
Each upload is decoded once, in memory, and handed to the library as pixels: nothing is
written to disk or re-encoded. Library errors map to status codes by type
(``ImageTooLargeError`` 413, ``BadImageError`` and ``SettingError`` 400).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import http.server
import json
import queue
import socket
import socketserver
import threading
import time
import urllib.parse
from typing import Any, Callable

import numpy as np
from absl import logging

from spectral_jax import settings
from spectral_jax.data import decode
from spectral_jax.errors import (
  BadImageError,
  ImageTooLargeError,
  MissingDependencyError,
  SettingError,
)
from spectral_jax.inference import Backbone
from spectral_jax.server import model, routes
from spectral_jax.server.routes import JSON, LOCALIZE_METHODS, SEGMENT_METHODS
from spectral_jax.server.uploads import HTTPError, Upload, parse_options
from spectral_jax.version import __version__

_CHUNK = 1 << 16
# A refused body is read and dropped (clients send it all before reading the answer, so the
# 413/503 arrives instead of a connection reset) up to this many bytes; a larger one is cut off.
_DRAIN_MIN = 512 << 20
_DRAIN_FACTOR = 4  # or this many times max_upload_bytes, if larger


# ----------------------------------------------------------------------------- the worker


class Worker:
  """The one thread that owns the model: jobs run one at a time, in submission order."""

  def __init__(self):
    self._jobs: queue.Queue = queue.Queue()
    self._thread = threading.Thread(target=self._loop, name='spectral_jax-model', daemon=True)
    self._thread.start()

  def submit(self, fn: Callable[[], Any]) -> concurrent.futures.Future:
    future: concurrent.futures.Future = concurrent.futures.Future()
    self._jobs.put((fn, future))
    return future

  def stop(self) -> None:
    self._jobs.put(None)
    self._thread.join(timeout=30)

  def _loop(self) -> None:
    while True:
      job = self._jobs.get()
      if job is None:
        return
      fn, future = job
      if not future.set_running_or_notify_cancel():  # timed out while waiting: skip it
        continue
      try:
        future.set_result(fn())
      except BaseException as e:  # pylint: disable=broad-except  # handed to the request
        future.set_exception(e)


# ----------------------------------------------------------------------------- requests


def status_of(error: Exception) -> int:
  """The HTTP status of a library error, by its type."""
  return 413 if isinstance(error, ImageTooLargeError) else 400


def message_of(error: Exception) -> str:
  """A library error in the server's words: a limit is named by the server's setting."""
  if isinstance(error, ImageTooLargeError):
    return f"{error} (the server's {error.setting}, set with --config.{error.setting})"
  return str(error)


def _error_body(status: int, message: str) -> bytes:
  return json.dumps({'error': message, 'status': status}).encode()


# ----------------------------------------------------------------------------- the server


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
  """The HTTP server: a thread per connection, one ``Worker`` for the model."""

  daemon_threads = True
  allow_reuse_address = True

  def __init__(
    self,
    backbone: Backbone,
    host: str = '127.0.0.1',
    port: int = 8000,
    *,
    max_upload_bytes: int = 32 << 20,
    max_queue: int = 32,
    timeout: float = 300.0,
    max_pixels: int = decode.DEFAULT_MAX_PIXELS,
    cache_entries: int = model.DEFAULT_ENTRIES,
    cache_bytes: int = model.DEFAULT_BYTES,
  ):
    if max_upload_bytes < 1 or max_queue < 1 or timeout <= 0 or max_pixels < 1:
      raise ValueError('max_upload_bytes, max_queue, timeout and max_pixels must be positive')
    # The forward passes of the last few model inputs are kept: one upload's box, mask,
    # cutout and eigenvectors (one /api/analyze, or the separate endpoints) cost one.
    self.features = model.FeatureCache(backbone.extractor, cache_entries, cache_bytes)
    # The library re-checks the pixel limit: the server's applies there too (same model).
    self.backbone = dataclasses.replace(
      backbone, max_pixels=int(max_pixels), extractor=self.features
    )
    self.max_upload_bytes = int(max_upload_bytes)
    self.max_queue = int(max_queue)
    self.timeout = float(timeout)
    self.max_pixels = int(max_pixels)
    self.worker = Worker()
    self._slots = threading.BoundedSemaphore(self.max_queue)
    self._count_lock = threading.Lock()
    self.in_flight = 0  # admitted requests (running or waiting)
    if ':' in host:  # an IPv6 address such as ::1
      self.address_family = socket.AF_INET6
    super().__init__((host, port), Handler)

  @property
  def url(self) -> str:
    host, port = self.server_address[:2]
    return f'http://{host}:{port}'

  def admit(self) -> bool:
    if not self._slots.acquire(blocking=False):
      return False
    with self._count_lock:
      self.in_flight += 1
    return True

  def release(self) -> None:
    with self._count_lock:
      self.in_flight -= 1
    self._slots.release()

  def run_on_model(self, fn: Callable[[], Any]) -> Any:
    """Runs ``fn`` on the worker thread: a job still queued after ``timeout`` seconds is
    dropped (503); one that started in time is waited for (its own run time does not count,
    and it keeps its queue slot until it answers)."""
    future = self.worker.submit(fn)
    try:
      return future.result(timeout=self.timeout)
    except concurrent.futures.TimeoutError:
      if not future.cancel():  # already running (or done): a running job cannot be stopped
        return future.result()
      raise HTTPError(
        503, f'timed out after {self.timeout:g} s waiting for the model (server busy)'
      ) from None

  def server_close(self) -> None:
    super().server_close()
    self.worker.stop()

  def health(self) -> dict:
    return {
      'status': 'ok',
      'version': __version__,
      'model': self.backbone.name,
      # The file's name only: a page must not learn the server's folders.
      'checkpoint': (
        None
        if not self.backbone.checkpoint
        else self.backbone.checkpoint.rstrip('/').rsplit('/', 1)[-1]
      ),
      'patch_size': self.backbone.patch_size,
      'methods': list(LOCALIZE_METHODS),
      'segment_methods': list(SEGMENT_METHODS),
      'refines': list(settings.REFINES),
      'max_upload_bytes': self.max_upload_bytes,
      'max_pixels': self.max_pixels,
      'max_queue': self.max_queue,
      'in_flight': self.in_flight,
      # Forward passes of the backbone so far (one per upload and model input: see
      # server/model.py) and the cache that keeps the last few.
      'model_runs': self.features.runs,
      'feature_cache': self.features.stats(),
    }

  def decode(self, name: str, data: bytes, min_side: int = 0) -> np.ndarray:
    """Bytes → RGB (the CLI's decoder: EXIF applied, alpha dropped), limits as 4xx; images
    need ``min_side`` pixels a side (default one patch)."""
    try:
      return decode.decode_rgb(
        data, name, min_side=min_side or self.backbone.patch_size, max_pixels=self.max_pixels
      )
    except BadImageError as e:
      raise HTTPError(status_of(e), message_of(e)) from None


class Handler(http.server.BaseHTTPRequestHandler):
  """One connection: routes, limits, JSON errors."""

  server: Server
  protocol_version = 'HTTP/1.1'
  timeout = 60  # a client that stops sending mid-body does not hold a thread forever

  def log_message(self, format, *args):  # pylint: disable=redefined-builtin
    logging.info('%s %s', self.address_string(), format % args)

  def _send(self, status: int, content_type: str, body: bytes, extra=None) -> None:
    self.send_response(status)
    self.send_header('Content-Type', content_type)
    self.send_header('Content-Length', str(len(body)))
    extra = extra or {}
    if 'Cache-Control' not in extra:
      self.send_header('Cache-Control', 'no-store')
    self.send_header('X-Content-Type-Options', 'nosniff')
    for key, value in extra.items():
      self.send_header(key, value)
    self.end_headers()
    if self.command != 'HEAD':
      self.wfile.write(body)

  def _error(self, status: int, message: str, extra=None) -> None:
    self._send(status, JSON, _error_body(status, message), extra)

  def _drain(self, length: int) -> bool:
    """Reads and drops a body (so the client gets the answer, not a reset); False if cut."""
    limit = max(self.server.max_upload_bytes * _DRAIN_FACTOR, _DRAIN_MIN)
    if length > limit:
      self.close_connection = True
      return False
    while length > 0:
      chunk = self.rfile.read(min(_CHUNK, length))
      if not chunk:
        break
      length -= len(chunk)
    return True

  def _read_body(self, length: int) -> bytes:
    parts, left = [], length
    while left > 0:
      try:
        chunk = self.rfile.read(min(_CHUNK, left))
      except (TimeoutError, OSError) as e:  # a client that stopped sending mid-body
        self.close_connection = True
        raise HTTPError(
          408, f'the body stopped after {length - left} of {length} bytes ({e})'
        ) from None
      if not chunk:
        raise HTTPError(400, f'the body ended after {length - left} of {length} bytes')
      parts.append(chunk)
      left -= len(chunk)
    return b''.join(parts)

  def _foreign(self) -> bool:
    """Answers 403 (True) to a request for another host name (DNS rebinding) or from another
    site's page (its Origin): only the served address may drive the model."""
    host = self.headers.get('Host', '')
    port = self.server.server_address[1]
    if is_loopback(self.server.server_address[0]):
      names = {f'{n}:{port}' for n in ('localhost', '127.0.0.1', '[::1]')}
      names.add(f'{self.server.server_address[0]}:{port}')
      if host and host not in names:
        self._error(403, f'Host {host!r} is not this server: use http://127.0.0.1:{port}')
        return True
    origin = self.headers.get('Origin')
    if origin and origin != 'null' and urllib.parse.urlsplit(origin).netloc != host:
      self._error(403, f'requests from {origin} are refused: use the page this server serves')
      return True
    return False

  def _route(self):
    """(request path, (template, route, path arguments) or None) of this request."""
    path = urllib.parse.urlsplit(self.path).path
    return path, routes.find(path)

  def do_GET(self):  # pylint: disable=invalid-name
    if self._foreign():
      return None
    path, found = self._route()
    if found is None:
      return self._error(404, f'no such page: {path}')
    _, route, args = found
    if route.method != 'GET':
      return self._error(405, f'{path} takes POST with an image', {'Allow': route.method})
    query = urllib.parse.urlsplit(self.path).query
    reply = answer(
      path,
      lambda: route.handler(
        self.server,
        routes.Call(parse_options(route.params, routes.query_options(query)), None, args),
      ),
    )
    return self._send(*reply)

  do_HEAD = do_GET  # pylint: disable=invalid-name

  def _not_allowed(self):
    path, found = self._route()
    length = self.headers.get('Content-Length', '0')
    self._drain(int(length) if length.isdigit() else 0)
    if found is None:
      return self._error(404, f'no such page: {path}')
    allow = 'POST' if found[1].method == 'POST' else 'GET, HEAD'
    return self._error(405, f'{self.command} is not supported on {path}', {'Allow': allow})

  do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed  # pylint: disable=invalid-name

  def do_POST(self):  # pylint: disable=invalid-name
    split = urllib.parse.urlsplit(self.path)
    if self._foreign():
      self.close_connection = True
      return None
    path, found = self._route()
    if found is None or found[1].method != 'POST':  # whatever the body (or its headers)
      self.close_connection = True
      if found is None:
        return self._error(404, f'no such endpoint: {path}')
      return self._error(405, f'{path} takes GET', {'Allow': 'GET, HEAD'})
    _, route, args = found
    length_text = self.headers.get('Content-Length')
    if self.headers.get('Transfer-Encoding', '').lower() not in ('', 'identity'):
      self.close_connection = True
      return self._error(411, 'chunked uploads are not supported: send a Content-Length')
    try:
      length = int(length_text) if length_text is not None else -1
    except ValueError:
      length = -1
    if length < 0:
      self.close_connection = True
      return self._error(411, 'a POST needs a Content-Length header')
    if length > self.server.max_upload_bytes:
      self._drain(length)
      return self._error(
        413,
        f'upload of {length} bytes is above the limit of {self.server.max_upload_bytes} '
        'bytes (serve.max_upload_bytes)',
        {'Connection': 'close'},
      )
    if not self.server.admit():
      self._drain(length)
      return self._error(
        503,
        f'server busy: {self.server.max_queue} requests already queued (serve.max_queue); '
        'retry later',
        {'Retry-After': '1'},
      )

    def run():
      body = self._read_body(length)
      upload = Upload(body, self.headers.get('Content-Type', ''), routes.query_options(split.query))
      options = parse_options(route.params, upload.options)
      return route.handler(self.server, routes.Call(options, upload, args))

    try:
      reply = answer(path, run, timed=True)
    finally:
      self.server.release()  # before the answer: a client's next request finds the slot free
    return self._send(*reply)


def answer(path: str, run: Callable[[], tuple], timed: bool = False) -> tuple:
  """A handler's reply, or its error as JSON with the status of its type."""
  start = time.monotonic()
  try:
    reply = run()
    if timed:
      logging.info('%s done in %.2f s', path, time.monotonic() - start)
    return reply
  except HTTPError as e:
    return e.status, JSON, _error_body(e.status, e.message)
  except (BadImageError, SettingError) as e:  # the library's image and setting errors
    status = status_of(e)
    return status, JSON, _error_body(status, message_of(e))
  except MissingDependencyError as e:  # an optional package this server lacks
    return 501, JSON, _error_body(501, str(e))
  except ValueError as e:  # another refused input (e.g. a seed outside its own side)
    return 400, JSON, _error_body(400, str(e))
  except Exception as e:  # pylint: disable=broad-except  # the server keeps serving
    logging.exception('%s failed', path)
    return 500, JSON, _error_body(500, f'internal error: {type(e).__name__}: {e}')


def is_loopback(host: str) -> bool:
  return host in ('localhost', '::1') or host.startswith('127.')
