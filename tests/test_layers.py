"""The layers point one way and no project module imports itself in a circle.

Every .py file under the project packages is parsed (never imported). A layer may use only the
layers ALLOWED names for it; module paths written as strings (importlib, runpy, `python -m`,
find_spec) count as imports, since they hide the same dependency from linters. Cycles are looked
for among every import that runs, module-level or inside a function (a deferred import hides a
cycle, it does not remove it); `if TYPE_CHECKING:` imports never run and count for layers only.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# layer -> the project layers it may import (itself always). The shared library is the bottom:
# it serves every other layer and knows none of them. The gateway and the stages meet only on the
# wire (the protos in cascade/v1), so neither imports the other. Above them, the training package
# (the daily retrain, folding the log, one stage's examples from another's output) and the
# research package (simulation, the loop's reports, the end-to-end evaluation, which runs the
# gateway's funnel); research may train (the simulated loop retrains daily), training never
# needs research. The application layer (CLI, local stack, demo) composes them all and hands the
# research a running stack; the deploy tooling and the benchmarks sit on top (a benchmark may
# reuse a deploy check, never the other way round).
# Each stage under services/ is a layer of its own: a stage imports only the shared library.
STAGE_LAYERS = ("recall", "prerank", "rank", "rerank")
ALL_STAGES = {"services", *STAGE_LAYERS}  # `services` alone: the package's __init__
ALLOWED: dict[str, set[str]] = {
    "cascade": set(),
    "gateway": {"cascade"},
    "services": {"cascade"},
    **{stage: {"cascade"} for stage in STAGE_LAYERS},
    "training": {"cascade", *ALL_STAGES},
    "research": {"cascade", "gateway", *ALL_STAGES, "training"},
    "app": {"cascade", "gateway", *ALL_STAGES, "training", "research"},
    "deploy": {"cascade", "gateway", *ALL_STAGES, "training", "research", "app"},
    "bench": {"cascade", "gateway", *ALL_STAGES, "training", "research", "app", "deploy"},
}
# The folders whose .py files are parsed (a stage layer lives under services/).
FOLDERS = ("cascade", "gateway", "services", "training", "research", "app", "deploy", "bench")
# Calls whose string argument names a module to load.
LOADERS = {"import_module", "run_module", "find_spec", "run_path", "__import__"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _project_modules() -> dict[str, Path]:
    modules = {}
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            modules[_module_name(path)] = path
    return modules


MODULES = _project_modules()


def _resolve(name: str) -> str | None:
    """The project module `name` refers to (a package's `from x import y` may name a module y)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _absolute(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


class _Imports(ast.NodeVisitor):
    """Collects (target module, line, runs?, how) for one file: `runs` is True for an import
    statement that executes (at module level or in a function), False for a typing-only import
    and for a module path held in a string."""

    def __init__(self, module: str, is_package: bool):
        self.module, self.is_package = module, is_package
        self.found: list[tuple[str, int, bool, str]] = []
        self.typing_only = 0  # inside `if TYPE_CHECKING:`: > 0

    def _add(self, name: str, line: int, how: str) -> None:
        target = _resolve(name)
        if target and target != self.module:
            self.found.append((target, line, not self.typing_only and how == "import", how))

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
            isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
        ):
            self.typing_only += 1
            self.generic_visit(node)
            self.typing_only -= 1
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node.lineno, "import")

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = _absolute(self.module, node, self.is_package)
        for alias in node.names:
            full = f"{base}.{alias.name}"
            self._add(full if full in MODULES else base, node.lineno, "import")

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name in LOADERS and node.args and isinstance(node.args[0], ast.Constant):
            if isinstance(node.args[0].value, str):
                self._add(node.args[0].value, node.lineno, f"{name}() string")
        self.generic_visit(node)

    def _command(self, elements: list[ast.expr]) -> None:
        for flag, value in zip(elements, elements[1:], strict=False):
            if (
                isinstance(flag, ast.Constant)
                and flag.value == "-m"
                and isinstance(value, ast.Constant)
                and isinstance(value.value, str)
            ):
                self._add(value.value, value.lineno, "`-m` string")

    def visit_List(self, node: ast.List) -> None:
        self._command(node.elts)
        self.generic_visit(node)

    def visit_Tuple(self, node: ast.Tuple) -> None:
        self._command(node.elts)
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        # A dotted path to a project module held as data (an entry-point table handed to
        # importlib later) is a dependency too.
        value = node.value
        if isinstance(value, str) and "." in value and " " not in value and value in MODULES:
            self._add(value, node.lineno, "module-path string")


