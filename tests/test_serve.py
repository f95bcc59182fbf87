"""``--mode=serve``: every endpoint over real HTTP on 127.0.0.1, limits, errors, load, the CLI.

Most tests share one in-process server (a thread) on the parity checkpoint; the last starts the
server exactly as a user does (``main.py --mode=serve``, no --workdir) in a subprocess.
"""

import concurrent.futures
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

import spectral_jax as sj
from spectral_jax.server import app
from tests.conftest import PARITY, PARITY_IDS

ROOT = Path(__file__).parent.parent
PHOTOS = {i: (PARITY / 'images' / f'{i}.png').read_bytes() for i in PARITY_IDS}
MAX_UPLOAD = 1_000_000  # above every parity photo
MAX_PIXELS = 512 * 512  # astronaut.png exactly


def _small_png() -> bytes:
  out = io.BytesIO()
  Image.open(PARITY / 'images' / 'chelsea.png').convert('RGB').resize((160, 128)).save(out, 'PNG')
  return out.getvalue()


SMALL = _small_png()


def shared_cache(tmp_path_factory) -> Path:
  """Weights and XLA cache of this session's serve tests: the CLI subprocess and the browser
  test reuse the shapes compiled here."""
  folder = tmp_path_factory.getbasetemp() / 'serve_cache'
  folder.mkdir(exist_ok=True)
  jax.config.update('jax_compilation_cache_dir', str(folder / 'xla'))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  return folder


@pytest.fixture(scope='module')
def cache(tmp_path_factory):
  return shared_cache(tmp_path_factory)


@pytest.fixture(scope='module')
def backbone(cache):
  return sj.load_backbone('dino_vits16', PARITY / 'checkpoint.pth', cache_dir=cache)


def _start(backbone, **kw):
  kw = dict(dict(max_upload_bytes=MAX_UPLOAD, max_pixels=MAX_PIXELS), **kw)
  server = app.Server(backbone, '127.0.0.1', 0, **kw)
  threading.Thread(target=server.serve_forever, kwargs=dict(poll_interval=0.1), daemon=True).start()
  return server


@pytest.fixture(scope='module')
def server(backbone):
  s = _start(backbone)
  yield s
  s.shutdown()
  s.server_close()


def request(url, data=None, content_type='image/png', method=None, timeout=120):
  """(status, headers, body) of one request; HTTP errors are returned, not raised."""
  headers = {'Content-Type': content_type} if data is not None else {}
  req = urllib.request.Request(url, data=data, headers=headers, method=method)
  try:
    with urllib.request.urlopen(req, timeout=timeout) as r:
      return r.status, r.headers, r.read()
  except urllib.error.HTTPError as e:
    return e.code, e.headers, e.read()


def multipart(fields: dict) -> tuple[bytes, str]:
  """{name: bytes (a file) or str (a field)} → (body, content type)."""
  boundary = uuid.uuid4().hex
  out = io.BytesIO()
  for name, value in fields.items():
    out.write(f'--{boundary}\r\n'.encode())
    if isinstance(value, bytes):
      out.write(
        f'Content-Disposition: form-data; name="{name}"; filename="{name}.png"\r\n'
        'Content-Type: image/png\r\n\r\n'.encode()
      )
      out.write(value)
    else:
      out.write(f'Content-Disposition: form-data; name="{name}"\r\n\r\n{value}'.encode())
    out.write(b'\r\n')
  out.write(f'--{boundary}--\r\n'.encode())
  return out.getvalue(), f'multipart/form-data; boundary={boundary}'


def json_error(status, headers, body, code, *words):
  assert status == code, body
  assert headers['Content-Type'] == 'application/json'
  message = json.loads(body)['error']
  for word in words:
    assert word in message, message
  return message


