"""The migration lock: one ``dbkit migrate``/``rollback`` per database at a time.

Held as a transaction-level advisory lock (``dbkit.pg.MIGRATIONS``) inside a transaction that
stays open on a dedicated connection for the whole run. PostgreSQL releases it when that
transaction or connection ends,
so a SIGKILLed process never leaves a lock behind; and because it is transaction-scoped, it
works behind PgBouncer in transaction pooling mode (the open transaction pins the server
connection), unlike a session advisory lock.

In the same transaction dbkit inserts yoyo's lock row and never commits it: a ``yoyo apply``
started meanwhile waits for dbkit instead of racing it, and the row vanishes with the
transaction. A *committed* row left by a yoyo process is reported, never removed silently.

Waiters poll with ``dbkit.pg.try_xact_lock`` between short transactions instead of blocking in
the waiting form: a backend blocked inside a statement holds a snapshot, and
``CREATE INDEX CONCURRENTLY`` (a non-transactional migration of the holder) waits for every
older snapshot in the database. The holder would wait for its waiters while they wait for it,
a deadlock PostgreSQL cannot detect (it runs through the client) that lasted until every
waiter's lock timeout, forever with ``--lock-timeout 0`` (found by tests/faults/test_races.py).
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING

from dbkit import pg
from dbkit.db import connect, value
from dbkit.errors import LockTimeout
from dbkit.migrate.bookkeeping import YOYO_LOCK
from dbkit.replicas import refuse_standby
from dbkit.timestamps import iso
from dbkit.urls import with_app

if TYPE_CHECKING:
    import psycopg

    from dbkit.settings import Settings
    from dbkit.urls import DbURL

log = logging.getLogger("dbkit")

LOCK_APP = "dbkit migrate (lock)"
MIGRATE_APP = "dbkit migrate"


class MigrationLock:
    """``with MigrationLock(url, settings, wait_ms):`` — raises LockTimeout after ``wait_ms``
    (0 = wait forever) naming who holds the lock."""

    def __init__(self, url: DbURL, settings: Settings, wait_ms: int) -> None:
        self.url, self.settings, self.wait_ms = url, settings, wait_ms
        self.conn: psycopg.Connection | None = None

    def __enter__(self) -> MigrationLock:
        import psycopg
        from psycopg import sql

        conn = connect(with_app(self.url, LOCK_APP), self.settings, autocommit=True)
        conn.prepare_threshold = None  # no prepared statements: PgBouncer transaction mode
        self.conn = conn
        deadline = time.monotonic() + self.wait_ms / 1000 if self.wait_ms else None
        pause = 0.01
        try:
            # migrate, rollback and accept all start here: on a standby, refuse before the
            # lock (which a standby grants) and yoyo's lock row (which it cannot write)
            refuse_standby(conn, self.url, f"change the migrations of {self.url.dbname}")
            while True:
                conn.execute("BEGIN")
                left = 0 if deadline is None else max(1, int((deadline - time.monotonic()) * 1000))
                # The lock's transaction spans the run: server or role defaults for idle,
                # statement or transaction timeouts must not end it (lock_timeout bounds the
                # wait for yoyo's row below).
                conn.execute("SELECT set_config('lock_timeout', %s, true),"
                             " set_config('statement_timeout', '0', true),"
                             " set_config('idle_in_transaction_session_timeout', '0', true)",
                             (f"{left}ms",))
                if conn.info.server_version >= 170000:
                    conn.execute("SELECT set_config('transaction_timeout', '0', true)")
                # Never block inside a statement while waiting (see the module docstring).
                if not pg.try_xact_lock(conn, pg.MIGRATIONS):
                    conn.execute("ROLLBACK")
                    if deadline is not None and time.monotonic() >= deadline:
                        raise LockTimeout(self._held_by())
                    time.sleep(pause)
                    pause = min(pause * 2, 0.1)
                    continue
                try:
                    got = self._yoyo_row(conn)
                except psycopg.errors.LockNotAvailable:
                    conn.execute("ROLLBACK")
                    raise LockTimeout(self._held_by()) from None
                if got:
                    conn.execute("SELECT set_config('lock_timeout', '0', true)")
                    return self
                holder = conn.execute(sql.SQL("SELECT pid, ctime FROM {}").format(
                    sql.Identifier(YOYO_LOCK))).fetchone()
                conn.execute("ROLLBACK")
                if deadline is not None and time.monotonic() >= deadline:
                    pid, since = holder if holder else ("?", None)
                    raise LockTimeout(
                        f"yoyo's lock row in {YOYO_LOCK} is held by process {pid} (since "
                        f"{iso(since, fraction=False) or '?'}) on {self.url.dbname}; gave up "
                        f"after {self.wait_ms / 1000:g}s",
                        hint="wait for that yoyo process; if none is running, remove the stale "
                        "row with: yoyo break-lock")
                time.sleep(0.2)
        except BaseException:
            conn.close()
            self.conn = None
            raise

    def _yoyo_row(self, conn: psycopg.Connection) -> bool:
        """Insert yoyo's lock row (uncommitted). False when a yoyo process holds it."""
        from psycopg import sql

        table = sql.Identifier(YOYO_LOCK)
        exists = value(conn, "SELECT to_regclass(%s) IS NOT NULL", (table.as_string(conn),))
        if not exists:
            return True  # first run: created under this lock; nothing can hold it yet
        row = conn.execute(sql.SQL(
            "INSERT INTO {} (locked, ctime, pid) VALUES (1, clock_timestamp() AT TIME ZONE 'UTC',"
            " %s) ON CONFLICT DO NOTHING RETURNING 1").format(table), (os.getpid(),)).fetchone()
        return row is not None

    def _held_by(self) -> str:
        """Who holds the advisory lock: pid, application, user, client, for how long."""
        wait = f"gave up after {self.wait_ms / 1000:g}s"
        assert self.conn is not None
        try:
            row = pg.lock_holder(self.conn, pg.MIGRATIONS)
        except Exception:  # describing the holder is a courtesy; the timeout is the news
            row = None
        if not row:
            return f"another migration holds the migration lock on {self.url.dbname}; {wait}"
        pid, app, user, addr, secs = row
        return (f"another migration holds the migration lock on {self.url.dbname}: server pid "
                f"{pid} ({app or 'no application_name'}, role {user}, from {addr or 'local socket'},"
                f" for {secs}s); {wait}")

    def __exit__(self, *exc: object) -> None:
        if self.conn is not None:
            try:
                self.conn.execute("ROLLBACK")  # releases the lock and yoyo's uncommitted row
            except Exception as err:  # the connection is going away anyway; so is the lock
                log.debug("releasing the migration lock: %s", err)
            finally:
                self.conn.close()
                self.conn = None
