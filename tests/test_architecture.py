"""The package's import graph (read with ast, nothing imported): the library never imports a
front-end, the front-ends do not import each other, and no module imports itself back through
others (type-only and function-level imports included)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / 'spectral_jax'

# The front-ends: the CLI (its entry points and task runners), the Python API (with the
# package namespace that re-exports it) and the HTTP server.
FRONT_ENDS = {
  'cli': ('spectral_jax.cli', 'spectral_jax.verbs', 'spectral_jax.__main__', 'spectral_jax.tasks'),
  'api': ('spectral_jax.api', 'spectral_jax'),
  'server': ('spectral_jax.server',),
}
# The CLI's --mode=serve starts the HTTP front-end: the one edge between front-ends.
ALLOWED = {('spectral_jax.tasks.serve', 'spectral_jax.server.app')}


def module_name(path: Path) -> str:
  parts = list(path.relative_to(ROOT).with_suffix('').parts)
  if parts[-1] == '__init__':
    parts = parts[:-1]
  return '.'.join(parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob('*.py')}


def imports_of(name: str) -> set[str]:
  """Every spectral_jax module ``name`` imports anywhere in its file."""
  path = MODULES[name]
  package = name if path.name == '__init__.py' else name.rpartition('.')[0]
  out = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      out |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:
        parent = package.split('.')[: len(package.split('.')) - node.level + 1]
        base = '.'.join(parent + ([base] if base else []))
      for a in node.names:
        full = f'{base}.{a.name}'
        out.add(full if full in MODULES else base)
  return {m for m in out if m in MODULES and m != name}


GRAPH = {name: imports_of(name) for name in MODULES}


def front_end(name: str):
  for kind, prefixes in FRONT_ENDS.items():
    if any(name == p or (p != 'spectral_jax' and name.startswith(p + '.')) for p in prefixes):
      return kind
  return None


def test_the_walk_finds_the_layers():
  assert front_end('spectral_jax.tasks.localize') == 'cli'
  assert front_end('spectral_jax.api') == 'api' and front_end('spectral_jax') == 'api'
  assert front_end('spectral_jax.server.app') == 'server'
  assert front_end('spectral_jax.pipeline.run') is None
  assert 'spectral_jax.pipeline' in GRAPH['spectral_jax.results.boxes']
  assert 'spectral_jax.inference' in GRAPH['spectral_jax.api']


def test_the_library_imports_no_front_end():
  bad = [
    (name, dep)
    for name, deps in GRAPH.items()
    if front_end(name) is None
    for dep in deps
    if front_end(dep) is not None
  ]
  assert not bad, bad


def test_front_ends_do_not_import_each_other():
  bad = [
    (name, dep)
    for name, deps in GRAPH.items()
    for dep in deps
    if front_end(name)
    and front_end(dep)
    and front_end(name) != front_end(dep)
    and (name, dep) not in ALLOWED
  ]
  assert not bad, bad


def _cycle(graph: dict[str, set[str]]):
  state: dict[str, int] = {}
  stack: list[str] = []

  def visit(node):
    state[node] = 1
    stack.append(node)
    for dep in sorted(graph[node]):
      if state.get(dep) == 1:
        return stack[stack.index(dep) :] + [dep]
      if dep not in state:
        found = visit(dep)
        if found:
          return found
    stack.pop()
    state[node] = 2
    return None

  for node in sorted(graph):
    if node not in state:
      found = visit(node)
      if found:
        return found
  return None


def test_no_import_cycle_anywhere():
  assert _cycle(GRAPH) is None, ' -> '.join(_cycle(GRAPH))


def test_the_cycle_check_can_fail():
  assert _cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']
  assert _cycle({'a': {'b'}, 'b': set()}) is None


def test_no_package_file_above_500_lines():
  long = {name: n for name, p in MODULES.items() if (n := len(p.read_text().splitlines())) > 520}
  assert not long, long
