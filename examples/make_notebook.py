"""Writes examples/quickstart.ipynb from examples/quickstart.py and executes it.

  pip install nbformat nbclient ipykernel   # for this script only, not the package's
  python examples/make_notebook.py [--checkpoint FILE]

One code cell per `# %%` cell of quickstart.py (the marker line `# %% Title` becomes the comment
`# Title`), in order, after one markdown cell made from the module docstring. The notebook is
run top to bottom in a fresh kernel (nbclient) in a temporary folder, and saved with the outputs
the cells printed and the images they showed (PNG). Without --checkpoint it runs offline on the
random-weight test checkpoint (a 2-block DINO ViT-S/16 in the official format,
tests/data/parity/checkpoint.pth) and its first cell says so; with the official file
(dino_deitsmall16_pretrain.pth) the outputs are the real ones. tests/test_examples.py checks
that the code cells equal quickstart.py's cells and that every cell has outputs.
"""

import argparse
import ast
import os
import shutil
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / 'quickstart.py'
NOTEBOOK = HERE / 'quickstart.ipynb'
RANDOM_CHECKPOINT = HERE.parent / 'tests' / 'data' / 'parity' / 'checkpoint.pth'

RANDOM_NOTE = """\
**About the outputs below.** They were produced with random weights so the notebook runs
offline: the tests' DINO ViT-S/16 checkpoint in the official format with 2 random blocks
(`tests/data/parity/checkpoint.pth`, given as `$SPECTRAL_JAX_CHECKPOINT`). Its boxes and masks
come from random features and mean nothing; the numbers are those of that checkpoint (the
tests check the same boxes). With the real DINO weights (leave `$SPECTRAL_JAX_CHECKPOINT`
unset: they are downloaded once) the box and the mask are meant to follow each photo's main
object (the astronaut, the cat, the cup); those outputs were not produced here (no network).
To rerun: `python examples/make_notebook.py [--checkpoint dino_deitsmall16_pretrain.pth]`."""

REAL_NOTE = """\
The outputs below were produced with the official DINO ViT-S/16 weights
(`python examples/make_notebook.py --checkpoint dino_deitsmall16_pretrain.pth`)."""


def script_cells(text):
  """(docstring, [code cell sources]) of a percent-format script: a cell runs from a line
  starting with `# %%` to the next one; `# %% Title` becomes `# Title`, trailing blank lines
  are dropped."""
  lines = text.splitlines()
  starts = [i for i, line in enumerate(lines) if line.startswith('# %%')]
  cells = []
  for start, end in zip(starts, starts[1:] + [len(lines)]):
    title = lines[start][len('# %%') :].strip()
    body = ([f'# {title}'] if title else []) + lines[start + 1 : end]
    while body and not body[-1].strip():
      body.pop()
    cells.append('\n'.join(body))
  return ast.get_docstring(ast.parse(text)) or '', cells


def intro(docstring, note):
  """The first markdown cell: the docstring (indented lines as a code block) and the note."""
  title, _, rest = docstring.partition('\n')
  out, block = [f'# {title}', ''], []
  for line in rest.strip('\n').splitlines() + ['']:
    if line.startswith('  '):
      block.append(line.strip())
      continue
    if block:
      out += ['```bash', *block, '```']
      block = []
    out.append(line)
  out += [
    'The code cells are those of `examples/quickstart.py`, in order (`tests/test_examples.py`',
    'checks it); `examples/make_notebook.py` writes and runs this notebook.',
    '',
    note,
  ]
  return '\n'.join(out)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--checkpoint', help='default: the random-weight test checkpoint')
  parser.add_argument('--timeout', type=int, default=1200, help='seconds per cell')
  args = parser.parse_args()
  import nbformat  # pylint: disable=import-outside-toplevel
  from nbclient import NotebookClient  # pylint: disable=import-outside-toplevel

  docstring, cells = script_cells(SCRIPT.read_text())
  note = REAL_NOTE if args.checkpoint else RANDOM_NOTE
  nb = nbformat.v4.new_notebook()
  nb.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}
  nb.cells = [nbformat.v4.new_markdown_cell(intro(docstring, note))]
  nb.cells += [nbformat.v4.new_code_cell(source) for source in cells]
  for i, cell in enumerate(nb.cells):  # fixed ids: a rerun changes only what the cells print
    cell.id = f'cell-{i}'
  with tempfile.TemporaryDirectory(prefix='quickstart_nb_') as tmp:
    # The printed Backbone names its checkpoint: a short relative name, not this machine's path.
    source = Path(args.checkpoint).resolve() if args.checkpoint else RANDOM_CHECKPOINT
    name = source.name if args.checkpoint else 'random_dino_vits16_depth2.pth'
    shutil.copy(source, Path(tmp, name))
    os.environ['SPECTRAL_JAX_CHECKPOINT'] = name  # the kernel inherits this environment
    os.environ['SPECTRAL_JAX_CACHE'] = str(Path(tmp, 'cache'))
    os.environ.setdefault('JAX_PLATFORMS', 'cpu')
    client = NotebookClient(
      nb,
      timeout=args.timeout,
      kernel_name='python3',
      # PNG only: IPython would add a JPEG copy of every RGB image.
      extra_arguments=[f'--DisplayFormatter.active_types={t}' for t in ('text/plain', 'image/png')],
      record_timing=False,
      resources={'metadata': {'path': tmp}},
    )
    client.execute()
  nbformat.validate(nb)
  nbformat.write(nb, NOTEBOOK)
  print(f'{NOTEBOOK}: {len(cells)} code cells, {NOTEBOOK.stat().st_size / 1e3:.0f} kB')


if __name__ == '__main__':
  main()
