"""The command line, shared by ``python main.py``, ``python -m spectral_jax`` and the
``spectral-jax`` console script.

  spectral-jax --config=voc --mode=localize --workdir=/tmp/voc12
  python -m spectral_jax --config=configs/folder.py --mode=extract \
      --config.data.root=IMAGES_DIR --workdir=OUT

``--config`` takes a config file, or the name of a shipped config (``voc``, ``folder``,
``demo``, ...: the files of ``configs/``, installed as the package ``spectral_jax.configs``). A path
``configs/<name>.py`` that does not exist from the current directory also resolves to the
shipped file, so the README's commands work from anywhere once the package is installed.
Any config value can be overridden with --config.<key>=<value>.
"""

from __future__ import annotations

import ast
import contextlib
import logging as pylogging
import difflib
import importlib
import importlib.util
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags
import tqdm

from spectral_jax import compile_cache, config_dict, errors, verbs, workdirs
from spectral_jax import artifacts
from spectral_jax.models.weights.errors import CheckpointError
from spectral_jax.tasks import common

_ALL_MODES = (
  'extract',
  'localize',
  'segment',
  'semantic',
  'train',
  'evaluate',
  'edit',
  'discover',
  'serve',
)
# Modes that need no --workdir (they write no outputs): a temporary one is used and deleted.
_OPTIONAL_WORKDIR = ('serve',)
# A mode is a module spectral_jax/tasks/<mode>.py with run(config, workdir).
_TASKS = Path(__file__).parent / 'tasks'
MODES = tuple(m for m in _ALL_MODES if (_TASKS / f'{m}.py').exists())

_CONFIG = config_flags.DEFINE_config_file(
  'config',
  None,
  'A config file, or the name of a shipped config (voc, folder, demo, ...).',
  lock_config=True,
)
_WORKDIR = flags.DEFINE_string(
  'workdir', None, 'Where outputs (and resume state) are written (optional for --mode=serve).'
)
_MODE = flags.DEFINE_enum('mode', 'extract', MODES, 'What to run.')
flags.mark_flags_as_required(['config'])


def configs_dir() -> Optional[Path]:
  """The folder of the shipped configs: the installed package ``spectral_jax.configs`` (a
  wheel), else the repository's ``configs/`` beside the package (a clone or editable install).
  Never a ``configs`` package of the current directory: another project's is not ours."""
  try:
    spec = importlib.util.find_spec('spectral_jax.configs')
  except (ImportError, ValueError):
    spec = None
  folders = list(spec.submodule_search_locations or []) if spec is not None else []
  folders.append(str(Path(__file__).resolve().parent.parent / 'configs'))
  for folder in folders:
    if (Path(folder) / 'base.py').exists():
      return Path(folder)
  return None


def shipped_configs() -> list[str]:
  folder = configs_dir()
  if folder is None:
    return []
  return sorted(p.stem for p in folder.glob('*.py') if not p.stem.startswith('_'))


def resolve_config(value: str) -> str:
  """A --config value → the file config_flags loads.

  An existing file is kept; 'voc' (or 'voc.py', or 'configs/voc.py' where that path does not
  exist) becomes the shipped configs/voc.py. A ':args' suffix (config_flags' config string)
  is kept. Anything else is returned unchanged, for config_flags to report.
  """
  path, sep, args = value.partition(':')
  if not path or Path(path).expanduser().exists():
    return value
  p = Path(path)
  bare = len(p.parts) == 1
  under_configs = len(p.parts) == 2 and p.parts[0] == 'configs'
  if not (bare or under_configs) or p.suffix not in ('', '.py'):
    return value
  folder = configs_dir()
  if folder is None or not (folder / f'{p.stem}.py').exists():
    if bare and p.suffix == '':
      names = ', '.join(shipped_configs()) or '(none found: is the package installed?)'
      raise app.UsageError(
        f'--config={value}: no such file and no shipped config {p.stem!r}; shipped configs: {names}'
      )
    return value
  return str(folder / f'{p.stem}.py') + sep + args


