"""The package's structure rules, checked on the source (docs/architecture.md, "Dependency rules"):

* the import contract of pyproject.toml (`[tool.importlinter]`), run with import-linter: the layers from the core up
  to the app (a module imports only from layers below its own), and torch / transformers / trl / peft only in
  `modeling` and the training package. Every import counts: at module level, inside functions and under
  `if TYPE_CHECKING:`. A scratch copy of the package with an upward import proves the contract fails;
* no import cycle between modules, counting every import (inside functions and type-only ones too);
* imports of `phased_ift` modules inside functions only where they keep start-up fast, all listed here
  (`LAZY_ENTRY_POINTS`, `LAZY_IMPORTS`);
* no module over 600 lines and no function over 60 lines;
* every module says in its docstring what it owns.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
PACKAGE = "phased_ift"
HF_STACK = {"torch", "transformers", "trl", "peft"}
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 60

# Imports of phased_ift modules inside functions, allowed only where they keep start-up fast:
# the entry points, whose every import inside a function is such a case ...
LAZY_ENTRY_POINTS = {
    "phased_ift": "its names (the Python API, Config, Example) load on first use: `import phased_ift` loads no step",
    "phased_ift.cli": "`phased-ift --help` imports cli (and the names of its help texts) only; each command imports "
                      "what it runs when it runs",
}
# ... and these imports of modules that import torch / transformers at module level (`_heavy`), from modules that
# run without them until a phase trains (importer, imported): reason.
LAZY_IMPORTS = {
    ("phased_ift.train", "phased_ift.train.trainer"): "the package's trainer names, loaded on first use",
    ("phased_ift.train.loop", "phased_ift.train.trainer"): "the TRL trainer, when a phase trains",
    ("phased_ift.train.loop", "phased_ift.train.callbacks"): "the Trainer callbacks, when a phase trains",
    ("phased_ift.train.loop", "phased_ift.train.tracking"): "TensorBoard / wandb, when train.report_to is set",
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path, where: str = "anywhere") -> list[str]:
    """Absolute names of what a module imports (module or `from` target): `where` "anywhere" (at module level,
    inside functions and under `if TYPE_CHECKING:`), "functions" (inside functions only) or "module" (outside
    functions: what importing the module runs, TYPE_CHECKING blocks aside)."""
    is_pkg = path.name == "__init__.py"
    out = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if where == "module" and isinstance(child, ast.If) and _is_type_checking(child):
                continue
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, (ast.Import, ast.ImportFrom)) and (
                    where == "anywhere" or (where == "functions") == in_function):
                out.extend(_targets(name, child, is_pkg))
            visit(child, inner)

    visit(ast.parse(path.read_text(encoding="utf-8")), False)
    return out


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or \
        (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _targets(name: str, node: ast.Import | ast.ImportFrom, is_pkg: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:
        anchor = name.split(".")
        anchor = anchor[: len(anchor) - node.level + (1 if is_pkg else 0)]
        base = ".".join(anchor + ([base] if base else []))
    subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES]
    return subs or [base]  # `from pkg import submodule` depends on the submodule


def _graph() -> dict[str, set[str]]:
    graph = {}
    for name, path in MODULES.items():
        graph[name] = {m for m in _imports(name, path) if m in MODULES and m != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_walk_sees_imports_inside_functions_and_type_checking(tmp_path):
    mod = tmp_path / "m.py"
    mod.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from phased_ift.config import Config\n"
                   "def f():\n    from phased_ift.scoring import SCORERS\n    import torch\n")
    found = _imports("phased_ift.m", mod)
    assert {"phased_ift.scoring", "torch", "phased_ift.config"} <= set(found)
    assert set(_imports("phased_ift.m", mod, "functions")) == {"phased_ift.scoring", "torch"}
    assert set(_imports("phased_ift.m", mod, "module")) == {"typing"}
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    assert _cycles(_graph()) == []


# ---------------------------------------------------------------------------------------------------------------
# The import contract (pyproject.toml, [tool.importlinter]), run with import-linter
# ---------------------------------------------------------------------------------------------------------------


def _lint(src: Path, cwd: Path) -> subprocess.CompletedProcess:
    """`lint-imports` with the contract of pyproject.toml on the package found under `src`."""
    pytest.importorskip("importlinter", reason="pip install -e '.[test]' (import-linter checks the contract)")
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    env = {**os.environ, "PYTHONPATH": str(src)}
    return subprocess.run([sys.executable, "-c", code, "--no-cache", str(REPO / "pyproject.toml")], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=300)


def test_the_import_contract_holds(tmp_path):
    r = _lint(SRC, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Contracts: 3 kept, 0 broken." in r.stdout


def test_the_contract_fails_on_an_upward_import(tmp_path):
    """A scratch copy of the package with one upward import inside a function, one under TYPE_CHECKING, torch in
    a scorer and a module in no layer: each breaks the contract, named in lint-imports' report."""
    src = tmp_path / "src"
    shutil.copytree(SRC / PACKAGE, src / PACKAGE, ignore=shutil.ignore_patterns("__pycache__"))
    pkg = src / PACKAGE
    with open(pkg / "errors.py", "a", encoding="utf-8") as f:
        f.write("\n\ndef _scratch():\n    from phased_ift import pipeline\n\n    return pipeline\n")
    with open(pkg / "config_choices.py", "a", encoding="utf-8") as f:
        f.write("\nfrom typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from phased_ift.phases.design import Arm\n")
    with open(pkg / "scoring" / "meta.py", "a", encoding="utf-8") as f:
        f.write("\n\ndef _scratch():\n    import torch\n\n    return torch\n")
    (pkg / "scratch.py").write_text('"""A module in no layer."""\n', encoding="utf-8")
    r = _lint(src, tmp_path)
    out = " ".join((r.stdout + r.stderr).split())
    assert r.returncode == 1, out
    assert "phased_ift.errors is not allowed to import phased_ift.pipeline" in out
    assert "phased_ift.config_choices is not allowed to import phased_ift.phases:" in out  # the layer: a package
    assert "phased_ift.config_choices -> phased_ift.phases.design" in out
    assert "phased_ift.scoring.meta -> torch" in out
    assert "phased_ift.scratch" in out.split("not listed as layers")[1]
    assert "Contracts: 0 kept, 3 broken." in out  # the sit layers too: errors now reaches sit.generation


