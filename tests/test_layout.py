"""The package's layout is its architecture: imports run one way, from the CLI down to colour and config
(koalarization/__init__.py draws the layers), with no cycle; argparse lives in the CLI only; the measuring
kit is imported by the CLI only."""

import ast
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "koalarization"
# Lower layers first; a module may import its own layer's modules and those of lower layers only.
LAYERS = [
    {"koalarization.errors", "koalarization.files", "koalarization.config", "koalarization.color"},
    {"koalarization.model"},
    {"koalarization.data"},
    {"koalarization.run", "koalarization.plots"},
    {"koalarization.training", "koalarization.inference"},
    {"koalarization.bench"},
    {"koalarization.cli", "koalarization.__main__"},
]


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """module -> the koalarization modules it imports (anywhere in it, functions included)."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        name, found = module_name(path), set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("koalarization"):
                found.add(node.module)
                found.update(f"{node.module}.{a.name}" for a in node.names)  # `from koalarization.data import images`
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
        modules = {m for m in found if m.startswith("koalarization")}
        graph[name] = {m for m in modules if (PACKAGE.parent / (m.replace(".", "/") + ".py")).is_file()
                       or (PACKAGE.parent / m.replace(".", "/") / "__init__.py").is_file()} - {name}
        graph[name].update(m for m in found if m in ("argparse",))
    return graph


def layer(module: str) -> int:
    for i, names in enumerate(LAYERS):
        if any(module == n or module.startswith(n + ".") for n in names):
            return i
    return -1  # the package itself


def test_imports_run_down_the_layers():
    graph = imports()
    upward = [(a, b) for a, targets in graph.items() for b in targets
              if b.startswith("koalarization") and b != "koalarization" and layer(b) > layer(a)]
    assert not upward, upward
    assert all(layer(m) >= 0 for m in graph if m != "koalarization"), [m for m in graph if layer(m) < 0]


def test_no_import_cycle():
    graph = {a: {b for b in targets if b in imports_of_modules()} for a, targets in imports().items()}
    seen, stack = set(), []

    def visit(node):
        if node in stack:
            raise AssertionError(f"import cycle: {' -> '.join(stack[stack.index(node):] + [node])}")
        if node in seen:
            return
        stack.append(node)
        for nxt in graph.get(node, ()):
            visit(nxt)
        stack.pop()
        seen.add(node)

    for node in graph:
        visit(node)


def imports_of_modules() -> set[str]:
    return {module_name(p) for p in PACKAGE.rglob("*.py")}


def test_argparse_in_the_cli_only_and_the_measuring_kit_imported_by_the_cli_only():
    graph = imports()
    assert {m for m, t in graph.items() if "argparse" in t} <= {"koalarization.cli.parsers"}
    users = {m for m, t in graph.items() for b in t if b.startswith("koalarization.bench")}
    assert {u for u in users if not u.startswith(("koalarization.bench", "koalarization.cli"))} == set()


def test_importing_the_cli_imports_no_keras():
    """cli.main imports Keras itself, with TensorFlow's C++ start-up lines hidden: nothing may before."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", "import sys, koalarization.cli; print('keras' in sys.modules)"],
                          capture_output=True, text=True, cwd=REPO, check=True)
    assert done.stdout.strip() == "False"