def resolve_argv(argv: Sequence[str]) -> list[str]:
  """argv with ``--config=NAME`` / ``--config NAME`` resolved by ``resolve_config``."""
  out = list(argv)
  for i, arg in enumerate(out):
    if i == 0:
      continue
    if arg.startswith('--config='):
      out[i] = '--config=' + resolve_config(arg[len('--config=') :])
    elif arg == '--config' and i + 1 < len(out):
      out[i + 1] = resolve_config(out[i + 1])
  return out


# Errors whose message is the whole story for a user (bad values, missing files, a workdir
# made with other settings, the environment); anything else keeps its traceback.
USER_ERRORS = (
  ValueError,
  OSError,
  workdirs.WorkdirError,
  errors.MissingDependencyError,
  CheckpointError,
)


# The verb being run (``spectral-jax localize ...``), if any: its errors use its own flags and
# each image gets a line at the end.
_PLAN: Optional[verbs.Plan] = None


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config = _CONFIG.value
  if _WORKDIR.value is None and _MODE.value not in _OPTIONAL_WORKDIR:
    raise app.UsageError(f'--workdir is required for --mode={_MODE.value}')
  try:
    common.check_config(config)  # flag-named errors before anything loads
    with contextlib.ExitStack() as stack:
      workdir = _WORKDIR.value
      if workdir is None:  # deleted at exit, lock included
        prefix = f'spectral_jax_{_MODE.value}_'
        workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix=prefix))
      workdir = workdirs.prepare(workdir)
      _run_mode(config, workdir)
      if _PLAN is not None and _PLAN.out is not None and jax.process_index() == 0:
        verbosity = logging.get_verbosity()
        logging.set_verbosity(logging.ERROR)  # listed again for the report: said once already
        try:
          examples = common.examples_from_config(config.data, workdir)
        finally:
          logging.set_verbosity(verbosity)
        lines = verbs.report(_PLAN.verb, examples, workdir, config.data.root)
        print('\n'.join(lines), flush=True)
  except USER_ERRORS as e:  # the message names the flag or file and the fix: no traceback
    logging.debug('traceback of the error below', exc_info=True)
    message, who = common.user_message(e), f'spectral_jax --mode={_MODE.value}'
    verbose = '--verbosity=1'
    if _PLAN is not None:
      message, who, verbose = _PLAN.in_own_words(message), f'spectral-jax {_PLAN.verb}', '-v'
    sys.stderr.write(f'{who}: error: {message}\n(the traceback: rerun with {verbose})\n')
    sys.exit(1)


class _BarSafeStream:
  """stderr for absl's handler: each line goes through tqdm.write, above the bar."""

  def __init__(self, stream):
    self.stream = stream

  def write(self, text: str) -> None:
    if text.strip():
      tqdm.tqdm.write(text.rstrip('\n'), file=self.stream)

  def flush(self) -> None:
    self.stream.flush()


class _ShortFormatter(pylogging.Formatter):
  """Plain lines for people (``warning: ...``); absl's prefix (time, thread, file:line) only
  with ``--verbosity=1`` or in multi-process runs, where it tells the processes apart."""

  def format(self, record: pylogging.LogRecord) -> str:
    text = record.getMessage()
    if record.exc_info:
      text += '\n' + self.formatException(record.exc_info)
    if record.levelno >= pylogging.WARNING:
      return f'{record.levelname.lower()}: {text}'
    return text


@contextlib.contextmanager
def _logs_through_the_bar(short: bool):
  handler = logging.get_absl_handler().python_handler
  stream, formatter = handler.stream, handler.formatter
  handler.stream = _BarSafeStream(stream)
  if short:
    handler.setFormatter(_ShortFormatter())
  try:
    yield
  finally:
    handler.stream = stream
    handler.setFormatter(formatter)


