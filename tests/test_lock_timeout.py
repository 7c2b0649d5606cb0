"""DBKIT_LOCK_TIMEOUT is one duration, read the same way by every command: ``1`` is one second
for migrate (the migration lock) and for seed (the table locks), shown against a real holder;
a value that is not a duration is a settings error (exit 3) that names the variable, before
anything is done. A statement that runs out of lock_timeout names the session in its way
(pid, application, role, client, state and age, its query masked), looked up while it waited;
when that look fails, the error is worded as before."""

from __future__ import annotations

import re
import shutil
import threading
import time
from pathlib import Path

import psycopg
import pytest

from dbkit import db
from dbkit.errors import ConnectError
from dbkit.migrate.files import packaged_dir
from dbkit.pg import MIGRATIONS

# Every command that waits on a lock, and so reads DBKIT_LOCK_TIMEOUT.
READERS = [("migrate",), ("rollback",), ("seed",), ("setup", "--no-seed"), ("reset", "--yes"),
           ("testdb", "create", "--prefix", "lt_"), ("verify", "--accept", "0001_create_posts")]


def test_one_means_one_second_for_migrate(created):
    # Migrations pending: the run needs the lock (a no-op migrate takes none).
    with created.connect(autocommit=True) as holder:
        holder.execute("BEGIN")
        holder.execute("SELECT pg_advisory_xact_lock(%s::int4, %s::int4)", MIGRATIONS[:2])
        started = time.monotonic()
        r = created.cli("migrate", DBKIT_LOCK_TIMEOUT="1")
        waited = time.monotonic() - started
    assert r.code == 9, r.output
    assert "gave up after 1s" in r.err and r.err.count("\n") == 1
    assert waited >= 0.9  # a second, not a millisecond


@pytest.mark.parametrize("value,shown,at_least", [("1", "1s", 0.9), ("1500ms", "1.5s", 1.4)])
def test_the_same_duration_for_seed(migrated, value, shown, at_least):
    """``1`` is one second (not a millisecond) for seed's table locks too, and 1500ms is 1.5 s."""
    with migrated.connect() as holder:
        holder.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        r = migrated.cli("seed", DBKIT_LOCK_TIMEOUT=value)
        waited = time.monotonic() - started
        holder.rollback()
    assert r.code == 9, r.output
    assert f"{shown} (DBKIT_LOCK_TIMEOUT)" in r.err and r.err.count("\n") == 1
    assert waited >= at_least
    with migrated.connect() as conn:  # nothing was loaded
        assert conn.execute("SELECT count(*) FROM users").fetchone() == (0,)


@pytest.mark.parametrize("args", READERS, ids=lambda a: " ".join(a[:2]))
def test_a_bad_value_is_exit_3_naming_the_variable(created, admin_conn, args):
    before = admin_conn.execute("SELECT count(*) FROM pg_database").fetchone()
    r = created.cli(*args, DBKIT_LOCK_TIMEOUT="abc")
    assert r.code == 3, r.output
    assert r.err.startswith("dbkit: error: DBKIT_LOCK_TIMEOUT must be a duration")
    assert "'abc'" in r.err and r.err.count("\n") == 1 and not r.out
    assert admin_conn.execute("SELECT count(*) FROM pg_database").fetchone() == before


def test_a_bad_value_in_env_file_names_the_file(created):
    (created.cwd / ".env").write_text("DBKIT_LOCK_TIMEOUT=5 seconds\n")
    r = created.cli("migrate")
    assert r.code == 3, r.output
    assert "DBKIT_LOCK_TIMEOUT (in .env) must be a duration" in r.err


def test_a_bad_flag_value_names_the_flag(created):
    r = created.cli("migrate", "--lock-timeout", "soon")
    assert r.code == 3 and "--lock-timeout must be a duration" in r.err, r.output


def test_a_lock_held_by_nobody_does_not_wait(migrated):
    """The same setting, the other way round: with the lock free, 1 s is no delay at all."""
    r = migrated.cli("seed", DBKIT_LOCK_TIMEOUT="1")
    assert r.code == 0, r.output


def test_lock_timeout_reaches_the_server_as_milliseconds(created):
    """What a migration statement sees: DBKIT_LOCK_TIMEOUT=2 is lock_timeout 2s."""
    d = created.cwd / "m"
    d.mkdir()
    (d / "0001_show.sql").write_text(
        "CREATE TABLE shown AS SELECT current_setting('lock_timeout') AS v;\n")
    r = created.cli("migrate", "--migrations", str(d), DBKIT_LOCK_TIMEOUT="2")
    assert r.code == 0, r.output
    with psycopg.connect(**created.url.connect_kwargs()) as conn:
        assert conn.execute("SELECT v FROM shown").fetchone() == ("2s",)


# -- who is in the way of a lock ------------------------------------------------------------
ALTER_POSTS = "ALTER TABLE posts ADD COLUMN extra int;\n"


