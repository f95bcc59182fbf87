"""/openapi.json and /docs: the routing table (``routes.ROUTES``) as an OpenAPI 3 document and
that document as an HTML page (plain tables, nothing fetched from the network).

The document is built from the same ``Param`` objects the server parses requests with, so a
parameter, its type, default or allowed values cannot be documented otherwise than checked.
"""

from __future__ import annotations

import html
import json
from typing import Any

ERRORS = {
  400: 'bad request: not an image, a truncated file, an image under one patch, a bad or '
  'unknown parameter (named in the message)',
  403: 'another Host (DNS rebinding) or another Origin (a foreign page)',
  404: 'no such path or file',
  408: 'the client stopped sending mid-body',
  411: 'a POST without a Content-Length (chunked uploads are not supported)',
  413: 'an upload above serve.max_upload_bytes, or an image above data.max_pixels pixels',
  500: 'internal error (the server keeps serving)',
  501: 'an optional package this server lacks (e.g. the crf extra for refine=crf)',
  503: 'server busy: serve.max_queue requests admitted, or serve.timeout spent waiting '
  '(Retry-After)',
}
_BINARY = {'type': 'string', 'format': 'binary'}


def object_schema(fields: dict[str, tuple[str, str]]) -> dict:
  """{name: (JSON type, description)} → an OpenAPI object schema."""
  return {
    'type': 'object',
    'properties': {name: {'type': t, 'description': d} for name, (t, d) in fields.items()},
  }


def _operation(path: str, route: Any) -> dict:
  op: dict[str, Any] = {
    'summary': route.summary,
    'operationId': (route.method.lower() + path).replace('/', '_').replace('-', '_').strip('_'),
  }
  parameters = [
    {'name': name, 'in': 'path', 'required': True, 'description': d, 'schema': {'type': 'string'}}
    for name, d in route.path_params.items()
  ]
  parameters += [
    {'name': p.name, 'in': 'query', 'required': False, 'description': p.description}
    | {'schema': p.schema()}
    for p in route.params
  ]
  if parameters:
    op['parameters'] = parameters
  if route.method == 'POST':
    fields = {'image': dict(_BINARY, description='the image (any format PIL reads)')}
    fields |= {name: dict(_BINARY, description=d) for name, d in route.files.items()}
    fields |= {p.name: dict(p.schema(), description=p.description) for p in route.params}
    op['requestBody'] = {
      'required': True,
      'description': 'the image as the raw body (any Content-Type), or a multipart form with '
      "the file field 'image' (options may then be form fields; query parameters win)",
      'content': {
        'application/octet-stream': {'schema': _BINARY},
        'image/*': {'schema': _BINARY},
        'multipart/form-data': {
          'schema': {'type': 'object', 'properties': fields, 'required': ['image']}
        },
      },
    }
  ok: dict[str, Any] = {}
  for content_type in route.responses or {'application/json': 'JSON'}:
    if content_type == 'application/json':
      ok[content_type] = {'schema': route.schema or {'type': 'object'}}
    elif content_type.startswith('text/'):
      ok[content_type] = {'schema': {'type': 'string'}}
    else:
      ok[content_type] = {'schema': _BINARY}
  described = route.responses or {'application/json': 'JSON'}
  if len(described) == 1:
    descriptions = next(iter(described.values()))
  else:
    descriptions = '; '.join(f'{c}: {w}' for c, w in described.items())
  responses: dict[str, Any] = {'200': {'description': descriptions, 'content': ok}}
  for status in route.errors:
    responses[str(status)] = {
      'description': ERRORS[status],
      'content': {'application/json': {'schema': {'$ref': '#/components/schemas/Error'}}},
    }
  op['responses'] = responses
  return op