def _run_mode(config, workdir: Path) -> None:
  # Persistent compilation cache: a resumed or repeated run loads its compiled shapes.
  compile_cache.enable(config.model.cache_dir or None)
  dist = config.distributed
  if dist.enabled:  # multi-host: JAX's own distributed runtime
    timeout = dist.get('timeout_s', 300)
    logging.warning(
      'process %s waiting up to %d s for %s processes at %s',
      dist.process_id if dist.process_id >= 0 else '(auto)',
      timeout,
      dist.num_processes or '(auto)',
      dist.coordinator_address or '(auto)',
    )
    jax.distributed.initialize(
      dist.coordinator_address or None,
      dist.num_processes or None,
      None if dist.process_id < 0 else dist.process_id,
      initialization_timeout=timeout,
    )
  (logging.info if jax.device_count() > 1 else logging.debug)(
    'JAX process %d/%d, local devices: %s',
    jax.process_index(),
    jax.process_count(),
    jax.local_devices(),
  )
  task = importlib.import_module(f'spectral_jax.tasks.{_MODE.value}')
  # Log lines go through the progress bar's writer: the bar stays whole.
  short = jax.process_count() == 1 and logging.get_verbosity() <= logging.INFO
  with (
    _logs_through_the_bar(short),
    workdirs.locked(workdir, jax.process_index(), jax.process_count()),
  ):
    if jax.process_index() == 0:
      artifacts.clean_stale_temporaries(workdir)
    task.run(config, str(workdir))


# One line per mode (what ``--help`` lists).
MODE_HELP = {
  'extract': 'DINO keys and K Laplacian eigenvectors per image (features/, eigs/)',
  'localize': "the main object's box per image; CorLoc with boxes (predictions.jsonl)",
  'segment': "the main object's mask per image (+ CRF / bilateral); IoU, maxFβ (masks/)",
  'semantic': 'eigen-segments → dataset clusters → pseudo-labels; Hungarian mIoU',
  'train': 'self-training of a segmentation head (configs/voc_semantic.py, configs/found.py)',
  'evaluate': 'scores a saved checkpoint (--config.checkpoint=DIR)',
  'edit': 'background removal and compositing (cutout/, composite/)',
  'discover': 'several objects per image: MaskCut or ProMerge (instances.json)',
  'serve': 'the local web demo and HTTP API (--config.serve.port)',
}


def _first_line(path: Path) -> str:
  try:
    doc = ast.get_docstring(ast.parse(path.read_text())) or ''
  except (OSError, SyntaxError):
    return ''
  return doc.strip().splitlines()[0] if doc.strip() else ''


def overview() -> str:
  """What ``--help`` prints before the flags: modes, shipped configs, where keys are listed."""
  lines = [
    'spectral_jax: training-free object discovery (DSM, TokenCut, LOST, FOUND, MaskCut,',
    'ProMerge) on DINO / DINOv2 / DINOv3 features.',
    '',
    'usage: spectral-jax --config=NAME_OR_FILE[:ARG] --mode=MODE --workdir=OUT '
    '[--config.KEY=VALUE ...]',
    '       (= python main.py ... = python -m spectral_jax ...)',
    '',
    'modes:',
  ]
  lines += [f'  {m:<9} {MODE_HELP.get(m, "")}' for m in MODES]
  lines += [
    '',
    'short verbs (the same files as the mode, under --out; spectral-jax VERB --help):',
    '  spectral-jax VERB IMAGE_OR_FOLDER... --out DIR [--method M] [--model NAME] '
    '[--checkpoint FILE]',
  ]
  lines += [f'  {v:<9} {spec.help}' for v, spec in verbs.VERBS.items()]
  lines += [f'  {"download":<9} {verbs.DOWNLOAD_HELP} (spectral-jax download dino_vits16)']
  lines += ['', 'shipped configs (--config=NAME):']
  folder = configs_dir()
  for name in shipped_configs():
    if name not in ('base', '__init__'):
      lines.append(f'  {name:<12} {_first_line(folder / f"{name}.py")}')
  lines += [
    '',
    'every key with its default and help: spectral-jax --config=NAME --config_help',
    'example: spectral-jax --config=demo --mode=localize --workdir=/tmp/demo',
    '',
  ]
  return '\n'.join(lines)


