"""dbkit lint: every rule has a failing and a passing example, a suppressed statement passes, and
the passing examples really run on PostgreSQL the way the linter assumes."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from dbkit.errors import ConfigError
from dbkit.lint.engine import is_transactional, lint_file, lint_paths, lint_sql, rules
from dbkit.lint.rules import RULES

REPO = Path(__file__).resolve().parent.parent
NT = "-- transactional: false\n"

# What every example runs against: tables that "already exist" (not created by the example).
BASE = """
CREATE TABLE parent (id bigint PRIMARY KEY);
CREATE TABLE u (id bigint PRIMARY KEY, a bigint, b text, c varchar(10));
CREATE INDEX u_a_idx ON u (a);
CREATE UNIQUE INDEX u_b_uidx ON u (b);
ALTER TABLE u ADD CONSTRAINT u_a_nonneg CHECK (a >= 0) NOT VALID;
INSERT INTO parent VALUES (1), (2);
INSERT INTO u VALUES (1, 1, 'one', 'x'), (2, 2, 'two', 'y');
CREATE TYPE mood AS ENUM ('ok');
CREATE DOMAIN posint AS bigint;
CREATE TABLE dv (v posint NOT NULL);
INSERT INTO dv VALUES (1);
CREATE SCHEMA app;
CREATE MATERIALIZED VIEW uv AS SELECT id FROM u;
CREATE UNIQUE INDEX uv_id ON uv (id);
CREATE TABLE pt (x int) PARTITION BY LIST (x);
CREATE TABLE pt1 PARTITION OF pt FOR VALUES IN (1);
"""

# rule -> (failing example, passing example). Each failing example yields exactly that rule.
EXAMPLES: dict[str, tuple[str, str]] = {
    "index-not-concurrent": ("CREATE INDEX u_c_idx ON u (c);",
                             NT + "CREATE INDEX CONCURRENTLY u_c_idx ON u (c);"),
    "drop-index-not-concurrent": ("DROP INDEX u_a_idx;", NT + "DROP INDEX CONCURRENTLY u_a_idx;"),
    "add-column-not-null": ("ALTER TABLE u ADD COLUMN d bigint NOT NULL;",
                            "ALTER TABLE u ADD COLUMN d bigint NOT NULL DEFAULT 0;"),
    "add-column-rewrite": ("ALTER TABLE u ADD COLUMN d timestamptz DEFAULT clock_timestamp();",
                           "ALTER TABLE u ADD COLUMN d timestamptz DEFAULT now();"),
    "column-type-change": ("ALTER TABLE u ALTER COLUMN a TYPE integer;",
                           "ALTER TABLE u ADD COLUMN a_text text;"),
    "set-not-null": ("ALTER TABLE u ALTER COLUMN a SET NOT NULL;",
                     NT + "ALTER TABLE u ADD CONSTRAINT u_a_nn CHECK (a IS NOT NULL) NOT VALID;\n"
                     "ALTER TABLE u VALIDATE CONSTRAINT u_a_nn;\n"
                     "ALTER TABLE u ALTER COLUMN a SET NOT NULL;"),
    "constraint-not-valid": (
        "ALTER TABLE u ADD CONSTRAINT u_a_fk FOREIGN KEY (a) REFERENCES parent (id);",
        "ALTER TABLE u ADD CONSTRAINT u_a_fk FOREIGN KEY (a) REFERENCES parent (id) NOT VALID;"),
    "unique-without-index": ("ALTER TABLE u ADD CONSTRAINT u_b_key UNIQUE (b);",
                             "ALTER TABLE u ADD CONSTRAINT u_b_key UNIQUE USING INDEX u_b_uidx;"),
    "drop-table": ("DROP TABLE parent;",
                   "CREATE TABLE scratch (x bigint);\nDROP TABLE scratch;"),
    "drop-column": ("ALTER TABLE u DROP COLUMN c;",
                    "CREATE TABLE scratch (x bigint, y text);\nALTER TABLE scratch DROP COLUMN y;"),
    "truncate": ("TRUNCATE u;", "CREATE TABLE scratch (x bigint);\nTRUNCATE scratch;"),
    "rename-table": ("ALTER TABLE u RENAME TO u2;",
                     "CREATE TABLE scratch (x bigint);\nALTER TABLE scratch RENAME TO scratch2;\n"
                     "ALTER TABLE scratch2 ADD COLUMN y bigint NOT NULL;"),
    "rename-column": ("ALTER TABLE u RENAME COLUMN c TO c2;",
                      "CREATE TABLE scratch (x bigint);\nALTER TABLE scratch RENAME x TO y;"),
    "vacuum-full": (NT + "VACUUM FULL u;", NT + "VACUUM (ANALYZE) u;"),
    "cluster": ("CLUSTER u USING u_pkey;",
                "CREATE TABLE scratch (x bigint PRIMARY KEY);\nCLUSTER scratch USING scratch_pkey;"),
    "lock-table": ("LOCK TABLE u;", "LOCK TABLE u IN SHARE UPDATE EXCLUSIVE MODE;"),
    "concurrently-in-transaction": ("CREATE INDEX CONCURRENTLY u_c_idx ON u (c);",
                                    NT + "CREATE INDEX CONCURRENTLY u_c_idx ON u (c);"),
    "reindex-not-concurrent": ("REINDEX TABLE u;", NT + "REINDEX TABLE CONCURRENTLY u;"),
    "exclusion-constraint": (
        "ALTER TABLE u ADD CONSTRAINT u_a_ex EXCLUDE USING btree (a WITH =);",
        "CREATE TABLE scratch (x bigint);\n"
        "ALTER TABLE scratch ADD CONSTRAINT scratch_ex EXCLUDE USING btree (x WITH =);"),
    "detach-partition-not-concurrent": ("ALTER TABLE pt DETACH PARTITION pt1;",
                                        NT + "ALTER TABLE pt DETACH PARTITION pt1 CONCURRENTLY;"),
    "refused-in-transaction": ("VACUUM u;", NT + "VACUUM u;"),
    "refresh-matview-not-concurrent": ("REFRESH MATERIALIZED VIEW uv;",
                                       "REFRESH MATERIALIZED VIEW CONCURRENTLY uv;"),
    # fast_disk: tests/test_lint_server.py makes a real tablespace of that name for its runs
    "set-tablespace": ("ALTER TABLE u SET TABLESPACE fast_disk;",
                       "ALTER TABLE u SET TABLESPACE pg_default;"),  # already there
    "enum-value-used-in-transaction": (
        "ALTER TYPE mood ADD VALUE 'meh';\nSELECT 'meh'::mood;",
        NT + "ALTER TYPE mood ADD VALUE 'meh';\nSELECT 'meh'::mood;"),
    "update-delete-without-where": ("UPDATE u SET c = 'x';",
                                    "UPDATE u SET c = 'x' WHERE id BETWEEN 1 AND 1000;"),
    "rename-schema": ("ALTER SCHEMA app RENAME TO app2;", "CREATE SCHEMA app2;"),
    "rename-enum-value": ("ALTER TYPE mood RENAME VALUE 'ok' TO 'fine';",
                          "ALTER TYPE mood ADD VALUE 'fine';"),
    "drop-database": ("DROP DATABASE old_app;", "SELECT 1;"),
    "domain-constraint": (
        "ALTER DOMAIN posint ADD CONSTRAINT posint_pos CHECK (VALUE > 0);",
        "ALTER DOMAIN posint ADD CONSTRAINT posint_pos CHECK (VALUE > 0) NOT VALID;"),
    "drop-not-null": ("ALTER TABLE dv ALTER COLUMN v DROP NOT NULL;",
                      "CREATE TABLE scratch (x bigint NOT NULL);\n"
                      "ALTER TABLE scratch ALTER COLUMN x DROP NOT NULL;"),
    "add-json-column": ("ALTER TABLE u ADD COLUMN d json;", "ALTER TABLE u ADD COLUMN d jsonb;"),
    "backfill-in-ddl-transaction": (
        "ALTER TABLE u ADD COLUMN d text;\nUPDATE u SET d = b WHERE id BETWEEN 1 AND 1000;",
        "UPDATE u SET c = b WHERE id BETWEEN 1 AND 1000;"),
    "bad-ignore": ("-- dbkit: ignore no-such-rule\nSELECT 1;",
                   "-- dbkit: ignore drop-table\nSELECT 1;"),
    "parse-error": ("CREATE TABLE (;", "SELECT 1;"),
}
META = {"bad-ignore", "parse-error"}  # about the file itself: not suppressible


def test_every_rule_has_examples() -> None:
    assert set(EXAMPLES) == set(RULES)
    assert [r["id"] for r in rules()] == list(RULES)


@pytest.mark.parametrize("rule", list(EXAMPLES))
def test_failing_example(rule: str) -> None:
    found = lint_sql(EXAMPLES[rule][0], "m.sql")
    assert [f.rule for f in found] == [rule], found
    f = found[0]
    assert f.path == "m.sql" and f.line >= 1 and f.message and f.fix == RULES[rule].fix
    assert set(f.to_dict()) == {"rule", "path", "line", "message", "fix", "severity", "column",
                                "end_line", "end_column"}
    assert f.severity == RULES[rule].severity
    assert f.end_line >= f.line and f.column >= 1


@pytest.mark.parametrize("rule", list(EXAMPLES))
def test_passing_example(rule: str) -> None:
    assert lint_sql(EXAMPLES[rule][1], "m.sql") == []


@pytest.mark.parametrize("rule", [r for r in EXAMPLES if r not in META])
def test_suppressed_statement_passes(rule: str) -> None:
    bad = EXAMPLES[rule][0]
    line = lint_sql(bad)[0].line
    lines = bad.splitlines()
    lines.insert(line - 1, f"-- dbkit: ignore {rule}")
    assert lint_sql("\n".join(lines)) == []


@pytest.mark.parametrize("rule", [r for r in EXAMPLES if r not in META])
def test_passing_example_runs_on_postgresql(rule: str, app) -> None:  # noqa: ANN001
    """The safe forms the linter accepts are real, working SQL (run on an existing table)."""
    assert app.cli("create").code == 0
    with app.connect(autocommit=True) as conn:
        conn.execute(BASE)
        _run_migration(conn, EXAMPLES[rule][1])


def _run_migration(conn: psycopg.Connection, text: str) -> None:
    """As yoyo does: one transaction, or each statement on its own (transactional: false)."""
    import pglast

    stmts = [text[r.stmt_location:r.stmt_location + r.stmt_len] if r.stmt_len
             else text[r.stmt_location:] for r in pglast.parse_sql(text)]
    if is_transactional(text):
        with conn.transaction():
            for stmt in stmts:
                conn.execute(sql.SQL(stmt))  # type: ignore[arg-type]
    else:
        for stmt in stmts:
            conn.execute(sql.SQL(stmt))  # type: ignore[arg-type]


def test_findings_are_real_failures_on_postgresql(app) -> None:  # noqa: ANN001
    """Two findings shown to be what they claim on a real server: the migration fails."""
    assert app.cli("create").code == 0
    with app.connect(autocommit=True) as conn:
        conn.execute(BASE)
        with pytest.raises(psycopg.errors.ActiveSqlTransaction):
            _run_migration(conn, EXAMPLES["concurrently-in-transaction"][0])
        with pytest.raises(psycopg.errors.NotNullViolation):
            _run_migration(conn, EXAMPLES["add-column-not-null"][0])


def test_existing_table_means_not_created_earlier_in_the_same_file() -> None:
    created_here = ("CREATE TABLE n (id bigint, a bigint, b text);\n"
                    "CREATE INDEX n_a ON n (a);\n"
                    "ALTER TABLE n ADD COLUMN c bigint NOT NULL;\n"
                    "ALTER TABLE n ALTER COLUMN a TYPE text, ALTER COLUMN b SET NOT NULL;\n"
                    "ALTER TABLE n ADD CONSTRAINT n_fk FOREIGN KEY (id) REFERENCES u (id);\n"
                    "ALTER TABLE n ADD CONSTRAINT n_b UNIQUE (b);\n"
                    "LOCK TABLE n;\n")
    assert lint_sql(created_here) == []
    # the same statements on a table created earlier (another migration) are all findings
    earlier = created_here.replace("CREATE TABLE n (id bigint, a bigint, b text);\n", "")
    assert [f.rule for f in lint_sql(earlier)] == [
        "index-not-concurrent", "add-column-not-null", "column-type-change", "set-not-null",
        "constraint-not-valid", "unique-without-index", "lock-table"]
    # an index created in this file may be dropped without CONCURRENTLY
    assert lint_sql("CREATE TABLE n (a bigint);\nCREATE INDEX n_a ON n (a);\nDROP INDEX n_a;") == []
    # schema-qualified names: a different schema is a different table
    assert [f.rule for f in lint_sql("CREATE TABLE a.t (x int);\nDROP TABLE b.t;")] == ["drop-table"]
    assert lint_sql("CREATE TABLE a.t (x int);\nDROP TABLE a.t;") == []


def test_validate_in_the_same_transaction_is_a_finding_but_not_without_one() -> None:
    both = ("ALTER TABLE u ADD CONSTRAINT c CHECK (a > 0) NOT VALID;\n"
            "ALTER TABLE u VALIDATE CONSTRAINT c;\n")
    found = lint_sql(both)
    assert [(f.rule, f.line) for f in found] == [("constraint-not-valid", 2)]
    assert lint_sql(NT + both) == []
    assert lint_sql("ALTER TABLE u VALIDATE CONSTRAINT c;") == []  # added by an earlier migration


def test_set_not_null_needs_a_validated_check_on_that_column() -> None:
    checked = ("ALTER TABLE u ADD CONSTRAINT c CHECK (a IS NOT NULL) NOT VALID;\n"
               "ALTER TABLE u ALTER COLUMN a SET NOT NULL;")  # not validated: still a scan
    assert [f.rule for f in lint_sql(checked, transactional=False)] == ["set-not-null"]
    other = (NT + "ALTER TABLE u ADD CONSTRAINT c CHECK (b IS NOT NULL) NOT VALID;\n"
             "ALTER TABLE u VALIDATE CONSTRAINT c;\nALTER TABLE u ALTER COLUMN a SET NOT NULL;")
    assert [f.rule for f in lint_sql(other)] == ["set-not-null"]


def test_rewrite_and_inline_constraints_on_added_columns() -> None:
    cases = {
        "ALTER TABLE u ADD COLUMN d bigserial;": ["add-column-rewrite"],
        "ALTER TABLE u ADD COLUMN d bigint GENERATED ALWAYS AS IDENTITY;": ["add-column-rewrite"],
        "ALTER TABLE u ADD COLUMN d bigint GENERATED ALWAYS AS (a * 2) STORED;":
            ["add-column-rewrite"],
        "ALTER TABLE u ADD COLUMN d uuid DEFAULT gen_random_uuid();": ["add-column-rewrite"],
        "ALTER TABLE u ADD COLUMN d text DEFAULT lower('X');": [],
        "ALTER TABLE u ADD COLUMN d jsonb NOT NULL DEFAULT '{}'::jsonb;": [],
        # all NULL: PostgreSQL marks the inline FOREIGN KEY valid without a scan
        "ALTER TABLE u ADD COLUMN d bigint REFERENCES parent (id);": [],
        "ALTER TABLE u ADD COLUMN d bigint DEFAULT 1 REFERENCES parent (id);":
            ["constraint-not-valid"],
        "ALTER TABLE u ADD COLUMN d bigint CHECK (d > 0);": ["constraint-not-valid"],
        "ALTER TABLE u ADD COLUMN d bigint UNIQUE;": ["unique-without-index"],
        "ALTER TABLE u ADD PRIMARY KEY (id);": ["unique-without-index"],
    }
    for text, expected in cases.items():
        assert [f.rule for f in lint_sql(text)] == expected, text


def test_concurrently_forms_inside_a_transaction() -> None:
    for text in ("DROP INDEX CONCURRENTLY i;", "REINDEX INDEX CONCURRENTLY i;",
                 "ALTER TABLE p DETACH PARTITION c CONCURRENTLY;"):
        assert [f.rule for f in lint_sql(text)] == ["concurrently-in-transaction"], text
        assert lint_sql(NT + text) == [], text


def test_lines_point_at_the_statement_and_suppression_stays_local() -> None:
    text = ("-- header comment\n\n"
            "CREATE TABLE n (x bigint);\n"
            "ALTER TABLE u\n    DROP COLUMN c;  -- dbkit: ignore drop-column\n"
            "ALTER TABLE u DROP COLUMN b;\n"
            "/* a block comment */\n"
            "-- dbkit: ignore truncate, drop-table\n"
            "DROP TABLE parent;\n"
            "TRUNCATE u;\n")
    found = lint_sql(text, "f.sql")
    assert [(f.rule, f.line) for f in found] == [("drop-column", 6), ("truncate", 10)]
    # the ignore comment is text the parser would also skip inside a string: no effect there
    assert [f.rule for f in lint_sql("SELECT '-- dbkit: ignore truncate';\nTRUNCATE u;")] == [
        "truncate"]


def test_transactional_directive_is_read_like_yoyo() -> None:
    assert is_transactional("CREATE INDEX CONCURRENTLY i ON u (a);")
    assert not is_transactional("-- a comment\n-- transactional: false\nSELECT 1;")
    assert not is_transactional("--transactional:FALSE\nSELECT 1;")
    assert is_transactional("SELECT 1;\n-- transactional: false\n")  # only the header counts


def test_parse_error_names_the_line() -> None:
    found = lint_sql("SELECT 1;\n\nCREATE TABLE (;\n", "bad.sql")
    assert [(f.rule, f.line) for f in found] == [("parse-error", 3)]
    assert "syntax error" in found[0].message


def test_lint_paths_directories_files_and_errors(tmp_path: Path) -> None:
    (tmp_path / "0001_a.sql").write_text("DROP TABLE parent;\n")
    (tmp_path / "0001_a.rollback.sql").write_text("DROP TABLE a;\n")  # undo: not linted
    (tmp_path / "0002_b.sql").write_text("SELECT 1;\nTRUNCATE u;\n")
    (tmp_path / "notes.txt").write_text("DROP TABLE x;\n")
    found = lint_paths([tmp_path])
    assert [(Path(f.path).name, f.line, f.rule) for f in found] == [
        ("0001_a.sql", 1, "drop-table"), ("0002_b.sql", 2, "truncate")]
    assert [f.rule for f in lint_file(tmp_path / "0001_a.rollback.sql")] == ["drop-table"]
    with pytest.raises(ConfigError):
        lint_paths([tmp_path / "missing.sql"])
    with pytest.raises(ConfigError):
        lint_file(tmp_path / "notes.txt")


def test_shipped_migrations_lint_clean() -> None:
    migrations = REPO / "migrations"
    assert sorted(migrations.glob("0*.sql"))
    assert lint_paths([migrations]) == []


def test_cli_exit_codes_text_and_json(app) -> None:  # noqa: ANN001
    mig = app.cwd / "migrations"
    mig.mkdir()
    (mig / "0001_ok.sql").write_text("CREATE TABLE t (id bigint);\nCREATE INDEX t_id ON t (id);\n")
    r = app.cli("lint")
    assert r.code == 0, r.output
    assert "1 file(s) checked" in r.out
    (mig / "0002_bad.sql").write_text("SELECT 1;\nALTER TABLE t RENAME COLUMN id TO ident;\n")
    r = app.cli("lint")
    assert r.code == 12, r.output
    assert "0002_bad.sql:2: [rename-column]" in r.out and "fix:" in r.out
    assert r.err.startswith("dbkit: error: 1 unsafe statement(s) in 1 file(s)")
    r = app.cli("lint", "--json", str(mig / "0002_bad.sql"))
    assert r.code == 12
    data = json.loads(r.out)
    assert data["files"] == 1
    assert [(d["rule"], d["line"]) for d in data["findings"]] == [("rename-column", 2)]
    r = app.cli("lint", "nowhere.sql")
    assert r.code == 3 and "does not exist" in r.err
    r = app.cli("lint", "--rules", "--json")
    assert r.code == 0 and len(json.loads(r.out)) == len(RULES)


def test_set_not_null_after_a_check_validated_in_a_later_migration(tmp_path) -> None:
    """The rule's own fix spans two migrations: CHECK ... NOT VALID, then VALIDATE + SET NOT NULL."""
    (tmp_path / "0001_t.sql").write_text("CREATE TABLE t (a int, b int);\n")
    (tmp_path / "0002_check.sql").write_text(
        "ALTER TABLE t ADD CONSTRAINT t_a_nn CHECK (a IS NOT NULL) NOT VALID;\n")
    (tmp_path / "0003_require.sql").write_text(
        "ALTER TABLE t VALIDATE CONSTRAINT t_a_nn;\nALTER TABLE t ALTER COLUMN a SET NOT NULL;\n"
        "ALTER TABLE t ALTER COLUMN b SET NOT NULL;\n")
    found = [(Path(f.path).name, f.line, f.rule) for f in lint_paths([tmp_path])]
    assert found == [("0003_require.sql", 3, "set-not-null")]  # b is not proven, a is
    assert [f.rule for f in lint_file(tmp_path / "0003_require.sql")] == ["set-not-null"]
    (tmp_path / "0002_check.sql").unlink()  # without the earlier CHECK, a is not proven either
    assert [f.line for f in lint_file(tmp_path / "0003_require.sql")] == [2, 3]


def test_cli_warnings_alone_are_shown_but_exit_0(app) -> None:  # noqa: ANN001
    f = app.cwd / "0001_warn.sql"
    f.write_text("ALTER TABLE posts ALTER COLUMN title DROP NOT NULL;\n")
    r = app.cli("lint", str(f))
    assert r.code == 0, r.output
    assert "drop-not-null, warning" in r.out
    f.write_text("ALTER TABLE posts ALTER COLUMN title DROP NOT NULL;\n"
                 "REINDEX TABLE posts;\n")
    r = app.cli("lint", str(f))
    assert r.code == 12 and "1 unsafe statement(s)" in r.err, r.output
