"""``--mode=serve``'s API beyond single endpoints: /api/analyze (the page's one call) and the
forward passes it costs, TokenCut and LOST masks, the bundled examples, /openapi.json and /docs
generated from the routing table. Servers on 127.0.0.1 only, the parity checkpoint."""

import base64
import dataclasses
import io
import json
import urllib.parse

import numpy as np
import pytest
from PIL import Image

import spectral_jax as sj
from spectral_jax.server import routes
from tests.conftest import PARITY
from tests.test_serve import PHOTOS, SMALL, _start, json_error, multipart, request, shared_cache

# The page's call with its controls' defaults (spectral_jax/static/index.html).
PAGE = {'method': 'dsm', 'refine': 'none', 'K': '5', 'lambda': '0'}


@pytest.fixture(scope='module')
def backbone(tmp_path_factory):
  cache = shared_cache(tmp_path_factory)
  return sj.load_backbone('dino_vits16', PARITY / 'checkpoint.pth', cache_dir=cache)


@pytest.fixture(scope='module')
def server(backbone):
  s = _start(backbone)
  yield s
  s.shutdown()
  s.server_close()


def _png(b64: str) -> np.ndarray:
  return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))


def _rgb(data: bytes) -> np.ndarray:
  return np.asarray(Image.open(io.BytesIO(data)).convert('RGB'))


def analyze(url: str, data: bytes, **options) -> dict:
  query = urllib.parse.urlencode(dict(PAGE, **options))
  status, headers, body = request(f'{url}/api/analyze?{query}', data)
  assert status == 200 and headers['Content-Type'] == 'application/json', body
  return json.loads(body)


def test_analyze_equals_the_api_and_the_endpoints(server, backbone):
  """One JSON holds what the four endpoints give, each equal to the Python API's."""
  image = _rgb(SMALL)
  out = analyze(server.url, SMALL)
  loc = sj.localize(backbone, image)
  assert out['box_xyxy'] == list(loc.box_xyxy) and out['image_size'] == [128, 160]
  assert out['score'] == pytest.approx(loc.score) and out['method'] == 'dsm'
  assert json.loads(request(server.url + '/api/localize', SMALL)[2])['box_xyxy'] == out['box_xyxy']
  mask = _png(out['mask_png'])
  assert mask.shape == (128, 160) and set(np.unique(mask)) <= {0, 255}
  np.testing.assert_array_equal(mask > 127, sj.segment(backbone, image))
  np.testing.assert_array_equal(
    mask, _png(base64.b64encode(request(server.url + '/api/segment', SMALL)[2]))
  )
  cutout = _png(out['cutout_png'])
  assert cutout.shape == (128, 160, 4)
  np.testing.assert_array_equal(cutout, sj.remove_background(backbone, image))
  eigen = sj.eigenvectors(backbone, image, K=5)
  np.testing.assert_allclose(out['eigenvectors'], eigen.eigenvectors, atol=1e-5)
  np.testing.assert_allclose(out['eigenvalues'], eigen.eigenvalues, rtol=1e-6)
  assert out['patch_grid'] == list(eigen.patch_grid) and out['K'] == 5

  out = analyze(server.url, SMALL, method='tokencut', K='7', **{'lambda': '2'})
  assert out['box_xyxy'] == list(sj.localize(backbone, image, method='tokencut').box_xyxy)
  expected = sj.segment(backbone, image, method='tokencut')
  np.testing.assert_array_equal(_png(out['mask_png']) > 127, expected)
  eigen = sj.eigenvectors(backbone, image, K=7, color_lambda=2.0)
  np.testing.assert_allclose(out['eigenvectors'], eigen.eigenvectors, atol=1e-5)
  json_error(*request(server.url + '/api/analyze?method=magic', SMALL), 400, 'method', 'tokencut')
  json_error(*request(server.url + '/api/analyze?refine=x', SMALL), 400, 'refine', 'bilateral')
  json_error(*request(server.url + '/api/analyze?format=json', SMALL), 400, "'format'")


class Counting:
  """An extractor that counts its forward passes (independently of the server's counter)."""

  def __init__(self, extractor):
    self.extractor, self.calls = extractor, 0

  def __getattr__(self, name):
    if name == 'extractor':
      raise AttributeError(name)
    return getattr(self.extractor, name)

  def __call__(self, *args, **kwargs):
    self.calls += 1
    return self.extractor(*args, **kwargs)


