"""spectral_jax.settings: the one source of defaults, each value checked once, keys named."""

import dataclasses

import pytest

from spectral_jax import config_dict, errors, settings
from spectral_jax.tasks import common


def test_base_config_is_built_from_the_dataclasses():
  config = config_dict.default_config()
  assert config.spectral.K == settings.SpectralSettings().K
  assert config.data.max_tokens == settings.ImageLimits().max_tokens
  assert config.data.batch_size == settings.BatchSettings().batch_size
  assert config.serve.port == settings.ServerSettings().port
  assert config.edit.levels == settings.EditSettings().levels
  assert dict(config.segment.crf_params) == dataclasses.asdict(settings.CRFParams())
  assert config.method == 'dsm'
  converted = config_dict.from_config(config)
  assert converted == settings.Settings()  # the round trip keeps every default


def test_every_key_has_one_line_of_help():
  helps = config_dict.field_help()
  config = config_dict.default_config()
  for section, value in config.items():
    keys = [f'{section}.{k}' for k in value] if hasattr(value, 'items') else [section]
    for key in keys:
      if not key.startswith('distributed.') and not key.endswith('_params'):
        assert helps.get(key), key


@pytest.mark.parametrize(
  'section, key, value, words',
  [
    ('spectral', 'K', 1, '2..64'),
    ('spectral', 'solver', 'magic', 'auto'),
    ('spectral', 'color_lambda', float('nan'), 'finite'),
    ('data', 'max_tokens', 4, '>= 16'),
    ('data', 'bucket_tokens', 5000, '4096'),
    ('segment', 'refine', 'guided', 'none'),
    ('discover', 'max_objects', 0, '1..255'),
    ('discover', 'solver', 'gpu', 'arpack'),
    ('serve', 'port', 70000, '0..65535'),
    ('serve', 'timeout', 0, '> 0'),
    ('edit', 'foreground', 'paint', 'blur_fusion'),
    ('model', 'precision', 'float16', 'bfloat16'),
    ('tokencut', 'eps', 0.0, '> 0'),
    ('lost', 'k_patches', 0, '>= 1'),
  ],
)
def test_a_bad_value_names_its_key(section, key, value, words):
  config = config_dict.default_config()
  config[section][key] = value
  with pytest.raises(errors.SettingError) as info:
    config_dict.from_config(config)
  assert info.value.key == f'{section}.{key}' and words in info.value.reason
  # The CLI spells the key as its flag, from the typed fields (no text is rewritten).
  assert common.user_message(info.value).startswith(f'--config.{section}.{key}=')


def test_crf_flag_maps_onto_refine_and_conflicts_fail():
  assert settings.RefineSettings(crf=True).mode == 'crf'
  assert settings.RefineSettings(refine='bilateral').mode == 'bilateral'
  with pytest.raises(errors.SettingError, match='segment.crf'):
    settings.RefineSettings(crf=True, refine='bilateral')
  config = config_dict.default_config()
  config.method = 'ncut'
  with pytest.raises(errors.SettingError) as info:
    config_dict.from_config(config)
  assert common.user_message(info.value).startswith("--config.method='ncut'")


def test_batch_tokens_below_max_tokens_is_refused():
  config = config_dict.default_config()
  config.data.batch_tokens = config.data.max_tokens - 1
  with pytest.raises(errors.SettingError, match='data.max_tokens'):
    config_dict.from_config(config)


def test_with_method_applies_the_config_argument():
  config = config_dict.with_method(config_dict.default_config(), 'tokencut_vits8')
  assert config.method == 'tokencut' and config.model.name == 'dino_vits8'
  with pytest.raises(ValueError, match='config argument'):
    config_dict.with_method(config_dict.default_config(), 'nonesuch')
