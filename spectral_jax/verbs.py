"""Short verbs on top of the configs (the CLI's other spelling):

  spectral-jax localize IMAGE_OR_FOLDER... --out DIR [--method M] [--model NAME] [--checkpoint F]
  spectral-jax segment|cutout|discover IMAGE_OR_FOLDER... --out DIR [...]
  spectral-jax serve [--port N]
  spectral-jax download NAME...

A verb is a shipped config, a mode and a few flags mapped onto config keys: ``plan`` turns its
command line into the ``--config=... --mode=... --workdir=...`` one, which runs through the same
runner and writes the same files; ``report`` then prints one line per image. ``download``
fetches official files into the weights cache ahead of time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from absl import logging

from spectral_jax import artifacts, config_dict, pipeline
from spectral_jax.data import decode
from spectral_jax.models import backbones
from spectral_jax.models.weights import downloads
from spectral_jax.models.weights.errors import CheckpointError
from spectral_jax.tasks import reporting

_DSM_METHODS = tuple(dict.fromkeys(a.split('_')[0] for a in config_dict.METHOD_ARGS))


@dataclasses.dataclass(frozen=True)
class Verb:
  """A verb: the mode it runs, the shipped config it starts from, its one line of help, the
  values ``--method`` takes and the config key it sets."""

  mode: str
  config: str
  help: str
  methods: tuple[str, ...] = ()
  method_key: str = 'method'
  needs_images: bool = True


VERBS = {
  'localize': Verb('localize', 'folder', "the main object's box and score per image", _DSM_METHODS),
  'segment': Verb('segment', 'folder', "the main object's mask per image (masks/)", _DSM_METHODS),
  'cutout': Verb('edit', 'edit', 'the main object cut out: RGBA PNGs (cutout/), on --background'),
  'discover': Verb(
    'discover',
    'folder',
    'several objects per image: masks, boxes, scores (instances.json)',
    ('maskcut', 'promerge'),
    'discover.method',
  ),
  'serve': Verb('serve', 'folder', 'the local web demo and HTTP API', needs_images=False),
}
DOWNLOAD_HELP = 'fetch official weights into the cache ahead of time (offline later)'

# Verb flags → the config keys they set: an error naming a key names the flag instead.
FLAG_KEYS = {
  '--checkpoint': 'model.checkpoint',
  '--model': 'model.name',
  '--background': 'edit.background',
  '--max-objects': 'discover.max_objects',
  '--port': 'serve.port',
  '--host': 'serve.host',
}


@dataclasses.dataclass(frozen=True)
class Plan:
  """A verb's command line, translated: ``argv`` is the config-and-mode command line."""

  verb: str
  argv: list[str]
  out: Optional[str]
  flags: dict[str, str]  # '--config.KEY' → the verb's flag that set it

  @property
  def mode(self) -> str:
    return VERBS[self.verb].mode

  def in_own_words(self, message: str) -> str:
    """An error message with the config flags this verb's own flags set spelled as those."""
    for config_flag, verb_flag in sorted(self.flags.items(), key=lambda kv: -len(kv[0])):
      message = message.replace(config_flag, verb_flag)
    if self.out is not None:
      message = message.replace('--config.overwrite=True', '--overwrite')
      message = message.replace('--workdir', '--out')
      for spelling in {self.out, str(Path(self.out).absolute())}:  # "workdir o6 is in use…"
        message = message.replace(f'workdir {spelling}', f'--out {spelling}')

      # The inputs are the verb's positional IMAGE_OR_FOLDER: data.root holds one ('' for
      # several, which go in data.paths). Said in those words.
      def inputs(match: re.Match) -> str:
        old, new = (v if v != "''" else '(several)' for v in match.groups())
        return f'  IMAGE_OR_FOLDER: {old} → {new}'

      message = re.sub(r'^  data\.root: (.*) → (.*)$', inputs, message, flags=re.M)
    return message


def _parser(name: str, verb: Verb) -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog=f'spectral-jax {name}',
    description=f'{verb.help}. The same files as --mode={verb.mode} (spectral-jax --help).',
    epilog='Any config key: --config.KEY=VALUE (spectral-jax --config='
    f'{verb.config} --config_help lists them).',
  )
  if verb.needs_images:
    parser.add_argument(
      'images', nargs='+', metavar='IMAGE_OR_FOLDER', help='image files and folders (recursive)'
    )
    parser.add_argument('--out', required=True, metavar='DIR', help='where the outputs go')
    parser.add_argument(
      '--overwrite', action='store_true', help='replace outputs of other settings in --out'
    )
  if verb.methods:
    parser.add_argument('--method', choices=verb.methods, help=f'default {verb.methods[0]}')
  parser.add_argument(
    '--model', help='backbone, default dino_vits16; one of ' + ', '.join(backbones.BACKBONES)
  )
  parser.add_argument('--checkpoint', metavar='FILE', help='local weights file or URL')
  if name == 'cutout':
    parser.add_argument('--background', help="'white', '#RRGGBB', 'r,g,b' or an image file")
  if name == 'discover':
    parser.add_argument('--max-objects', type=int, help='objects per image (default 3)')
  if name == 'serve':
    parser.add_argument('--port', type=int, help='default 8000')
    parser.add_argument('--host', help='default 127.0.0.1')
  parser.add_argument('-q', '--quiet', action='store_true', help='warnings and errors only')
  parser.add_argument('-v', '--verbose', action='store_true', help='details and tracebacks')
  return parser