def test_one_upload_costs_one_forward_pass(backbone):
  counting = Counting(backbone.extractor)
  s = _start(dataclasses.replace(backbone, extractor=counting))
  url = s.url

  def runs(action) -> int:
    before = counting.calls, json.loads(request(s.url + '/api/health')[2])['model_runs']
    action()
    after = counting.calls, json.loads(request(s.url + '/api/health')[2])['model_runs']
    assert after[0] - before[0] == after[1] - before[1]  # /api/health counts them right
    return after[0] - before[0]

  try:
    # The page's flow: one call, one forward pass (box at K = 5, mask at K = 2, cutout, maps).
    assert runs(lambda: analyze(url, SMALL)) == 1
    # The same upload: the separate endpoints reuse it, and so do settings that change only
    # the eigen-solve (K, λ, refinement), or the same bytes sent as a multipart form.
    for path in ('/api/localize', '/api/segment', '/api/remove-background', '/api/eigenvectors'):
      assert runs(lambda: request(url + path, SMALL)) == 0, path
    out = {}
    assert runs(lambda: out.update(analyze(url, SMALL, K='9', refine='bilateral'))) == 0
    assert len(out['eigenvalues']) == 9  # new eigenvectors, from the kept features
    form, ctype = multipart({'image': SMALL, 'K': '6'})
    assert runs(lambda: request(url + '/api/eigenvectors', form, ctype)) == 0
    # On 160 × 128 (whole patches) TokenCut's resized input is DSM's crop: one run, its pad.
    assert runs(lambda: analyze(url, SMALL, method='tokencut')) == 1
    # Another image costs one; a method that feeds the model other pixels costs its inputs
    # (TokenCut: the padded input of its box and the resized input of its mask, 451 × 300 →
    # 464 × 304 and 448 × 304, besides DSM's 448 × 288 crop for the cutout and the maps).
    assert runs(lambda: analyze(url, PHOTOS['chelsea'])) == 1
    assert runs(lambda: analyze(url, PHOTOS['chelsea'], method='tokencut')) == 2
    assert runs(lambda: analyze(url, PHOTOS['chelsea'], method='tokencut')) == 0
  finally:
    s.shutdown()
    s.server_close()
  # Without the cache, one analyze runs the model once per pipeline call: the cache is what
  # makes it one.
  counting = Counting(backbone.extractor)
  s = _start(dataclasses.replace(backbone, extractor=counting), cache_entries=0)
  try:
    assert runs(lambda: analyze(s.url, SMALL)) == 2
    health = json.loads(request(s.url + '/api/health')[2])
    assert health['feature_cache']['entries'] == 0 and health['feature_cache']['max_entries'] == 0
  finally:
    s.shutdown()
    s.server_close()


def test_the_feature_cache_is_bounded(backbone):
  """At most cache_entries inputs and cache_bytes of features are kept; the oldest go first."""
  s = _start(backbone, cache_entries=2)
  try:
    for image_id in ('chelsea', 'coffee', 'astronaut'):
      request(s.url + '/api/localize', PHOTOS[image_id])
    cache = json.loads(request(s.url + '/api/health')[2])['feature_cache']
    assert cache['entries'] == 2 and 0 < cache['bytes'] <= cache['max_bytes']
    runs = s.features.runs
    request(s.url + '/api/localize', PHOTOS['astronaut'])  # kept
    assert s.features.runs == runs
    request(s.url + '/api/localize', PHOTOS['chelsea'])  # evicted: runs again
    assert s.features.runs == runs + 1
  finally:
    s.shutdown()
    s.server_close()
  s = _start(backbone, cache_bytes=1000)  # every entry is larger: none is kept
  try:
    request(s.url + '/api/localize', SMALL)
    request(s.url + '/api/localize', SMALL)
    assert s.features.runs == 2 and s.features.stats()['entries'] == 0
  finally:
    s.shutdown()
    s.server_close()


@pytest.mark.parametrize('method', ['tokencut', 'lost'])
def test_segment_methods_give_the_apis_masks(server, backbone, method):
  """/api/segment?method=tokencut|lost is sj.segment(..., method=...) (the CLI's masks)."""
  health = json.loads(request(server.url + '/api/health')[2])
  assert method in health['segment_methods']
  for data in (SMALL, PHOTOS['coffee']):
    status, headers, body = request(f'{server.url}/api/segment?method={method}', data)
    assert status == 200 and headers['Content-Type'] == 'image/png', body
    mask = np.asarray(Image.open(io.BytesIO(body)))
    expected = sj.segment(backbone, _rgb(data), method=method)
    assert mask.shape == expected.shape and expected.any()
    np.testing.assert_array_equal(mask > 127, expected)
  status, _, body = request(f'{server.url}/api/segment?method={method}&refine=bilateral', SMALL)
  expected = sj.segment(backbone, _rgb(SMALL), method=method, refine='bilateral')
  assert status == 200, body
  np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(body))) > 127, expected)