def test_localize_boxes_equal_parity_manifest_raw_and_multipart(server, manifest):
  for image_id in PARITY_IDS:
    status, headers, body = request(server.url + '/api/localize', PHOTOS[image_id])
    assert status == 200 and headers['Content-Type'] == 'application/json', body
    r = json.loads(body)
    expected = manifest['images'][image_id]
    assert r['box_xyxy'] == expected['loc_box_xyxy']
    assert r['image_size'] == [expected['height'], expected['width']]
    assert -1.0 <= r['score'] <= 1.0 and r['method'] == 'dsm'
  body, ctype = multipart({'image': PHOTOS['chelsea'], 'method': 'dsm'})
  status, _, out = request(server.url + '/api/localize', body, ctype)
  assert (
    status == 200 and json.loads(out)['box_xyxy'] == manifest['images']['chelsea']['loc_box_xyxy']
  )


def test_segment_remove_background_eigenvectors(server, backbone):
  status, headers, body = request(server.url + '/api/segment?refine=none', SMALL)
  assert status == 200 and headers['Content-Type'] == 'image/png'
  mask = np.asarray(Image.open(io.BytesIO(body)))
  assert mask.shape == (128, 160) and set(np.unique(mask)) <= {0, 255}
  expected = sj.segment(backbone, np.asarray(Image.open(io.BytesIO(SMALL))))
  np.testing.assert_array_equal(mask > 127, expected)

  status, _, body = request(server.url + '/api/remove-background', SMALL)
  assert status == 200
  cutout = Image.open(io.BytesIO(body))
  assert cutout.mode == 'RGBA' and cutout.size == (160, 128)
  status, _, body = request(server.url + '/api/remove-background?background=%23ff0000', SMALL)
  composite = Image.open(io.BytesIO(body))
  assert status == 200 and composite.mode == 'RGB' and composite.size == (160, 128)
  form, ctype = multipart({'image': SMALL, 'background': PHOTOS['coffee']})  # an image file
  status, _, body = request(server.url + '/api/remove-background', form, ctype)
  assert status == 200 and Image.open(io.BytesIO(body)).mode == 'RGB'
  # A path is not a colour: the server never reads its own files for a request.
  json_error(
    *request(server.url + '/api/remove-background?background=/etc/passwd', SMALL),
    400,
    'background',
    'colour',
  )

  status, headers, body = request(server.url + '/api/eigenvectors?K=6&lambda=0', SMALL)
  assert status == 200 and headers['Content-Type'] == 'application/octet-stream'
  npz = np.load(io.BytesIO(body))
  h, w = npz['patch_grid']
  assert npz['eigenvectors'].shape == (6, h, w) and npz['eigenvalues'].shape == (6,)
  assert list(npz['image_size']) == [128, 160]
  status, _, body = request(server.url + '/api/eigenvectors?format=json&K=6', SMALL)
  data = json.loads(body)
  assert status == 200 and data['patch_grid'] == [h, w]
  np.testing.assert_allclose(data['eigenvectors'], npz['eigenvectors'], atol=1e-5)


def test_health_pages_and_parameter_errors(server):
  status, _, body = request(server.url + '/api/health')
  h = json.loads(body)
  assert status == 200 and h['status'] == 'ok' and h['model'] == 'dino_vits16'
  assert 'dsm' in h['methods'] and h['max_upload_bytes'] == MAX_UPLOAD
  status, headers, body = request(server.url + '/')
  assert status == 200 and headers['Content-Type'].startswith('text/html')
  assert b'/api/analyze' in body and b'://' not in body  # no external resources
  json_error(*request(server.url + '/nonesuch'), 404, '/nonesuch')
  json_error(*request(server.url + '/api/localize'), 405, 'POST')
  json_error(*request(server.url + '/api/localize?method=magic', SMALL), 400, 'method', 'dsm')
  json_error(*request(server.url + '/api/eigenvectors?K=1', SMALL), 400, 'K=')
  json_error(*request(server.url + '/api/eigenvectors?lambda=x', SMALL), 400, 'lambda')
  json_error(*request(server.url + '/api/segment?refine=magic', SMALL), 400, 'refine')
  json_error(*request(server.url + '/api/localize', b''), 400, 'no image')
  form, ctype = multipart({'file': SMALL})
  json_error(*request(server.url + '/api/localize', form, ctype), 400, "'image'")


