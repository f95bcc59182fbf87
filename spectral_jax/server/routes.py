"""The routing table: every path the server answers, its HTTP method, its options (``Param``:
type, default, allowed values) and its handler. The server parses each request's options with
this table, and /openapi.json and /docs are generated from it (``openapi``), so the API's
description and its checks cannot drift.

  POST /api/analyze            → JSON: box, mask and cutout (PNG, base64), eigenvectors: the
                                 page's one call, one forward pass per upload
  POST /api/localize           → JSON {box_xyxy, score, image_size, method}
  POST /api/segment            → PNG mask (0 / 255, the image's size)
  POST /api/remove-background  → RGBA PNG cutout, or an RGB composite with ``background``
  POST /api/eigenvectors       → npz (default) or JSON with ``?format=json``
  GET  /api/health             → JSON: model, methods, limits, requests in flight, model runs
  GET  /api/examples           → JSON: the bundled example photos
  GET  /examples/{name}        → one of them (JPEG)
  GET  /openapi.json, /docs    → this table as OpenAPI 3, and as an HTML page
  GET  /                       → the demo page (spectral_jax/static/index.html)
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import io
import json
import math
import urllib.parse
from importlib import resources
from typing import Any, Callable, Optional

import numpy as np
from PIL import Image

from spectral_jax import inference, pipeline, settings
from spectral_jax.imaging import matting
from spectral_jax.server import model, openapi
from spectral_jax.server.uploads import HTTPError, Param, Upload

JSON = 'application/json'
PNG = 'image/png'
HTML = 'text/html; charset=utf-8'
# The pages' policy: nothing from another origin; inline script and style of the page itself.
CSP = (
  "default-src 'self'; img-src 'self' blob: data:; style-src 'self' 'unsafe-inline'; "
  "script-src 'self' 'unsafe-inline'; connect-src 'self'"
)

LOCALIZE_METHODS = ('dsm',) + tuple(m for m in pipeline.METHODS if m != 'dsm')
# Masks as --mode=segment: DSM's Fiedler mask, TokenCut's saliency mask (its resized input),
# LOST's seed component, FOUND's decoder mask. 'found' runs FOUND's shipped decoder (a decoder
# path is not an option: it would read the server's files) and needs a dino_vits8 server; other
# backbones get a 400 naming model.name.
SEGMENT_METHODS = LOCALIZE_METHODS

Reply = tuple  # (status, content type, body) or (status, content type, body, extra headers)


@dataclasses.dataclass(frozen=True)
class Call:
  """What a handler gets: the parsed options, the upload (POST) and the path's arguments."""

  options: dict[str, Any]
  upload: Optional[Upload] = None
  args: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Route:
  """One path: ``method`` 'POST' (an image in the body) or 'GET'; ``handler(server, call)``
  → Reply; ``responses``: {content type: what it holds} of a success; ``files``: multipart
  file fields besides 'image'; ``path_params``: {name: description} of '{name}' segments;
  ``errors``: the statuses it can answer besides 200 (described in /openapi.json)."""

  method: str
  handler: Callable[[Any, Call], Reply]
  summary: str
  params: tuple[Param, ...] = ()
  responses: dict = dataclasses.field(default_factory=dict)
  files: dict = dataclasses.field(default_factory=dict)
  path_params: dict = dataclasses.field(default_factory=dict)
  errors: tuple[int, ...] = (400, 403)
  schema: Optional[dict] = None  # the JSON success body's schema, if JSON


POST_ERRORS = (400, 403, 408, 411, 413, 500, 501, 503)