@pytest.fixture
def posts_plus_one(migrated) -> Path:
    """The posts migrations (all applied) and a pending one that alters posts."""
    d = migrated.cwd / "posts_migrations"
    shutil.copytree(packaged_dir(), d)
    (d / "0007_posts_extra.sql").write_text(ALTER_POSTS)
    return d


def blocker(app, statement: str) -> psycopg.Connection:
    """A psql-like session of the app's role that ran ``statement`` in a transaction it keeps
    open (psycopg opens one before the first statement)."""
    conn = app.connect(application_name="blocker")
    conn.execute(statement)
    return conn


def one_line_exit_9(r) -> str:
    assert r.code == 9, r.output
    assert r.err.count("\n") == 1 and "Traceback" not in r.err
    return r.err


def migrate_while_held(app, migrations, holder, *args: str):  # noqa: ANN001, ANN201
    """Run the migration with ``holder`` in the way (closed afterwards); (result, holder pid)."""
    pid = holder.info.backend_pid
    try:
        return app.cli("migrate", "--migrations", str(migrations), "--lock-timeout", "1s",
                       *args), pid
    finally:
        holder.close()


def applied(app) -> list[str]:
    with app.connect() as conn:
        return [r[0] for r in conn.execute("SELECT migration_id FROM _yoyo_migration ORDER BY 1")]


@pytest.mark.parametrize("transactional", [True, False], ids=["transactional", "autocommit"])
def test_a_migration_behind_an_access_exclusive_lock_names_its_holder(migrated, posts_plus_one,
                                                                      transactional):
    """Either way a migration runs: in its transaction, or statement by statement on a
    connection of its own (``-- transactional: false``)."""
    if not transactional:
        (posts_plus_one / "0007_posts_extra.sql").write_text("-- transactional: false\n"
                                                            + ALTER_POSTS)
    holder = blocker(migrated, "LOCK TABLE posts IN ACCESS EXCLUSIVE MODE")
    pid = holder.info.backend_pid
    try:
        started = time.monotonic()
        r = migrated.cli("migrate", "--migrations", str(posts_plus_one), "--lock-timeout", "1s")
        waited = time.monotonic() - started
    finally:
        holder.close()
    err = one_line_exit_9(r)
    line = 1 if transactional else 2
    assert f"0007_posts_extra.sql:{line}:1: gave up waiting 1s (lock_timeout)" in err
    assert f"blocked by server pid {pid} (blocker, role {migrated.role}, from 127.0.0.1" in err
    age = re.search(r"idle in transaction, in its transaction for (\d+\.\d)s", err)
    assert age and float(age[1]) >= 1.0  # as of the error: the holder outlasted the wait
    assert "last query: LOCK TABLE posts IN ACCESS EXCLUSIVE MODE" in err
    assert f"end that session with SELECT pg_terminate_backend({pid})" in err
    assert "raise --lock-timeout" in err
    assert ("it was rolled back" if transactional else "not recorded as applied") in err
    assert waited < 5  # the look does not stretch the wait
    assert "0007_posts_extra" not in applied(migrated)


def test_a_weaker_conflicting_lock_is_named_too(migrated, posts_plus_one):
    """An uncommitted UPDATE holds only ROW EXCLUSIVE, which the ALTER's ACCESS EXCLUSIVE must
    still wait for; the blocker's query is shown by its first line, a long one cut."""
    update = ("UPDATE posts SET title = title WHERE id = -1 AND title <> "  # noqa: S608 - fixed text
              f"'{'x' * 100}'\n  AND content IS NOT NULL")
    holder = blocker(migrated, update)
    r, pid = migrate_while_held(migrated, posts_plus_one, holder)
    err = one_line_exit_9(r)
    assert f"server pid {pid} (blocker, role {migrated.role}" in err
    assert "last query: UPDATE posts SET title = title WHERE id = -1 AND title <> 'xxx" in err
    assert "xxx..." in err and "x" * 100 not in err and "content IS NOT NULL" not in err
    assert f"pg_terminate_backend({pid})" in err


def test_a_blockers_query_is_shown_with_its_secrets_masked(migrated, posts_plus_one):
    holder = blocker(migrated, "LOCK TABLE posts IN SHARE MODE")
    holder.execute("SELECT 'postgresql://u:hunter2@db.example/x' AS url,"
                   " 'ALTER ROLE u PASSWORD ''s3cret''' AS stmt")
    r, pid = migrate_while_held(migrated, posts_plus_one, holder)
    err = one_line_exit_9(r)
    assert f"server pid {pid} (blocker" in err
    assert "postgresql://u:***@db.example/x" in err and "PASSWORD '***'" in err
    assert "hunter2" not in err and "s3cret" not in err


