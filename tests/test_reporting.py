"""tasks/reporting.py: file names as outputs give them, and metrics.json's common keys."""

import json

from spectral_jax.data.example import Example
from spectral_jax.tasks import reporting


def test_file_name_is_relative_to_a_folder_root_and_bare_for_a_file_root(tmp_path):
  (tmp_path / 'sub').mkdir()
  photo = tmp_path / 'sub' / 'a.jpg'
  photo.write_bytes(b'')
  ex = Example(id='sub__a', path=str(photo))
  assert reporting.file_name(ex, str(tmp_path)) == 'sub/a.jpg'
  assert reporting.file_name(ex, str(photo)) == 'a.jpg'  # a single image is its own root
  assert reporting.file_name(ex, '') == 'a.jpg'
  assert reporting.file_name(ex, str(tmp_path / 'elsewhere')) == 'a.jpg'
  assert reporting.file_name(Example(id='mem', path=None), str(tmp_path)) == 'mem'


def test_run_metrics_counts_failures_of_this_stage_and_inherited_ones(tmp_path):
  lines = [
    {'id': 'b', 'stage': 'extract', 'error': 'x'},
    {'id': 'c', 'stage': 'edit', 'error': 'y'},
    {'id': 'gone', 'stage': 'edit', 'error': 'not in this dataset'},
    {'id': 'd', 'stage': 'localize', 'error': 'another mode'},
  ]
  (tmp_path / 'skipped.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in lines))
  examples = [Example(id=i, path=None) for i in 'abcd']
  head = reporting.run_metrics('edit', 'dsm', 'dino_vits16', examples, tmp_path, 2, ('extract',))
  assert head == {
    'mode': 'edit',
    'method': 'dsm',
    'model': 'dino_vits16',
    'num_images': 4,
    'num_processed': 2,
    'num_failed': 2,
  }
  alone = reporting.run_metrics('edit', 'dsm', 'm', examples, tmp_path, 2)
  assert alone['num_failed'] == 1
