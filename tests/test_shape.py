"""The package's shape: no import cycles, no module reaching into another's private names, and
each PostgreSQL step written in exactly one module. Read from the source with ast, so an import
inside a function or under TYPE_CHECKING counts as much as one at the top."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "dbkit"


@dataclass
class Module:
    name: str
    path: Path
    imports: set[str] = field(default_factory=set)  # dbkit modules it imports
    private: list[str] = field(default_factory=list)  # "line: what" for each private reach


def modules(root: Path) -> dict[str, Module]:
    """Every module of the package rooted at ``root`` (a package __init__ is its package)."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        name = ".".join(parts)
        found[name] = Module(name, path)
    return found


def _resolve(mod: Module, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = mod.name.split(".")
    if mod.path.name != "__init__.py":
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def analyse(root: Path) -> dict[str, Module]:
    mods = modules(root)
    top = root.name
    for mod in mods.values():
        tree = ast.parse(mod.path.read_text(), str(mod.path))
        aliases: dict[str, str] = {}  # local name -> dbkit module it is bound to
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.split(".")[0] == top:
                        mod.imports.add(a.name)
                        if a.asname:
                            aliases[a.asname] = a.name
            elif isinstance(node, ast.ImportFrom):
                source = _resolve(mod, node)
                if source.split(".")[0] != top:
                    continue
                for a in node.names:
                    sub = f"{source}.{a.name}"
                    if sub in mods:  # from dbkit import pg: the module dbkit.pg
                        mod.imports.add(sub)
                        aliases[a.asname or a.name] = sub
                    else:
                        mod.imports.add(source)
                        if a.name.startswith("_") and not a.name.startswith("__"):
                            mod.private.append(f"{node.lineno}: from {source} import {a.name}")
        for node in ast.walk(tree):  # pg._key_sql(...) on an imported module
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases and node.attr.startswith("_")
                    and not node.attr.startswith("__")):
                mod.private.append(f"{node.lineno}: {aliases[node.value.id]}.{node.attr}")
        mod.imports.discard(mod.name)
        mod.imports &= set(mods)
    return mods


def cycles(mods: dict[str, Module]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(mods[v].imports):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(mods):
        if v not in index:
            visit(v)
    return out


def test_the_checker_finds_a_cycle_and_a_private_import(tmp_path):
    """The checks below would catch what they look for: shown on a small package made to have
    an import cycle (one leg inside a function, one under TYPE_CHECKING) and private reaches."""
    pkg = tmp_path / "dbkit"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from dbkit.sub import b\n")
    (pkg / "sub" / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                      "    from ..a import f\n")
    (pkg / "c.py").write_text("from dbkit.a import _hidden\nfrom dbkit import a\na._peek()\n")
    mods = analyse(pkg)
    assert cycles(mods) == [["dbkit.a", "dbkit.sub.b"]]
    assert mods["dbkit.c"].private == ["1: from dbkit.a import _hidden", "3: dbkit.a._peek"]


def test_no_import_cycles():
    found = cycles(analyse(PACKAGE))
    assert found == [], "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_no_module_imports_another_modules_private_names():
    reaches = [f"{m.path.relative_to(PACKAGE.parent)}:{p}"
               for m in analyse(PACKAGE).values() for p in m.private]
    assert reaches == []


def _code_strings(path: Path) -> list[str]:
    """String literals of a module that are code, not docstrings (f-strings included)."""
    tree = ast.parse(path.read_text())
    docs = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docs.add(id(body[0].value))
    return [n.value for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs]


# What dbkit sends to the server for each step, and the module that alone may send it.
STEPS = {
    "create a role": (r"\bCREATE ROLE\b", "dbkit/pg.py"),
    "drop a role": (r"\bDROP ROLE\b", "dbkit/pg.py"),
    "create a database": (r"\bCREATE DATABASE\b", "dbkit/pg.py"),
    "drop a database": (r"\bDROP DATABASE\b", "dbkit/pg.py"),
    "rename a database": (r"\bALTER DATABASE\b.*\bRENAME\b", "dbkit/pg.py"),
    "advisory locks": (r"\bpg_(try_)?advisory", "dbkit/pg.py"),
    "replication state": (r"\bpg_is_in_recovery|\bpg_stat_replication|\bpg_replication_slots"
                          r"|\bpg_current_wal_|\bpg_(last|is)_wal_|\bpg_wal_lsn_diff",
                          "dbkit/replicas.py"),
}


@pytest.mark.parametrize("step", sorted(STEPS))
def test_each_postgresql_step_has_one_home(step):
    pattern, home = STEPS[step]
    # The linter names statements in its findings about the user's files; it sends nothing.
    where = sorted({str(p.relative_to(PACKAGE.parent)) for p in PACKAGE.rglob("*.py")
                    if p.parent.name != "lint"
                    and any(re.search(pattern, s) for s in _code_strings(p))})
    assert where == [home]


def test_one_module_computes_password_verifiers():
    users = sorted({str(p.relative_to(PACKAGE.parent)) for p in PACKAGE.rglob("*.py")
                    for n in ast.walk(ast.parse(p.read_text()))
                    if isinstance(n, ast.Attribute) and n.attr == "encrypt_password"})
    assert users == ["dbkit/pg.py"]


def test_advisory_lock_keys_are_defined_in_one_module():
    keys = sorted({str(p.relative_to(PACKAGE.parent)) for p in PACKAGE.rglob("*.py")
                   if re.search(r"^\w+ = LockKey\(|0x64626B74", p.read_text(), flags=re.M)})
    assert keys == ["dbkit/pg.py"]


def test_one_module_reads_what_the_server_said():
    """The one translator of psycopg errors: only dbkit/db.py looks at an error's diagnostics
    or SQLSTATE; every other module asks it (translate, error_class, server_said)."""
    readers = sorted({str(p.relative_to(PACKAGE.parent)) for p in PACKAGE.rglob("*.py")
                      for n in ast.walk(ast.parse(p.read_text()))
                      if isinstance(n, ast.Attribute) and n.attr == "diag"
                      or isinstance(n, ast.Constant) and n.value == "sqlstate"})
    assert readers == ["dbkit/db.py"]


def test_the_test_suites_cluster_helper_is_not_in_the_package():
    assert not (PACKAGE / "testing.py").exists()
    assert not any("tempfile.mkdtemp" in p.read_text() and "throwaway" in p.read_text()
                   for p in PACKAGE.rglob("*.py"))


def test_one_real_migrations_directory_at_the_top():
    top = PACKAGE.parent / "migrations"
    assert top.is_dir() and not top.is_symlink()
    assert not (PACKAGE / "migrations").exists()
    assert sorted(p.name for p in top.glob("*.sql"))[0] == "0001_create_posts.rollback.sql"
