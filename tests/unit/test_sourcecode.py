"""Code quality as tests: lint, types, and the layering of shardq's own modules.

The import checks read the source with ``ast`` (nothing is imported): every ``import`` statement,
at module level or inside a function, with whether it sits under ``if TYPE_CHECKING:``.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "shardq"

# The pure core: bytes in / messages out, state changes with a passed-in clock.
PURE_MODULES = ["shardq.protocol.frames", "shardq.protocol.requests", "shardq.engine.engine",
                "shardq.engine.ready", "shardq.engine.leases", "shardq.engine.deps", "shardq.engine.waiters",
                "shardq.engine.states", "shardq.engine.storage", "shardq.engine.reads",
                "shardq.engine.maintenance", "shardq.engine.settings", "shardq.task", "shardq.errors",
                "shardq.specs", "shardq.schedule_specs", "shardq.engine.schedules", "shardq.engine.timing", "shardq.store.layout", "shardq.store.memory", "shardq.config",
                "shardq.client.core", "shardq.engine.controls", "shardq.protocol.controls"]
IO_MODULES = {"asyncio", "socket", "rocksdict", "multiprocessing", "uvloop", "selectors",
              "subprocess", "psutil"}


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_core_imports_no_io(module: str) -> None:
    """At run time, transitively: importing the module loads no I/O module."""
    code = (f"import sys; import {module}; "
            f"print(','.join(sorted(m for m in {sorted(IO_MODULES)!r} if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         check=True).stdout.strip()
    assert out == "", f"{module} pulls in I/O modules: {out}"


def test_ruff_is_clean() -> None:
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    if not Path(ruff).exists():
        pytest.fail("ruff is not installed; it is part of the dev extra")
    result = subprocess.run([ruff, "check", "shardq", "tests"], capture_output=True, text=True,
                            cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


# A file is read whole: past this many lines it holds more than one thing, and should be split
# along a real seam (as engine/reads.py and engine/maintenance.py were taken out of engine.py).
MAX_FILE_LINES = 600


def test_no_module_is_over_the_line_limit() -> None:
    sizes = {path.relative_to(ROOT).as_posix(): len(path.read_text().splitlines())
             for path in sorted(PACKAGE.rglob("*.py"))}
    over = [f"{name}: {lines} lines" for name, lines in sizes.items() if lines > MAX_FILE_LINES]
    assert not over, f"over {MAX_FILE_LINES} lines, split along a seam:\n  " + "\n  ".join(over)


# -- the import graph, from the source ---------------------------------------------------------------


@dataclass(frozen=True)
class Import:
    importer: str  # the module whose file holds the statement
    module: str  # what it imports (for `from a import b`: a.b when that is a module, else a)
    line: int
    in_function: bool
    type_checking: bool  # under `if TYPE_CHECKING:`

    def where(self) -> str:
        kind = "function-level" if self.in_function else "module-level"
        return f"{self.importer.replace('.', '/')}.py:{self.line} imports {self.module} ({kind})"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports_of(name: str, path: Path) -> Iterator[Import]:
    is_package = path.name == "__init__.py"

    def visit(node: ast.AST, in_function: bool, type_checking: bool) -> Iterator[Import]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield Import(name, alias.name, child.lineno, in_function, type_checking)
            elif isinstance(child, ast.ImportFrom):
                if child.level:  # relative: resolve against this module's package
                    base = name.split(".")
                    base = base[:len(base) - child.level + (1 if is_package else 0)]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                for alias in child.names:
                    sub = f"{target}.{alias.name}"
                    yield Import(name, sub if sub in MODULES else target, child.lineno, in_function,
                                 type_checking)
            else:
                yield from visit(
                    child,
                    in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda),
                    type_checking or (isinstance(child, ast.If) and _is_type_checking(child.test)))

    yield from visit(ast.parse(path.read_text(), str(path)), False, False)


IMPORTS = [imp for name, path in MODULES.items() for imp in _imports_of(name, path)]


def _in(module: str, packages: list[str] | tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def _top(module: str) -> str:
    return module.split(".")[0]


# (a) Layering. Every import counts here, at any level, type-only ones included: a layer that
# needs another's types at type-check time depends on it all the same.
FORBIDDEN = [
    # (importer, what it must not import, why)
    (("shardq.protocol",), ("shardq.engine",), "the codec knows bytes and fields, not queue logic"),
    (("shardq.engine",), ("shardq.protocol", "shardq.store", "shardq.server"),
     "the engine is handed a Store (engine/storage.py) and settings; it knows no wire, disk or server"),
]

# The pure core: no sockets, no event loop, no disk, no processes or threads.
PURE_CORE = ("shardq.protocol", "shardq.engine", "shardq.task", "shardq.errors", "shardq.specs",
             "shardq.schedule_specs",
             "shardq.clock", "shardq.store.layout", "shardq.store.memory")
IO_IMPORTS = {"asyncio", "socket", "rocksdict", "multiprocessing", "uvloop", "ssl", "threading",
              "subprocess", "selectors", "psutil"}


@pytest.mark.parametrize("importers,forbidden,why", FORBIDDEN, ids=[f[0][0] for f in FORBIDDEN])
def test_layers_do_not_import_what_they_must_not(importers: tuple[str, ...], forbidden: tuple[str, ...],
                                                 why: str) -> None:
    bad = [imp.where() for imp in IMPORTS if _in(imp.importer, importers) and _in(imp.module, forbidden)]
    assert not bad, f"{why}:\n  " + "\n  ".join(bad)


def test_pure_core_imports_no_io_module_and_only_the_pure_core() -> None:
    """Directly, in the source (the run-time test above checks what a module pulls in)."""
    bad = []
    for imp in IMPORTS:
        if not _in(imp.importer, PURE_CORE) or imp.type_checking:
            continue
        if _top(imp.module) in IO_IMPORTS:
            bad.append(f"{imp.where()}: an I/O module")
        elif _top(imp.module) == "shardq" and not _in(imp.module, PURE_CORE):
            bad.append(f"{imp.where()}: not part of the pure core")
    assert not bad, "the pure core does no I/O:\n  " + "\n  ".join(bad)


# (b) No cycles. Counted: module-level imports of shardq modules outside `if TYPE_CHECKING:`
# (what runs when a module is imported). Function-level imports are the escape hatch a cycle
# hides behind, so they are allowed only where listed below, each with its reason.

# Where the function-level-import rule is enforced. Widen it as server/, worker/ and client/ lose
# theirs (the aim: the whole package, i.e. ["shardq"]).
FUNCTION_IMPORT_SCOPE = ["shardq.protocol", "shardq.engine", "shardq.store", "shardq.task",
                         "shardq.errors", "shardq.config", "shardq.metrics", "shardq.specs",
                         "shardq.clock", "shardq.server", "shardq.process", "shardq.cli",
                         "shardq.cli_commands", "shardq.cli_triage", "shardq.testing", "shardq.logs", "shardq.worker",
                         "shardq.client"]

# (importer, imported) -> why it is imported inside a function.
LAZY_IMPORTS = {
    ("shardq.cli", "shardq.bench"): "`shardq --help` and the client commands do not load the benchmarks",
    ("shardq.cli", "shardq.cli_commands"): "`shardq serve` does not load the client commands",
    ("shardq.cli", "shardq.cli_triage"): "`shardq serve` does not load the client commands",
    ("shardq.cli", "shardq.cli_controls"): "`shardq serve` does not load the client commands",
    ("shardq.cli", "shardq.schedules_cli"): "`shardq serve` does not load the client commands",
    ("shardq.cli", "shardq.cli_workers"): "`shardq serve` does not load the client commands",
    ("shardq.cli", "shardq.cli_insight"): "`shardq serve` does not load the client commands",
    ("shardq.cli", "shardq.server.supervisor"): "only `shardq serve` loads the server (uvloop, rocksdict)",
    ("shardq.cli_commands", "shardq.client.sync"): "`--offline` commands need no client",
}


def _cycles(edges: dict[str, dict[str, Import]]) -> list[list[str]]:
    """The strongly connected components with more than one module (or a self-import)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, {}):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in edges.get(v, {}):
                out.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(edges):
        if v not in index:
            strong(v)
    return out


