"""The folders are the architecture: these tests read every module's imports (the AST, so an import
inside a function counts too) and fail when a layer reaches one it must not.

    schemas          wire types and topic names           imports nothing of the project but itself
    windowgate.core  the policy (pure)                    schemas
    windowgate.meta  Meta's formats (pure)                schemas, windowgate.core
    windowgate       offline (pure), client library, CLI  schemas, windowgate.*
    services         the shells                           schemas, windowgate, services
    devtools         make run, dev broker, stand-ins      anything but tests
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("schemas", "windowgate", "services", "devtools", "tests", "bench")

PURE = ("schemas", "windowgate.core", "windowgate.meta", "windowgate.offline")
# Only these third-party modules may be imported by the pure layers (orjson: bytes ↔ dicts).
PURE_THIRD_PARTY = {"orjson"}
IO_MODULES = {
    "aiokafka", "aiohttp", "yarl", "prometheus_client", "os", "socket", "subprocess", "random",
    "asyncio", "threading", "signal", "logging", "tempfile", "shutil", "urllib", "http",
}  # fmt: skip
CLOCK_READS = {("time", "time"), ("time", "time_ns"), ("time", "monotonic"), ("datetime", "now")}
CLOCK_READS |= {("datetime", "utcnow"), ("date", "today"), ("os", "environ"), ("os", "getenv")}

MAY_IMPORT: dict[str, tuple[str, ...]] = {
    "schemas": ("schemas",),
    "windowgate.core": ("schemas", "windowgate.core"),
    "windowgate.meta": ("schemas", "windowgate.core", "windowgate.meta"),
    "windowgate": ("schemas", "windowgate"),
    "services": ("schemas", "windowgate", "services"),
    "devtools": ("schemas", "windowgate", "services", "devtools"),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[module_name(path)] = path
    return found


MODULES = modules()


def imports_of(path: Path) -> set[str]:
    """Every module named by an import statement in the file (relative imports resolved)."""
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = module_name(path).split(".")
                if path.name != "__init__.py":
                    here.pop()
                base = ".".join([*here[: len(here) - node.level + 1], base]).strip(".")
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def layer_of(module: str) -> str | None:
    best = None
    for layer in MAY_IMPORT:
        if (module == layer or module.startswith(layer + ".")) and (
            best is None or len(layer) > len(best)
        ):
            best = layer
    return best


def project_imports(path: Path) -> set[str]:
    return {name for name in imports_of(path) if name.split(".")[0] in PACKAGES}


def within(name: str, layers: tuple[str, ...]) -> bool:
    return any(name == layer or name.startswith(layer + ".") for layer in layers)


def test_the_layout_has_the_layers_the_docstring_names() -> None:
    for layer in MAY_IMPORT:
        assert any(within(m, (layer,)) for m in MODULES), f"no module in {layer}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if layer_of(m)))
def test_each_layer_imports_only_what_it_may(module: str) -> None:
    layer = layer_of(module)
    assert layer is not None
    allowed = MAY_IMPORT[layer]
    wrong = sorted(n for n in project_imports(MODULES[module]) if not within(n, allowed))
    assert not wrong, f"{module} ({layer}) imports {wrong}; it may import only {allowed}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if within(m, PURE)))
def test_the_pure_layers_import_no_io_and_read_no_clock(module: str) -> None:
    path = MODULES[module]
    tops = {name.split(".")[0] for name in imports_of(path)}
    assert not tops & IO_MODULES, f"{module} imports {sorted(tops & IO_MODULES)}"
    third_party = {
        t for t in tops if t not in PACKAGES and t not in _stdlib() and t != "__future__"
    }
    assert third_party <= PURE_THIRD_PARTY, f"{module} imports {sorted(third_party)}"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            assert (node.value.id, node.attr) not in CLOCK_READS, (
                f"{module} reads {node.value.id}.{node.attr}: the core takes `now` and settings "
                "as arguments"
            )


def _stdlib() -> frozenset[str]:
    import sys

    return frozenset(sys.stdlib_module_names)


def test_no_module_of_the_product_imports_the_tests() -> None:
    product = [m for m in MODULES if not within(m, ("tests",))]
    wrong = {
        m: sorted(n for n in project_imports(MODULES[m]) if within(n, ("tests",))) for m in product
    }
    assert not {m: n for m, n in wrong.items() if n}


def test_there_is_no_import_cycle_between_modules() -> None:
    """A cycle means two modules are one concept split in two, or a layer reaching upwards."""
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        targets = set()
        for name in project_imports(path):
            # `from a.b import c` names a.b.c (a module or a name in a.b): keep the longest module.
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name and name != module and MODULES[name].name != "__init__.py":
                targets.add(name)
        graph[module] = targets
    cycle = _find_cycle(graph)
    assert cycle is None, "import cycle: " + " → ".join(cycle or [])


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_import_reader_sees_imports_inside_functions(tmp_path: Path) -> None:
    path = ROOT / "windowgate" / "cli.py"
    assert "windowgate.offline" in imports_of(path)
    source = tmp_path / "x.py"
    source.write_text("def f():\n    import services.window.replay\n")
    assert "services.window.replay" in imports_of(source)
