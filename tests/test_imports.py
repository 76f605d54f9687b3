"""The package's import graph runs one way (config -> data -> step -> checkpoint -> evaluation, CLIs on
top): no module imports one that, directly or not, imports it back. Imports inside functions count too:
a deferred import hides a circle from Python at import time, not from the reader."""
import ast
import os

from conftest import REPO

PACKAGE = "ijepa_jax"
CLIS = ("ijepa_jax.main", "ijepa_jax.evaluate", "ijepa_jax.extract", "ijepa_jax.convert", "ijepa_jax.memory")


def import_graph(root: str, package: str) -> dict[str, set[str]]:
  """{module: the package's modules it imports anywhere in its source}, for every .py under root/package.
  `from package.x import name` counts as importing package.x.name when that is a module, else package.x."""
  modules = {}
  for directory, _, files in os.walk(os.path.join(root, package)):
    for f in files:
      if f.endswith(".py"):
        rel = os.path.relpath(os.path.join(directory, f), root)[:-3].split(os.sep)
        modules[".".join(rel[:-1] if rel[-1] == "__init__" else rel)] = os.path.join(directory, f)
  graph = {}
  for name, path in modules.items():
    deps = set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
      if isinstance(node, ast.Import):
        deps |= {a.name for a in node.names if a.name in modules}
      elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module in modules:
        subs = {f"{node.module}.{a.name}" for a in node.names} & set(modules)
        deps |= subs if len(subs) == len(node.names) else subs | {node.module}
    deps.discard(name)
    deps.discard(package)  # the package's __init__ imports none of its modules
    graph[name] = deps
  return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One circle of imports as [a, b, ..., a], or None."""
  state = {}

  def visit(node, stack):
    state[node] = "open"
    stack.append(node)
    for dep in sorted(graph.get(node, ())):
      if state.get(dep) == "open":
        return stack[stack.index(dep):] + [dep]
      if dep not in state:
        found = visit(dep, stack)
        if found:
          return found
    state[node] = "done"
    stack.pop()
    return None

  for node in sorted(graph):
    if node not in state:
      found = visit(node, [])
      if found:
        return found
  return None


def reachable(graph, start: str) -> set[str]:
  seen, todo = set(), [start]
  while todo:
    for dep in graph.get(todo.pop(), ()):
      if dep not in seen:
        seen.add(dep)
        todo.append(dep)
  return seen


def test_the_checker_finds_a_circle_hidden_in_a_function(tmp_path):
  pkg = tmp_path / "pkg"
  (pkg / "sub").mkdir(parents=True)
  (pkg / "__init__.py").write_text("")
  (pkg / "sub" / "__init__.py").write_text("")
  (pkg / "a.py").write_text("from pkg.sub import b\n")
  (pkg / "sub" / "b.py").write_text("import os\n\ndef f():\n  from pkg import a\n  return a\n")
  graph = import_graph(str(tmp_path), "pkg")
  assert graph["pkg.a"] == {"pkg.sub.b"} and graph["pkg.sub.b"] == {"pkg.a"}
  assert find_cycle(graph) == ["pkg.a", "pkg.sub.b", "pkg.a"]
  (pkg / "sub" / "b.py").write_text("import os\n")
  assert find_cycle(import_graph(str(tmp_path), "pkg")) is None


def test_ijepa_jax_has_no_import_circle():
  graph = import_graph(REPO, PACKAGE)
  assert {"ijepa_jax.train", "ijepa_jax.loading", "ijepa_jax.evaluation.probes"} <= set(graph)
  assert find_cycle(graph) is None


def test_evaluation_and_loading_sit_below_the_trainer_and_clis_on_top():
  graph = import_graph(REPO, PACKAGE)
  below = [m for m in graph if m.startswith("ijepa_jax.evaluation")] + ["ijepa_jax.loading", "ijepa_jax.state"]
  for module in below:
    assert "ijepa_jax.train" not in reachable(graph, module), module
  assert "ijepa_jax.evaluate" not in reachable(graph, "ijepa_jax.train")
  for module, deps in graph.items():
    assert not deps & set(CLIS), f"{module} imports the command line module(s) {deps & set(CLIS)}"