def _load_config(value: str):
  """The ConfigDict a --config value names (file[:arg]), or None if it cannot be loaded."""
  path, _, arg = value.partition(':')
  try:
    spec = importlib.util.spec_from_file_location('_spectral_jax_config', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()
  except Exception:  # pylint: disable=broad-except  # config_flags reports it properly
    return None


def _keys(config, prefix: str = '') -> dict:
  out = {}
  for key, value in config.items():
    name = f'{prefix}{key}'
    if hasattr(value, 'items') and not isinstance(value, dict):
      out.update(_keys(value, name + '.'))
    else:
      out[name] = value
  return out


def config_help(config) -> str:
  """Every key of ``config`` with its default and its one line of documentation."""
  helps = config_dict.field_help()
  rows = [
    f'  --config.{k}={v!r}' + (f'\n      {helps[k]}' if helps.get(k) else '')
    for k, v in sorted(_keys(config).items())
  ]
  return 'config keys (default, then what it does):\n' + '\n'.join(rows) + '\n'


def unknown_keys(argv: Sequence[str], config) -> list[str]:
  """One line per ``--config.KEY`` of ``argv`` that ``config`` lacks, naming the closest keys."""
  known = _keys(config)
  names = set(known)
  for key in list(known):  # a dict-valued key takes sub-keys (segment.crf_params.w1)
    if isinstance(known[key], dict):
      names |= {f'{key}.{k}' for k in known[key]}
  errors_out = []
  for arg in argv[1:]:
    if not arg.startswith('--config.'):
      continue
    key = arg[len('--config.') :].split('=', 1)[0]
    if key and key not in names and not any(n.startswith(key + '.') for n in names):
      close = difflib.get_close_matches(key, sorted(names), n=3, cutoff=0.6)
      hint = f'; closest: {", ".join("--config." + c for c in close)}' if close else ''
      errors_out.append(f'--config.{key}: no such key{hint} (all keys: --config_help)')
  return errors_out


def run(argv: Optional[Sequence[str]] = None) -> None:
  """The entry point: resolves config names, answers --help / --config_help and unknown keys in
  one screen, then absl parses the flags and runs ``main``."""
  global _PLAN
  argv = list(sys.argv if argv is None else argv)
  if len(argv) > 1 and argv[1] == 'download':
    sys.exit(verbs.download(argv))
  if len(argv) > 1 and argv[1] in verbs.VERBS:
    folder = configs_dir()
    _PLAN = verbs.plan(argv, str(folder / f'{verbs.VERBS[argv[1]].config}.py'))
    argv = _PLAN.argv
  try:
    argv = resolve_argv(argv)
  except app.UsageError as e:
    sys.stderr.write(f'FATAL Flags parsing error: {e}\n')
    sys.exit(1)
  # -q: warnings and errors only (= --verbosity=-1).
  argv = [argv[0]] + ['--verbosity=-1' if a in ('-q', '--quiet') else a for a in argv[1:]]
  # JAX probes for a TPU on every start and logs the failure: not news on a CPU or GPU host.
  pylogging.getLogger('jax._src.xla_bridge').setLevel(pylogging.WARNING)
  if len(argv) == 1 or any(a in ('-h', '--help', '--helpshort') for a in argv[1:]):
    print(overview())
    if len(argv) == 1:
      sys.exit(0)
  value = next((a.split('=', 1)[1] for a in argv[1:] if a.startswith('--config=')), None)
  if value is None and '--config' in argv[1:-1]:
    value = argv[argv.index('--config') + 1]
  config = _load_config(value) if value else None
  if config is not None:
    if '--config_help' in argv[1:]:
      print(config_help(config))
      sys.exit(0)
    problems = unknown_keys(argv, config)
    if problems:
      sys.stderr.write('\n'.join(f'spectral_jax: error: {p}' for p in problems) + '\n')
      sys.exit(2)
  sys.argv = argv  # config_flags finds the --config.KEY overrides in sys.argv
  app.run(main, argv=argv)
