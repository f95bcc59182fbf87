"""What a request brings: the image (raw body or multipart field), its options, a background
file; option parsing with 400 answers in the caller's words."""

from __future__ import annotations

import email.message
import math
from typing import Optional


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

  def __init__(self, body: bytes, content_type: str, query: dict[str, list[str]]):
    self.options = {k: v[-1] for k, v in query.items() if v}
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

  def check_options(self, known: tuple[str, ...]) -> None:
    """A misspelled option is a 400 naming it, never silently ignored."""
    unknown = sorted(set(self.options) - set(known))
    if unknown:
      raise HTTPError(
        400,
        f'unknown option {unknown[0]!r}: this endpoint takes '
        + (', '.join(known) if known else 'no options'),
      )

  def option(self, key: str, default: str) -> str:
    return self.options.get(key, default).strip() or default


def choice(upload: Upload, key: str, default: str, allowed) -> str:
  value = upload.option(key, default)
  if value not in allowed:
    raise HTTPError(400, f'{key}={value!r}: use one of {", ".join(allowed)}')
  return value


def number(upload: Upload, key: str, default, kind, lo, hi):
  text = upload.option(key, str(default))
  try:
    value = kind(text)
  except ValueError:
    raise HTTPError(400, f'{key}={text!r}: not a number') from None
  if not (math.isfinite(value) and lo <= value <= hi):
    raise HTTPError(400, f'{key}={text!r}: use a value in {lo}..{hi}')
  return value