def _strip_docstrings(tree: ast.Module) -> None:
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(body, list)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            body[0] = ast.Pass()


def _imports() -> dict[str, list[tuple[str, int, bool, str]]]:
    graph = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        _strip_docstrings(tree)
        visitor = _Imports(module, path.name == "__init__.py")
        visitor.visit(tree)
        graph[module] = visitor.found
    return graph


IMPORTS = _imports()


def layer_of(module: str) -> str:
    """The layer a module belongs to: its top folder, or its stage for services.<stage>.*"""
    parts = module.split(".")
    if parts[0] == "services" and len(parts) > 1:
        return parts[1]
    return parts[0]


def crossings() -> list[tuple[str, int, str, str, str, str]]:
    """Every import of a layer it may not use: (path, line, layer, other, target, how)."""
    found_all = []
    for module, found in IMPORTS.items():
        layer = layer_of(module)
        for target, line, _, how in found:
            other = layer_of(target)
            if other != layer and other not in ALLOWED[layer]:
                path = str(MODULES[module].relative_to(ROOT))
                found_all.append((path, line, layer, other, target, how))
    return found_all


def layer_violations() -> list[str]:
    return [
        f"{path}:{line}: {layer} may not use {other} ({target}, {how})"
        for path, line, layer, other, target, how in crossings()
    ]


def import_cycles() -> list[list[str]]:
    """Each cycle among the imports that run, once, as the path of modules that closes it."""
    edges = {m: sorted({t for t, _, runs, _ in found if runs}) for m, found in IMPORTS.items()}
    cycles, seen, state = [], set(), {}  # state: 1 on the stack, 2 done

    def visit(module: str, stack: list[str]) -> None:
        state[module] = 1
        stack.append(module)
        for target in edges.get(module, ()):
            if state.get(target) == 1:
                cycle = stack[stack.index(target) :] + [target]
                key = frozenset(cycle)
                if key not in seen:
                    seen.add(key)
                    cycles.append(cycle)
            elif target not in state:
                visit(target, stack)
        stack.pop()
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [])
    return cycles


def test_every_layer_imports_only_the_layers_below_it():
    assert layer_violations() == []


def test_a_stage_is_a_layer_of_its_own():
    assert layer_of("services.rank.scorer") == "rank"
    assert layer_of("services") == "services"
    assert "recall" not in ALLOWED["prerank"] and ALLOWED["rank"] == {"cascade"}


def test_no_import_cycles_among_project_modules():
    assert [" -> ".join(cycle) for cycle in import_cycles()] == []


def test_the_checker_sees_string_imports_and_cycles():
    """The checks would catch what they claim to: a string path, a `-m` command, a cycle."""
    source = (
        "import importlib, subprocess, sys\n"
        "def later():\n    from gateway import pipeline\n"
        "importlib.import_module('services.rank.server')\n"
        "subprocess.run([sys.executable, '-m', 'gateway.server'])\n"
        "TABLE = {'cli': 'app.cli'}\n"
    )
    visitor = _Imports("cascade.example", False)
    visitor.visit(ast.parse(source))
    assert {(t, runs, how) for t, _, runs, how in visitor.found} == {
        ("gateway.pipeline", True, "import"),
        ("services.rank.server", False, "import_module() string"),
        ("services.rank.server", False, "module-path string"),
        ("gateway.server", False, "`-m` string"),
        ("gateway.server", False, "module-path string"),
        ("app.cli", False, "module-path string"),
    }
    assert "cascade.example" not in MODULES
    relative = ast.parse("from . import export\nfrom .model import Net\n")
    visitor = _Imports("services.rank.train", False)
    visitor.visit(relative)
    assert {t for t, *_ in visitor.found} == {"services.rank.export", "services.rank.model"}