METHOD = Param(
  'method',
  'choice',
  'dsm',
  "dsm (Deep Spectral Methods' Fiedler vector), tokencut, lost or found (FOUND's decoder; "
  'needs a dino_vits8 server), as --config.method',
  LOCALIZE_METHODS,
)
SEGMENT_METHOD = dataclasses.replace(
  METHOD,
  description='the mask of --mode=segment with this --config.method',
  allowed=SEGMENT_METHODS,
)
REFINE = Param(
  'refine',
  'choice',
  'none',
  'mask refinement, as --config.segment.refine (crf needs the crf extra: 501 without it)',
  settings.REFINES,
)
K = Param('K', 'int', 5, 'eigenpairs, 2..64 (eigenvector 1 is the Fiedler vector)', lo=2, hi=64)
LAMBDA = Param(
  'lambda', 'float', 0.0, 'weight of the KNN colour affinity (0 = off)', lo=0.0, hi=1e6
)
FORMAT = Param('format', 'choice', 'npz', 'npz (numpy) or json', ('npz', 'json'))
BACKGROUND = Param(
  'background',
  'text',
  'none',
  "a colour ('white', '#RRGGBB', 'r,g,b') for an RGB composite, or none / transparent for "
  "the RGBA cutout; an image instead: a multipart file field 'background' (cover-resized)",
)

# ----------------------------------------------------------------------------- encoding


def png_bytes(array: np.ndarray) -> bytes:
  out = io.BytesIO()
  Image.fromarray(array).save(out, format='PNG', compress_level=3)
  return out.getvalue()


def _json(body: Any) -> bytes:
  return json.dumps(body).encode()


def _finite(x: float) -> Optional[float]:
  return float(x) if math.isfinite(x) else None  # JSON has no NaN (LOST has no score)


def _box(r, method: str) -> dict:
  return {
    'box_xyxy': [int(v) for v in r.box_xyxy],
    'score': _finite(r.score),
    'image_size': [int(v) for v in r.image_size],
    'method': method,
  }


def _eigen(e) -> dict:
  return {
    'eigenvalues': [float(v) for v in e.eigenvalues],
    'eigenvectors': np.round(e.eigenvectors.astype(np.float64), 6).tolist(),
    'patch_grid': list(e.patch_grid),
    'patch_size': e.patch_size,
    'image_size': list(e.image_size),
    'working_size': list(e.working_size),
  }


def _mask_png(mask: np.ndarray) -> bytes:
  return png_bytes(np.asarray(mask, np.uint8) * 255)


# ----------------------------------------------------------------------------- image endpoints


def _analysis(server, upload: Upload) -> Callable[[], model.Analysis]:
  """The upload's decoder, run on the model's thread: a waiting request holds its compressed
  bytes (≤ serve.max_upload_bytes), not a decoded image of up to max_pixels. The decoded
  pixels go to the library as they are (one decode per upload)."""
  return lambda: model.Analysis(
    server.backbone, inference.in_memory(server.decode(upload.name, upload.data), upload.name)
  )


def localize(server, call: Call) -> Reply:
  method = call.options['method']
  analysis = _analysis(server, call.upload)
  r = server.run_on_model(lambda: analysis().localization(method))
  return 200, JSON, _json(_box(r, method))


def segment(server, call: Call) -> Reply:
  o = call.options
  analysis = _analysis(server, call.upload)
  mask = server.run_on_model(lambda: analysis().mask(o['method'], o['refine']))
  return 200, PNG, _mask_png(mask)


def remove_background(server, call: Call) -> Reply:
  upload = call.upload
  background: Any = lambda: None
  spec = call.options['background']
  if upload.background is not None:  # an image: only cover-resized, any size
    background = lambda: server.decode(*upload.background, min_side=1)
  elif spec.lower() not in ('none', 'transparent'):
    try:  # a colour only: a path here would read the server's files
      colour = matting.parse_color(spec)
    except ValueError as e:
      raise HTTPError(400, f'background: {e}') from None
    background = lambda: colour
  analysis = _analysis(server, upload)
  out = server.run_on_model(lambda: analysis().cutout(background()))
  return 200, PNG, png_bytes(out)


def _spectral(options: dict) -> settings.SpectralSettings:
  return settings.SpectralSettings(K=options['K'], color_lambda=options['lambda'])


