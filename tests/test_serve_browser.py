"""The demo page in headless Chromium: upload a photo, see the box and the cutout, errors in words;
one upload is one forward pass; an example thumbnail runs like an upload.

Chromium is driven through the DevTools protocol over ``--remote-debugging-pipe`` (JSON
messages on file descriptors 3 and 4: no websocket client, no debugging port). Chromium is
required: without it the test fails, saying how to install it. ``SPECTRAL_JAX_SCREENSHOT=1``
rewrites docs/serve.png with the page after the run.
"""

import base64
import fcntl
import io
import json
import os
import select
import shutil
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import spectral_jax as sj
from spectral_jax.server import app
from tests.conftest import MANIFEST, PARITY
from tests.test_serve import shared_cache

ROOT = Path(__file__).parent.parent
PHOTO = PARITY / 'images' / 'chelsea.png'
INSTALL = (
  'the browser test needs Chromium: install it with `apt-get install -y chromium` '
  '(Debian/Ubuntu; .ci/run does this), or point SPECTRAL_JAX_CHROMIUM at a Chrome/Chromium '
  'binary'
)


def chromium_binary() -> str:
  for candidate in (
    os.environ.get('SPECTRAL_JAX_CHROMIUM'),
    '/usr/lib/chromium/chromium',
    shutil.which('chromium'),
    shutil.which('chromium-browser'),
    shutil.which('google-chrome'),
  ):
    if candidate and os.access(candidate, os.X_OK):
      return candidate
  pytest.fail(INSTALL)


class Browser:
  """Headless Chromium and one page, driven over the DevTools pipe."""

  def __init__(self, binary: str, profile: Path):
    to_chrome_r, self._to_chrome = self._high(os.pipe())
    self._from_chrome, from_chrome_w = self._high(os.pipe())
    args = [
      binary,
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-dev-shm-usage',
      '--no-first-run',
      '--no-default-browser-check',
      '--disable-extensions',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--remote-debugging-pipe',
      f'--user-data-dir={profile}',
      'about:blank',
    ]
    # bash puts the pipe ends where Chromium expects them: it reads 3, writes 4 (dash cannot
    # redirect descriptors above 9).
    self.proc = subprocess.Popen(
      ['bash', '-c', f'exec "$@" 3<&{to_chrome_r} 4>&{from_chrome_w}', 'bash', *args],
      pass_fds=(to_chrome_r, from_chrome_w),
      stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL,
    )
    os.close(to_chrome_r)
    os.close(from_chrome_w)
    self._buffer = b''
    self._next_id = 0
    self.session = None
    target = self.send('Target.createTarget', url='about:blank')['targetId']
    self.session = self.send('Target.attachToTarget', targetId=target, flatten=True)['sessionId']

  @staticmethod
  def _high(fds):
    """The pipe's ends moved to descriptors >= 10: the shell's 3<&N 4>&M must not clobber
    one of them (pytest's capture may hold 3 or 4 free for a pipe end)."""
    out = tuple(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in fds)
    for fd in fds:
      os.close(fd)
    return out

  def send(self, method: str, timeout: float = 30, **params) -> dict:
    self._next_id += 1
    message = {'id': self._next_id, 'method': method, 'params': params}
    if self.session:
      message['sessionId'] = self.session
    os.write(self._to_chrome, json.dumps(message).encode() + b'\0')
    deadline = time.monotonic() + timeout
    while True:  # replies and events arrive in order; skip events
      while b'\0' not in self._buffer:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([self._from_chrome], [], [], left)[0]:
          raise TimeoutError(f'Chromium did not answer {method} within {timeout} s')
        chunk = os.read(self._from_chrome, 1 << 20)
        if not chunk:
          raise RuntimeError(f'Chromium exited (code {self.proc.poll()}) during {method}')
        self._buffer += chunk
      raw, _, self._buffer = self._buffer.partition(b'\0')
      reply = json.loads(raw)
      if reply.get('id') == self._next_id:
        if 'error' in reply:
          raise RuntimeError(f'{method}: {reply["error"]}')
        return reply['result']

  def eval(self, expression: str):
    result = self.send(
      'Runtime.evaluate', expression=expression, returnByValue=True, awaitPromise=True
    )
    if 'exceptionDetails' in result:
      raise RuntimeError(f'{expression}: {result["exceptionDetails"]}')
    return result['result'].get('value')

  def wait_for(self, expression: str, timeout: float = 90):
    deadline = time.monotonic() + timeout
    error = None
    while time.monotonic() < deadline:
      try:
        value = self.eval(expression)
      except RuntimeError as e:  # e.g. the page is still loading: its elements are missing
        value, error = None, e
      if value:
        return value
      time.sleep(0.1)
    raise TimeoutError(f'{expression} still false after {timeout} s (last error: {error})')

  def upload(self, selector: str, path: Path) -> None:
    node = self.send('Runtime.evaluate', expression=f'document.querySelector("{selector}")')
    self.send('DOM.setFileInputFiles', files=[str(path)], objectId=node['result']['objectId'])

  def close(self) -> None:
    try:
      self.send('Browser.close', timeout=5)
    except (OSError, RuntimeError, TimeoutError):
      pass
    try:
      self.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
      self.proc.kill()
      self.proc.wait()
    os.close(self._to_chrome)
    os.close(self._from_chrome)