def document(routes: dict, health: dict) -> dict:
  """The OpenAPI 3 document of ``routes`` (``health``: the running server's model and limits,
  quoted in the description)."""
  paths: dict[str, Any] = {}
  for path, route in routes.items():
    paths.setdefault(path, {})[route.method.lower()] = _operation(path, route)
  return {
    'openapi': '3.0.3',
    'info': {
      'title': 'spectral_jax',
      'version': health.get('version', ''),
      'description': (
        f'Deep Spectral Methods on one loaded backbone ({health.get("model")}). POST endpoints '
        'take an image as the raw body or the multipart field image; options are query '
        'parameters or form fields; an unknown option is a 400, an unknown path a 404, another '
        'HTTP method a 405. Errors are JSON {"error", "status"}. Limits: uploads up to '
        f'{health.get("max_upload_bytes")} bytes, images up to {health.get("max_pixels")} '
        f'pixels, {health.get("max_queue")} requests admitted at once.'
      ),
    },
    'paths': paths,
    'components': {
      'schemas': {
        'Error': {
          'type': 'object',
          'properties': {'error': {'type': 'string'}, 'status': {'type': 'integer'}},
          'required': ['error', 'status'],
        }
      }
    },
  }


def _cell(value: Any) -> str:
  return html.escape(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))


def _allowed(schema: dict) -> str:
  if 'enum' in schema:
    return ' | '.join(schema['enum'])
  if 'minimum' in schema or 'maximum' in schema:
    return f'{schema.get("minimum", "")}..{schema.get("maximum", "")}'
  return ''


def html_page(doc: dict) -> str:
  """``doc`` as tables: one per operation (parameters, body, responses)."""
  out = [
    '<!doctype html><html lang="en"><head><meta charset="utf-8">',
    f'<title>{_cell(doc["info"]["title"])} HTTP API</title><style>',
    'body{font-family:system-ui,sans-serif;max-width:1100px;margin:0 auto;padding:12px 20px;'
    'color:#1d232b}table{border-collapse:collapse;width:100%;margin:6px 0 14px}'
    'td,th{border:1px solid #ccd;padding:4px 8px;text-align:left;vertical-align:top;'
    'font-size:.9rem}th{background:#eef1f6}code{background:#f2f3f5;padding:0 3px}'
    'h2{font-size:1.1rem;margin-top:26px}',
    '</style></head><body>',
    f'<h1>{_cell(doc["info"]["title"])} {_cell(doc["info"]["version"])}: HTTP API</h1>',
    f'<p>{_cell(doc["info"]["description"])}</p>',
    '<p>The same as <a href="/openapi.json">/openapi.json</a> (OpenAPI 3); the demo page is '
    '<a href="/">/</a>.</p>',
  ]
  for path, methods in doc['paths'].items():
    for method, op in methods.items():
      out.append(
        f'<h2 id="{_cell(op["operationId"])}"><code>{method.upper()} {_cell(path)}</code></h2>'
      )
      out.append(f'<p>{_cell(op["summary"])}</p>')
      params = op.get('parameters', [])
      if params:
        out.append(
          '<table><tr><th>parameter</th><th>in</th><th>type</th><th>default</th>'
          '<th>allowed</th><th>description</th></tr>'
        )
        for p in params:
          s = p['schema']
          out.append(
            f'<tr><td><code>{_cell(p["name"])}</code></td><td>{p["in"]}</td>'
            f'<td>{_cell(s["type"])}</td><td>{_cell(s.get("default", ""))}</td>'
            f'<td>{_cell(_allowed(s))}</td><td>{_cell(p["description"])}</td></tr>'
          )
        out.append('</table>')
      if 'requestBody' in op:
        body = op['requestBody']
        out.append(
          f'<p><b>Body</b> ({", ".join(_cell(c) for c in body["content"])}): '
          f'{_cell(body["description"])}</p>'
        )
      out.append('<table><tr><th>status</th><th>content</th><th>meaning</th></tr>')
      for status, response in op['responses'].items():
        content = ', '.join(response.get('content', {}))
        out.append(
          f'<tr><td>{status}</td><td>{_cell(content)}</td>'
          f'<td>{_cell(response["description"])}</td></tr>'
        )
      out.append('</table>')
  out.append('</body></html>')
  return '\n'.join(out)