def test_bundled_examples(server):
  status, _, body = request(server.url + '/api/examples')
  listed = json.loads(body)['examples']
  assert status == 200 and len(listed) >= 3
  for ex in listed:
    status, headers, data = request(server.url + ex['url'])
    assert status == 200 and headers['Content-Type'] == 'image/jpeg'
    assert len(data) == ex['bytes'] <= 60_000
    image = Image.open(io.BytesIO(data))
    assert image.format == 'JPEG' and image.size == (ex['width'], ex['height'])
    assert ex['license'] in ('public domain', 'CC0') and ex['credit'] and ex['title']
  # A click runs an example like an upload.
  out = analyze(server.url, request(server.url + listed[0]['url'])[2])
  assert out['image_size'] == [listed[0]['height'], listed[0]['width']]
  for path in ('/examples/nonesuch.jpg', '/examples/credits.json', '/examples/README.md'):
    json_error(*request(server.url + path), 404, 'no such example')
  for path in ('/examples/..%2Fapp.py', '/examples/.hidden', '/examples/a/b.jpg', '/examples/'):
    assert request(server.url + path)[0] == 404, path


def _valid_and_invalid(schema: dict):
  """A value the schema allows (its default) and one it does not."""
  if 'enum' in schema:
    return schema['default'], 'not-a-choice'
  if schema['type'] in ('integer', 'number'):
    return schema['default'], schema['maximum'] * 2 + 1
  return schema['default'], None  # free text, checked by the endpoint


def test_openapi_lists_every_route_with_the_parameters_it_accepts(server):
  status, headers, body = request(server.url + '/openapi.json')
  assert status == 200 and headers['Content-Type'] == 'application/json'
  doc = json.loads(body)
  assert doc['openapi'].startswith('3.') and doc['info']['version'] == sj.__version__
  assert set(doc['paths']) == set(routes.ROUTES)
  for path, route in routes.ROUTES.items():
    (method,) = doc['paths'][path]
    op = doc['paths'][path][method]
    assert method == route.method.lower(), path
    query = {p['name']: p['schema'] for p in op.get('parameters', []) if p['in'] == 'query'}
    assert set(query) == {p.name for p in route.params}, path
    responses = set(op['responses'])
    assert {'200', '400', '403'} <= responses, path
    if method == 'post':
      assert {'413', '501', '503'} <= responses, path
      assert 'image' in op['requestBody']['content']['multipart/form-data']['schema']['required']
    concrete = path.replace('{name}', 'chelsea.jpg')
    data = SMALL if method == 'post' else None

    def send(options: dict):
      return request(f'{server.url}{concrete}?{urllib.parse.urlencode(options)}', data)

    # Every documented parameter is accepted (with its documented default), one at a time
    # and all together; a value outside its documented type or choices is a 400 naming it.
    for name, schema in query.items():
      valid, invalid = _valid_and_invalid(schema)
      status, _, body = send({name: valid})
      assert status == 200, (path, name, body)
      if invalid is not None:
        json_error(*send({name: invalid}), 400, name)
    defaults = {name: schema['default'] for name, schema in query.items()}
    assert send(defaults)[0] == 200, path
    # An undocumented one is a 400 naming it.
    json_error(*send(dict(defaults, undocumented='1')), 400, 'undocumented')
  assert doc['paths']['/examples/{name}']['get']['parameters'][0]['in'] == 'path'
  assert '404' in doc['paths']['/examples/{name}']['get']['responses']
  eigen_k = [p for p in doc['paths']['/api/eigenvectors']['post']['parameters'] if p['name'] == 'K']
  assert eigen_k[0]['schema'] == {'type': 'integer', 'default': 5, 'minimum': 2, 'maximum': 64}


def test_docs_page_renders_the_document(server):
  status, headers, body = request(server.url + '/docs')
  assert status == 200 and headers['Content-Type'].startswith('text/html')
  assert "default-src 'self'" in headers['Content-Security-Policy']
  page = body.decode()
  assert '://' not in page  # nothing fetched from elsewhere
  for path, route in routes.ROUTES.items():
    assert f'{route.method} {path}' in page, path
    for p in route.params:
      assert f'<code>{p.name}</code>' in page, (path, p.name)
  assert 'dsm | tokencut | lost' in page and '2..64' in page
  status, _, body = request(server.url + '/')
  assert status == 200 and b'/api/analyze' in body and b'/api/examples' in body
  for old in (b"'/api/localize'", b"'/api/segment'", b"'/api/eigenvectors'"):
    assert old not in body  # the page no longer calls the endpoints one by one
