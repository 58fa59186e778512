"""The test suite's own layout: shared helpers live in ``tests/helpers.py``."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def test_no_test_imports_from_conftest():
    offenders = []
    for path in sorted(TESTS.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module == "conftest":
                offenders.append(f"{path.relative_to(TESTS)}:{node.lineno}")
            if isinstance(node, ast.Import) and any(a.name == "conftest" for a in node.names):
                offenders.append(f"{path.relative_to(TESTS)}:{node.lineno}")
    assert not offenders, f"import shared helpers from helpers.py, not conftest: {offenders}"


# -- the package's own layout ------------------------------------------------------------

SRC = TESTS.parent / "src"
FEDERATED = "drencoder.federated"
ABOVE_BOTH = {f"{FEDERATED}.simulator", f"{FEDERATED}.codec_trace"}
"""Modules of ``federated`` above both sides: they compose a server and clients in one
process."""


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted((SRC / "drencoder").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Every drencoder module ``name`` imports, anywhere in the file (top level, inside
    functions, under ``TYPE_CHECKING``): ``from P import n`` counts as P.n when that is a
    module, else as P."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in MODULES else base)
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _side(name: str) -> str | None:
    if not name.startswith(FEDERATED + "."):
        return None
    if name in ABOVE_BOTH:
        return "above"
    rest = name[len(FEDERATED) + 1 :]
    if rest.split(".")[0] in ("client", "server"):
        return rest.split(".")[0]
    return "shared"


def test_the_client_and_server_sides_never_import_each_other():
    allowed = {
        "client": {None, "shared", "client"},
        "server": {None, "shared", "server"},
        "shared": {None, "shared"},
    }
    offenders = []
    for name, deps in GRAPH.items():
        side = _side(name)
        if side in allowed:
            offenders += [f"{name} -> {d}" for d in sorted(deps) if _side(d) not in allowed[side]]
    assert not offenders, (
        "federated/client and federated/server may import only the shared modules of "
        f"drencoder.federated (and the shared ones neither side): {offenders}"
    )


def test_no_import_cycles():
    # A module importing its own package's __init__ (a parent) is how Python packages work;
    # every other edge counts, including function-level and TYPE_CHECKING imports.
    def edges(name):
        return {d for d in GRAPH[name] if not name.startswith(d + ".")}

    state, stack, cycles = {}, [], []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for dep in sorted(edges(node)):
            if state.get(dep) == "open":
                cycles.append([*stack[stack.index(dep) :], dep])
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = "done"

    for name in sorted(GRAPH):
        if name not in state:
            visit(name)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_rules_that_depend_on_the_method_read_the_method_table():
    # The table (config/methods.py) is the one place a method's properties are written
    # down; elsewhere a rule asks spec_for(method) rather than naming a method. The enum's
    # own module and compare's named variants (dr-encoder+BASIS, dp-fedavg-lora+lr-scaled)
    # name methods as values, not as rules.
    allowed = {"drencoder.config.methods", "drencoder.config.schema", "drencoder.compare.plan"}
    offenders = []
    for name, path in MODULES.items():
        if name in allowed:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "Method"
                and node.attr.isupper()
            ):
                offenders.append(f"{name}:{node.lineno} Method.{node.attr}")
    assert not offenders, f"read the method table (spec_for) instead: {offenders}"
