"""Linting grows with the number of files, not files x VALIDATEs: each migration is parsed once
and one model of what earlier files left is carried forward (bench/bench_lint.py has the times;
this counts the parser's calls, so the quadratic re-parse cannot come back unnoticed)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pglast
import pytest

from dbkit.lint.engine import gate, lint_file, lint_paths


def _migrations(folder: Path, tables: int) -> list[Path]:
    """Four files per table; the fourth VALIDATEs the third's NOT VALID CHECK and changes a type
    an earlier file defined: both make the linter ask what earlier files left."""
    paths = []
    for k in range(tables):
        t = f"t{k}"
        for step, body in enumerate((
            f"CREATE TABLE {t} (id bigint, a int, b varchar(50));\n",
            f"ALTER TABLE {t} ADD COLUMN c text;\n",
            f"ALTER TABLE {t} ADD CONSTRAINT {t}_a_nn CHECK (a IS NOT NULL) NOT VALID;\n",
            f"ALTER TABLE {t} VALIDATE CONSTRAINT {t}_a_nn;\n"
            f"ALTER TABLE {t} ALTER COLUMN a SET NOT NULL;\n"
            f"ALTER TABLE {t} ALTER COLUMN b TYPE varchar(80);\n",
        )):
            path = folder / f"{k:03d}{step}_m.sql"
            path.write_text(body)
            paths.append(path)
    (folder / "0000_m.rollback.sql").write_text("DROP TABLE t0;\n")  # never a step in the order
    return paths


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every text handed to PostgreSQL's parser (the real one runs; the call is only counted)."""
    seen: list[str] = []
    real = pglast.parse_sql

    def counting(text: str, *args: Any, **kwargs: Any) -> Any:
        seen.append(text)
        return real(text, *args, **kwargs)

    monkeypatch.setattr(pglast, "parse_sql", counting)
    return seen


def test_each_file_is_parsed_once(tmp_path: Path, parses: list[str]) -> None:
    files = _migrations(tmp_path, 10)
    assert lint_paths([tmp_path]) == []  # the earlier files' CHECKs and types were seen
    assert len(parses) == len(files)
    assert sorted(parses) == sorted(f.read_text() for f in files)


def test_a_file_linted_alone_parses_each_earlier_file_once(tmp_path: Path,
                                                           parses: list[str]) -> None:
    files = _migrations(tmp_path, 10)
    assert lint_file(files[-1]) == []
    assert len(parses) == len(files)


def test_the_migrate_gate_parses_each_file_once(tmp_path: Path, parses: list[str]) -> None:
    files = _migrations(tmp_path, 10)
    pending = [SimpleNamespace(path=f) for f in files[-12:]]  # the last three tables' files
    assert gate(pending, allow_unsafe=False, env="production") == []
    assert len(parses) == len(files)


def test_the_model_still_tells_validated_from_not(tmp_path: Path) -> None:
    """Without the earlier NOT VALID CHECK, the same fourth file is a finding (and its type
    change too, with no earlier file to say b was varchar(50))."""
    files = _migrations(tmp_path, 3)
    files[2].write_text("SELECT 1;\n")
    files[0].write_text("CREATE TABLE t0 (id bigint, a int, b text);\n")
    assert [(Path(f.path).name, f.rule) for f in lint_paths([tmp_path])] == [
        ("0003_m.sql", "set-not-null"), ("0003_m.sql", "column-type-change")]
    # asked in any order, each file's answer is the same (t1's fourth file, 0013, is clean)
    assert [f.rule for f in lint_paths([files[3], files[7], files[3]])] == [
        "set-not-null", "column-type-change", "set-not-null", "column-type-change"]