def test_no_import_cycle() -> None:
    edges: dict[str, dict[str, Import]] = {}
    for imp in IMPORTS:
        if imp.in_function or imp.type_checking or imp.module not in MODULES or imp.module == imp.importer:
            continue
        edges.setdefault(imp.importer, {}).setdefault(imp.module, imp)
    report = []
    for component in _cycles(edges):
        members = set(component)
        report.append("cycle among " + ", ".join(component) + ":\n    " + "\n    ".join(
            imp.where() for v in component for w, imp in sorted(edges.get(v, {}).items()) if w in members))
    assert not report, "import cycles (module-level imports outside TYPE_CHECKING):\n  " + "\n  ".join(report)


def test_cycle_finder_finds_cycles() -> None:
    def imp(a: str, b: str) -> Import:
        return Import(a, b, 1, False, False)

    edges = {"a": {"b": imp("a", "b")}, "b": {"c": imp("b", "c")}, "c": {"a": imp("c", "a")},
             "d": {"d": imp("d", "d"), "a": imp("d", "a")}, "e": {"a": imp("e", "a")}}
    assert sorted(_cycles(edges)) == [["a", "b", "c"], ["d"]]


def test_function_level_imports_of_shardq_only_where_listed() -> None:
    bad = [f"{imp.where()}: import it at the top, or add it to LAZY_IMPORTS with the reason"
           for imp in IMPORTS
           if imp.in_function and _top(imp.module) == "shardq" and _in(imp.importer, FUNCTION_IMPORT_SCOPE)
           and (imp.importer, imp.module) not in LAZY_IMPORTS]
    assert not bad, "\n".join(bad)


def test_lazy_import_allowlist_has_no_stale_entry() -> None:
    found = {(imp.importer, imp.module) for imp in IMPORTS if imp.in_function}
    assert set(LAZY_IMPORTS) <= found, f"listed but no longer there: {sorted(set(LAZY_IMPORTS) - found)}"


def test_import_reader_sees_what_it_must() -> None:
    """The checks above are only as good as the reader: spot-check it on known statements."""
    got = {(i.importer, i.module, i.in_function, i.type_checking) for i in IMPORTS}
    assert ("shardq.protocol.requests", "shardq.protocol.frames", False, False) in got
    assert ("shardq.server.session", "shardq.protocol.requests", False, False) in got  # from x import mod
    assert ("shardq.store.memory", "shardq.engine.storage", False, True) in got  # TYPE_CHECKING
    assert ("shardq.cli", "shardq.server.supervisor", True, False) in got  # inside a function


# (c) Types: mypy --strict on the pure core (the list is `files` in pyproject.toml's [tool.mypy]).


def test_mypy_strict_on_the_pure_core(monkeypatch: pytest.MonkeyPatch) -> None:
    api = pytest.importorskip("mypy.api", reason="mypy is part of the dev extra")
    monkeypatch.chdir(ROOT)  # `files` are relative, and imports of shardq must resolve here
    stdout, stderr, status = api.run(["--config-file", str(ROOT / "pyproject.toml"),
                                      "--no-incremental", "--cache-dir", "/dev/null"])
    assert status == 0, stdout + stderr
