"""What every task runner shares: choosing the images, the model, resume, and errors."""

from __future__ import annotations

import collections
import dataclasses
import os
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from absl import logging
import jax

from spectral_jax import errors, inference, parallel, pipeline, workdirs
from spectral_jax import artifacts
from spectral_jax import config_dict
from spectral_jax import settings as settings_lib
from spectral_jax.data import datasets
from spectral_jax.models.weights import checkpoints, downloads
from spectral_jax.models.weights.errors import CheckpointError
from spectral_jax.models import extractor as extractor_lib
from spectral_jax.models.extractor import FeatureExtractor

PRECISIONS = settings_lib.PRECISIONS


def _fail(flag: str, value: Any, why: str) -> None:
  raise settings_lib.SettingError(flag, value, why)


def user_message(error: Exception) -> str:
  """A library error in the CLI's words: setting keys become ``--config.`` flags."""
  if isinstance(error, errors.SettingError):
    return error.named(f'--config.{error.key}')
  if isinstance(error, errors.ImageTooLargeError):
    return f'{error}; raise --config.{error.setting} to process it'
  if isinstance(error, CheckpointError):
    return f'{error}\n  pass it with --config.{error.setting}=/path/to/{error.file_name or "FILE"}'
  if isinstance(error, errors.MissingDependencyError):
    return f'{error}, or run without it (--config.segment.refine=none, --config.discover.crf=False)'
  return str(error)


def expand_user_paths(config) -> None:
  """Expands a leading '~' in every string setting (every path flag, whatever its section)."""
  for key, value in list(config.items()):
    if hasattr(value, 'items'):
      expand_user_paths(value)
    elif isinstance(value, str) and (value == '~' or value.startswith('~/')):
      config[key] = os.path.expanduser(value)


def check_config(config) -> settings_lib.Settings:
  """The run's typed settings, converted once; fails fast, naming the key (the CLI spells it
  as its flag), before any image or weight is touched."""
  expand_user_paths(config)
  converted = config_dict.from_config(config)
  d = config.data
  for flag in ('boxes', 'masks', 'annotations'):
    value = d[flag]
    if value and not Path(value).exists():
      raise FileNotFoundError(f'--config.data.{flag}={value!r} does not exist')
  checkpoint = config.model.checkpoint
  if checkpoint and '://' not in checkpoint and not Path(checkpoint).exists():
    raise FileNotFoundError(f'--config.model.checkpoint={checkpoint!r} does not exist')
  return converted


def examples_from_config(data, workdir=None) -> list[Any]:
  """The dataset's examples (lazy: nothing decoded), in a fixed order, ``data.limit`` applied.

  Ids are made safe as output names (``artifacts.safe_id``); a folder listing never includes
  ``workdir`` or any other spectral_jax workdir.
  """
  source = data.source
  if source == 'folder' and data.get('paths'):
    examples = datasets.image_paths(data.paths, exclude=[workdir] if workdir else ())
  elif source == 'folder':
    _require_root(data)
    examples = datasets.image_folder(
      data.root,
      boxes=data.boxes or None,
      masks_dir=data.masks or None,
      exclude=[workdir] if workdir else (),
    )
  elif source == 'voc' and data.root:
    _require_existing_root(data)
    examples = datasets.voc_devkit(data.root, data.year, data.split, no_hard=data.no_hard)
  elif source == 'voc':  # no devkit given: the prepared tfds dataset
    examples = datasets.tfds_detection(
      f'voc/{data.year}', 'train+validation', data.tfds_dir or None, no_hard=data.no_hard
    )
  elif source == 'coco20k' and data.root:
    _require_existing_root(data)
    examples = datasets.coco20k(data.root, data.annotations or None)
  elif source == 'coco20k':
    examples = datasets.tfds_detection('coco/2014', 'train', data.tfds_dir or None)
  elif source == 'saliency':
    _require_root(data)
    examples = datasets.saliency_folder(data.name, data.root)
  elif source == 'tfds':
    examples = datasets.tfds_detection(
      data.name, data.split, data.tfds_dir or None, no_hard=data.no_hard
    )
  elif source == 'demo':
    examples = demo_examples()
  else:
    raise ValueError(f'data.source={source!r}: use folder, voc, coco20k, saliency, tfds or demo')
  if data.limit:
    examples = examples[: data.limit]
  examples = [
    ex
    if artifacts.safe_id(ex.id) == ex.id
    else dataclasses.replace(ex, id=artifacts.safe_id(ex.id))
    for ex in examples
  ]
  _check_unique_ids(examples)
  if not examples:
    raise ValueError(f'no images found for data.source={source!r} data.root={data.root!r}')
  return examples