def plan(argv: Sequence[str], shipped_config: str) -> Plan:
  """``[prog, VERB, args...]`` → the Plan; argparse exits with its usage on a bad flag.
  ``shipped_config``: the path of the verb's config file."""
  name = argv[1]
  verb = VERBS[name]
  own = [a for a in argv[2:] if not a.startswith('--config.')]
  passthrough = [a for a in argv[2:] if a.startswith('--config.')]
  parser = _parser(name, verb)
  args = parser.parse_args(own)
  missing = [p for p in getattr(args, 'images', ()) if not Path(p).expanduser().exists()]
  if missing:  # exits 2 with the usage, as argparse does for any bad argument
    parser.error(f'no such image file or folder: {", ".join(missing)}')
  config = shipped_config
  out = ['--mode=' + verb.mode]
  flags: dict[str, str] = {}
  method = getattr(args, 'method', None)
  if method and verb.method_key == 'method':
    config += f':{method}'  # the config argument also picks the method's own weights
    flags['--config.method'] = '--method'
  elif method:
    out.append(f'--config.{verb.method_key}={method}')
    flags[f'--config.{verb.method_key}'] = '--method'
  for flag, key in FLAG_KEYS.items():
    if not hasattr(args, flag[2:].replace('-', '_')):
      continue  # not a flag of this verb
    flags[f'--config.{key}'] = flag  # an error about the key names the verb's flag
    value = getattr(args, flag[2:].replace('-', '_'))
    if value is not None:
      out.append(f'--config.{key}={value}')
  if verb.needs_images:
    out.append(f'--workdir={args.out}')
    if len(args.images) == 1:
      out.append(f'--config.data.root={args.images[0]}')
      flags['--config.data.root'] = 'IMAGE_OR_FOLDER'
    else:
      out.append(f'--config.data.paths={tuple(args.images)!r}')
      flags['--config.data.paths'] = 'IMAGE_OR_FOLDER'
    if args.overwrite:
      out.append('--config.overwrite=True')
  if args.quiet:
    out.append('--verbosity=-1')
  elif args.verbose:
    out.append('--verbosity=1')
  return Plan(
    name,
    [argv[0], f'--config={config}'] + out + passthrough,
    getattr(args, 'out', None),
    flags,
  )


# ------------------------------------------------------------------------- one line per image


def _read_json(path: Path):
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    return None


def _skipped(workdir: Path) -> dict[str, str]:
  """Why each skipped image was skipped (at any stage: cutout's images are read by extract)."""
  return {
    r['id']: r.get('error', 'unreadable') for r in artifacts.read_jsonl(workdir / 'skipped.jsonl')
  }


def _mask_fraction(path: Path) -> str:
  try:
    mask = decode.load_mask(path)
  except Exception:  # pylint: disable=broad-except  # a line, not a crash
    return ''
  return f' ({100 * float(np.mean(mask > 0)):.0f} % of the image)'


