"""What the database records about its migrations: yoyo's own tables, dbkit's checksums, and
dbkit's history of every run.

yoyo's tables (``_yoyo_migration``, ``_yoyo_log``, ``_yoyo_version``, ``yoyo_lock``) are
created by yoyo's own code on first use, so ``yoyo list`` / ``yoyo apply`` read exactly what
dbkit writes. dbkit then writes the rows itself, on the migration's own connection and inside
the migration's transaction: a crash can never leave a migration applied but unrecorded (yoyo
records after the commit, on another connection).

yoyo keys migrations by sha256 of the *id*, so it cannot notice an edited file; dbkit keeps
sha256 of each applied migration's *content* in ``_dbkit_checksum`` for ``dbkit verify``.

``_dbkit_history`` (``dbkit history``) has a row per apply, rollback, mark and accept: written
as ``running`` (committed on its own) just before a migration starts; the migration's own
transaction turns it into ``ok``, so a success is recorded atomically with the change. A failure
is recorded as ``failed`` with PostgreSQL's message after the rollback. A process killed
mid-migration leaves ``running`` behind, which the next run (holding the migration lock, so
nobody else can be running) marks ``interrupted``.
"""

from __future__ import annotations

import datetime as dt
import getpass
import logging
import os
import socket
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from dbkit import __version__
from dbkit.db import libpq_settings, row, value
from dbkit.errors import PermissionDenied
from dbkit.migrate.files import MigrationFile
from dbkit.timestamps import iso

if TYPE_CHECKING:
    import psycopg
    from psycopg import sql

    from dbkit.settings import Settings
    from dbkit.urls import DbURL

log = logging.getLogger("dbkit")

YOYO_MIGRATIONS = "_yoyo_migration"  # yoyo's default migration table name
YOYO_LOG = "_yoyo_log"
YOYO_VERSION = "_yoyo_version"
YOYO_LOCK = "yoyo_lock"
CHECKSUMS = "_dbkit_checksum"
HISTORY = "_dbkit_history"
ALL_TABLES = (YOYO_MIGRATIONS, YOYO_LOG, YOYO_VERSION, YOYO_LOCK, CHECKSUMS, HISTORY)
# The newest version of yoyo's own tables (max of yoyo.internalmigrations.schema_versions),
# known here so that checking a database needs no yoyo import; tests/test_imports.py
# compares it with the installed yoyo.
YOYO_SCHEMA_VERSION = 2


@dataclass
class Applied:
    id: str
    hash: str
    applied_at: dt.datetime | None  # UTC


@dataclass
class State:
    tables: set[str] = field(default_factory=set)
    yoyo_version: int | None = None
    applied: list[Applied] = field(default_factory=list)
    checksums: dict[str, str] = field(default_factory=dict)
    # What only the one-query look (``_one_look``) knows; the careful fallback leaves these
    # at values that send ``dbkit migrate`` down its locked path.
    settled: bool = False  # every bookkeeping table there, yoyo's at its newest version
    running: bool = True  # a history row still 'running' (a run in progress, or killed)
    yoyo_locked: bool = True  # a committed row in yoyo's lock table (a yoyo run, or a stale one)
    writable: bool = False  # the role may insert yoyo's lock row and update history rows

    @property
    def applied_hashes(self) -> set[str]:
        return {a.hash for a in self.applied}


def _ident(name: str) -> sql.Identifier:
    from psycopg import sql

    return sql.Identifier(name)


# Everything a status or a no-op migrate needs, in one round trip. The tables are named
# unqualified (the current schema is not known before asking), so the query also checks that
# each name resolves to the current schema's table and not to a same-named one elsewhere on
# the search_path (or in pg_temp); if not, or if a table is missing (the query then fails
# before it runs), the careful look below decides.
_ONE_LOOK = """SELECT s.tables, s.resolved, s.version, s.running, s.yoyo_locked, s.writable,
  m.migration_id, m.migration_hash, m.applied_at_utc, k.migration_id, k.checksum
FROM (SELECT
    ARRAY(SELECT c.relname::text FROM pg_class c
          WHERE c.relnamespace = to_regnamespace(current_schema())
          AND c.relkind IN ('r', 'p') AND c.relname = ANY(%(tables)s)) AS tables,
    (SELECT max(version) FROM _yoyo_version) AS version,
    EXISTS (SELECT 1 FROM _dbkit_history WHERE outcome = 'running') AS running,
    EXISTS (SELECT 1 FROM yoyo_lock) AS yoyo_locked,
    has_table_privilege('yoyo_lock', 'INSERT')
      AND has_table_privilege('_dbkit_history', 'UPDATE') AS writable,
    (SELECT bool_and(to_regclass(t) IS NOT DISTINCT FROM
                     to_regclass(format('%%I.%%I', current_schema(), t)))
     FROM unnest(%(read)s::text[]) t) AS resolved) s
LEFT JOIN (_yoyo_migration m FULL JOIN _dbkit_checksum k ON k.migration_id = m.migration_id)
  ON true
ORDER BY m.applied_at_utc, m.migration_id"""
_READ = [YOYO_VERSION, HISTORY, YOYO_LOCK, YOYO_MIGRATIONS, CHECKSUMS]