DEMO_IMAGES = ('astronaut.png', 'chelsea.png', 'coffee.png', 'rocket.jpg', 'motorcycle_left.png')


def demo_examples() -> list[Any]:
  """Photos that ship inside scikit-image, so the demo downloads nothing but the weights."""
  import skimage.data  # pylint: disable=import-outside-toplevel

  folder = Path(skimage.data.__file__).parent
  return [
    datasets.Example(id=Path(name).stem, path=str(folder / name))
    for name in DEMO_IMAGES
    if (folder / name).exists()
  ]


def _require_root(data) -> None:
  if not data.root:
    raise ValueError(f'data.source={data.source!r} needs --config.data.root=PATH')
  _require_existing_root(data)


def _require_existing_root(data) -> None:
  if not Path(data.root).exists():
    raise FileNotFoundError(
      f'data.root {data.root!r} does not exist: pass an existing folder '
      'with --config.data.root=PATH'
    )


def _check_unique_ids(examples: Sequence[Any]) -> None:
  paths = collections.defaultdict(list)
  for ex in examples:
    paths[ex.id].append(str(ex.path or ex.id))
  dups = {i: p for i, p in paths.items() if len(p) > 1}
  if dups:
    listing = '; '.join(f'{i!r}: {", ".join(p)}' for i, p in list(dups.items())[:5])
    raise ValueError(
      f'{len(dups)} output names are shared by several images ({listing}); outputs are named '
      'by file stem, so rename or move one of each'
    )


def load_extractor(model) -> FeatureExtractor:
  return extractor_lib.load(
    model.name,
    model.checkpoint,
    model.cache_dir,
    PRECISIONS[model.precision],
    model.feature_block,
  )


def run_images(
  run: settings_lib.Settings,
  extractor,
  todo: Sequence[Any],
  on_error,
  which_matrix: str = '',
  **method,
):
  """pipeline.run_images with the run's settings (spectral settings, batching, limits);
  ``method``: pipeline.run_images' method, preprocess and method_params."""
  s = run.spectral
  return pipeline.run_images(
    extractor,
    todo,
    batch_size=run.batching.batch_size,
    limits=run.limits,
    spectral_k=s.K,
    color_lambda=s.color_lambda,
    which_matrix=which_matrix or s.which_matrix,
    solver=s.solver,
    bucket_tokens=inference.bucket_tokens(run.batching),
    batch_tokens=run.batching.batch_tokens,
    on_error=on_error,
    **method,
  )


class Panels:
  """Writes ``workdir/panels/<prefix><id>.png`` for the first ``count`` images of the dataset.

  Which images get a panel depends on the dataset order only, so a resumed run neither
  writes more panels nor skips due ones.
  """

  def __init__(self, workdir, count: int, examples: Sequence[Any] = (), prefix: str = ''):
    self.folder = Path(workdir) / 'panels'
    self.due = {ex.id for ex in list(examples)[: max(count, 0)]}
    self.prefix = prefix

  def __call__(self, image_id: str, render: Callable[[], Any]) -> None:
    """``render`` builds the panel only when one is due."""
    if image_id in self.due:
      try:
        artifacts.save_png(self.folder / f'{self.prefix}{image_id}.png', render())
      except OSError as e:  # a panel is an illustration: never worth losing the image for
        logging.warning('could not write the panel of %s: %s', image_id, e)


class SkipLog:
  """Records unusable images in ``workdir/skipped.jsonl`` (one line per image and stage), so
  a run reports them at the end and a resumed run does not retry them."""

  def __init__(self, workdir: Path, stage: str):
    self.path = Path(workdir) / 'skipped.jsonl'
    self.stage = stage
    self.count = 0
    self.recorded = previously_skipped(workdir, stage)
    self.progress = None

  def track(self, progress):
    """Counts each skip on ``progress`` too, so its bar ends at its total."""
    self.progress = progress
    return progress

  def __call__(self, example, error: Exception) -> None:
    self.count += 1
    if self.progress is not None:
      self.progress.skip()
    if example.id in self.recorded:
      return
    self.recorded.add(example.id)
    artifacts.append_jsonl(
      self.path,
      [
        {
          'id': example.id,
          'path': str(example.path),
          'stage': self.stage,
          'error': f'{type(error).__name__}: {user_message(error)}',
        }
      ],
    )

  def summary(self) -> str:
    if not self.count:
      return ''
    return f'{pipeline.count(self.count)} skipped (see {self.path})'