def test_bad_uploads_are_4xx_json(server):
  json_error(
    *request(server.url + '/api/localize', b'hello, not an image', 'text/plain'),
    400,
    'not a recognised image',
  )
  truncated = PHOTOS['chelsea'][: len(PHOTOS['chelsea']) // 2]
  json_error(*request(server.url + '/api/segment', truncated), 400, 'truncated')
  form, ctype = multipart({'image': truncated})
  json_error(*request(server.url + '/api/localize', form, ctype), 400, 'image.png', 'truncated')
  json_error(
    *request(server.url + '/api/localize', b'\0' * (MAX_UPLOAD + 1)),
    413,
    str(MAX_UPLOAD),
    'max_upload_bytes',
  )
  big = io.BytesIO()
  Image.new('RGB', (513, 512)).save(big, 'PNG')  # tiny file, one pixel row too many
  json_error(*request(server.url + '/api/localize', big.getvalue()), 413, 'max_pixels')
  tiny = io.BytesIO()
  Image.new('RGB', (8, 8)).save(tiny, 'PNG')  # below one 16-pixel patch
  json_error(*request(server.url + '/api/localize', tiny.getvalue()), 400, 'minimum side')
  assert request(server.url + '/api/health')[0] == 200  # still serving


def _bomb_png(width: int, height: int) -> bytes:
  """A valid PNG header declaring width × height pixels, with (almost) no pixel data."""
  import struct  # pylint: disable=import-outside-toplevel
  import zlib  # pylint: disable=import-outside-toplevel

  def chunk(kind, data):
    return (
      struct.pack('>I', len(data))
      + kind
      + data
      + struct.pack('>I', zlib.crc32(kind + data) & 0xFFFFFFFF)
    )

  header = struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)
  return (
    b'\x89PNG\r\n\x1a\n'
    + chunk(b'IHDR', header)
    + chunk(b'IDAT', zlib.compress(b'\0' * 100))
    + chunk(b'IEND', b'')
  )


def test_methods_bombs_stalls_and_small_backgrounds(server, monkeypatch):
  """Other HTTP methods get a JSON 405; a decompression bomb PIL itself refuses is a 413 like
  any image above max_pixels; a client that stops sending mid-body gets a 408 and frees its
  slot; a background image needs no patch-sized side (it is only cover-resized)."""
  for method in ('PUT', 'DELETE', 'OPTIONS', 'PATCH'):
    status, headers, body = request(server.url + '/api/localize', SMALL, method=method)
    json_error(status, headers, body, 405, method)
    assert headers['Allow'] == 'POST'
  json_error(
    *request(server.url + '/api/localize', _bomb_png(100_000, 100_000)), 413, 'above the limit'
  )
  monkeypatch.setattr(app.Handler, 'timeout', 1.0)
  with socket.create_connection((server.server_address[0], server.server_address[1])) as sock:
    host = f'127.0.0.1:{server.server_address[1]}'.encode()
    sock.sendall(
      b'POST /api/localize HTTP/1.1\r\nHost: ' + host + b'\r\nContent-Type: image/png'
      b'\r\nContent-Length: 100000\r\n\r\nab'
    )
    sock.settimeout(30)
    answer = b''
    while b'\r\n\r\n' not in answer:
      answer += sock.recv(4096)
  assert answer.startswith(b'HTTP/1.0 408') or answer.startswith(b'HTTP/1.1 408'), answer[:80]
  assert json.loads(request(server.url + '/api/health')[2])['in_flight'] == 0
  one_pixel = io.BytesIO()
  Image.new('RGB', (1, 1), (0, 200, 0)).save(one_pixel, 'PNG')
  form, ctype = multipart({'image': SMALL, 'background': one_pixel.getvalue()})
  status, headers, body = request(server.url + '/api/remove-background', form, ctype)
  assert status == 200, body
  out = np.asarray(Image.open(io.BytesIO(body)))
  assert out.shape[:2] == (128, 160)
  assert (out[..., :3] == (0, 200, 0)).all(-1).any()  # the green background shows


