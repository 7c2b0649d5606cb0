"""Issue 15: with a connection (the gate inside ``dbkit migrate``), the server says which
functions in a DEFAULT are volatile; offline, the shipped table of built-ins decides."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from dbkit.errors import LintFindings
from dbkit.lint.engine import gate, lint_sql, server_volatility

FUNCTIONS = """
CREATE TABLE things (id bigint PRIMARY KEY);
INSERT INTO things VALUES (1), (2);
CREATE FUNCTION app_stamp() RETURNS timestamptz STABLE LANGUAGE sql AS 'SELECT now()';
CREATE FUNCTION app_token() RETURNS text VOLATILE LANGUAGE sql AS 'SELECT random()::text';
CREATE FUNCTION app_pair(int) RETURNS int IMMUTABLE LANGUAGE sql AS 'SELECT $1';
CREATE FUNCTION app_pair(text) RETURNS int VOLATILE LANGUAGE sql AS 'SELECT 1';
"""
STABLE = "ALTER TABLE things ADD COLUMN stamped timestamptz DEFAULT app_stamp();"
VOLATILE = "ALTER TABLE things ADD COLUMN token text DEFAULT app_token();"
OVERLOADED = "ALTER TABLE things ADD COLUMN p int DEFAULT app_pair(1);"


def test_the_server_answers_for_functions_the_table_does_not_know(created) -> None:  # noqa: ANN001
    with created.connect(autocommit=True) as conn:
        conn.execute(FUNCTIONS)
        ask = server_volatility(conn)
        assert ask({"app_stamp", "App_Token", "app_pair", "nowhere"}) == {"app_stamp"}
        assert [f.rule for f in lint_sql(STABLE)] == ["add-column-rewrite"]  # offline
        assert lint_sql(STABLE, not_volatile=ask) == []
        assert [f.rule for f in lint_sql(VOLATILE, not_volatile=ask)] == ["add-column-rewrite"]
        # one volatile overload is enough: the linter does not resolve argument types
        assert [f.rule for f in lint_sql(OVERLOADED, not_volatile=ask)] == [
            "add-column-rewrite"]
        # what the answer is worth: the stable default keeps the table's file, the volatile
        # one rewrites it
        node = "SELECT pg_relation_filenode('things')"
        before = conn.execute(node).fetchone()
        conn.execute(STABLE)  # type: ignore[arg-type]
        assert conn.execute(node).fetchone() == before
        conn.execute(VOLATILE)  # type: ignore[arg-type]
        assert conn.execute(node).fetchone() != before


def test_a_failed_question_falls_back_to_the_table(created) -> None:  # noqa: ANN001
    conn = created.connect(autocommit=True)
    conn.execute(FUNCTIONS)
    ask = server_volatility(conn)
    conn.close()  # the question now fails: nothing is taken to be non-volatile
    assert ask({"app_stamp"}) == set()
    assert [f.rule for f in lint_sql(STABLE, not_volatile=ask)] == ["add-column-rewrite"]


def test_the_gate_asks_the_server(created, tmp_path) -> None:  # noqa: ANN001
    f = tmp_path / "0002_stamp.sql"
    f.write_text(STABLE + "\n")
    pending = [SimpleNamespace(path=f)]
    with created.connect(autocommit=True) as conn:
        conn.execute(FUNCTIONS)
        assert gate(pending, allow_unsafe=False, env="production", conn=conn) == []
    with pytest.raises(LintFindings):  # offline: only the shipped table
        gate(pending, allow_unsafe=False, env="production")


def test_dbkit_migrate_asks_the_server(created) -> None:  # noqa: ANN001
    d = created.cwd / "m"
    d.mkdir()
    (d / "0001_things.sql").write_text(FUNCTIONS)
    (d / "0002_stamp.sql").write_text(STABLE + "\n")
    # the function is not on the server before 0001 runs: the gate cannot vouch for it
    r = created.cli("migrate", "--migrations", str(d), DBKIT_ENV="production")
    assert r.code == 12 and "add-column-rewrite" in r.err, r.output
    (d / "0002_stamp.sql").unlink()
    assert created.cli("migrate", "--migrations", str(d), DBKIT_ENV="production").code == 0
    (d / "0002_stamp.sql").write_text(STABLE + "\n")
    r = created.cli("migrate", "--migrations", str(d), DBKIT_ENV="production")
    assert r.code == 0, r.output