def read_state(conn: psycopg.Connection) -> State:
    """Read-only: which bookkeeping tables exist, what is applied, the recorded checksums.

    One query on a database whose bookkeeping is complete (every ``dbkit status`` and no-op
    ``dbkit migrate`` after the first run); the careful look of several otherwise."""
    from psycopg import pq

    if conn.autocommit and conn.info.transaction_status == pq.TransactionStatus.IDLE:
        state = _one_look(conn)  # a failed query there ends nothing but itself
        if state is not None:
            return state
    return _careful_look(conn)


def _one_look(conn: psycopg.Connection) -> State | None:
    import psycopg

    try:
        rows = conn.execute(_ONE_LOOK, {"tables": list(ALL_TABLES), "read": _READ}).fetchall()
    except psycopg.OperationalError:
        raise  # the connection itself: nothing the careful look could do better
    except psycopg.DatabaseError:
        return None  # not complete, or not ours to read: the careful look says what is wrong
    tables, resolved, version, running, yoyo_locked, writable = rows[0][:6]
    if not resolved or not all(t in tables for t in _READ):  # found elsewhere on the path
        return None
    state = State(tables=set(tables), yoyo_version=version, running=running,
                  yoyo_locked=yoyo_locked, writable=writable)
    for r in rows:
        if r[6] is not None:
            state.applied.append(Applied(r[6], r[7], r[8]))
        if r[9] is not None:
            state.checksums[r[9]] = r[10]
    state.settled = (set(ALL_TABLES) <= state.tables
                     and (version or 0) >= YOYO_SCHEMA_VERSION)
    return state


def _careful_look(conn: psycopg.Connection) -> State:
    from psycopg import sql

    row = conn.execute("SELECT current_schema()").fetchone()
    if row is None or row[0] is None:
        raise PermissionDenied("no schema to keep migrations in: the search_path is empty",
                               hint="set a search_path for the role (e.g. public)")
    tables = {r[0] for r in conn.execute(
        "SELECT c.relname FROM pg_class c WHERE c.relnamespace = to_regnamespace(current_schema())"
        " AND c.relkind IN ('r', 'p') AND c.relname = ANY(%s)", (list(ALL_TABLES),))}
    state = State(tables=tables)
    if YOYO_VERSION in tables:
        state.yoyo_version = value(
            conn, sql.SQL("SELECT max(version) FROM {}").format(_ident(YOYO_VERSION)))
    if YOYO_MIGRATIONS in tables:
        state.applied = [Applied(*r) for r in conn.execute(sql.SQL(
            "SELECT migration_id, migration_hash, applied_at_utc FROM {}"
            " ORDER BY applied_at_utc, migration_id").format(_ident(YOYO_MIGRATIONS)))]
    if CHECKSUMS in tables:
        state.checksums = dict(conn.execute(sql.SQL(
            "SELECT migration_id, checksum FROM {}").format(_ident(CHECKSUMS))).fetchall())
    return state


def ensure_tables(conn: psycopg.Connection, url: DbURL, settings: Settings, state: State) -> State:
    """Create missing bookkeeping tables (the caller holds the migration lock)."""
    from psycopg import sql

    yoyo_ready = ({YOYO_MIGRATIONS, YOYO_LOG, YOYO_VERSION, YOYO_LOCK} <= state.tables
                  and (state.yoyo_version or 0) >= YOYO_SCHEMA_VERSION)
    if yoyo_ready and {CHECKSUMS, HISTORY} <= state.tables:
        return state
    can_create = row(
        conn, "SELECT has_schema_privilege(current_schema(), 'CREATE'), current_schema()")
    if not can_create[0]:
        raise PermissionDenied(
            f"role {url.user!r} cannot create the migration bookkeeping tables in schema "
            f"{can_create[1]!r} (no CREATE privilege)",
            hint="run migrations as the database owner (DATABASE_URL from dbkit create)")
    if not yoyo_ready:
        _yoyo_bootstrap(url, settings, state)
    with conn.transaction():
        conn.execute(sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} (migration_id varchar(255) PRIMARY KEY,"
            " checksum char(64) NOT NULL, recorded_at timestamptz NOT NULL DEFAULT now())"
        ).format(_ident(CHECKSUMS)))
        conn.execute(sql.SQL(_HISTORY_DDL).format(_ident(HISTORY)))
        # New tables picked up the schema's default privileges (the app role's DML grants):
        # the bookkeeping is the owner's alone.
        for stmt in seal_sql(conn):
            conn.execute(stmt)
    return read_state(conn)


