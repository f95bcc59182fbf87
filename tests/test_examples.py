"""examples/quickstart.ipynb is examples/quickstart.py's cells, run, with their outputs.

The notebook is written and executed by examples/make_notebook.py (nbclient, a generation-only
dependency); these tests read it as JSON only, so editing the script without regenerating the
notebook (or the other way round) fails here.
"""

import base64
import json
import re
from pathlib import Path

import pytest

from tests.conftest import MANIFEST

EXAMPLES = Path(__file__).parent.parent / 'examples'


def script_cells(text):
  """Code cells of a percent-format script, split independently of make_notebook.py: each
  runs from a `# %%` line to the next; `# %% Title` becomes the comment `# Title`."""
  chunks = re.split(r'^# %%', text, flags=re.M)[1:]
  cells = []
  for chunk in chunks:
    title, _, body = chunk.partition('\n')
    cells.append((f'# {title.strip()}\n' if title.strip() else '') + body.rstrip())
  return cells


@pytest.fixture(scope='module')
def notebook():
  return json.loads((EXAMPLES / 'quickstart.ipynb').read_text())


def _text(value):
  return ''.join(value) if isinstance(value, list) else value


def _code_cells(notebook):
  return [cell for cell in notebook['cells'] if cell['cell_type'] == 'code']


def test_script_cells_split_as_a_notebook_does():
  text = '"""doc."""\n\n# %% One\nx = 1\n\n\n# %%\ny = 2\n# %% Three: z\nz = 3\n'
  assert script_cells(text) == ['# One\nx = 1', 'y = 2', '# Three: z\nz = 3']


def test_notebook_code_cells_are_the_script_cells_in_order(notebook):
  assert notebook['nbformat'] == 4
  expected = script_cells((EXAMPLES / 'quickstart.py').read_text())
  assert len(expected) >= 5  # load, localize, panel, cutout after the set-up
  got = [_text(cell['source']) for cell in _code_cells(notebook)]
  assert got == expected, 'run python examples/make_notebook.py after editing quickstart.py'
  assert notebook['cells'][0]['cell_type'] == 'markdown'


def test_every_code_cell_ran_in_order_and_has_outputs(notebook):
  cells = _code_cells(notebook)
  assert [cell['execution_count'] for cell in cells] == list(range(1, len(cells) + 1))
  for i, cell in enumerate(cells):
    assert cell['outputs'], f'code cell {i + 1} has no outputs'
    kinds = {output['output_type'] for output in cell['outputs']}
    assert 'error' not in kinds, f'code cell {i + 1} raised'
    for output in cell['outputs']:
      if output['output_type'] == 'execute_result':
        assert output['execution_count'] == cell['execution_count']


def test_images_shown_are_png(notebook):
  shown = []
  for cell in _code_cells(notebook):
    for output in cell['outputs']:
      data = output.get('data', {})
      assert 'image/jpeg' not in data
      if 'image/png' in data:
        shown.append(base64.b64decode(_text(data['image/png'])))
  assert len(shown) >= 2  # the panel and the cutout
  assert all(png.startswith(b'\x89PNG\r\n\x1a\n') for png in shown)


def test_outputs_match_the_checkpoint_the_first_cell_names(notebook):
  """Random-weight outputs say so up front, and their boxes are the random checkpoint's."""
  stdout = '\n'.join(
    _text(output['text'])
    for cell in _code_cells(notebook)
    for output in cell['outputs']
    if output['output_type'] == 'stream' and output['name'] == 'stdout'
  )
  intro = _text(notebook['cells'][0]['source'])
  boxes = dict(re.findall(r'^(\w+)\.png: box (\(\d+, \d+, \d+, \d+\))', stdout, re.M))
  assert boxes, stdout
  if "checkpoint='random_dino_vits16_depth2.pth'" in stdout:
    assert 'produced with random weights' in intro
    for name, box in boxes.items():  # the tests' random checkpoint gives the parity boxes
      assert box == str(tuple(MANIFEST['images'][name]['loc_box_xyxy'])), name
  else:
    assert 'random weights' not in intro
