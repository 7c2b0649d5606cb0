"""setup and reset are all or nothing (non-negotiable 3: a failure leaves the database as it
was): reset builds the fresh database beside the old one and swaps it in; a setup that created
the database removes it again when migrating or seeding fails."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from dbkit.setup import side_name

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


@pytest.fixture
def app_with_row(created):  # noqa: ANN001
    with created.connect() as conn:
        conn.execute("CREATE TABLE keep (v text)")
        conn.execute("INSERT INTO keep VALUES ('precious')")
    return created


def state(app) -> tuple[int, list[tuple[str]]]:  # noqa: ANN001
    with app.connect() as conn:
        oid = conn.execute("SELECT oid FROM pg_database WHERE datname = current_database()")
        kept = conn.execute("SELECT v FROM keep").fetchall() \
            if conn.execute("SELECT to_regclass('keep')").fetchone()[0] else []
        return oid.fetchone()[0], kept


def side_dbs(admin_conn: psycopg.Connection, db: str) -> list[str]:
    return [r[0] for r in admin_conn.execute(
        "SELECT datname FROM pg_database WHERE datname IN (%s, %s)",
        (side_name(db, "reset"), side_name(db, "retired")))]


def broken_migrations(tmp_path: Path) -> Path:
    d = tmp_path / "broken"
    shutil.copytree(MIGRATIONS, d)
    (d / "0099_broken.sql").write_text("CREATE TABLE later (id int);\nSELECT no_such_column;\n")
    return d


def test_a_failing_migration_leaves_the_old_database_as_it_was(app_with_row, admin_conn, tmp_path):
    app = app_with_row
    before = state(app)
    r = app.cli("reset", "--yes", DBKIT_MIGRATIONS=str(broken_migrations(tmp_path)))
    assert r.code != 0 and "0099_broken" in r.err, r.output
    assert r.err.count("\n") == 1 and "Traceback" not in r.err
    assert state(app) == before  # same database (oid), same data
    assert side_dbs(admin_conn, app.db) == []  # the half-built copy is gone
    # and the old database still takes connections
    with app.connect() as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_reset_replaces_the_database_and_ends_its_sessions(app_with_row, admin_conn):
    app = app_with_row
    old_oid, _ = state(app)
    lingering = app.connect(autocommit=True)  # an app still connected to the old database
    try:
        r = app.cli("reset", "--yes", "--json", DBKIT_MIGRATIONS=str(MIGRATIONS))
        assert r.code == 0, r.output
        steps = [s["step"] for s in json.loads(r.out)["steps"]]
        assert steps == ["create", "migrate", "seed", "swap"]
        with pytest.raises(psycopg.OperationalError):
            lingering.execute("SELECT 1")
    finally:
        lingering.close()
    new_oid, kept = state(app)
    assert new_oid != old_oid and kept == []
    with app.connect() as conn:
        assert conn.execute("SELECT count(*) FROM posts").fetchone()[0] > 0
        owner, allow = conn.execute(
            "SELECT pg_get_userbyid(datdba), datallowconn FROM pg_database"
            " WHERE datname = current_database()").fetchone()
        assert (owner, allow) == (app.role, True)
        # least privilege survives the swap: PUBLIC still cannot connect
        assert not conn.execute("SELECT has_database_privilege('public', current_database(),"
                                " 'CONNECT')").fetchone()[0]
    assert side_dbs(admin_conn, app.db) == []
    # twice: the same end state, exit 0
    again = app.cli("reset", "--yes", DBKIT_MIGRATIONS=str(MIGRATIONS))
    assert again.code == 0, again.output
    assert state(app)[1] == [] and side_dbs(admin_conn, app.db) == []


def test_leftovers_of_a_killed_reset_are_collected(app_with_row, admin_conn):
    app = app_with_row
    for name in (side_name(app.db, "reset"), side_name(app.db, "retired")):
        admin_conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
            sql.Identifier(name), sql.Identifier(app.role)))
    r = app.cli("reset", "--yes", DBKIT_MIGRATIONS=str(MIGRATIONS))
    assert r.code == 0, r.output
    assert side_dbs(admin_conn, app.db) == []
    assert state(app)[1] == []


def test_concurrent_resets_both_succeed_one_after_the_other(app_with_row, admin_conn):
    app = app_with_row
    results: list[int] = []

    def one() -> None:
        results.append(app.subprocess("reset", "--yes", "--no-seed").code)

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [0, 0]
    assert state(app)[1] == [] and side_dbs(admin_conn, app.db) == []


def test_reset_of_a_missing_database_is_a_setup(app, admin_conn):
    r = app.cli("reset", "--yes", "--no-seed", "--json")
    assert r.code == 0, r.output
    assert [s["step"] for s in json.loads(r.out)["steps"]] == ["create", "migrate"]
    with app.connect() as conn:
        assert conn.execute("SELECT count(*) FROM posts").fetchone()[0] == 0
    assert side_dbs(admin_conn, app.db) == []


@pytest.mark.parametrize("db", ["d" * 63, "é" * 31, "short"])
def test_side_names_fit_in_63_bytes_and_differ(db):
    names = {side_name(db, "reset"), side_name(db, "retired"), db}
    assert len(names) == 3
    assert all(len(n.encode()) <= 63 for n in names)
    assert side_name(db, "reset") != side_name(db[:-1] + "x", "reset")


def exists(admin_conn: psycopg.Connection, app) -> tuple[bool, bool]:  # noqa: ANN001
    return (admin_conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                               (app.db,)).fetchone() is not None,
            admin_conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s",
                               (app.role,)).fetchone() is not None)


def test_a_failed_first_setup_leaves_no_database_or_role(app, admin_conn, tmp_path):
    r = app.cli("setup", DBKIT_MIGRATIONS=str(broken_migrations(tmp_path)))
    assert r.code != 0 and "0099_broken" in r.err, r.output
    assert r.err.count("\n") == 1 and "Traceback" not in r.err
    assert f"setup removed the role {app.role} and database {app.db} it had created" in r.err
    assert "earlier migrations stay applied" not in r.err and "dbkit setup again" in r.err
    assert exists(admin_conn, app) == (False, False)
    # fixed, it goes through
    r = app.cli("setup", DBKIT_MIGRATIONS=str(MIGRATIONS))
    assert r.code == 0, r.output
    assert exists(admin_conn, app) == (True, True)


def test_a_failed_setup_never_drops_what_existed(app_with_row, admin_conn, tmp_path):
    app = app_with_row
    before = state(app)
    r = app.cli("setup", DBKIT_MIGRATIONS=str(broken_migrations(tmp_path)))
    assert r.code != 0 and "0099_broken" in r.err, r.output
    assert exists(admin_conn, app) == (True, True)
    assert state(app) == before


def test_a_database_left_closed_by_a_killed_reset_is_reopened(app_with_row, admin_conn):
    """A reset killed while keeping sessions out of the old database leaves it closed to
    connections; create, setup and reset turn that back on."""
    app = app_with_row
    for command in (("create",), ("setup", "--no-seed"), ("reset", "--yes", "--no-seed")):
        admin_conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(
            sql.Identifier(app.db)))
        with pytest.raises(psycopg.OperationalError, match="not currently accepting"):
            app.connect().close()
        r = app.cli(*command, DBKIT_MIGRATIONS=str(MIGRATIONS))
        assert r.code == 0, (command, r.output)
        with app.connect() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    assert side_dbs(admin_conn, app.db) == []


def test_reset_in_two_role_mode_keeps_the_app_role_working(app, admin_conn):
    from dbkit.envfile import read as read_env_file
    from dbkit.urls import DbURL

    app_role = app.role + "_app"
    app.extra_roles.append(app_role)
    assert app.cli("setup", "--no-seed", DBKIT_APP_ROLE=app_role).code == 0
    app_url = DbURL.parse(read_env_file(app.cwd / ".env")["DBKIT_APP_URL"])
    r = app.cli("reset", "--yes", DBKIT_APP_ROLE=app_role, DBKIT_MIGRATIONS=str(MIGRATIONS))
    assert r.code == 0, r.output
    assert read_env_file(app.cwd / ".env")["DBKIT_APP_URL"] == app_url.render(reveal=True)
    with psycopg.connect(autocommit=True, **app_url.connect_kwargs()) as c:
        assert c.execute("SELECT count(*) FROM posts").fetchone()[0] > 0  # seeded, readable
        c.execute("INSERT INTO users (email, password_hash) VALUES ('two@example.com', 'x')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("CREATE TABLE nope (x int)")
    assert side_dbs(admin_conn, app.db) == []


def test_reset_and_drop_work_when_the_admin_url_names_the_app_database(app_with_row, admin_conn):
    """Nobody can rename or drop the database their session is in: dbkit steps out to the
    maintenance database instead of failing."""
    app = app_with_row
    inside = app.pg.with_(dbname=app.db).render(reveal=True)
    r = app.cli("reset", "--yes", "--no-seed", DBKIT_ADMIN_URL=inside,
                DBKIT_MIGRATIONS=str(MIGRATIONS))
    assert r.code == 0, r.output
    assert state(app)[1] == [] and side_dbs(admin_conn, app.db) == []
    r = app.cli("drop", "--yes", DBKIT_ADMIN_URL=inside)
    assert r.code == 0, r.output
    assert exists(admin_conn, app) == (False, False)


def test_reset_migrates_the_new_database_also_through_dbkit_migrate_url(app_with_row, admin_conn):
    """DBKIT_MIGRATE_URL (a direct route, e.g. around a pooler) names the app database; the
    new copy must be the one migrated, not the old one."""
    app = app_with_row
    direct = app.url.render(reveal=True)
    r = app.cli("reset", "--yes", "--no-seed", DBKIT_MIGRATE_URL=direct,
                DBKIT_MIGRATIONS=str(MIGRATIONS))
    assert r.code == 0, r.output
    assert app.cli("status", "--check", DBKIT_MIGRATE_URL=direct,
                   DBKIT_MIGRATIONS=str(MIGRATIONS)).code == 0
    with app.connect() as conn:
        assert conn.execute("SELECT to_regclass('posts') IS NOT NULL").fetchone()[0]
    assert state(app)[1] == [] and side_dbs(admin_conn, app.db) == []


def _slow_migrations(tmp_path: Path) -> Path:
    d = tmp_path / "slow"
    shutil.copytree(MIGRATIONS, d)
    (d / "0099_slow.sql").write_text("SELECT pg_sleep(30);\n")
    return d


def _terminate_when_sleeping(app, admin_conn, *args: str, **env: str):  # noqa: ANN001, ANN202
    """Run dbkit, SIGTERM it once its migration sleeps (a CI job cancelled), return the result."""
    import signal
    import subprocess
    import sys
    import time

    from helpers import clean_env

    full = clean_env(**{k: v for k, v in app.env(**env).items() if v is not None})
    proc = subprocess.Popen([sys.executable, "-m", "dbkit", *args], cwd=app.cwd, env=full,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not admin_conn.execute("SELECT 1 FROM pg_stat_activity WHERE query LIKE"
                                 " 'SELECT pg_sleep(30)%%' AND pid <> pg_backend_pid()").fetchone():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    return proc.returncode, err


def test_sigterm_during_a_first_setup_leaves_nothing(app, admin_conn, tmp_path):
    code, err = _terminate_when_sleeping(app, admin_conn, "setup",
                                         DBKIT_MIGRATIONS=str(_slow_migrations(tmp_path)))
    assert code == 143 and "dbkit: terminated" in err and "Traceback" not in err, err
    assert exists(admin_conn, app) == (False, False)


def test_sigterm_during_reset_keeps_the_old_database_and_no_copy(app_with_row, admin_conn,
                                                                 tmp_path):
    app = app_with_row
    before = state(app)
    code, err = _terminate_when_sleeping(app, admin_conn, "reset", "--yes",
                                         DBKIT_MIGRATIONS=str(_slow_migrations(tmp_path)))
    assert code == 143 and "dbkit: terminated" in err and "Traceback" not in err, err
    assert state(app) == before
    assert side_dbs(admin_conn, app.db) == []  # dropped on the way out, not left for later
