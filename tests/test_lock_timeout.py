"""DBKIT_LOCK_TIMEOUT is one duration, read the same way by every command: ``1`` is one second
for migrate (the migration lock) and for seed (the table locks), shown against a real holder;
a value that is not a duration is a settings error (exit 3) that names the variable, before
anything is done."""

from __future__ import annotations

import time

import psycopg
import pytest

from dbkit.pg import MIGRATIONS

# Every command that waits on a lock, and so reads DBKIT_LOCK_TIMEOUT.
READERS = [("migrate",), ("rollback",), ("seed",), ("setup", "--no-seed"), ("reset", "--yes"),
           ("testdb", "create", "--prefix", "lt_"), ("verify", "--accept", "0001_create_posts")]


@pytest.fixture
def migrated(created):
    r = created.cli("migrate")
    assert r.code == 0, r.output
    return created


def test_one_means_one_second_for_migrate(migrated):
    with migrated.connect(autocommit=True) as holder:
        holder.execute("BEGIN")
        holder.execute("SELECT pg_advisory_xact_lock(%s::int4, %s::int4)", MIGRATIONS[:2])
        started = time.monotonic()
        r = migrated.cli("migrate", DBKIT_LOCK_TIMEOUT="1")
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