@pytest.fixture(scope='module')
def server(tmp_path_factory):
  backbone = sj.load_backbone(
    'dino_vits16', PARITY / 'checkpoint.pth', cache_dir=shared_cache(tmp_path_factory)
  )
  s = app.Server(backbone, '127.0.0.1', 0)
  threading.Thread(target=s.serve_forever, kwargs=dict(poll_interval=0.1), daemon=True).start()
  yield s
  s.shutdown()
  s.server_close()


def test_page_shows_box_and_cutout(server, tmp_path):
  browser = Browser(chromium_binary(), tmp_path / 'profile')
  try:
    browser.send(
      'Emulation.setDeviceMetricsOverride',
      width=1400,
      height=1000,
      deviceScaleFactor=1,
      mobile=False,
    )
    browser.send('Page.navigate', url=server.url + '/')
    browser.wait_for("document.getElementById('method').options.length > 1", 30)  # health read

    # A text file: the error is shown in words, the page stays usable.
    text = tmp_path / 'notes.txt'
    text.write_text('not an image')
    browser.upload('#file', text)
    browser.wait_for("document.body.dataset.state === 'error'")
    assert 'not a recognised image' in browser.eval("document.getElementById('error').textContent")

    runs = server.features.runs
    browser.upload('#file', PHOTO)
    state = browser.wait_for(
      "['done', 'error'].includes(document.body.dataset.state) && document.body.dataset.state"
    )
    assert state == 'done', browser.eval("document.getElementById('error').textContent")
    box = browser.eval("document.getElementById('boxed').dataset.box")
    expected = MANIFEST['images']['chelsea']['loc_box_xyxy']
    assert [int(v) for v in box.split(',')] == expected
    # The box is drawn: a pixel on its left edge is the stroke's green.
    x0, y0, _, y1 = expected
    pixel = browser.eval(
      "Array.from(document.getElementById('boxed').getContext('2d')"
      f'.getImageData({x0}, {(y0 + y1) // 2}, 1, 1).data)'
    )
    assert pixel[:3] == [0, 255, 102]
    cutout = browser.wait_for(
      "(() => { const i = document.getElementById('cutout');"
      ' return i.complete && i.naturalWidth && [i.naturalWidth, i.naturalHeight]; })()'
    )
    assert cutout == [451, 300]
    assert browser.eval("document.getElementById('mask').naturalWidth") == 451
    assert browser.eval("document.getElementById('cutdl').href.startsWith('blob:')")
    assert not browser.eval("document.getElementById('maskdl').classList.contains('hidden')")
    for k in range(1, 5):  # the eigenvector heat maps, on the patch grid
      assert browser.eval(f"document.getElementById('eig{k}').width") == 28
    # One upload, one call (/api/analyze), one forward pass of the backbone.
    assert server.features.runs == runs + 1

    # An example thumbnail runs like an upload.
    browser.wait_for("document.querySelectorAll('#examples button').length >= 3", 30)
    browser.eval("document.body.dataset.state = ''")
    browser.eval('document.querySelector(\'#examples button[data-example="coffee"]\').click()')
    state = browser.wait_for(
      "['done', 'error'].includes(document.body.dataset.state) && document.body.dataset.state"
    )
    assert state == 'done', browser.eval("document.getElementById('error').textContent")
    assert browser.eval("document.getElementById('filename').textContent").startswith('coffee.jpg')
    browser.wait_for("document.getElementById('mask').naturalWidth === 384", 30)
    assert server.features.runs == runs + 2

    shot = base64.b64decode(browser.send('Page.captureScreenshot', format='png')['data'])
    image = np.asarray(Image.open(io.BytesIO(shot)))
    assert image.shape[:2] == (1000, 1400) and image.std() > 10  # not a blank page
    if os.environ.get('SPECTRAL_JAX_SCREENSHOT') == '1':
      (ROOT / 'docs' / 'serve.png').write_bytes(shot)
  finally:
    browser.close()
