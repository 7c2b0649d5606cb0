"""Running one migration (apply or rollback) on the migration connection, recorded atomically.

A transactional migration runs as ``BEGIN; SET LOCAL timeouts; its statements; yoyo's rows;
dbkit's checksum; history -> ok; COMMIT``: it is either applied *and* recorded, or neither,
whatever happens to the process. A non-transactional one (``-- transactional: false``, e.g.
CREATE INDEX CONCURRENTLY) runs statement by statement in autocommit, on a connection of its
own whose timeouts are startup options (no session SET), and is recorded after its last
statement; if the process dies in between, the next run runs it again, so such files must
be re-runnable (IF NOT EXISTS) — and an INVALID index left by an interrupted concurrent build is
reported, not silently kept.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dbkit.db import LockWatch, connect, describe, error_class, server_said, value
from dbkit.errors import ConfigError, ConnectError, DbkitError, LockTimeout, MigrationError
from dbkit.migrate import bookkeeping
from dbkit.migrate.bookkeeping import Recorder
from dbkit.migrate.files import MigrationFile, Statement, position, statements
from dbkit.migrate.lock import MIGRATE_APP
from dbkit.urls import with_app

if TYPE_CHECKING:
    import psycopg

    from dbkit.settings import Settings
    from dbkit.urls import DbURL

log = logging.getLogger("dbkit")


@dataclass(frozen=True)
class Timeouts:
    lock_ms: int
    statement_ms: int


@dataclass
class Ran:
    id: str
    direction: str
    transactional: bool
    duration_ms: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Runner:
    def __init__(self, conn: psycopg.Connection, settings: Settings, timeouts: Timeouts,
                 url: DbURL) -> None:
        self.conn = conn
        self.url = url
        self.settings = settings
        self.timeouts = timeouts
        self.recorder = Recorder(conn)
        self.notes: list[str] = []  # warnings for the user (the result carries them)
        # PostgreSQL 14+ notices a vanished client during a long statement: a killed dbkit's
        # migration stops within a second instead of running on, holding its locks.
        self.check_client = conn.info.server_version >= 140000
        # Who is in the way when a statement waits for a lock: the lock timeout's error alone
        # cannot say (the wait is over by then).
        self.watch = LockWatch(url, settings, timeouts.lock_ms)

    def prepare(self, files: list[MigrationFile]) -> bookkeeping.State:
        """Under the lock: bookkeeping tables, leftovers of killed runs, yoyo-applied checksums."""
        state = bookkeeping.read_state(self.conn)
        state = bookkeeping.ensure_tables(self.conn, self.url, self.settings, state)
        self._end_orphans()
        if self.recorder.interrupted():
            self.notes.append("an earlier migration run was interrupted mid-migration (killed?);"
                              " PostgreSQL rolled that migration back (see dbkit history)")
        adopted = bookkeeping.adopt(self.conn, files, state)
        if adopted:
            log.info("recorded checksums of migrations applied outside dbkit: %s", ", ".join(adopted))
        return state

    def _end_orphans(self) -> None:
        """Sessions of killed dbkit runs still executing a migration statement in this database.

        We hold the migration lock, so any other busy migration session is an orphan: its
        client is gone and its transaction can never commit, but it may still hold table locks.
        Idle ones hold nothing (behind a pooler they may be pooled server connections) and are
        left alone.
        """
        import psycopg

        rows = self.conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " AND application_name = %s AND pid <> pg_backend_pid() AND state <> 'idle'",
            (MIGRATE_APP,)).fetchall()
        if not rows:
            return
        pids = [r[0] for r in rows]
        self.notes.append(f"ended {len(pids)} database session(s) still running a killed "
                          f"migration (server pid {', '.join(map(str, pids))})")
        for pid in pids:
            try:
                self.conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
            except psycopg.Error as exc:
                self.notes.append(f"could not end session {pid}: {describe(exc)}")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and value(
                self.conn, "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,)):
            time.sleep(0.05)

    def _set_local_timeouts(self) -> None:
        """SET LOCAL: ends with the transaction, so nothing is left on a pooled connection."""
        import psycopg

        params = (f"{self.timeouts.lock_ms}ms", f"{self.timeouts.statement_ms}ms")
        try:
            if self.check_client:
                self.conn.execute("SELECT set_config('lock_timeout', %s, true),"
                                  " set_config('statement_timeout', %s, true),"
                                  " set_config('client_connection_check_interval', '1s', true)",
                                  params)
            else:
                self.conn.execute("SELECT set_config('lock_timeout', %s, true),"
                                  " set_config('statement_timeout', %s, true)", params)
        except psycopg.errors.InvalidParameterValue as exc:
            raise ConfigError(f"invalid timeout: {describe(exc)}") from None

    def _autocommit_conn(self, mf: MigrationFile) -> psycopg.Connection:
        """A connection of its own for a non-transactional migration, its timeouts given as
        startup options: no SET outside a transaction, which behind a transaction-mode pooler
        would land on one server connection (and stay there) while the statement runs on
        another. A pooler that refuses startup options gets the statements without timeouts,
        and a warning naming the fix."""
        ours = (f"-c lock_timeout={self.timeouts.lock_ms}ms"
                f" -c statement_timeout={self.timeouts.statement_ms}ms"
                + (" -c client_connection_check_interval=1000" if self.check_client else ""))
        given = " ".join(v for k, v in self.url.params if k == "options")
        params = tuple((k, v) for k, v in self.url.params if k != "options")
        url = with_app(self.url.with_(params=(*params, ("options", f"{given} {ours}".strip()))),
                       MIGRATE_APP)
        try:
            conn = connect(url, self.settings, autocommit=True)
        except ConnectError as exc:
            if "startup parameter" not in exc.message:
                raise
            conn = connect(with_app(self.url, MIGRATE_APP), self.settings, autocommit=True)
        conn.prepare_threshold = None
        got = value(conn, "SELECT current_setting('lock_timeout')")
        if self.timeouts.lock_ms and got in ("0", ""):
            self.notes.append(
                f"{mf.id} (non-transactional) ran without lock_timeout/statement_timeout: the "
                "connection does not take startup options (a transaction-mode pooler?); set "
                "DBKIT_MIGRATE_URL to a direct URL to have them")
        return conn

    def _exec(self, mf: MigrationFile, stmt: Statement, conn: psycopg.Connection | None = None
              ) -> None:
        cur = (conn or self.conn).execute(stmt.sql)  # type: ignore[arg-type] - the file's own SQL
        if cur.description:
            # Rows a migration SELECTs go to the log (stderr with -v), never to stdout:
            # they would corrupt --json.
            names = [c.name for c in cur.description]
            for row in cur.fetchall():
                log.info("%s: %s", mf.id, dict(zip(names, row, strict=True)))

    def run(self, mf: MigrationFile, direction: str) -> Ran:
        import psycopg

        path = mf.path if direction == "apply" else mf.rollback_path
        assert path is not None
        stmts = statements(path)
        entry = self.recorder.start(mf.id, direction)
        current: Statement | None = None
        log.info("%s %s", "applying" if direction == "apply" else "rolling back", mf.id)
        try:
            if mf.transactional:
                with self.conn.transaction():
                    self._set_local_timeouts()
                    with self.watch.around(self.conn):
                        for current in stmts:
                            self._exec(mf, current)
                            self._still_in(mf, path, current, self.conn, in_transaction=True)
                    current = None
                    bookkeeping.record(self.conn, mf, direction)
                    ms = self.recorder.finish(entry, "ok")
            else:
                with self._autocommit_conn(mf) as own, self.watch.around(own):
                    for current in stmts:
                        self._exec(mf, current, own)
                        self._still_in(mf, path, current, own, in_transaction=False)
                    current = None
                self._check_invalid_indexes(mf, path)
                with self.conn.transaction():
                    bookkeeping.record(self.conn, mf, direction)
                    ms = self.recorder.finish(entry, "ok")
        except psycopg.Error as exc:
            err = _error(mf, path, current, exc, self.timeouts, direction, self.watch)
            self._failed(entry, err)
            raise err from None
        except DbkitError as err:
            self._failed(entry, err)
            raise
        return Ran(mf.id, direction, mf.transactional, ms)

    def mark(self, mf: MigrationFile) -> Ran:
        """Record as applied without running it: the database already has what it does."""
        return self._bookkeeping(mf, "mark", lambda: bookkeeping.record(self.conn, mf, "apply",
                                                                   operation="mark"))

    def accept(self, mf: MigrationFile) -> Ran:
        """Record an applied migration's edited file as its version (nothing runs)."""
        return self._bookkeeping(mf, "accept", lambda: bookkeeping.set_checksum(self.conn, mf))

    def _bookkeeping(self, mf: MigrationFile, direction: str, write: Callable[[], None]) -> Ran:
        bookkeeping.allow_all_directions(self.conn)
        entry = self.recorder.start(mf.id, direction)
        with self.conn.transaction():
            write()
            ms = self.recorder.finish(entry, "ok")
        log.info("%s %s (bookkeeping only; nothing ran)", direction, mf.id)
        return Ran(mf.id, direction, mf.transactional, ms)

    def _still_in(self, mf: MigrationFile, path: Path, stmt: Statement,
                  conn: psycopg.Connection, in_transaction: bool) -> None:
        """A COMMIT/ROLLBACK in a transactional migration ends the transaction its record
        belongs to (what ran before is committed or gone, what follows runs unprotected); a
        BEGIN in a non-transactional one leaves a transaction that closing the connection
        rolls back. Either way recording it as applied would be a lie: stop here."""
        from psycopg import pq

        status = conn.info.transaction_status
        if in_transaction and status != pq.TransactionStatus.INTRANS:
            raise MigrationError(
                f"{position(path, stmt, None)}: this statement ended the migration's own "
                "transaction (COMMIT/ROLLBACK); statements before it may stay committed, and "
                "the migration is not recorded as applied",
                hint="remove transaction control from the file (each migration runs in one "
                "transaction), or mark it '-- transactional: false'")
        if not in_transaction and status != pq.TransactionStatus.IDLE:
            raise MigrationError(
                f"{position(path, stmt, None)}: this statement opened a transaction in a "
                "'-- transactional: false' migration; it was rolled back and the migration is "
                "not recorded as applied",
                hint="remove BEGIN/START TRANSACTION from the file (or drop the "
                "'-- transactional: false' line to run it in one transaction)")

    def _failed(self, entry: tuple[int, float], err: DbkitError) -> None:
        import psycopg

        try:
            self.recorder.finish(entry, "failed", err.message)
        except psycopg.Error as exc:  # the connection may be gone; the error is the news
            log.debug("could not record the failure in history: %s", exc)

    def _check_invalid_indexes(self, mf: MigrationFile, path: Path) -> None:
        rows = self.conn.execute(
            "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
            " WHERE NOT i.indisvalid AND c.relnamespace = to_regnamespace(current_schema())"
            " ORDER BY 1").fetchall()
        if rows:
            names = ", ".join(r[0] for r in rows)
            raise MigrationError(
                f"migration {path.name} ran, but index {names} is INVALID (left by an interrupted"
                " or failed CREATE INDEX CONCURRENTLY); the migration is not recorded as applied",
                hint=f"drop it (DROP INDEX CONCURRENTLY {rows[0][0]};) and run dbkit migrate again")