def eigenvectors(server, call: Call) -> Reply:
  spectral = _spectral(call.options)
  analysis = _analysis(server, call.upload)
  e = server.run_on_model(lambda: analysis().eigen(spectral))
  if call.options['format'] == 'json':
    return 200, JSON, _json(_eigen(e))
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


def analyze(server, call: Call) -> Reply:
  """Everything the page shows, from one decode and one forward pass per model input."""
  o = call.options
  spectral = _spectral(o)
  analysis = _analysis(server, call.upload)

  def run():
    a = analysis()
    return (
      a.localization(o['method']),
      a.mask(o['method'], o['refine']),
      a.cutout(),
      a.eigen(spectral),
    )

  box, mask, cutout, eigen = server.run_on_model(run)
  body = dict(_box(box, o['method']), refine=o['refine'], K=o['K'], **{'lambda': o['lambda']})
  body['mask_png'] = base64.b64encode(_mask_png(mask)).decode('ascii')
  body['cutout_png'] = base64.b64encode(png_bytes(cutout)).decode('ascii')
  body.update(_eigen(eigen))
  return 200, JSON, _json(body)


# ----------------------------------------------------------------------------- pages and files

EXAMPLES = 'static/examples'


@functools.lru_cache(maxsize=1)
def example_files() -> dict[str, tuple[dict, bytes]]:
  """{file name: (its /api/examples entry, its bytes)} of the bundled JPEGs (a few, small)."""
  folder = resources.files('spectral_jax').joinpath(EXAMPLES)
  credits = json.loads(folder.joinpath('credits.json').read_text())
  out = {}
  for entry in sorted(folder.iterdir(), key=lambda e: e.name):
    if not entry.name.endswith('.jpg'):
      continue
    data = entry.read_bytes()
    width, height = Image.open(io.BytesIO(data)).size
    stem = entry.name[: -len('.jpg')]
    info = {'name': stem, 'url': f'/examples/{entry.name}', 'width': width, 'height': height}
    out[entry.name] = (dict(info, bytes=len(data), **credits.get(stem, {})), data)
  return out


def examples(server, call: Call) -> Reply:
  del server, call
  return 200, JSON, _json({'examples': [info for info, _ in example_files().values()]})


def example(server, call: Call) -> Reply:
  del server
  name = call.args['name']
  if name not in example_files():  # only the listed files: never a path of the server's
    raise HTTPError(404, f'no such example: {name} (GET /api/examples lists them)')
  return 200, 'image/jpeg', example_files()[name][1], {'Cache-Control': 'max-age=3600'}


def health(server, call: Call) -> Reply:
  del call
  return 200, JSON, _json(server.health())


def page(server, call: Call) -> Reply:
  del server, call
  html = resources.files('spectral_jax').joinpath('static/index.html').read_bytes()
  return 200, HTML, html, {'Content-Security-Policy': CSP}


def openapi_json(server, call: Call) -> Reply:
  del call
  return 200, JSON, _json(openapi.document(ROUTES, server.health()))


def docs(server, call: Call) -> Reply:
  del call
  html = openapi.html_page(openapi.document(ROUTES, server.health()))
  return 200, HTML, html.encode(), {'Content-Security-Policy': CSP}


# ----------------------------------------------------------------------------- the table

_BOX = {
  'box_xyxy': ('array', '[x0, y0, x1, y1] in pixels of the original image, exclusive max'),
  'score': ('number', "1 − λ₁ (null where it is not a number: LOST's)"),
  'image_size': ('array', '[H, W] of the original image'),
  'method': ('string', 'the method of the box (and, in /api/analyze, of the mask)'),
}
_EIGEN = {
  'eigenvalues': ('array', 'K eigenvalues, ascending'),
  'eigenvectors': ('array', '[K, h, w] on the patch grid, 6 decimals'),
  'patch_grid': ('array', '[h, w]'),
  'patch_size': ('integer', 'pixels per patch side'),
  'image_size': ('array', '[H, W] of the original image'),
  'working_size': ('array', '[H, W] the model saw (smaller above data.max_tokens)'),
}
_ANALYZE = dict(
  _BOX,
  refine=('string', 'the mask refinement'),
  K=('integer', 'eigenpairs'),
  mask_png=('string', "the mask (PNG 0 / 255, base64): /api/segment's"),
  cutout_png=('string', "the RGBA cutout (PNG, base64): /api/remove-background's"),
  **{'lambda': ('number', 'colour affinity weight')},
  **_EIGEN,
)

