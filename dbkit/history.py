"""``dbkit history``: every apply and rollback dbkit ran, with who, where, when and how long.

A row is written as ``running`` (committed on its own) just before a migration starts; the
migration's own transaction turns it into ``ok``, so a success is recorded atomically with the
change. A failure is recorded as ``failed`` with PostgreSQL's message after the rollback. A
process killed mid-migration leaves ``running`` behind, which the next ``dbkit migrate`` or
``rollback`` (holding the migration lock, so nobody else can be running) marks ``interrupted``.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from dbkit import __version__
from dbkit.db import connect
from dbkit.ledger import HISTORY, _who

if TYPE_CHECKING:
    import psycopg

    from dbkit.settings import Settings
    from dbkit.urls import DbURL

DIRECTIONS = ("apply", "rollback", "mark", "accept")
_DDL = """CREATE TABLE IF NOT EXISTS {} (
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


def create_table(conn: psycopg.Connection) -> None:
    from psycopg import sql

    conn.execute(sql.SQL(_DDL).format(sql.Identifier(HISTORY)))


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
        return asdict(self)


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

        row = self.conn.execute(sql.SQL(
            "INSERT INTO {} (run_id, migration_id, direction, outcome, os_user, hostname,"
            " dbkit_version) VALUES (%s, %s, %s, 'running', %s, %s, %s) RETURNING id"
        ).format(sql.Identifier(HISTORY)),
            (self.run_id, migration, direction, self.user, self.host, __version__)).fetchone()
        return row[0], time.perf_counter()

    def finish(self, entry: tuple[int, float], outcome: str, error: str | None = None) -> float:
        """Close a row; inside the migration's transaction for ``ok``. Returns milliseconds."""
        from psycopg import sql

        ms = round((time.perf_counter() - entry[1]) * 1000, 3)
        self.conn.execute(sql.SQL(
            "UPDATE {} SET outcome = %s, finished_at = clock_timestamp(), duration_ms = %s,"
            " error = %s WHERE id = %s").format(sql.Identifier(HISTORY)),
            (outcome, ms, error, entry[0]))
        return ms


def read(conn: psycopg.Connection, limit: int | None = None) -> list[Entry]:
    from psycopg import sql

    exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL",
                          (sql.Identifier(HISTORY).as_string(conn),)).fetchone()[0]
    if not exists:
        return []
    query = sql.SQL(
        "SELECT id, run_id::text, migration_id, direction, outcome, db_user, os_user, hostname,"
        " dbkit_version, started_at, finished_at, duration_ms, error FROM {} ORDER BY id DESC"
        " {}").format(sql.Identifier(HISTORY),
                      sql.SQL("LIMIT {}").format(sql.Literal(limit)) if limit else sql.SQL(""))
    return [Entry(*r) for r in reversed(conn.execute(query).fetchall())]



def history(settings: Settings, *, limit: int | None = None, url: DbURL | None = None
            ) -> list[Entry]:
    """Every recorded apply/rollback, oldest first (the last ``limit`` when given)."""
    target = url or settings.migration_url()
    with connect(target, settings, autocommit=True) as conn:
        return read(conn, limit)