def report(verb: str, examples: Sequence, workdir: Path, root: str = '') -> list[str]:
  """One line per image of ``examples``: its file and what the run found or wrote for it.
  ``root``: the data root the run named files against (discover's instances.json)."""
  mode = VERBS[verb].mode
  lines = []
  skipped = _skipped(workdir)
  if mode == 'localize':
    boxes = {r['id']: r for r in artifacts.read_jsonl(workdir / 'predictions.jsonl')}
    scores = {r['id']: r.get('score') for r in artifacts.read_jsonl(workdir / 'scores.jsonl')}
  if mode == 'discover':
    instances = _read_json(workdir / 'instances.json') or {}
    by_image = {}
    for ann in instances.get('annotations', []):
      by_image.setdefault(ann['image_id'], []).append(ann)
    ids = {im.get('file_name'): im['id'] for im in instances.get('images', [])}
  for ex in examples:
    name = ex.path or ex.id
    if ex.id in skipped:
      lines.append(f'{name}: skipped ({skipped[ex.id]})')
      continue
    if mode == 'localize':
      r = boxes.get(ex.id)
      if r is None:
        lines.append(f'{name}: no box')
        continue
      score = scores.get(ex.id)
      tail = f'  score {score:.3f}' if isinstance(score, (int, float)) else ''
      x0, y0, x1, y1 = r['box_xyxy']
      lines.append(f'{name}: box x0={x0} y0={y0} x1={x1} y1={y1}{tail}')
    elif mode == 'segment':
      path = workdir / 'masks' / f'{ex.id}.png'
      written = path.is_file()
      lines.append(f'{name}: ' + (f'mask {path}{_mask_fraction(path)}' if written else 'no mask'))
    elif mode == 'edit':
      cut, comp = workdir / 'cutout' / f'{ex.id}.png', workdir / 'composite' / f'{ex.id}.png'
      done = [str(p) for p in (cut, comp) if p.is_file()]
      lines.append(f'{name}: ' + (', '.join(done) if done else 'no cutout'))
    elif mode == 'discover':
      anns = by_image.get(ids.get(reporting.file_name(ex, root)), [])
      found = '; '.join(
        'box x0={} y0={} x1={} y1={} score {:.3f}'.format(*_xyxy(a['bbox']), a.get('score', 0.0))
        for a in anns
      )
      lines.append(
        f'{name}: {pipeline.count(len(anns), "object")}' + (f': {found}' if found else '')
      )
  return lines


def _xyxy(bbox_xywh) -> list[int]:
  x, y, w, h = bbox_xywh
  return [round(x), round(y), round(x + w), round(y + h)]


# ------------------------------------------------------------------------------------ download


def downloadable() -> dict[str, str]:
  """Every name ``download`` takes → its URL: each backbone fetched without an access
  request, the other official files of their architectures, and FOUND's decoder."""
  names = {b.name: b.url for b in backbones.BACKBONES.values() if not b.gated}
  names.update(downloads.WEIGHTS)
  names.update(downloads.VARIANT_WEIGHTS)
  names.update({name: entry[0] for name, entry in downloads.FILES.items()})
  return names


def download(argv: Sequence[str]) -> int:
  """``spectral-jax download NAME... [--cache-dir DIR]``: prints each file's path, size and
  sha256; returns the exit status."""
  names = downloadable()
  parser = argparse.ArgumentParser(
    prog='spectral-jax download',
    description=DOWNLOAD_HELP + '. Names: ' + ', '.join(names),
  )
  parser.add_argument('names', nargs='*', metavar='NAME')
  total_gb = sum(downloads.pinned(url)[0] or 0 for url in names.values()) / 1e9
  parser.add_argument('--all', action='store_true', help=f'every name (about {total_gb:.0f} GB)')
  parser.add_argument('--list', action='store_true', help='list the names and URLs')
  parser.add_argument('--cache-dir', help='default $SPECTRAL_JAX_CACHE or ~/.cache/spectral_jax')
  args = parser.parse_args(argv[2:])
  if args.list or not (args.names or args.all):
    for name, url in names.items():
      size, _ = downloads.pinned(url)
      shown = f'{size / 1e6:.1f} MB' if size and size >= 1e6 else f'{size} bytes'
      print(f'{name:<18} {url}' + (f'  ({shown})' if size else ''))
    print(f'(--all: {len(names)} files, about {total_gb:.1f} GB)')
    gated = [b.name for b in backbones.BACKBONES.values() if b.gated]
    print(
      f'(not fetched, access request first: {", ".join(gated)}; pass the file with --checkpoint)'
    )
    return 0
  gated = [n for n in args.names if n in backbones.BACKBONES and backbones.BACKBONES[n].gated]
  if gated:
    parser.error(
      str(backbones.gated_error(gated[0])).replace(
        'pass the local file', 'pass it with --checkpoint FILE'
      )
    )
  unknown = [n for n in args.names if n not in names]
  if unknown:
    parser.error(f'unknown name(s) {", ".join(unknown)}; names: {", ".join(names)}')
  status = 0
  for name in names if args.all else args.names:
    verbosity = logging.get_verbosity()
    logging.set_verbosity(logging.ERROR)  # a copy that does not match is said on its line
    try:
      path = downloads.download(names[name], args.cache_dir)
    except CheckpointError as e:
      print(f'spectral-jax download: error: {e}', file=sys.stderr)
      return 1
    finally:
      logging.set_verbosity(verbosity)
    digest = downloads.sha256_file(path)  # remembered by the download: not read again
    print(f'{name}: {path} ({path.stat().st_size} bytes, sha256 {digest})')
    problem = downloads.mismatch(path, names[name])
    if problem is not None:  # put there by hand: never replaced behind the user's back
      print(
        f'spectral-jax download: error: {path} was already there and is not the published '
        f'file ({problem}); delete it and rerun to fetch the official one',
        file=sys.stderr,
      )
      status = 1
  return status