class Exposure(NamedTuple):
    schema: str
    relation: str
    grantee: str  # "PUBLIC" or a role name
    privileges: str  # "SELECT, INSERT, …"


_RELATIONS = (
    " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE n.nspname = coalesce(%(schema)s, current_schema())"
    " AND (c.relname = ANY(%(tables)s) AND c.relkind IN ('r', 'p')"
    "   OR c.relkind = 'S' AND EXISTS (SELECT 1 FROM pg_depend d"
    "     JOIN pg_class t ON t.oid = d.refobjid AND d.refclassid = 'pg_class'::regclass"
    "     WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid"
    "     AND d.deptype IN ('a', 'i') AND t.relnamespace = c.relnamespace"
    "     AND t.relname = ANY(%(tables)s)))")


def revoke_sql(conn: psycopg.Connection, grantee: str, schema: str | None = None
               ) -> list[sql.Composed]:
    """REVOKE ALL from ``grantee`` on every bookkeeping table and sequence there is (a GRANT
    … ON ALL TABLES IN SCHEMA in the same transaction reaches them too)."""
    from psycopg import sql

    return [sql.SQL("REVOKE ALL ON {} FROM {}").format(sql.Identifier(*r), sql.Identifier(grantee))
            for r in conn.execute("SELECT n.nspname, c.relname" + _RELATIONS + " ORDER BY 2",
                                  {"schema": schema, "tables": list(ALL_TABLES)})]


def exposed(conn: psycopg.Connection, schema: str | None = None) -> list[Exposure]:
    """Privileges on the bookkeeping (the tables and their sequences) held by any role but
    their owner: through them an application could un-record a migration or wipe the audit.
    ``schema`` defaults to the connection's current schema, where migrations keep them."""
    return [Exposure(*r) for r in conn.execute(
        "SELECT n.nspname, c.relname, CASE WHEN a.grantee = 0 THEN 'PUBLIC'"
        "  ELSE pg_get_userbyid(a.grantee) END, string_agg(a.privilege_type, ', ' ORDER BY 1)"
        + _RELATIONS.replace(" WHERE ", " CROSS JOIN LATERAL aclexplode(c.relacl) a"
                             " WHERE a.grantee <> c.relowner AND ", 1)
        + " GROUP BY 1, 2, 3 ORDER BY 2, 3",
        {"schema": schema, "tables": list(ALL_TABLES)}).fetchall()]


def seal_sql(conn: psycopg.Connection, schema: str | None = None) -> list[sql.Composed]:
    """REVOKE statements that leave the bookkeeping to its owner alone."""
    from psycopg import sql

    return [sql.SQL("REVOKE ALL ON {} FROM {}").format(
        sql.Identifier(e.schema, e.relation),
        sql.SQL("PUBLIC") if e.grantee == "PUBLIC" else sql.Identifier(e.grantee))
        for e in exposed(conn, schema)]


def _yoyo_bootstrap(url: DbURL, settings: Settings, state: State) -> None:
    """Let yoyo create (or upgrade) its own tables, with its own code."""
    from yoyo import internalmigrations
    from yoyo.backends import get_backend_class
    from yoyo.connections import DatabaseURI

    # Built field by field (no URL string): the password is never rendered, and names need no
    # quoting (yoyo does not unquote the database name of a URL).
    args = {**libpq_settings(settings), **dict(url.params)}
    args.setdefault("connect_timeout", str(settings.connect_timeout_s))
    args.setdefault("application_name", "dbkit migrate")
    # libpq's host and port lists for an HA URL: yoyo hands them to the driver as they are.
    where = url.connect_kwargs()
    uri = DatabaseURI(scheme="postgresql+psycopg", username=url.user, password=url.password,
                      hostname=where.get("host"), port=where.get("port"), database=url.dbname,
                      args=args)
    backend = get_backend_class("postgresql+psycopg")(uri, YOYO_MIGRATIONS)
    try:
        if YOYO_LOCK not in state.tables:
            backend.create_lock_table()
        if internalmigrations.needs_upgrading(backend):
            # dbkit already holds its migration lock: yoyo's lock row (which a crash would
            # leave behind) is not needed here.
            internalmigrations.upgrade(backend)
        log.info("created yoyo's bookkeeping tables")
    finally:
        backend.connection.close()