def _heavy() -> set[str]:
    """The modules that import torch / transformers / trl / peft at module level, themselves or through the
    phased_ift modules they import at module level."""
    direct = {name: set(_imports(name, path, "module")) for name, path in MODULES.items()}
    heavy = {n for n, deps in direct.items() if {d.split(".")[0] for d in deps} & HF_STACK}
    while True:
        more = {n for n, deps in direct.items() if n not in heavy and deps & heavy}
        if not more:
            return heavy
        heavy |= more


def test_imports_inside_functions_are_listed():
    """Outside the entry points, an import of a phased_ift module inside a function is one of `LAZY_IMPORTS` (of a
    module that imports torch); any other goes at module level (the graph has no cycle, so it can)."""
    found = {(name, m) for name, path in MODULES.items() if name not in LAZY_ENTRY_POINTS
             for m in _imports(name, path, "functions") if m.split(".")[0] == PACKAGE}
    unlisted = sorted(found - set(LAZY_IMPORTS))
    assert unlisted == [], f"imports inside functions, not in LAZY_IMPORTS: {unlisted}; put them at module level"
    assert sorted(set(LAZY_IMPORTS) - found) == [], "LAZY_IMPORTS lists imports the source no longer has"
    heavy = _heavy()
    assert {m for _, m in LAZY_IMPORTS} <= heavy, "LAZY_IMPORTS may only defer modules that import torch"
    assert not heavy & {m for m in MODULES if not m.startswith(("phased_ift.modeling", "phased_ift.train"))}


def test_phased_ift_help_imports_the_cli_alone():
    code = "import sys, phased_ift.cli; print(' '.join(sorted(m for m in sys.modules if m.startswith('phased_ift'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["phased_ift", "phased_ift.cli", "phased_ift.config_choices", "phased_ift.errors"]


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_size_docstring_and_function_length(name):
    path = MODULES[name]
    text = path.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= MAX_MODULE_LINES, f"{path} has {len(text.splitlines())} lines"
    tree = ast.parse(text)
    if name != PACKAGE or text.strip():
        assert ast.get_docstring(tree), f"{path} has no module docstring saying what it owns"
    long = [f"{n.name} ({n.end_lineno - n.lineno + 1} lines)" for n in ast.walk(tree)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            and n.end_lineno - n.lineno + 1 > MAX_FUNCTION_LINES]
    assert long == [], f"{path}: functions over {MAX_FUNCTION_LINES} lines: {long}"