def previously_skipped(workdir, stage: str) -> set[str]:
  return {
    r['id']
    for r in artifacts.read_jsonl(Path(workdir) / 'skipped.jsonl')
    if r.get('stage', stage) == stage and 'id' in r
  }


def _forget_skipped(workdir: Path, stage: str) -> None:
  path = Path(workdir) / 'skipped.jsonl'
  if path.exists():
    artifacts.save_jsonl(
      path, [r for r in artifacts.read_jsonl(path) if r.get('stage', stage) != stage]
    )


# ----------------------------------------------------------------------------- settings

# Config keys that change a stage's outputs, beyond the model and the input (and which of the
# stage's files and folders hold them). Keys absent from a config are skipped.
STAGES = {
  'extract': (('spectral', 'method', 'tokencut'), ('features', 'eigs')),
  'localize': (
    ('spectral', 'method', 'tokencut', 'lost'),
    ('predictions*.jsonl', 'scores*.jsonl'),
  ),
  'segment': (
    ('spectral', 'segment', 'method', 'tokencut', 'lost'),
    ('masks', 'mask_scores.jsonl'),
  ),
  'edit': (('edit', 'seed'), ('cutout', 'composite', 'panels/edit_*')),
  'discover': (
    ('discover', 'promerge'),
    ('discover', 'instances.json', 'instance_maps', 'panels/discover_*'),
  ),
  # Semantic segments come from extract's eigenvectors: their settings are the record's too.
  'semantic': (
    ('spectral', 'method', 'semantic', 'seed'),
    (
      'multi_region',
      'boxes',
      'semantic',
      'semantic_seeds',
      'metrics.json',
      'panels/semantic_*',
    ),
  ),
  # Training reads the pseudo-labels (semantic's settings) and its own.
  'train': (
    ('spectral', 'method', 'semantic', 'seed', 'segmenter', 'train'),
    ('checkpoints', 'train_log.jsonl', 'train_metrics.json'),
  ),
  # FOUND's head (configs/found.py): its targets, then training; the sections of the method
  # that makes the targets are added by stage_settings.
  'found_train': (
    ('found', 'train'),
    ('pseudo_masks', 'checkpoints', 'decoder_weights.pt', 'train_log.jsonl', 'train_metrics.json'),
  ),
}
# The settings a FOUND target method reads (config.found.targets → sections).
FOUND_TARGET_SECTIONS = {
  'found': (),
  'dsm': ('spectral',),
  'tokencut': ('tokencut', 'segment'),
  'maskcut': ('discover',),
}
# Keys that do not change outputs (solver: equal results to tolerance; scoring inputs;
# how often training logs and saves, and its thread count).
_IGNORED = {'spectral.solver', 'semantic.gt_dir', 'semantic.val_list', 'semantic.seeds'}
_IGNORED |= {'discover.solver', 'discover.workers'}
_IGNORED |= {'train.num_workers', 'train.log_every', 'train.checkpoint_every'}
_IGNORED |= {'train.keep_checkpoints'}
# FOUND: a longer run continues a shorter one (StepLR does not depend on the length); the
# decoder file and evaluation mode are inference settings.
_STAGE_IGNORED = {
  'found_train': {'train.steps', 'train.nb_epochs', 'found.decoder', 'found.evaluation_mode'},
}


def checkpoint_identity(model, previous: Optional[dict] = None) -> dict:
  """The weights' identity: the URL for official or remote weights, else the file's sha256."""
  text = model.checkpoint
  if not text:
    return {'url': checkpoints.WEIGHTS.get(model.name, f'<official {model.name}>')}
  if '://' in text:
    return {'url': text}
  folder = Path(text).expanduser()
  if folder.is_dir():  # a Hugging Face folder: its files' identities
    return {
      'path': str(folder.absolute()),
      'files': {
        f.name: workdirs.file_identity(str(f))['sha256']
        for f in sorted(folder.iterdir())
        if f.is_file() and f.suffix in ('.json', '.safetensors')
      },
    }
  return workdirs.file_identity(text, previous)


def found_record(config, stage: str) -> dict:
  """What FOUND's boxes (localize) and masks (segment) depend on beyond the model: the decoder
  by content (its sha256; '' = the official file, whose sha256 the weights registry holds; a
  URL by itself) and, for masks, the evaluation mode."""
  decoder = config.found.decoder
  if not decoder:
    identity = {'sha256': downloads.FILES['found_decoder'][2]}
  elif '://' in decoder:
    identity = {'url': decoder}
  else:
    identity = {'sha256': workdirs.file_identity(decoder)['sha256']}
  if stage == 'localize':  # the box rule has no mode
    return {'decoder': identity}
  return {'decoder': identity, 'evaluation_mode': config.found.evaluation_mode}


