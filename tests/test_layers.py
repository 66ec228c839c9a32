"""The layering, read from the source (late imports included): no module imports a layer
above its own, models and data know nothing of each other, and no modules import each
other in a cycle."""
import ast
import functools
import os

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'tinyvit_jax')
# Areas (a subpackage, or a top-level module), lowest layer first. A module imports its
# own layer and those below; models and data, one layer, never each other.
LAYERS = (
    {
        'errors', 'writes', 'progress', 'target', 'compile_cache', 'normalisation', 'chips',
        'fault_broadcast'
    },
    {'models', 'data'},
    {'model_checkpoint', 'torch_state_dicts'},
    {'distill'},
    {'train'},
    {'main', 'plan', 'predict', 'preview', 'convert'},
)


def _area(module: str) -> str:
  """'tinyvit_jax.distill.store' -> 'distill'; 'tinyvit_jax.errors' -> 'errors'."""
  return module.split('.')[1]


def _rank(area: str) -> int:
  (rank,) = [i for i, names in enumerate(LAYERS) if area in names]
  return rank


def _is_module(dotted: str) -> bool:
  """Whether ``a.b.c`` names a module or package of the source tree (not a name in one)."""
  path = os.path.join(os.path.dirname(PACKAGE), *dotted.split('.'))
  return os.path.isfile(path + '.py') or os.path.isdir(path)


@functools.cache
def _imports() -> dict:
  """module -> the tinyvit_jax modules it imports, anywhere in its file."""
  found = {}
  for folder, _, files in os.walk(PACKAGE):
    for name in files:
      if not name.endswith('.py'):
        continue
      path = os.path.join(folder, name)
      module = os.path.relpath(path[:-3], os.path.dirname(PACKAGE)).replace(os.sep, '.')
      module = module.removesuffix('.__init__')
      with open(path) as f:
        tree = ast.parse(f.read())
      targets = set()
      for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or '').startswith('tinyvit_jax'):
          for alias in node.names:  # ``from a.b import c``: module a.b.c, or a name in a.b
            full = f'{node.module}.{alias.name}'
            targets.add(full if _is_module(full) else node.module)
        elif isinstance(node, ast.Import):
          targets |= {a.name for a in node.names if a.name.startswith('tinyvit_jax')}
      found[module] = targets - {module, 'tinyvit_jax'}
  return found


def test_every_module_has_a_layer():
  areas = {_area(m) for m in _imports() if m != 'tinyvit_jax'}
  assert areas == set().union(*LAYERS)


def test_no_module_imports_upwards_or_sideways():
  wrong = [
      f'{module} -> {target}' for module, targets in sorted(_imports().items())
      if module != 'tinyvit_jax' for target in sorted(targets)
      if _rank(_area(target)) > _rank(_area(module))
      or {_area(module), _area(target)} == {'models', 'data'}
  ]
  assert not wrong


def test_no_import_cycle():
  imports = _imports()
  graph = {m: {t for t in ts if t in imports} for m, ts in imports.items()}
  cycles = []
  for start in graph:  # a module that reaches itself again
    seen, stack = set(), [(start, (start,))]
    while stack:
      node, path = stack.pop()
      for nxt in graph[node]:
        if nxt == start:
          cycles.append(' -> '.join(path + (start,)))
        elif nxt not in seen:
          seen.add(nxt)
          stack.append((nxt, path + (nxt,)))
  assert not cycles