def test_the_seeds_table_lock_names_the_blocker(migrated):
    holder = blocker(migrated, "UPDATE users SET email = email WHERE id = -1")  # ROW EXCLUSIVE
    pid = holder.info.backend_pid
    try:
        r = migrated.cli("seed", DBKIT_LOCK_TIMEOUT="1")
    finally:
        holder.close()
    err = one_line_exit_9(r)
    assert "gave up waiting 1s (DBKIT_LOCK_TIMEOUT) for a table lock" in err
    assert f"blocked by server pid {pid} (blocker, role {migrated.role}" in err
    assert "last query: UPDATE users SET email = email WHERE id = -1" in err
    assert "nothing was loaded" in err
    assert f"end that session with SELECT pg_terminate_backend({pid})" in err
    with migrated.connect() as conn:
        assert conn.execute("SELECT count(*) FROM users").fetchone() == (0,)


def test_a_failed_look_leaves_the_old_wording(migrated, posts_plus_one, monkeypatch):
    """The look is a courtesy: when its side connection fails, the lock timeout is reported
    as before (still one line, exit 9)."""
    def refuse(*args: object, **kw: object) -> None:
        raise ConnectError("no side connection today")

    monkeypatch.setattr(db, "connect", refuse)  # only the watch connects through dbkit.db
    holder = blocker(migrated, "LOCK TABLE posts IN ACCESS EXCLUSIVE MODE")
    try:
        r = migrated.cli("migrate", "--migrations", str(posts_plus_one), "--lock-timeout", "1s")
    finally:
        holder.close()
    err = one_line_exit_9(r)
    assert "find it in pg_stat_activity" in err and "blocker" not in err


def test_no_side_connection_unless_a_statement_still_waits(migrated, posts_plus_one,
                                                            monkeypatch):
    """The fast path: statements done before the timer fires never open the side connection;
    a wait does, once, marked as dbkit's."""
    calls: list = []
    real = db.connect

    def counting(url, *args, **kw):
        calls.append(url)
        return real(url, *args, **kw)

    monkeypatch.setattr(db, "connect", counting)
    r = migrated.cli("migrate", "--migrations", str(posts_plus_one), "--lock-timeout", "1s")
    assert r.code == 0, r.output
    r = migrated.cli("seed", DBKIT_LOCK_TIMEOUT="1")
    assert r.code == 0, r.output
    assert calls == []
    holder = blocker(migrated, "LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
    try:
        r = migrated.cli("seed", "--users", "5", DBKIT_LOCK_TIMEOUT="1")
    finally:
        holder.close()
    assert r.code == 9 and "blocker" in r.err, r.output
    assert len(calls) == 1 and ("application_name", db.WATCH_APP) in calls[0].params


def test_a_blocker_of_another_role_is_named_as_far_as_this_role_may_see(migrated,
                                                                         posts_plus_one):
    """Without pg_read_all_stats a role sees another role's session by pid, application and
    role only: the error names what it can and says the rest is hidden."""
    other = psycopg.connect(**migrated.pg.connect_kwargs(dbname=migrated.db),
                            application_name="blocker")
    other.execute("LOCK TABLE posts IN ACCESS EXCLUSIVE MODE")
    pid = other.info.backend_pid
    try:
        r = migrated.cli("migrate", "--migrations", str(posts_plus_one), "--lock-timeout", "1s")
    finally:
        other.close()
    err = one_line_exit_9(r)
    assert f"blocked by server pid {pid} (blocker, role " in err and "details hidden" in err
    assert "LOCK TABLE" not in err and f"pg_terminate_backend({pid})" in err


def test_the_lock_watch_as_a_library(migrated):
    """``LockWatch.around`` on a connection of one's own: the blockers of a wait that ended in
    lock_timeout, none after a block that ended otherwise, even one that waited first."""
    from dbkit.settings import Settings

    holder = blocker(migrated, "LOCK TABLE votes IN ACCESS EXCLUSIVE MODE")
    watch = db.LockWatch(migrated.url, Settings(), 400)
    try:
        with migrated.connect(autocommit=True) as conn:
            conn.execute("SET lock_timeout = '400ms'")
            with pytest.raises(psycopg.errors.LockNotAvailable), watch.around(conn):
                conn.execute("SELECT count(*) FROM votes")
            (seen,) = watch.seen
            assert (seen.pid, seen.application, seen.state) == (
                holder.info.backend_pid, "blocker", "idle in transaction")
            assert watch.blamed() == f"blocked by {seen.describe()}"
            # The holder lets go after the watch's looks saw it; the statement then fails on
            # its own account: nobody is blamed for that.
            conn.execute("SET lock_timeout = '5s'")
            letting_go = threading.Timer(0.7, holder.commit)
            letting_go.start()
            started = time.monotonic()
            with pytest.raises(psycopg.errors.DivisionByZero), watch.around(conn):
                conn.execute("SELECT count(*) FROM votes WHERE 1 / 0 = 1")
            letting_go.join()  # the COMMIT's reply may come after the lock is gone
            assert time.monotonic() - started >= 0.6  # it did wait
            assert watch.seen == () and watch.blamed() is None and watch.advice("x") is None
    finally:
        holder.close()