def stage_settings(config, stage: str, previous: Optional[dict] = None) -> dict:
  """The settings that determine ``stage``'s outputs, as a JSON-able dict."""
  d = config.data
  root = d.root
  settings = {
    'version': workdirs.VERSION,
    'model': {
      'name': config.model.name,
      'checkpoint': checkpoint_identity(
        config.model, (previous or {}).get('model', {}).get('checkpoint')
      ),
      'feature_block': config.model.feature_block,
      'precision': config.model.precision,
    },
    'data': {
      'source': d.source,
      'root': str(Path(root).absolute()) if root else '',
      'name': d.name,
      'year': d.year,
      'split': d.split,
      'max_tokens': d.max_tokens,
      'resize_large': d.resize_large,
    },
  }
  sections, _ = STAGES[stage]
  if stage == 'found_train':
    sections += FOUND_TARGET_SECTIONS.get(config.found.targets, ())
  ignored = _IGNORED | _STAGE_IGNORED.get(stage, set())
  for name in sections:
    value = config.get(name, None)
    if value is None:
      continue
    if hasattr(value, 'to_dict'):
      value = value.to_dict()
    if isinstance(value, dict):
      value = {k: v for k, v in value.items() if f'{name}.{k}' not in ignored}
      if stage == 'segment' and name == 'spectral':
        value.pop('which_matrix', None)  # segment always cuts the Laplacian
    settings[name] = value
  if stage in ('localize', 'segment') and config.get('method', '') == 'found':
    settings['found'] = found_record(config, stage)  # other methods: no record, as before
  return settings


def stage_outputs(workdir: Path, stage: str) -> list[Path]:
  out = []
  for pattern in STAGES[stage][1]:
    out += sorted(Path(workdir).glob(pattern)) if '*' in pattern else [Path(workdir) / pattern]
  return out


def begin_stage(config, workdir, stage: str) -> None:
  """Resumes a stage's outputs made with the same settings; other settings stop the run
  (or, with ``config.overwrite``, delete them: they are recomputed)."""
  workdir = workdirs.prepare(workdir)
  previous = workdirs.read_record(workdir, stage)
  settings = stage_settings(config, stage, previous)
  outputs = stage_outputs(workdir, stage)
  overwrite = bool(config.get('overwrite', False))
  had_outputs = any(p.exists() for p in outputs)
  changed = bool(workdirs.differences(previous, settings)) if previous else had_outputs
  leader = jax.process_index() == 0
  workdirs.check_settings(workdir, stage, settings, outputs, overwrite, leader=leader)
  # Images skipped under other settings are retried: after an overwrite, or when the earlier
  # run wrote no output at all (its record alone never blocks a new run).
  if changed and leader and (overwrite or not had_outputs):
    _forget_skipped(workdir, stage)
  # Nobody writes before every process has checked (a fast process's first checkpoint must not
  # look like another run's output to a slower leader) and the leader has cleared old outputs.
  parallel.barrier(f'{stage}-settings-checked')


def remaining(workdir, stage: str, shard: Sequence[Any], is_done: Callable[[Any], bool]) -> list:
  """This process's images still to do: not finished (``is_done``) and not skipped by an
  earlier run of ``stage``; logs the counts."""
  skipped_before = previously_skipped(workdir, stage)
  todo = [ex for ex in shard if not is_done(ex) and ex.id not in skipped_before]
  where = ' in this process' if jax.process_count() > 1 else ''
  images = pipeline.count(len(shard))
  done = len(shard) - len(todo)
  skips = f' or skipped ({len(skipped_before)}, see skipped.jsonl)' if skipped_before else ''
  log_summary(f'{stage}: {images}{where}' + (f', {done} already done{skips}' if done else ''))
  return todo


def write_or_skip(example, skipped: SkipLog, write: Callable[..., Any], *args) -> bool:
  """Runs one image's write; an OSError (disk full, name too long, permissions) skips that
  image, logged, instead of ending the run."""
  try:
    write(*args)
    return True
  except OSError as e:
    logging.warning('could not write the output of %s: %s', example.id, e)
    skipped(example, e)
    return False


def log_summary(*lines: str) -> None:
  """Each summary line once, on stdout (the log keeps it at debug level only)."""
  for line in lines:
    if line:
      logging.debug('%s', line)
      print(line, flush=True)
