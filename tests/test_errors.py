"""The one translator of psycopg errors, fed real server errors: each refusal gets its
documented exit code (never 1), and what only a bug in dbkit could send stays a bug."""

from __future__ import annotations

import psycopg
import pytest

from dbkit.db import as_refusal, translate
from dbkit.errors import (
    Conflict,
    ConnectError,
    DataError,
    LockTimeout,
    MigrationError,
    PermissionDenied,
    ServerRefused,
)


def _error_from(conn: psycopg.Connection, statement: str) -> psycopg.Error:
    try:
        with conn.transaction():
            conn.execute(statement)
    except psycopg.Error as exc:
        return exc
    raise AssertionError(f"{statement!r} did not fail")


@pytest.fixture
def scratch(created, admin_conn):
    """The app's own database as its (unprivileged) owner, with one table and one row."""
    with created.connect(autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
        conn.execute("INSERT INTO t VALUES (1)")
        yield conn


@pytest.mark.parametrize("statement,kind", [
    ("INSERT INTO t VALUES (1)", Conflict),  # 23505 unique_violation
    ("CREATE ROLE nope_not_allowed", PermissionDenied),  # 42501
    ("SELECT 1/0", ServerRefused),  # 22012: no input file to blame outside seed
    ("SELECT repeat('x', 1024 * 1024 * 1024 + 1)", ServerRefused),  # 54000 program_limit
])
def test_refusals_get_their_exit_code(scratch, statement, kind):
    err = translate(_error_from(scratch, statement), "doing it")
    assert type(err) is kind and err.exit_code != 1
    assert err.message.startswith("doing it: ")
    assert as_refusal(_error_from(scratch, statement)).exit_code == kind.exit_code


def test_a_lock_timeout_is_exit_9_even_inside_a_migration(scratch, created):
    with created.connect() as holder:
        holder.execute("LOCK TABLE t")
        scratch.execute("SET lock_timeout = '50ms'")
        exc = _error_from(scratch, "SELECT * FROM t")
        holder.rollback()
    assert type(translate(exc, "x")) is LockTimeout
    assert type(translate(exc, "x", within=MigrationError)) is LockTimeout


def test_within_a_migration_everything_else_is_a_migration_failure(scratch):
    exc = _error_from(scratch, "INSERT INTO t VALUES (1)")
    assert type(translate(exc, "x", within=MigrationError)) is MigrationError


def test_invalid_values_are_bad_input_only_where_there_is_input(scratch):
    exc = _error_from(scratch, "SELECT 'nope'::int")  # 22P02
    assert type(translate(exc, "seeding", data=DataError)) is DataError
    assert type(translate(exc, "provisioning")) is ServerRefused


def test_a_broken_connection_is_a_connect_error(created, admin_conn):
    conn = created.connect(autocommit=True)
    pid = conn.info.backend_pid
    admin_conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
    exc = _error_from(conn, "SELECT 1")
    assert type(translate(exc, "x")) is ConnectError
    conn.close()


def test_what_only_a_bug_could_send_stays_a_bug(scratch):
    assert as_refusal(_error_from(scratch, "SELEC 1")) is None  # 42601 syntax error
    assert as_refusal(_error_from(scratch, "SELECT * FROM no_such_table")) is None  # 42P01
    assert as_refusal(ValueError("not the server's")) is None
    assert as_refusal(psycopg.ProgrammingError("driver misuse")) is None


def test_hints_fit_the_operation(scratch):
    exc = _error_from(scratch, "INSERT INTO t VALUES (1)")
    err = translate(exc, "loading", hints={Conflict: "remove the conflicting rows"})
    assert err.hint == "remove the conflicting rows"
    assert translate(exc, "loading").hint == Conflict.hint


@pytest.mark.parametrize("num,shown", [(120017, "PostgreSQL 12;"), (90624, "PostgreSQL 9.6;")])
def test_a_server_older_than_the_oldest_supported_major_is_refused(num, shown):
    from dbkit.db import check_version
    from dbkit.errors import UnsupportedServer
    from dbkit.urls import DbURL

    url = DbURL.parse("postgresql://u:hush@h/d")
    with pytest.raises(UnsupportedServer) as caught:
        check_version(num, url)
    assert shown in caught.value.message and "13 and later" in caught.value.message
    assert caught.value.exit_code == 4 and "hush" not in caught.value.message
    check_version(130000, url)  # the oldest supported passes
