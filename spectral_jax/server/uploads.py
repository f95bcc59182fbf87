"""What a request brings: the image (raw body or multipart field), its options, a background
file; option parsing with 400 answers in the caller's words (``Param``: one option's type,
default and allowed values, which also describe it in /openapi.json)."""

from __future__ import annotations

import dataclasses
import email.message
import math
from typing import Any, Optional, Sequence


class HTTPError(Exception):
  """An answer with a status and a message in words (sent as JSON)."""

  def __init__(self, status: int, message: str):
    super().__init__(message)
    self.status = status
    self.message = message


def _header_params(value: str, header: str = 'content-type') -> email.message.Message:
  msg = email.message.Message()
  msg[header] = value
  return msg


def parse_multipart(body: bytes, content_type: str) -> dict[str, tuple[Optional[str], bytes]]:
  """multipart/form-data → {field: (filename or None, bytes)} (the first part of each name)."""
  boundary = _header_params(content_type).get_param('boundary')
  if not boundary or not isinstance(boundary, str):
    raise HTTPError(400, 'multipart/form-data without a boundary parameter')
  delimiter = b'--' + boundary.encode('latin-1')
  fields: dict[str, tuple[Optional[str], bytes]] = {}
  chunks = body.split(delimiter)
  if len(chunks) < 3:
    raise HTTPError(400, 'malformed multipart body (no parts between the boundaries)')
  for chunk in chunks[1:]:
    if chunk.startswith(b'--'):  # the closing delimiter
      break
    head, sep, content = chunk.partition(b'\r\n\r\n')
    if not sep:
      raise HTTPError(400, 'malformed multipart part (no blank line after its headers)')
    if content.endswith(b'\r\n'):
      content = content[:-2]
    disposition = ''
    for line in head.decode('latin-1').split('\r\n'):
      key, _, value = line.partition(':')
      if key.strip().lower() == 'content-disposition':
        disposition = value.strip()
    params = _header_params(disposition, 'content-disposition')
    name = params.get_param('name', header='content-disposition')
    if isinstance(name, str) and name not in fields:
      filename = params.get_param('filename', header='content-disposition')
      fields[name] = (filename if isinstance(filename, str) else None, content)
  return fields


class Upload:
  """An image request: the image bytes, its name for messages, options, a background file."""

  def __init__(self, body: bytes, content_type: str, query: dict[str, str]):
    self.options = dict(query)
    self.background: Optional[tuple[str, bytes]] = None
    if content_type.split(';')[0].strip().lower() == 'multipart/form-data':
      fields = parse_multipart(body, content_type)
      if 'image' not in fields:
        raise HTTPError(400, "multipart upload without a field named 'image'")
      filename, self.data = fields.pop('image')
      self.name = filename or 'image'
      if 'background' in fields and fields['background'][0] is not None:
        filename, data = fields.pop('background')
        if data:  # an empty file input sends an empty part
          self.background = (filename or 'background', data)
      for key, (filename, value) in fields.items():
        if filename is None:  # form fields; query parameters win over them
          self.options.setdefault(key, value.decode('utf-8', 'replace'))
    else:
      self.data, self.name = body, 'upload'
    if not self.data:
      raise HTTPError(
        400, "no image: send it as the request body or as the multipart field 'image'"
      )

  def check_options(self, known: Sequence[str]) -> None:
    """A misspelled option is a 400 naming it, never silently ignored."""
    check_options(self.options, known)

  def option(self, key: str, default: str) -> str:
    return self.options.get(key, default).strip() or default


def check_options(options: dict[str, str], known: Sequence[str]) -> None:
  unknown = sorted(set(options) - set(known))
  if unknown:
    raise HTTPError(
      400,
      f'unknown option {unknown[0]!r}: this endpoint takes '
      + (', '.join(known) if known else 'no options'),
    )


KINDS = ('choice', 'int', 'float', 'text')
_SCHEMA_TYPES = {'choice': 'string', 'int': 'integer', 'float': 'number', 'text': 'string'}


@dataclasses.dataclass(frozen=True)
class Param:
  """One option of an endpoint (a query parameter or a multipart form field): the server
  parses requests with it and /openapi.json describes it from it, so the two cannot drift.

  kind: 'choice' (one of ``allowed``), 'int' / 'float' (in ``lo``..``hi``) or 'text' (checked
  by the endpoint, e.g. a colour). A missing or blank value is ``default``.
  """

  name: str
  kind: str
  default: Any
  description: str
  allowed: tuple = ()
  lo: Optional[float] = None
  hi: Optional[float] = None

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f'Param {self.name}: kind {self.kind!r} is not one of {KINDS}')

  def parse(self, options: dict[str, str]) -> Any:
    text = (options.get(self.name) or '').strip() or str(self.default)
    if self.kind == 'choice':
      if text not in self.allowed:
        raise HTTPError(400, f'{self.name}={text!r}: use one of {", ".join(self.allowed)}')
      return text
    if self.kind == 'text':
      return text
    try:
      value = (int if self.kind == 'int' else float)(text)
    except ValueError:
      raise HTTPError(400, f'{self.name}={text!r}: not a number') from None
    if not (math.isfinite(value) and self.lo <= value <= self.hi):
      raise HTTPError(400, f'{self.name}={text!r}: use a value in {self.lo}..{self.hi}')
    return value

  def schema(self) -> dict:
    """Its OpenAPI 3 schema object."""
    out: dict[str, Any] = {'type': _SCHEMA_TYPES[self.kind], 'default': self.default}
    if self.kind == 'choice':
      out['enum'] = list(self.allowed)
    if self.lo is not None:
      out['minimum'] = self.lo
    if self.hi is not None:
      out['maximum'] = self.hi
    return out


def parse_options(params: Sequence[Param], options: dict[str, str]) -> dict[str, Any]:
  """{name: value} of every param; an unknown option or a bad value is a 400 naming it."""
  check_options(options, [p.name for p in params])
  return {p.name: p.parse(options) for p in params}