def test_the_servers_pixel_limit_is_the_one_the_model_applies(backbone):
  """serve's max_pixels (data.max_pixels) also governs the API call behind each endpoint."""
  import dataclasses  # pylint: disable=import-outside-toplevel

  strict = dataclasses.replace(backbone, max_pixels=100 * 100)  # below SMALL's 160 × 128
  s = _start(strict)  # the server allows MAX_PIXELS
  try:
    status, _, body = request(s.url + '/api/localize', SMALL)
    assert status == 200, body
  finally:
    s.shutdown()
    s.server_close()


def test_ten_concurrent_requests_all_answered(server, manifest):
  ids = [('chelsea', 'coffee')[i % 2] for i in range(10)]  # compiled above; two sizes
  with concurrent.futures.ThreadPoolExecutor(10) as pool:
    answers = list(pool.map(lambda i: request(server.url + '/api/localize', PHOTOS[i]), ids))
  for image_id, (status, _, body) in zip(ids, answers):
    assert status == 200, body
    assert json.loads(body)['box_xyxy'] == manifest['images'][image_id]['loc_box_xyxy']
  assert json.loads(request(server.url + '/api/health')[2])['in_flight'] == 0


def test_queue_full_503_and_timeout(backbone, monkeypatch):
  s = _start(backbone, max_queue=1, timeout=2.0)
  gate = threading.Event()
  decoded_in = []  # threads that decoded an upload: a waiting request holds only its bytes
  decode_rgb = app.decode.decode_rgb
  monkeypatch.setattr(
    app.decode,
    'decode_rgb',
    lambda *a, **k: (decoded_in.append(threading.current_thread().name), decode_rgb(*a, **k))[1],
  )
  try:
    s.worker.submit(lambda: gate.wait(30))  # the model is busy
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
      first = pool.submit(request, s.url + '/api/localize', SMALL)
      deadline = time.monotonic() + 10
      while s.in_flight < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
      assert s.in_flight == 1
      status, headers, body = request(s.url + '/api/localize', SMALL)
      json_error(status, headers, body, 503, 'busy', 'max_queue')
      assert headers['Retry-After'] == '1'
      json_error(*first.result(timeout=30), 503, 'timed out')  # waited 2 s for the model
      assert decoded_in == []  # it never got to the model: never decoded
    gate.set()
    s.timeout = 60.0
    assert request(s.url + '/api/localize', SMALL)[0] == 200  # the skipped job left no trace
    assert decoded_in == ['spectral_jax-model']
    s.timeout = 0.2  # only waiting counts: a job that started in time runs to its answer
    assert s.run_on_model(lambda: time.sleep(1.0) or 'answer') == 'answer'
  finally:
    gate.set()
    s.shutdown()
    s.server_close()


def _free_port() -> int:
  with socket.socket() as sock:
    sock.bind(('127.0.0.1', 0))
    return sock.getsockname()[1]


