"""``--mode=serve``: a local web page and HTTP API on one loaded backbone (standard library only).

  POST /api/localize           → JSON {box_xyxy, score, image_size, method}
  POST /api/segment            → PNG mask (0 / 255, the image's size)
  POST /api/remove-background  → RGBA PNG cutout, or an RGB composite with ``background``
  POST /api/eigenvectors       → npz (default) or JSON with ``?format=json``
  GET  /api/health             → JSON: model, methods, limits, requests in flight
  GET  /                       → the demo page (spectral_jax/static/index.html)

An image is the raw request body (any ``Content-Type``) or the multipart field ``image``;
options are query parameters or multipart fields: method, K, lambda, refine, background,
format. Errors are JSON ``{"error": "..."}`` with a 4xx/5xx status.

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
import io
import json
import math
import queue
import socket
import socketserver
import threading
import time
import urllib.parse
from importlib import resources
from typing import Any, Callable, Optional

import numpy as np
from absl import logging
from PIL import Image

from spectral_jax.imaging import matting as edit_lib
from spectral_jax import inference, pipeline, settings
from spectral_jax.data import decode
from spectral_jax.errors import (
  BadImageError,
  ImageTooLargeError,
  MissingDependencyError,
  SettingError,
)
from spectral_jax.inference import Backbone
from spectral_jax.server.uploads import HTTPError, Upload, choice as _choice, number as _number
from spectral_jax.version import __version__

JSON = 'application/json'
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


LOCALIZE_METHODS = ('dsm',) + tuple(m for m in pipeline.METHODS if m != 'dsm')
# 'found' runs FOUND's shipped decoder (a decoder path is not an option: it would read the
# server's files) and needs a dino_vits8 server; other backbones get a 400 naming model.name.
SEGMENT_METHODS = ('dsm', 'found')


def status_of(error: Exception) -> int:
  """The HTTP status of a library error, by its type."""
  return 413 if isinstance(error, ImageTooLargeError) else 400


def message_of(error: Exception) -> str:
  """A library error in the server's words: a limit is named by the server's setting."""
  if isinstance(error, ImageTooLargeError):
    return f"{error} (the server's {error.setting}, set with --config.{error.setting})"
  return str(error)


def png_bytes(array: np.ndarray) -> bytes:
  out = io.BytesIO()
  Image.fromarray(array).save(out, format='PNG', compress_level=3)
  return out.getvalue()


def _error_body(status: int, message: str) -> bytes:
  return json.dumps({'error': message, 'status': status}).encode()


def _finite(x: float) -> Optional[float]:
  return float(x) if math.isfinite(x) else None  # JSON has no NaN (LOST has no score)


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
  ):
    if max_upload_bytes < 1 or max_queue < 1 or timeout <= 0 or max_pixels < 1:
      raise ValueError('max_upload_bytes, max_queue, timeout and max_pixels must be positive')
    # The library re-checks the pixel limit: the server's applies there too (same model).
    self.backbone = dataclasses.replace(backbone, max_pixels=int(max_pixels))
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
    }

  # ------------------------------------------------------------------- endpoints

  def decode(self, name: str, data: bytes, min_side: int = 0) -> np.ndarray:
    """Bytes → RGB (the CLI's decoder: EXIF applied, alpha dropped), limits as 4xx; images
    need ``min_side`` pixels a side (default one patch)."""
    try:
      return decode.decode_rgb(
        data, name, min_side=min_side or self.backbone.patch_size, max_pixels=self.max_pixels
      )
    except BadImageError as e:
      raise HTTPError(status_of(e), message_of(e)) from None

  def image_of(self, upload: Upload) -> Callable[[], list]:
    """The upload's decoder, run on the model's thread: a waiting request holds its
    compressed bytes (≤ serve.max_upload_bytes), not a decoded image of up to max_pixels.
    The decoded pixels go to the library as they are (one decode per upload)."""
    return lambda: [inference.in_memory(self.decode(upload.name, upload.data), upload.name)]

  def localize(self, upload: Upload) -> tuple[int, str, bytes]:
    upload.check_options(('method',))
    method = _choice(upload, 'method', 'dsm', LOCALIZE_METHODS)
    image = self.image_of(upload)
    (r,) = self.run_on_model(
      lambda: inference.localize(
        self.backbone, image(), settings.MethodSettings(method), settings.SpectralSettings(K=5)
      )
    )
    body = {
      'box_xyxy': [int(v) for v in r.box_xyxy],
      'score': _finite(r.score),
      'image_size': [int(v) for v in r.image_size],
      'method': method,
    }
    return 200, JSON, json.dumps(body).encode()

  def segment(self, upload: Upload) -> tuple[int, str, bytes]:
    upload.check_options(('method', 'refine'))
    method = _choice(upload, 'method', 'dsm', SEGMENT_METHODS)
    refine = _choice(upload, 'refine', 'none', settings.REFINES)
    image = self.image_of(upload)
    (mask,) = self.run_on_model(
      lambda: inference.segment(
        self.backbone,
        image(),
        settings.MethodSettings(method),
        settings.RefineSettings(refine=refine),
        settings.SpectralSettings(K=2),
      )
    )
    return 200, 'image/png', png_bytes(np.asarray(mask, np.uint8) * 255)

  def remove_background(self, upload: Upload) -> tuple[int, str, bytes]:
    upload.check_options(('background',))
    background: Any = lambda: None
    spec = upload.option('background', '')
    if upload.background is not None:  # an image: only cover-resized, any size
      background = lambda: self.decode(*upload.background, min_side=1)
    elif spec and spec.lower() not in ('none', 'transparent'):
      try:  # a colour only: a path here would read the server's files
        colour = edit_lib.parse_color(spec)
      except ValueError as e:
        raise HTTPError(400, f'background: {e}') from None
      background = lambda: colour
    image = self.image_of(upload)
    out = self.run_on_model(
      lambda: inference.remove_background(
        self.backbone,
        image()[0],
        settings.EditSettings(),
        background(),
        settings.SpectralSettings(K=5),
      )
    )
    return 200, 'image/png', png_bytes(out)

  def eigenvectors(self, upload: Upload) -> tuple[int, str, bytes]:
    upload.check_options(('format', 'K', 'lambda'))
    fmt = _choice(upload, 'format', 'npz', ('npz', 'json'))
    k = _number(upload, 'K', 5, int, 2, 64)
    color_lambda = _number(upload, 'lambda', 0.0, float, 0.0, 1e6)
    image = self.image_of(upload)
    spectral = settings.SpectralSettings(K=k, color_lambda=color_lambda)
    (e,) = self.run_on_model(lambda: inference.eigenpairs(self.backbone, image(), spectral))
    if fmt == 'json':
      body = {
        'eigenvalues': [float(v) for v in e.eigenvalues],
        'eigenvectors': np.round(e.eigenvectors.astype(np.float64), 6).tolist(),
        'patch_grid': list(e.patch_grid),
        'patch_size': e.patch_size,
        'image_size': list(e.image_size),
        'working_size': list(e.working_size),
      }
      return 200, JSON, json.dumps(body).encode()
    out = io.BytesIO()
    np.savez(
      out,
      eigenvalues=e.eigenvalues,
      eigenvectors=e.eigenvectors,
      patch_grid=np.array(e.patch_grid),
      patch_size=np.array(e.patch_size),
      image_size=np.array(e.image_size),
      working_size=np.array(e.working_size),
    )
    return 200, 'application/octet-stream', out.getvalue()


ENDPOINTS = {
  '/api/localize': Server.localize,
  '/api/segment': Server.segment,
  '/api/remove-background': Server.remove_background,
  '/api/eigenvectors': Server.eigenvectors,
}


def index_html() -> bytes:
  return resources.files('spectral_jax').joinpath('static/index.html').read_bytes()


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
    self.send_header('Cache-Control', 'no-store')
    self.send_header('X-Content-Type-Options', 'nosniff')
    for key, value in (extra or {}).items():
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

  def do_GET(self):  # pylint: disable=invalid-name
    if self._foreign():
      return None
    path = urllib.parse.urlsplit(self.path).path
    if path in ('/', '/index.html'):
      csp = (
        "default-src 'self'; img-src 'self' blob: data:; style-src 'self' 'unsafe-inline'; "
        "script-src 'self' 'unsafe-inline'; connect-src 'self'"
      )
      self._send(200, 'text/html; charset=utf-8', index_html(), {'Content-Security-Policy': csp})
    elif path == '/api/health':
      self._send(200, JSON, json.dumps(self.server.health()).encode())
    elif path in ENDPOINTS:
      self._error(405, f'{path} takes POST with an image', {'Allow': 'POST'})
    else:
      self._error(404, f'no such page: {path}')

  do_HEAD = do_GET  # pylint: disable=invalid-name

  def _not_allowed(self):
    path = urllib.parse.urlsplit(self.path).path
    length = self.headers.get('Content-Length', '0')
    self._drain(int(length) if length.isdigit() else 0)
    allow = 'POST' if path in ENDPOINTS else 'GET, HEAD'
    self._error(405, f'{self.command} is not supported on {path}', {'Allow': allow})

  do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed  # pylint: disable=invalid-name

  def do_POST(self):  # pylint: disable=invalid-name
    split = urllib.parse.urlsplit(self.path)
    if self._foreign():
      self.close_connection = True
      return None
    if split.path not in ENDPOINTS:  # whatever the body (or its headers)
      self.close_connection = True
      return self._error(404, f'no such endpoint: {split.path}')
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
    handler = ENDPOINTS.get(split.path)
    if handler is None:
      self._drain(length)
      return self._error(404, f'no such endpoint: {split.path}')
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
    start = time.monotonic()
    try:
      body = self._read_body(length)
      upload = Upload(
        body, self.headers.get('Content-Type', ''), urllib.parse.parse_qs(split.query)
      )
      status, content_type, payload = handler(self.server, upload)
      logging.info('%s done in %.2f s', split.path, time.monotonic() - start)
    except HTTPError as e:
      status, content_type, payload = e.status, JSON, _error_body(e.status, e.message)
    except (BadImageError, SettingError) as e:  # the library's image and setting errors
      status = status_of(e)
      content_type, payload = JSON, _error_body(status, message_of(e))
    except MissingDependencyError as e:  # an optional package this server lacks
      status, content_type, payload = 501, JSON, _error_body(501, str(e))
    except ValueError as e:  # another refused input (e.g. a seed outside its own side)
      status, content_type, payload = 400, JSON, _error_body(400, str(e))
    except Exception as e:  # pylint: disable=broad-except  # the server keeps serving
      logging.exception('%s failed', split.path)
      message = f'internal error: {type(e).__name__}: {e}'
      status, content_type, payload = 500, JSON, _error_body(500, message)
    finally:
      self.server.release()  # before the answer: a client's next request finds the slot free
    return self._send(status, content_type, payload)


def is_loopback(host: str) -> bool:
  return host in ('localhost', '::1') or host.startswith('127.')