def _who() -> tuple[str, str]:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        user = str(os.getuid())
    return user[:255], socket.gethostname()[:255]


def record(conn: psycopg.Connection, mf: MigrationFile, direction: str, *,
           operation: str | None = None) -> None:
    """yoyo's rows for an apply/rollback, plus dbkit's checksum; in the caller's transaction.
    ``operation`` is what yoyo's log says (its own ``yoyo mark`` writes 'mark').

    One statement (data-modifying CTEs): one round trip per migration instead of three.
    """
    from psycopg import sql

    user, host = _who()
    log_row = sql.SQL(
        "INSERT INTO {} (id, migration_hash, migration_id, operation, username, hostname,"
        " comment, created_at_utc) VALUES (%s, %s, %s, %s, %s, %s, 'dbkit',"
        " clock_timestamp() AT TIME ZONE 'UTC')").format(_ident(YOYO_LOG))
    log_params = (str(uuid.uuid1()), mf.hash, mf.id, operation or direction, user, host)
    if direction == "apply":
        query = sql.SQL(
            "WITH m AS (INSERT INTO {} (migration_hash, migration_id, applied_at_utc)"
            " VALUES (%s, %s, clock_timestamp() AT TIME ZONE 'UTC')),"
            " c AS (INSERT INTO {} (migration_id, checksum) VALUES (%s, %s)"
            " ON CONFLICT (migration_id) DO UPDATE SET checksum = EXCLUDED.checksum,"
            " recorded_at = now()) {}").format(_ident(YOYO_MIGRATIONS), _ident(CHECKSUMS), log_row)
        params: tuple[str, ...] = (mf.hash, mf.id, mf.id, mf.checksum)
    else:
        query = sql.SQL(
            "WITH m AS (DELETE FROM {} WHERE migration_hash = %s),"
            " c AS (DELETE FROM {} WHERE migration_id = %s) {}").format(
                _ident(YOYO_MIGRATIONS), _ident(CHECKSUMS), log_row)
        params = (mf.hash, mf.id)
    conn.execute(query, (*params, *log_params))


def set_checksum(conn: psycopg.Connection, mf: MigrationFile) -> None:
    """The file as it is now becomes the recorded version (``dbkit verify --accept``)."""
    from psycopg import sql

    conn.execute(sql.SQL("INSERT INTO {} (migration_id, checksum) VALUES (%s, %s)"
                         " ON CONFLICT (migration_id) DO UPDATE SET checksum = EXCLUDED.checksum,"
                         " recorded_at = now()").format(_ident(CHECKSUMS)), (mf.id, mf.checksum))


def _unrecorded(files: list[MigrationFile], state: State) -> tuple[list[str], list[str]]:
    """(applied ids with a file but no checksum yet, checksums of ids no longer applied)."""
    applied_ids = {a.id for a in state.applied}
    known = {f.id for f in files}
    return ([i for i in applied_ids if i not in state.checksums and i in known],
            [i for i in state.checksums if i not in applied_ids])


def settled(files: list[MigrationFile], state: State) -> bool:
    """Nothing for a locked run to do to the bookkeeping itself: every table there at its
    newest version, no run in progress or killed mid-migration, no yoyo lock row, the role
    able to take the lock, and no checksum to record or drop (``adopt``)."""
    return (state.settled and not state.running and not state.yoyo_locked and state.writable
            and _unrecorded(files, state) == ([], []))


def adopt(conn: psycopg.Connection, files: list[MigrationFile], state: State) -> list[str]:
    """Checksums for migrations applied outside dbkit (yoyo's CLI): trusted on first sight.
    Checksums of migrations no longer applied (rolled back by yoyo) are dropped."""
    from psycopg import sql

    by_id = {f.id: f for f in files}
    adopted, stale = _unrecorded(files, state)
    if not adopted and not stale:
        return []
    with conn.transaction():
        for mid in adopted:
            conn.execute(sql.SQL("INSERT INTO {} (migration_id, checksum) VALUES (%s, %s)"
                                 " ON CONFLICT DO NOTHING").format(_ident(CHECKSUMS)),
                         (mid, by_id[mid].checksum))
            state.checksums[mid] = by_id[mid].checksum
        if stale:
            conn.execute(sql.SQL("DELETE FROM {} WHERE migration_id = ANY(%s)").format(
                _ident(CHECKSUMS)), (stale,))
            for mid in stale:
                state.checksums.pop(mid, None)
    return sorted(adopted)