def test_cli_serve_without_workdir(cache, manifest, tmp_path):
  port = _free_port()
  tmp = tmp_path / 'tmp'
  tmp.mkdir()
  env = dict(os.environ, TMPDIR=str(tmp), JAX_PLATFORMS=os.environ.get('JAX_PLATFORMS', 'cpu'))
  cmd = [
    sys.executable,
    'main.py',
    '--config=configs/folder.py',
    '--mode=serve',
    '--config.model.name=dino_vits16',
    f'--config.model.checkpoint={PARITY / "checkpoint.pth"}',
    f'--config.model.cache_dir={cache}',
    f'--config.serve.port={port}',
  ]
  proc = subprocess.Popen(
    cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
  )
  url = f'http://127.0.0.1:{port}'
  try:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
      try:
        if request(url + '/api/health', timeout=2)[0] == 200:
          break
      except OSError:
        time.sleep(0.2)
    assert proc.poll() is None, proc.stdout.read()
    (workdir,) = tmp.glob('spectral_jax_serve_*')  # the temporary workdir, locked
    assert (workdir / '.spectral_jax' / 'lock').exists()
    status, _, body = request(url + '/api/localize', PHOTOS['astronaut'])
    assert (
      status == 200
      and json.loads(body)['box_xyxy'] == manifest['images']['astronaut']['loc_box_xyxy']
    )
    assert not list(tmp.glob('spectral_jax_api_*'))  # the request's temporaries are gone
  finally:
    proc.send_signal(signal.SIGTERM)
    try:
      out, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
      proc.kill()
      out, _ = proc.communicate()
  assert proc.returncode == 0, out[-3000:]
  assert f'serving dino_vits16 on {url}' in out
  assert not list(tmp.glob('spectral_jax_*'))  # workdir deleted at exit


def test_other_modes_still_require_workdir():
  proc = subprocess.run(
    [sys.executable, 'main.py', '--config=configs/folder.py', '--mode=localize'],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode != 0 and '--workdir is required for --mode=localize' in proc.stderr


def _raw(server, head: bytes) -> bytes:
  """The status line and headers of a hand-written request."""
  with socket.create_connection(server.server_address[:2]) as sock:
    sock.sendall(head)
    sock.settimeout(30)
    answer = b''
    while b'\r\n\r\n' not in answer:
      chunk = sock.recv(4096)
      if not chunk:
        break
      answer += chunk
  return answer


def test_foreign_hosts_and_origins_are_403(server):
  """DNS rebinding (another Host) and cross-site pages (another Origin) cannot drive the model;
  the page's own requests can."""
  port = server.server_address[1]
  own = f'127.0.0.1:{port}'.encode()
  answer = _raw(server, b'GET /api/health HTTP/1.1\r\nHost: evil.example\r\n\r\n')
  assert answer.startswith(b'HTTP/1.1 403'), answer[:60]
  answer = _raw(
    server,
    b'POST /api/localize HTTP/1.1\r\nHost: ' + own + b'\r\nOrigin: '
    b'http://evil.example\r\nContent-Length: 0\r\n\r\n',
  )
  assert answer.startswith(b'HTTP/1.1 403'), answer[:60]
  answer = _raw(
    server, b'GET /api/health HTTP/1.1\r\nHost: ' + own + b'\r\nOrigin: http://' + own + b'\r\n\r\n'
  )
  assert answer.startswith(b'HTTP/1.1 200'), answer[:60]
  answer = _raw(server, f'GET /api/health HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n'.encode())
  assert answer.startswith(b'HTTP/1.1 200'), answer[:60]


def test_unknown_options_paths_and_health_leak_nothing(server):
  json_error(*request(server.url + '/api/localize?methd=tokencut', SMALL), 400, 'methd')
  json_error(*request(server.url + '/api/segment?K=3', SMALL), 400, "'K'", 'refine')
  # An unknown path is 404 whatever the body: even without a Content-Length.
  own = f'127.0.0.1:{server.server_address[1]}'.encode()
  answer = _raw(server, b'POST /api/nonesuch HTTP/1.1\r\nHost: ' + own + b'\r\n\r\n')
  assert answer.startswith(b'HTTP/1.1 404'), answer[:60]
  health = json.loads(request(server.url + '/api/health')[2])
  assert '/' not in str(health['checkpoint']) and str(PARITY) not in json.dumps(health)
