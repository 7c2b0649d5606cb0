"""DBKIT_ENV=production: what destroys data or fakes it is refused (exit 16) unless confirmed or
overridden, and the catalog is left as it was; what production needs still works."""

from __future__ import annotations

import pytest

PROD = {"DBKIT_ENV": "production"}


def catalog(conn, db: str) -> tuple:
    dbs = conn.execute("SELECT count(*), string_agg(datname, ',' ORDER BY datname)"
                       " FROM pg_database").fetchone()
    return dbs


def tables(app) -> list[str]:
    with app.connect() as conn:
        return [r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            " AND tablename IN ('posts', 'users', 'votes') ORDER BY 1")]


def rows(app) -> int:
    with app.connect() as conn:
        return conn.execute("SELECT (SELECT count(*) FROM users) + (SELECT count(*) FROM posts)"
                            " + (SELECT count(*) FROM votes)").fetchone()[0]


@pytest.mark.parametrize("args", [("rollback", "--all", "--yes"), ("rollback", "--all"),
                                  ("rollback",), ("rollback", "--steps", "2")])
def test_rollback_is_refused(migrated, args):
    r = migrated.cli(*args, **PROD)
    assert r.code == 16 and r.err.count("\n") == 1, r.output
    assert tables(migrated) == ["posts", "users", "votes"]


def test_rollback_confirmed_or_overridden_runs(migrated):
    assert migrated.cli("rollback", "--all", "--dry-run", **PROD).code == 0
    assert migrated.cli("rollback", "--yes", **PROD).code == 0  # one step, confirmed
    r = migrated.cli("rollback", "--all", "--yes", "--allow-production", **PROD)
    assert r.code == 0, r.output
    assert tables(migrated) == []


@pytest.mark.parametrize("args", [("seed",), ("seed", "--users", "3"),
                                  ("seed", "--users", "2", "--posts", "2", "--append")])
def test_demo_and_synthetic_seeding_are_refused(migrated, args):
    r = migrated.cli(*args, **PROD)
    assert r.code == 16 and "production" in r.err, r.output
    assert rows(migrated) == 0


def test_seeding_files_and_dry_runs_stay_allowed(migrated, tmp_path):
    (tmp_path / "users.csv").write_text("email\nops@example.com\n")
    assert migrated.cli("seed", "--dry-run", **PROD).code == 0
    r = migrated.cli("seed", "--from", str(tmp_path / "users.csv"), **PROD)
    assert r.code == 0, r.output
    assert rows(migrated) == 1
    assert migrated.cli("seed", "--users", "3", "--allow-production", **PROD).code == 7  # rows


@pytest.mark.parametrize("args", [("testdb", "create"), ("testdb", "drop"),
                                  ("testdb", "drop", "--all")])
def test_testdb_is_refused(created, admin_conn, args):
    before = catalog(admin_conn, created.db)
    r = created.cli(*args, "--prefix", "prodcheck_", **PROD)
    assert r.code == 16 and r.err.count("\n") == 1, r.output
    assert catalog(admin_conn, created.db) == before


def test_setup_in_production_provisions_and_migrates_but_adds_no_demo_data(app):
    r = app.cli("setup", **PROD)
    assert r.code == 0, r.output
    assert "no demo data in production" in r.out
    assert tables(app) == ["posts", "users", "votes"] and rows(app) == 0