ROUTES: dict[str, Route] = {
  '/api/analyze': Route(
    'POST',
    analyze,
    "Box, mask, cutout and eigenvectors of one image in one JSON (the page's call): one "
    'decode and one forward pass per model input, each output equal to its own endpoint',
    (METHOD, REFINE, K, LAMBDA),
    {JSON: 'box, mask and cutout (base64 PNG), eigenvectors'},
    errors=POST_ERRORS,
    schema=openapi.object_schema(_ANALYZE),
  ),
  '/api/localize': Route(
    'POST',
    localize,
    "The main object's box (--mode=localize, K = 5)",
    (METHOD,),
    {JSON: 'the box'},
    errors=POST_ERRORS,
    schema=openapi.object_schema(_BOX),
  ),
  '/api/segment': Route(
    'POST',
    segment,
    "The main object's mask (--mode=segment, K = 2)",
    (SEGMENT_METHOD, REFINE),
    {PNG: 'mask, 0 / 255, the image size'},
    errors=POST_ERRORS,
  ),
  '/api/remove-background': Route(
    'POST',
    remove_background,
    'Background removal (--mode=edit): an RGBA cutout, or an RGB composite',
    (BACKGROUND,),
    {PNG: 'RGBA cutout, or RGB composite with a background'},
    files={'background': 'an image to composite onto (cover-resized)'},
    errors=POST_ERRORS,
  ),
  '/api/eigenvectors': Route(
    'POST',
    eigenvectors,
    "The K smallest eigenpairs of the image's patch graph (--mode=extract's eigs)",
    (FORMAT, K, LAMBDA),
    {'application/octet-stream': 'npz (format=npz)', JSON: 'the same as JSON (format=json)'},
    errors=POST_ERRORS,
    schema=openapi.object_schema(_EIGEN),
  ),
  '/api/health': Route('GET', health, 'Model, methods, limits, requests in flight, model runs'),
  '/api/examples': Route('GET', examples, 'The bundled example photos', responses={JSON: 'list'}),
  '/examples/{name}': Route(
    'GET',
    example,
    'One bundled example photo (JPEG)',
    responses={'image/jpeg': 'the photo'},
    path_params={'name': 'a file name listed by /api/examples, e.g. chelsea.jpg'},
    errors=(400, 403, 404),
  ),
  '/openapi.json': Route('GET', openapi_json, 'This API as an OpenAPI 3 document'),
  '/docs': Route('GET', docs, 'This API as an HTML page', responses={HTML: 'the page'}),
  '/': Route('GET', page, 'The demo page', responses={HTML: 'the page'}),
}
ALIASES = {'/index.html': '/'}


def find(path: str) -> Optional[tuple[str, Route, dict[str, str]]]:
  """(template, route, path arguments) of a request path, or None (404)."""
  path = ALIASES.get(path, path)
  if path in ROUTES:
    return path, ROUTES[path], {}
  parts = path.split('/')
  for template, route in ROUTES.items():
    if '{' not in template:
      continue
    pattern = template.split('/')
    if len(pattern) != len(parts):
      continue
    args = {}
    for want, got in zip(pattern, parts):
      if want.startswith('{') and got and not got.startswith('.'):
        args[want[1:-1]] = urllib.parse.unquote(got)
      elif want != got:
        break
    else:
      return template, route, args
  return None


def query_options(query: str) -> dict[str, str]:
  """A query string's options (the last value of each; a blank one still names its key)."""
  parsed = urllib.parse.parse_qs(query, keep_blank_values=True)
  return {key: values[-1] for key, values in parsed.items()}
