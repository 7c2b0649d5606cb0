"""Issue 15: rules for statements the linter missed, and false positives it no longer reports."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import psycopg
import pytest
from test_lint import BASE, EXAMPLES, NT, _run_migration

from dbkit.errors import LintFindings
from dbkit.lint.engine import gate, lint_file, lint_sql


def rules_of(text: str, **kw: bool) -> list[str]:
    return [f.rule for f in lint_sql(text, **kw)]


def test_ddl_inside_a_do_block_is_checked() -> None:
    bad = "DO $$ BEGIN EXECUTE 'CREATE INDEX u_c_idx ON ' || 'u (c)'; END $$;"
    found = lint_sql(bad)
    assert [f.rule for f in found] == ["index-not-concurrent"]
    assert found[0].message.startswith("in a DO block:")
    assert rules_of("DO $$ BEGIN ALTER TABLE u DROP COLUMN c; END $$;") == ["drop-column"]
    assert rules_of("DO $$ BEGIN EXECUTE 'SELECT 1'; RAISE NOTICE 'x'; END $$;") == []
    assert rules_of("DO $$ BEGIN EXECUTE format('DROP TABLE %I', 't'); END $$;") == []


def test_explicit_begin_commit_in_a_non_transactional_file() -> None:
    bad = NT + "BEGIN;\nCREATE INDEX CONCURRENTLY u_c_idx ON u (c);\nCOMMIT;"
    found = lint_sql(bad)
    assert [(f.rule, f.line) for f in found] == [("concurrently-in-transaction", 3)]
    assert "BEGIN" in found[0].message
    assert lint_sql(NT + "BEGIN;\nSELECT 1;\nCOMMIT;\nCREATE INDEX CONCURRENTLY i ON u (c);") == []


def test_stable_defaults_need_no_rewrite() -> None:
    for default in ("timezone('utc', now())", "(now() AT TIME ZONE 'utc')",
                    "to_char(now(), 'YYYY')", "extract(year from now())",
                    "date_part('year', now())"):
        assert rules_of(f"ALTER TABLE u ADD COLUMN d text DEFAULT {default};") == [], default
    for default in ("random()", "gen_random_uuid()", "clock_timestamp()", "my_func()",
                    "timezone('utc', clock_timestamp())"):
        assert rules_of(f"ALTER TABLE u ADD COLUMN d text DEFAULT {default};") == [
            "add-column-rewrite"], default


TYPES = "CREATE TABLE t (v varchar(50), w varchar, n numeric(10,2), c cidr, i int);\n"


def test_relaxing_type_changes_need_no_rewrite(tmp_path: Path) -> None:
    (tmp_path / "0001_t.sql").write_text(TYPES)
    ok = ["v TYPE varchar(100)", "v TYPE text", "w TYPE text", "n TYPE numeric(12,2)",
          "n TYPE numeric", "c TYPE inet", "v TYPE character varying(50)"]
    bad = ["v TYPE varchar(10)", "n TYPE numeric(12,3)", "i TYPE bigint", "v TYPE int",
           "v TYPE varchar(100) USING v || ''", "c TYPE text"]
    for change in ok + bad:
        (tmp_path / "0002_alter.sql").write_text(f"ALTER TABLE public.t ALTER COLUMN {change};\n")
        expected = [] if change in ok else ["column-type-change"]
        assert [f.rule for f in lint_file(tmp_path / "0002_alter.sql")] == expected, change
    # unknown old type (no earlier migration defines it): still flagged
    assert rules_of("ALTER TABLE u ALTER COLUMN c TYPE text;") == ["column-type-change"]


def test_public_and_unqualified_names_are_one_table() -> None:
    text = (NT + "ALTER TABLE public.users ADD CONSTRAINT users_e_nn CHECK (e IS NOT NULL) "
            "NOT VALID;\nALTER TABLE users VALIDATE CONSTRAINT users_e_nn;\n"
            "ALTER TABLE public.users ALTER COLUMN e SET NOT NULL;")
    assert lint_sql(text) == []
    assert rules_of("CREATE TABLE public.s (x int);\nDROP TABLE s;") == []
    assert rules_of("CREATE TABLE s (x int);\nDROP TABLE public.s;") == []
    assert rules_of("CREATE TABLE a.s (x int);\nDROP TABLE s;") == []  # search_path unknown


def test_reindex_and_other_refusals() -> None:
    assert rules_of("REINDEX INDEX u_a_idx;") == ["reindex-not-concurrent"]
    assert rules_of("CREATE TABLE n (a int);\nCREATE INDEX n_a ON n (a);\nREINDEX INDEX n_a;\n"
                    "REINDEX TABLE n;") == []
    assert rules_of("REINDEX SCHEMA CONCURRENTLY app;") == ["concurrently-in-transaction"]
    assert rules_of(NT + "REINDEX SCHEMA CONCURRENTLY app;") == []
    assert rules_of("VACUUM (ANALYZE) u;") == ["refused-in-transaction"]
    assert rules_of("ANALYZE u;") == []
    assert rules_of("CREATE TABLE n (a int);\nDELETE FROM n;\nUPDATE n SET a = 1;") == []
    assert rules_of("DELETE FROM u;") == ["update-delete-without-where"]
    assert rules_of("CREATE TYPE m AS ENUM ('a');\nALTER TYPE m ADD VALUE 'b';\n"
                    "SELECT 'b'::m;\nALTER TYPE m RENAME VALUE 'a' TO 'c';") == []


def test_ignore_with_brackets_and_positions() -> None:
    assert lint_sql("TRUNCATE u; -- dbkit: ignore[truncate]") == []
    assert lint_sql("-- dbkit: ignore[truncate, drop-table]\nDROP TABLE u;") == []
    assert rules_of("-- dbkit: ignore[nope]\nSELECT 1;") == ["bad-ignore"]
    (f,) = lint_sql("SELECT 1;\nALTER TABLE u\n  ADD COLUMN d bigint NOT NULL;")
    assert (f.line, f.column, f.end_line, f.end_column) == (3, 14, 3, 30)
    assert f.severity == "error"
    (w,) = lint_sql("ALTER TABLE u ADD COLUMN d json;")
    assert w.severity == "warning" and "warning" in str(w)


def test_warnings_never_block_migrate(tmp_path: Path) -> None:
    f = tmp_path / "0001_w.sql"
    f.write_text("ALTER TABLE u ALTER COLUMN a DROP NOT NULL;\n")
    msgs = gate([SimpleNamespace(path=f)], allow_unsafe=False, env="production")
    assert len(msgs) == 1 and "drop-not-null" in msgs[0]
    f.write_text("ALTER TABLE u ALTER COLUMN a DROP NOT NULL;\nTRUNCATE u;\n")
    with pytest.raises(LintFindings):
        gate([SimpleNamespace(path=f)], allow_unsafe=False, env="production")


@pytest.mark.parametrize(("rule", "error"), [
    ("refused-in-transaction", psycopg.errors.ActiveSqlTransaction),
    ("enum-value-used-in-transaction", psycopg.errors.UnsafeNewEnumValueUsage),
])
def test_refusals_are_real_on_postgresql(rule: str, error: type[Exception], app) -> None:  # noqa: ANN001
    assert app.cli("create").code == 0
    with app.connect(autocommit=True) as conn:
        conn.execute(BASE)
        with pytest.raises(error):
            _run_migration(conn, EXAMPLES[rule][0])
        with pytest.raises(psycopg.errors.ActiveSqlTransaction):
            _run_migration(conn, "REINDEX SCHEMA public;")
        with pytest.raises(psycopg.errors.ActiveSqlTransaction):
            _run_migration(conn, "CREATE INDEX CONCURRENTLY u_c_idx ON u (c);")
        _run_migration(conn, "ALTER TABLE u ADD COLUMN d text DEFAULT to_char(now(), 'YYYY');")


def test_relaxing_type_changes_keep_the_relfilenode_on_postgresql(app) -> None:  # noqa: ANN001
    assert app.cli("create").code == 0
    with app.connect(autocommit=True) as conn:
        conn.execute(TYPES)
        for change in ("v TYPE varchar(100)", "w TYPE text", "n TYPE numeric(12,2)",
                       "c TYPE inet"):
            before = conn.execute("SELECT pg_relation_filenode('t')").fetchone()
            conn.execute(f"ALTER TABLE t ALTER COLUMN {change}")  # type: ignore[arg-type]
            assert conn.execute("SELECT pg_relation_filenode('t')").fetchone() == before, change
