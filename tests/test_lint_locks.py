"""Issue 15, what a finding says: the lock a transaction holds (a backfill or a VALIDATE under
another statement's lock), the lock mode by name, the line and column of the offending clause
in a multi-line statement, and fixes that, followed literally, pass dbkit and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_lint import BASE, NT, _run_migration

from dbkit.lint.engine import lint_paths, lint_sql


def found(text: str) -> list[tuple[str, int, int]]:
    return [(f.rule, f.line, f.column) for f in lint_sql(text)]


# -- a backfill UPDATE in the same transaction as DDL on its table ---------------------------

BACKFILL = "UPDATE u SET c = b WHERE id BETWEEN 1 AND 1000;"


@pytest.mark.parametrize(("ddl", "lock"), [
    ("ALTER TABLE u ADD COLUMN d text;", "ACCESS EXCLUSIVE"),
    ("ALTER TABLE public.u ALTER COLUMN c SET DEFAULT 'x';", "ACCESS EXCLUSIVE"),
    ("CREATE INDEX u_c_idx ON u (c);", "SHARE"),
    ("ALTER TABLE u ADD CONSTRAINT u_fk FOREIGN KEY (a) REFERENCES parent (id) NOT VALID;",
     "SHARE ROW EXCLUSIVE"),
])
def test_a_backfill_after_ddl_on_its_table_is_a_finding(ddl: str, lock: str) -> None:
    (f,) = [f for f in lint_sql(f"{ddl}\n{BACKFILL}") if f.rule == "backfill-in-ddl-transaction"]
    assert (f.line, f.column) == (2, 1)
    assert f"holds the {lock} lock that" in f.message and "(line 1)" in f.message


def test_a_backfill_is_safe_outside_the_ddl_transaction() -> None:
    assert found(BACKFILL) == []
    assert found(NT + f"ALTER TABLE u ADD COLUMN d text;\n{BACKFILL}") == []  # two commits
    assert found(f"ALTER TABLE parent ADD COLUMN d text;\n{BACKFILL}") == []  # another table
    # VALIDATE takes SHARE UPDATE EXCLUSIVE, which blocks no write
    assert found(f"ALTER TABLE u VALIDATE CONSTRAINT u_a_nonneg;\n{BACKFILL}") == []
    # a table created in this migration is nobody else's yet
    assert found("CREATE TABLE n (id bigint, c text);\nALTER TABLE n ADD COLUMN d text;\n"
                 "UPDATE n SET d = c WHERE id < 10;") == []


def test_a_backfill_inside_one_transaction_of_a_non_transactional_file() -> None:
    block = NT + f"BEGIN;\nALTER TABLE u ADD COLUMN d text;\n{BACKFILL}\nCOMMIT;\n{BACKFILL}"
    assert found(block) == [("backfill-in-ddl-transaction", 4, 1)]
    do = NT + f"DO $$\nBEGIN\n  ALTER TABLE u ADD COLUMN d text;\n  {BACKFILL}\nEND $$;"
    assert found(do) == [("backfill-in-ddl-transaction", 5, 3)]


def test_backfill_under_ddl_holds_the_lock_on_postgresql(app) -> None:  # noqa: ANN001
    """What the finding claims: during the UPDATE the transaction already holds ACCESS
    EXCLUSIVE on the table (another session could neither read nor write it)."""
    assert app.cli("create").code == 0
    with app.connect(autocommit=True) as conn:
        conn.execute(BASE)
        with conn.transaction():
            conn.execute("ALTER TABLE u ADD COLUMN d text")
            conn.execute(BACKFILL)  # type: ignore[arg-type]
            modes = {r[0] for r in conn.execute(
                "SELECT mode FROM pg_locks WHERE relation = 'u'::regclass "
                "AND pid = pg_backend_pid() AND granted")}
        assert "AccessExclusiveLock" in modes


# -- lock modes by name ---------------------------------------------------------------------

def test_lock_table_names_its_mode() -> None:
    (f,) = lint_sql("LOCK TABLE u;")
    assert "ACCESS EXCLUSIVE mode (the default)" in f.message and "reads and writes" in f.message
    (f,) = lint_sql("LOCK TABLE u\n  IN SHARE ROW EXCLUSIVE MODE;")
    assert "SHARE ROW EXCLUSIVE mode:" in f.message and "reads go on" in f.message
    assert (f.line, f.column) == (2, 3)


def test_validate_after_other_ddl_names_the_lock_the_transaction_holds(tmp_path: Path) -> None:
    (tmp_path / "0001_c.sql").write_text(
        "ALTER TABLE u ADD CONSTRAINT u_c_nn CHECK (c IS NOT NULL) NOT VALID;\n")
    (tmp_path / "0002_v.sql").write_text(
        "ALTER TABLE u ADD COLUMN d text;\nALTER TABLE u VALIDATE CONSTRAINT u_c_nn;\n")
    (f,) = lint_paths([tmp_path])
    assert (f.rule, f.line) == ("constraint-not-valid", 2)
    assert "holds the ACCESS EXCLUSIVE lock that ALTER TABLE u (line 1) took" in f.message
    # VALIDATE first, then the other change: the scan runs under SHARE UPDATE EXCLUSIVE only
    (tmp_path / "0002_v.sql").write_text(
        "ALTER TABLE u VALIDATE CONSTRAINT u_c_nn;\nALTER TABLE u ADD COLUMN d text;\n")
    assert lint_paths([tmp_path]) == []
    # the same ALTER: one lock for all its subcommands, the strongest
    (f,) = lint_sql("ALTER TABLE u ADD COLUMN d text,\n  VALIDATE CONSTRAINT u_a_nonneg;")
    assert (f.rule, f.line, f.column) == ("constraint-not-valid", 2, 3)


def test_set_tablespace_to_where_the_table_already_is_copies_nothing(tmp_path: Path) -> None:
    """Found by applying the corpus to PostgreSQL: SET TABLESPACE pg_default on a table in
    pg_default keeps its relfilenode. Where migrations put a table is part of the model."""
    assert found("ALTER TABLE u SET TABLESPACE pg_default;") == []
    assert found("CREATE TABLE n (x int) TABLESPACE fast;\nALTER TABLE n SET TABLESPACE fast;") == []
    (tmp_path / "0001_t.sql").write_text("CREATE TABLE t (x int) TABLESPACE fast;\n")
    (tmp_path / "0002_move.sql").write_text("ALTER TABLE t SET TABLESPACE pg_default;\n")
    (tmp_path / "0003_back.sql").write_text("ALTER TABLE t SET TABLESPACE pg_default;\n")
    assert [(Path(f.path).name, f.rule) for f in lint_paths([tmp_path])] == [
        ("0002_move.sql", "set-tablespace")]


# -- where a finding points ------------------------------------------------------------------

@pytest.mark.parametrize(("text", "rule", "line", "column"), [
    ("ALTER TABLE u\n  ADD COLUMN d int,\n  DROP COLUMN c;", "drop-column", 3, 3),
    ('ALTER TABLE "public"."u"\n  DROP COLUMN c;', "drop-column", 2, 3),
    ("ALTER TABLE public.u\n  ALTER COLUMN a\n  SET NOT NULL;", "set-not-null", 2, 3),
    ("ALTER TABLE u\n  ADD COLUMN d int,\n  ALTER COLUMN a TYPE text;", "column-type-change", 3, 3),
    ("ALTER TABLE u\n  SET TABLESPACE fast_disk;", "set-tablespace", 2, 3),
    ("ALTER TABLE u\n  ALTER COLUMN id DROP NOT NULL;", "drop-not-null", 2, 3),
    ("ALTER TABLE pt\n  DETACH PARTITION pt1;", "detach-partition-not-concurrent", 2, 3),
    ("ALTER TABLE pt\n  DETACH PARTITION pt1\n  CONCURRENTLY;", "concurrently-in-transaction",
     3, 3),
    ("CREATE INDEX\n  CONCURRENTLY i ON u (c);", "concurrently-in-transaction", 2, 3),
    ("DROP INDEX\n  CONCURRENTLY i;", "concurrently-in-transaction", 2, 3),
    ("REINDEX TABLE\n  CONCURRENTLY u;", "concurrently-in-transaction", 2, 3),
    ("ALTER TABLE u\n  RENAME COLUMN c TO c2;", "rename-column", 2, 3),
    ("ALTER TABLE u\n  RENAME TO u2;", "rename-table", 2, 3),
    ("ALTER SCHEMA app\n  RENAME TO app2;", "rename-schema", 2, 3),
    ("ALTER TYPE mood\n  RENAME VALUE 'ok' TO 'fine';", "rename-enum-value", 2, 3),
    ("ALTER TYPE mood ADD VALUE 'meh';\nSELECT 1,\n  'meh'::mood;",
     "enum-value-used-in-transaction", 3, 3),
    ("LOCK TABLE u\n  IN SHARE MODE;", "lock-table", 2, 3),
    (NT + "VACUUM\n  (FULL) u;", "vacuum-full", 3, 4),
    ("ALTER TABLE u\n  ADD COLUMN d bigint NOT NULL;", "add-column-not-null", 2, 14),
    ("ALTER TABLE u\n  ADD COLUMN d uuid DEFAULT gen_random_uuid();", "add-column-rewrite", 2, 14),
    ("ALTER TABLE u\n  ADD COLUMN d json;", "add-json-column", 2, 14),
    ("ALTER TABLE u\n  ADD CONSTRAINT k UNIQUE (b);", "unique-without-index", 2, 7),
    ("ALTER TABLE u\n  ADD CONSTRAINT x EXCLUDE USING btree (a WITH =);", "exclusion-constraint",
     2, 7),
    ("ALTER TABLE u ADD COLUMN d int,\n  ADD CONSTRAINT k CHECK (a > 0);", "constraint-not-valid",
     2, 7),
    ("ALTER DOMAIN posint\n  ADD CONSTRAINT p CHECK (VALUE > 0);", "domain-constraint", 2, 7),
    ("DO $$\nBEGIN\n  ALTER TABLE u DROP COLUMN c;\nEND $$;", "drop-column", 3, 3),
    ("DO $$\nBEGIN\n  EXECUTE 'CREATE INDEX u_c ON ' || 'u (c)';\nEND $$;",
     "index-not-concurrent", 3, 12),
])
def test_a_finding_points_at_the_offending_clause(text: str, rule: str, line: int,
                                                   column: int) -> None:
    assert found(text) == [(rule, line, column)]


# -- fixes, followed literally ----------------------------------------------------------------

# rule -> the migrations its fix describes, in order (each one a file, as dbkit migrate runs it)
FIXES: dict[str, list[str]] = {
    "add-column-not-null": [
        "ALTER TABLE u ADD COLUMN d bigint;",
        "UPDATE u SET d = 0 WHERE id BETWEEN 1 AND 1000 AND d IS NULL;",
        "ALTER TABLE u ADD CONSTRAINT u_d_nn CHECK (d IS NOT NULL) NOT VALID;",
        "ALTER TABLE u VALIDATE CONSTRAINT u_d_nn;\nALTER TABLE u ALTER COLUMN d SET NOT NULL;",
    ],
    "add-column-rewrite": [
        "ALTER TABLE u ADD COLUMN d uuid;\n"
        "ALTER TABLE u ALTER COLUMN d SET DEFAULT gen_random_uuid();",
        "UPDATE u SET d = gen_random_uuid() WHERE id BETWEEN 1 AND 1000 AND d IS NULL;",
    ],
    "constraint-not-valid": [
        "ALTER TABLE u ADD CONSTRAINT u_a_fk FOREIGN KEY (a) REFERENCES parent (id) NOT VALID;",
        "ALTER TABLE u VALIDATE CONSTRAINT u_a_fk;\nALTER TABLE u ADD COLUMN d text;",
    ],
    "concurrently-in-transaction": [NT + "CREATE INDEX CONCURRENTLY u_c_idx ON u (c);"],
    "unique-without-index": [
        NT + "CREATE UNIQUE INDEX CONCURRENTLY u_c_uidx ON u (c);",
        "ALTER TABLE u ADD CONSTRAINT u_c_key UNIQUE USING INDEX u_c_uidx;",
    ],
    "backfill-in-ddl-transaction": ["ALTER TABLE u ADD COLUMN d text;", BACKFILL],
    "refresh-matview-not-concurrent": [
        NT + "CREATE UNIQUE INDEX CONCURRENTLY uv_id2 ON uv (id);",
        "REFRESH MATERIALIZED VIEW CONCURRENTLY uv;",
    ],
}


@pytest.mark.parametrize("rule", list(FIXES))
def test_a_fix_followed_literally_passes_dbkit_and_postgresql(rule: str, tmp_path: Path,
                                                              app) -> None:  # noqa: ANN001
    for i, text in enumerate(FIXES[rule], 1):
        (tmp_path / f"{i:04d}_step.sql").write_text(text + "\n")
    assert lint_paths([tmp_path]) == [], rule
    assert app.cli("create").code == 0
    with app.connect(autocommit=True) as conn:
        conn.execute(BASE)
        for text in FIXES[rule]:
            _run_migration(conn, text)
