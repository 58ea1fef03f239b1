"""The package's layout: imports form a DAG that points one way.

Each top-level part of `nfnets` may import only the parts listed for it in
`ALLOWED` (layers -> models -> train -> evaluate -> command lines; data and
optim stand alone). Imports are read from the source, at any depth, so an
import inside a function that would dodge a cycle counts like any other. A
module's `if __name__ == '__main__':` block is its command line, which runs
only when the file is executed, never on import; it is checked as part of
`cli`.
"""
import ast
import os
import pathlib
import subprocess
import sys

import pytest
from tests import subprocesses

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / 'nfnets'
MAX_LINES = 450

# Part -> the parts it may import (itself always allowed).
ALLOWED = {
    'errors': set(),
    'layers': {'errors'},
    'data': {'errors'},
    'optim': {'errors'},
    'models': {'errors', 'layers'},
    'train': {'errors', 'layers', 'models', 'data', 'optim'},
    'pretrained': {'errors', 'models', 'optim', 'train'},
    'configs': {'errors', 'layers', 'models', 'data', 'train'},
    'evaluate': {'errors', 'layers', 'models', 'data', 'pretrained', 'train'},
    'spp': {'errors', 'models'},
    'cli': {'errors', 'evaluate', 'spp', 'pretrained', 'train', 'configs',
            'models'},
    'experiment': {'cli', 'errors', 'train', 'configs'},
    '__init__': set(),
}


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def _part(module: str) -> str:
  parts = module.split('.')
  return parts[1] if len(parts) > 1 else '__init__'


def _is_main_guard(node: ast.AST) -> bool:
  return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
          and isinstance(node.test.left, ast.Name)
          and node.test.left.id == '__name__')


def _imports(tree: ast.AST, modules: set[str]):
  """(imported nfnets module, line, inside a function) for every import."""
  def visit(node, in_function):
    for child in ast.iter_child_nodes(node):
      if _is_main_guard(child):
        continue
      nested = in_function or isinstance(
          child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
      if isinstance(child, ast.Import):
        for alias in child.names:
          if alias.name.startswith('nfnets'):
            yield alias.name, child.lineno, nested
      elif isinstance(child, ast.ImportFrom) and child.module and (
          child.module.startswith('nfnets')):
        for alias in child.names:
          full = f'{child.module}.{alias.name}'
          yield (full if full in modules else child.module), child.lineno, nested
      yield from visit(child, nested)
  yield from visit(tree, False)


def _graph():
  files = {_module_name(p): p for p in PACKAGE.rglob('*.py')}
  modules = set(files)
  return {name: list(_imports(ast.parse(path.read_text()), modules))
          for name, path in files.items()}, files


def test_imports_follow_the_layering():
  graph, _ = _graph()
  wrong = []
  for module, imports in graph.items():
    part = _part(module)
    for target, line, _ in imports:
      target_part = _part(target)
      if target_part != part and target_part not in ALLOWED[part]:
        wrong.append(f'{module}:{line} imports {target}')
  assert not wrong, 'Imports against the layering:\n' + '\n'.join(wrong)


def _cycles(edges: dict[str, set[str]]) -> list[str]:
  """Every cycle a depth-first search meets, as 'a -> b -> a'."""
  state, cycles = {}, []

  def dfs(node, stack):
    state[node] = 'open'
    for nxt in sorted(edges[node]):
      if state.get(nxt) == 'open':
        cycles.append(' -> '.join(stack[stack.index(nxt):] + [nxt]))
      elif nxt not in state:
        dfs(nxt, stack + [nxt])
    state[node] = 'done'

  for node in sorted(edges):
    if node not in state:
      dfs(node, [node])
  return cycles


def test_no_import_cycles():
  graph, _ = _graph()
  edges = {m: {t for t, _, _ in imports if t in graph and t != m}
           for m, imports in graph.items()}
  cycles = _cycles(edges)
  assert not cycles, 'Import cycles:\n' + '\n'.join(cycles)


def test_no_import_of_another_part_inside_a_function():
  # Inside one part, a deferred import keeps TensorFlow off the digits path
  # (the cycle test still sees it); across parts it would hide a dependency.
  graph, _ = _graph()
  inside = [f'{m}:{line} imports {t}' for m, imports in graph.items()
            for t, line, nested in imports if nested and _part(t) != _part(m)]
  assert not inside, '\n'.join(inside)


def test_the_checker_sees_cycles_and_hidden_imports():
  tree = ast.parse('def f():\n  from nfnets import experiment\n'
                   'from nfnets.train import loop\n'
                   "if __name__ == '__main__':\n  import nfnets.cli\n")
  found = list(_imports(tree, {'nfnets.experiment', 'nfnets.train.loop'}))
  assert found == [('nfnets.experiment', 2, True),
                   ('nfnets.train.loop', 3, False)]
  assert _cycles({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a -> b -> c -> a']
  assert not _cycles({'a': {'b', 'c'}, 'b': {'c'}, 'c': set()})


def test_modules_stay_short():
  long = [f'{p.relative_to(PACKAGE.parent)}: {n} lines'
          for p in PACKAGE.rglob('*.py')
          if (n := len(p.read_text().splitlines())) > MAX_LINES]
  assert not long, '\n'.join(long)


def test_libraries_define_no_flags_and_never_reexecute():
  script = ('import absl.flags\n'
            'before = set(absl.flags.FLAGS)\n'
            'import nfnets, nfnets.models, nfnets.train, nfnets.evaluate, '
            'nfnets.spp, nfnets.pretrained, nfnets.configs, nfnets.data, '
            'nfnets.optim, nfnets.layers\n'
            'print(sorted(set(absl.flags.FLAGS) - before))\n')
  out = subprocesses.run([sys.executable, '-c', script], capture_output=True,
                       text=True, check=True, env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  new_flags = eval(out.stdout.strip().splitlines()[-1])  # pylint: disable=eval-used
  ours = {'config', 'workdir', 'models', 'depth', 'out', 'num_processes'}
  assert not ours & set(new_flags), new_flags
  for path in PACKAGE.rglob('*.py'):
    assert 'execv' not in path.read_text(), path


@pytest.mark.parametrize('part', sorted(ALLOWED))
def test_every_part_exists(part):
  assert (PACKAGE / part).is_dir() or (PACKAGE / f'{part}.py').is_file()