def _error(mf: MigrationFile, path: Path, stmt: Statement | None, exc: Exception,
           timeouts: Timeouts, direction: str, watch: LockWatch) -> DbkitError:
    """A failed migration statement, named by file:line:column, with what became of the work
    (the kind of error is the one translator's: ``dbkit.db.error_class``) and, for a lock
    timeout, who was in the way (``watch`` looked while the statement waited)."""
    import psycopg

    said = server_said(exc)
    primary = said.primary or describe(exc)
    state = said.sqlstate
    where = path.name
    if stmt is not None:
        where = position(path, stmt, said.position)
    if stmt is None:
        where += " (recording it)"
    kept = ("it was rolled back" if mf.transactional else
            "statements before it were committed (non-transactional migration) and it is not"
            " recorded as applied")
    detail = f"; {said.detail}" if said.detail else ""
    kind = error_class(exc, within=MigrationError)
    if kind is LockTimeout:
        blamed = watch.blamed()
        return LockTimeout(
            f"{where}: gave up waiting {timeouts.lock_ms / 1000:g}s (lock_timeout) for a lock: "
            f"{primary}; {blamed + '; ' if blamed else ''}{kept}",
            hint=watch.advice("raise --lock-timeout") or "a long-running transaction holds a "
            "lock this migration needs; find it in pg_stat_activity and retry, or raise "
            "--lock-timeout")
    if isinstance(exc, psycopg.errors.QueryCanceled):
        return kind(f"{where}: {primary} (statement_timeout {timeouts.statement_ms / 1000:g}s);"
                    f" {kept}", hint="raise --statement-timeout / DBKIT_STATEMENT_TIMEOUT, or "
                    "split the migration")
    if not state:
        return kind(f"{where}: the connection was lost: {primary}; {kept}",
                    hint="check the server, then run dbkit migrate again")
    earlier = ""
    if mf.transactional:
        earlier = ("; earlier migrations stay applied" if direction == "apply"
                   else "; migrations rolled back before it stay rolled back")
    hint = None
    if direction == "apply" and isinstance(exc, psycopg.errors.DuplicateTable | psycopg.errors.
                                           DuplicateObject | psycopg.errors.DuplicateColumn):
        hint = ("if the database already has what this migration makes, record it without "
                f"running it: dbkit migrate --mark-applied --to {mf.id}")
    return kind(f"{where}: {primary}{detail} (SQLSTATE {state}); {kept}{earlier}", hint=hint)
