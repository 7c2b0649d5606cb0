"""dbkit lint against squawk (PyPI squawk-cli) on a corpus of migrations: no worse than the peer.

On the rules both linters have, both must flag the same statements. Rules are compared by
family (squawk sometimes reports one problem under two names, e.g. an ADD UNIQUE constraint as
both constraint-missing-not-valid and disallowed-unique-constraint). The places where dbkit
deliberately judges differently live in lint_corpus/differences/ and are asserted one by one
(docs/linting.md explains each).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dbkit.lint.engine import is_transactional, lint_file

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "lint_corpus"
SHIPPED = HERE.parent / "migrations"

# family -> (dbkit rule ids, squawk rule names)
FAMILIES: dict[str, tuple[set[str], set[str]]] = {
    "create-index": ({"index-not-concurrent"}, {"require-concurrent-index-creation"}),
    "drop-index": ({"drop-index-not-concurrent"}, {"require-concurrent-index-deletion"}),
    "required-column": ({"add-column-not-null"}, {"adding-required-field"}),
    "rewrite-column": ({"add-column-rewrite"}, {"adding-field-with-default"}),
    "type-change": ({"column-type-change"}, {"changing-column-type"}),
    "set-not-null": ({"set-not-null"}, {"adding-not-nullable-field"}),
    "blocking-constraint": ({"constraint-not-valid", "unique-without-index"},
                            {"constraint-missing-not-valid", "adding-foreign-key-constraint",
                             "disallowed-unique-constraint", "adding-serial-primary-key-field"}),
    "drop-table": ({"drop-table"}, {"ban-drop-table"}),
    "drop-column": ({"drop-column"}, {"ban-drop-column"}),
    "rename-table": ({"rename-table"}, {"renaming-table"}),
    "rename-column": ({"rename-column"}, {"renaming-column"}),
    "concurrently-in-transaction": ({"concurrently-in-transaction"},
                                    {"ban-concurrent-index-creation-in-transaction"}),
}
DBKIT_FAMILY = {rule: fam for fam, (ours, _) in FAMILIES.items() for rule in ours}
SQUAWK_FAMILY = {rule: fam for fam, (_, theirs) in FAMILIES.items() for rule in theirs}

# file -> (statements only dbkit flags, statements only squawk flags), as (1-based line, family)
DIFFERENCES: dict[str, tuple[set[tuple[int, str]], set[tuple[int, str]]]] = {
    "created_in_same_file.sql": (set(), {(4, "set-not-null"), (5, "type-change"),
                                         (6, "required-column"), (7, "rename-column")}),
    "concurrently_single_statement.sql": ({(3, "concurrently-in-transaction")}, set()),
    "concurrently_other_forms.sql": ({(2, "concurrently-in-transaction"),
                                      (3, "concurrently-in-transaction")}, set()),
    "inline_check_on_new_column.sql": ({(2, "blocking-constraint")}, set()),
    "serial_column.sql": ({(2, "rewrite-column")}, set()),
    "immutable_default.sql": (set(), {(2, "rewrite-column")}),
    "validate_after_other_ddl.sql": ({(5, "blocking-constraint")}, set()),
    "fk_on_new_column.sql": (set(), {(3, "blocking-constraint")}),
}


def _squawk() -> str:
    found = Path(sys.executable).with_name("squawk")
    path = str(found) if found.exists() else shutil.which("squawk")
    assert path, "squawk is not installed: pip install -e '.[dev]' (squawk-cli is a dev extra)"
    return path


def _statement_lines(path: Path) -> list[tuple[int, int]]:
    """(first, last) line of each statement, to map a finding's line to its statement."""
    import pglast

    text = path.read_text()
    spans = []
    for raw in pglast.parse_sql(text):
        end = raw.stmt_location + (raw.stmt_len or len(text) - raw.stmt_location)
        spans.append((text.count("\n", 0, raw.stmt_location) + 1, text.count("\n", 0, end) + 1))
    return spans


def _first_line_of_statement(path: Path, line: int) -> int:
    for first, last in _statement_lines(path):
        if first <= line <= last:
            return first
    raise AssertionError(f"{path.name}:{line} is in no statement")


def squawk_flags(path: Path) -> set[tuple[int, str]]:
    args = [_squawk(), "--reporter", "json", "--no-error-on-unmatched-pattern"]
    if is_transactional(path.read_text()):
        args.append("--assume-in-transaction")  # what yoyo does with the file
    proc = subprocess.run([*args, str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode in (0, 1), proc.stderr
    out = proc.stdout.strip()
    flags = set()
    for item in json.loads(out) if out else []:
        family = SQUAWK_FAMILY.get(item["rule_name"])
        if family:  # squawk's 0-based line
            flags.add((_first_line_of_statement(path, item["line"] + 1), family))
    return flags


def dbkit_flags(path: Path) -> set[tuple[int, str]]:
    return {(_first_line_of_statement(path, f.line), DBKIT_FAMILY[f.rule])
            for f in lint_file(path) if f.rule in DBKIT_FAMILY}


CORPUS_FILES = sorted(CORPUS.glob("*.sql")) + sorted(
    p for p in SHIPPED.glob("*.sql") if not p.name.endswith(".rollback.sql"))


@pytest.mark.parametrize("path", CORPUS_FILES, ids=lambda p: p.name)
def test_both_flag_the_same_statements(path: Path) -> None:
    assert dbkit_flags(path) == squawk_flags(path)


def test_corpus_exercises_every_shared_family() -> None:
    """A comparison where neither linter flags anything would prove nothing."""
    seen = {family for path in CORPUS_FILES for _, family in dbkit_flags(path)}
    assert seen == set(FAMILIES)
    clean = [p.name for p in CORPUS_FILES if not dbkit_flags(p) and not squawk_flags(p)]
    assert "01_create_tables.sql" in clean and "08_not_null_the_safe_way.sql" in clean


@pytest.mark.parametrize("name", sorted(DIFFERENCES))
def test_documented_differences(name: str) -> None:
    path = CORPUS / "differences" / name
    ours, theirs = dbkit_flags(path), squawk_flags(path)
    only_dbkit, only_squawk = DIFFERENCES[name]
    assert (ours - theirs, theirs - ours) == (only_dbkit, only_squawk)
    assert sorted(p.name for p in (CORPUS / "differences").glob("*.sql")) == sorted(DIFFERENCES)