# -- history ---------------------------------------------------------------------------------
DIRECTIONS = ("apply", "rollback", "mark", "accept")
_HISTORY_DDL = """CREATE TABLE IF NOT EXISTS {} (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id        uuid        NOT NULL,
    migration_id  text        NOT NULL,
    direction     text        NOT NULL CHECK (direction IN ('apply', 'rollback', 'mark',
                                                               'accept')),
    outcome       text        NOT NULL
                  CHECK (outcome IN ('running', 'ok', 'failed', 'interrupted')),
    db_user       text        NOT NULL DEFAULT current_user,
    os_user       text        NOT NULL,
    hostname      text        NOT NULL,
    dbkit_version text        NOT NULL,
    started_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at   timestamptz,
    duration_ms   double precision,
    error         text
)"""


@dataclass
class Entry:
    id: int
    run_id: str
    migration: str
    direction: str
    outcome: str
    db_user: str
    os_user: str
    hostname: str
    dbkit_version: str
    started_at: dt.datetime
    finished_at: dt.datetime | None
    duration_ms: float | None
    error: str | None

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "started_at": iso(self.started_at),
                "finished_at": iso(self.finished_at)}


def allow_all_directions(conn: psycopg.Connection) -> None:
    """Tables made before ``--mark-applied`` / ``verify --accept`` accept only apply/rollback."""
    from psycopg import sql

    row = conn.execute(
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = %s::regclass"
        " AND contype = 'c' AND pg_get_constraintdef(oid) LIKE '%%direction%%'", (HISTORY,)
    ).fetchone()
    if row and not all(f"'{d}'" in row[1] for d in DIRECTIONS):
        conn.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}, ADD CONSTRAINT {} CHECK"
                             " (direction IN ({}))").format(
            sql.Identifier(HISTORY), sql.Identifier(row[0]), sql.Identifier(row[0]),
            sql.SQL(", ").join(map(sql.Literal, DIRECTIONS))))


class Recorder:
    """History rows for one run (one ``dbkit migrate``/``rollback``)."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn
        self.run_id = uuid.uuid4()
        self.user, self.host = _who()

    def interrupted(self) -> int:
        """Rows a killed run left ``running``; only call while holding the migration lock."""
        from psycopg import sql

        cur = self.conn.execute(sql.SQL(
            "UPDATE {} SET outcome = 'interrupted', error = 'the process ended mid-migration"
            " (killed?); the migration was rolled back by PostgreSQL' WHERE outcome = 'running'"
        ).format(sql.Identifier(HISTORY)))
        return cur.rowcount

    def start(self, migration: str, direction: str) -> tuple[int, float]:
        from psycopg import sql

        entry = value(self.conn, sql.SQL(
            "INSERT INTO {} (run_id, migration_id, direction, outcome, os_user, hostname,"
            " dbkit_version) VALUES (%s, %s, %s, 'running', %s, %s, %s) RETURNING id"
        ).format(sql.Identifier(HISTORY)),
            (self.run_id, migration, direction, self.user, self.host, __version__))
        return entry, time.perf_counter()

    def finish(self, entry: tuple[int, float], outcome: str, error: str | None = None) -> float:
        """Close a row; inside the migration's transaction for ``ok``. Returns milliseconds."""
        from psycopg import sql

        ms = round((time.perf_counter() - entry[1]) * 1000, 3)
        self.conn.execute(sql.SQL(
            "UPDATE {} SET outcome = %s, finished_at = clock_timestamp(), duration_ms = %s,"
            " error = %s WHERE id = %s").format(sql.Identifier(HISTORY)),
            (outcome, ms, error, entry[0]))
        return ms


def read_history(conn: psycopg.Connection, limit: int | None = None) -> list[Entry]:
    from psycopg import sql

    exists = value(conn, "SELECT to_regclass(%s) IS NOT NULL",
                   (sql.Identifier(HISTORY).as_string(conn),))
    if not exists:
        return []
    query = sql.SQL(
        "SELECT id, run_id::text, migration_id, direction, outcome, db_user, os_user, hostname,"
        " dbkit_version, started_at, finished_at, duration_ms, error FROM {} ORDER BY id DESC"
        " {}").format(sql.Identifier(HISTORY),
                      sql.SQL("LIMIT {}").format(sql.Literal(limit)) if limit else sql.SQL(""))
    return [Entry(*r) for r in reversed(conn.execute(query).fetchall())]


