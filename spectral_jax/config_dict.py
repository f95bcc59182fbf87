"""The CLI's ConfigDict and the typed settings, both ways: ``default_config`` builds the base
config from the dataclasses of ``spectral_jax.settings`` (the one source of every default and
its one line of help), ``from_config`` converts a run's ConfigDict once, checked, at the CLI's
front door. Config files (``configs/*.py``) start from ``default_config``."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

from spectral_jax.errors import SettingError
from spectral_jax.settings import (
  METHOD_NAMES,
  BatchSettings,
  DatasetSettings,
  DiscoverSettings,
  DistributedSettings,
  EditSettings,
  FoundSettings,
  ImageLimits,
  LostSettings,
  MethodSettings,
  ModelSettings,
  OutputSettings,
  PromergeSettings,
  RefineSettings,
  ServerSettings,
  Settings,
  SpectralSettings,
  TokenCutSettings,
  _is_int,
)

# Config sections → the classes whose fields they hold (``data`` gathers three concerns).
SECTIONS: dict[str, tuple[type, ...]] = {
  'distributed': (DistributedSettings,),
  'model': (ModelSettings,),
  'data': (DatasetSettings, ImageLimits, BatchSettings),
  'spectral': (SpectralSettings,),
  'tokencut': (TokenCutSettings,),
  'lost': (LostSettings,),
  'segment': (RefineSettings,),
  'discover': (DiscoverSettings,),
  'promerge': (PromergeSettings,),
  'found': (FoundSettings,),
  'edit': (EditSettings,),
  'serve': (ServerSettings,),
  'output': (OutputSettings,),
}
# Fields that stay out of the ConfigDict (set by code, or by another section: discover.crf).
_INTERNAL = {ImageLimits: {'min_tokens'}, PromergeSettings: {'crf'}}


def _plain(value: Any) -> Any:
  return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


def section_values(classes: tuple[type, ...]) -> dict[str, Any]:
  """The default values of a config section (nested dataclasses as dicts)."""
  out = {}
  for cls in classes:
    for f in dataclasses.fields(cls):
      if f.name not in _INTERNAL.get(cls, ()):
        out[f.name] = _plain(getattr(cls(), f.name))
  return out


def field_help() -> dict[str, str]:
  """``section.key`` → its one line of documentation."""
  out = {
    'seed': 'random seed (k-means, training)',
    'overwrite': ('a rerun with other settings deletes the outdated outputs instead of stopping'),
    'method': 'dsm | tokencut | lost | found (object discovery method)',
  }
  for section, classes in SECTIONS.items():
    for cls in classes:
      for f in dataclasses.fields(cls):
        if f.name not in _INTERNAL.get(cls, ()):
          out[f'{section}.{f.name}'] = f.metadata.get('help', '')
  return out


def default_config():
  """The CLI's base ConfigDict: every section's defaults from the classes above."""
  import ml_collections  # pylint: disable=import-outside-toplevel  # the CLI's format only

  config = ml_collections.ConfigDict()
  config.seed = 0
  # A workdir remembers the settings of its outputs; a rerun with other settings stops
  # unless overwrite=True, which deletes the outdated outputs and recomputes them.
  config.overwrite = False
  config.method = MethodSettings().name
  for section, classes in SECTIONS.items():
    config[section] = ml_collections.ConfigDict(section_values(classes))
  return config


def _values(section: Any, cls: type, key: str) -> dict[str, Any]:
  """The fields of ``cls`` found in a ConfigDict section (absent ones keep their default)."""
  if section is None:
    return {}
  names = {f.name for f in dataclasses.fields(cls)} - _INTERNAL.get(cls, set())
  return {name: section[name] for name in names if name in section}


def build(cls: type, values: Mapping[str, Any], key: str) -> Any:
  """``cls(**values)`` with nested dataclass fields built from dicts; a value of the wrong
  kind (a string for a number, ...) becomes a SettingError naming ``key.field``."""
  kwargs = {}
  types = {f.name: f.default for f in dataclasses.fields(cls)}
  for name, value in values.items():
    default = types.get(name)
    if dataclasses.is_dataclass(default) and not dataclasses.is_dataclass(value):
      try:
        value = type(default)(**dict(value))
      except TypeError as e:
        raise SettingError(f'{key}.{name}', value, f'unknown or missing entries ({e})') from e
    kwargs[name] = value
  try:
    return cls(**kwargs)
  except TypeError as e:  # e.g. comparing a str with an int
    raise SettingError(key, dict(values), str(e)) from e


def from_config(config: Any) -> Settings:
  """The typed settings of a CLI ConfigDict (each section checked; SettingError names the
  key). Sections a config lacks keep their defaults."""
  get = lambda name: config.get(name, None)  # noqa: E731  # sections optional in old configs
  data = get('data')
  method = config.get('method', 'dsm')
  if method not in METHOD_NAMES:
    raise SettingError('method', method, f'use one of {METHOD_NAMES}')
  if data is not None and _is_int(data.get('batch_tokens')) and _is_int(data.get('max_tokens')):
    if data.batch_tokens < data.max_tokens:
      raise SettingError(
        'data.batch_tokens', data.batch_tokens, f'must be >= data.max_tokens ({data.max_tokens})'
      )
  found = build(FoundSettings, _values(get('found'), FoundSettings, 'found'), 'found')
  return Settings(
    model=build(ModelSettings, _values(get('model'), ModelSettings, 'model'), 'model'),
    dataset=build(DatasetSettings, _values(data, DatasetSettings, 'data'), 'data'),
    limits=build(ImageLimits, _values(data, ImageLimits, 'data'), 'data'),
    batching=build(BatchSettings, _values(data, BatchSettings, 'data'), 'data'),
    spectral=build(
      SpectralSettings, _values(get('spectral'), SpectralSettings, 'spectral'), 'spectral'
    ),
    method=MethodSettings(
      method,
      build(TokenCutSettings, _values(get('tokencut'), TokenCutSettings, 'tokencut'), 'tokencut'),
      build(LostSettings, _values(get('lost'), LostSettings, 'lost'), 'lost'),
      found,
    ),
    refine=build(RefineSettings, _values(get('segment'), RefineSettings, 'segment'), 'segment'),
    discover=build(
      DiscoverSettings, _values(get('discover'), DiscoverSettings, 'discover'), 'discover'
    ),
    found=found,
    promerge=build(
      PromergeSettings, _values(get('promerge'), PromergeSettings, 'promerge'), 'promerge'
    ),
    edit=build(EditSettings, _values(get('edit'), EditSettings, 'edit'), 'edit'),
    serve=build(ServerSettings, _values(get('serve'), ServerSettings, 'serve'), 'serve'),
    output=build(OutputSettings, _values(get('output'), OutputSettings, 'output'), 'output'),
    seed=int(config.get('seed', 0)),
  )


def found_train_config():
  """configs/found.py's ``config.train``: FOUND's training recipe (its defaults)."""
  import ml_collections  # pylint: disable=import-outside-toplevel
  from spectral_jax.training.found import FoundTrainSettings  # on use: it loads jax and optax

  return ml_collections.ConfigDict(section_values((FoundTrainSettings,)))


def found_train_settings(config: Any) -> Any:
  """``config.train`` of a FOUND training run as ``training.found.FoundTrainSettings``
  (SettingError names ``train.<key>``)."""
  from spectral_jax.training.found import FoundTrainSettings  # on use, as above

  section = config.get('train', None)
  return build(FoundTrainSettings, _values(section, FoundTrainSettings, 'train'), 'train')


def unknown_edit_keys(config: Any) -> Optional[list[str]]:
  """Keys of ``config.edit`` no EditSettings field has (a typo), or None."""
  section = config.get('edit', None)
  if section is None:
    return None
  unknown = set(section) - {f.name for f in dataclasses.fields(EditSettings)}
  return sorted(unknown) or None


# Config-file arguments (``--config=configs/voc.py:tokencut``).
METHOD_ARGS = ('dsm', 'tokencut', 'lost', 'tokencut_vits8', 'lost_vits8', 'found')


def with_method(config: Any, arg: Optional[str] = None) -> Any:
  """Applies a config-file argument: dsm (default), tokencut or lost with ViT-S/16, or
  tokencut_vits8 / lost_vits8 / found with the 300-epoch ViT-S/8 file those methods use (Deep
  Spectral Methods' dino_vits8 is another file)."""
  from spectral_jax.models.weights import downloads

  arg = arg or 'dsm'
  if arg not in METHOD_ARGS:
    raise ValueError(f'config argument {arg!r}: use one of {METHOD_ARGS}')
  config.method = arg.split('_')[0]
  if arg.endswith('_vits8') or arg == 'found':
    config.model.name = 'dino_vits8'
    config.model.checkpoint = downloads.VARIANT_WEIGHTS['dino_vits8_300ep']
  return config
