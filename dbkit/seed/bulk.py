"""Bulk loading into the posts tables: COPY of pre-formatted text, and, for a big load into a
(nearly) empty table, the constraints and indexes put aside until the data is in.

For such a load the per-row work of foreign-key triggers and index upkeep costs more than the
COPY itself (measured: about 3x); like pg_restore, ``deferred`` drops those constraints and
indexes inside the transaction and recreates them from their catalog definitions after the data
is in, which validates every row once, in bulk.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from dbkit.db import row

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger("dbkit")

COLUMNS = {"users": ("id", "email", "password_hash", "created_at"),
           "posts": ("id", "title", "content", "published", "created_at", "owner_id"),
           "votes": ("post_id", "user_id")}
# Below this many rows, dropping and rebuilding constraints costs more than it saves.
DEFER_MIN_ROWS = 50_000

Progress = Callable[[int], None]  # called with the number of rows just written


def copy_text(conn: psycopg.Connection, table: str, chunks: Iterator[tuple[str, int]],
              progress: Progress | None = None) -> int:
    """COPY ``table`` from pre-formatted text chunks; returns the rows written."""
    from psycopg import sql

    stmt = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, COLUMNS[table])))
    total = 0
    with conn.cursor() as cur, cur.copy(stmt) as copy:
        for text, rows in chunks:
            copy.write(text.encode())
            total += rows
            if progress:
                progress(rows)
    log.info("copied %d rows into %s", total, table)
    return total


@contextlib.contextmanager
def deferred(conn: psycopg.Connection, tables: list[str], cheap: list[str]) -> Iterator[None]:
    """Drop the constraints and indexes of ``tables`` that make COPY work row by row, and
    recreate them when the block ends (same transaction: an error rolls the drops back too).

    Dropped: foreign keys leaving ``tables`` (towards tables we own); plain indexes (backing no
    constraint); primary keys / unique constraints whose referencing foreign keys all sit on
    ``cheap`` tables (being loaded too, or empty: re-validating them costs little), with those
    foreign keys. Only tables this role owns; others keep everything and load row by row."""
    from psycopg import sql

    if not tables:
        yield
        return
    owned = _owned(conn, tables)
    cheap_oids = _owned(conn, cheap)
    keys = conn.execute(
        "SELECT n.nspname, t.relname, c.conname, pg_get_constraintdef(c.oid), c.conindid"
        " FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid"
        " JOIN pg_namespace n ON n.oid = t.relnamespace"
        " WHERE c.contype IN ('p', 'u') AND c.conrelid = ANY(%s::oid[]) AND NOT EXISTS"
        " (SELECT 1 FROM pg_constraint f WHERE f.contype = 'f' AND f.conindid = c.conindid"
        "  AND NOT f.conrelid = ANY(%s::oid[])) ORDER BY c.conname", [owned, cheap_oids]).fetchall()
    # pg_get_constraintdef keeps NOT VALID, so an unvalidated key comes back unvalidated.
    fks = conn.execute(
        "SELECT n.nspname, t.relname, c.conname, pg_get_constraintdef(c.oid)"
        " FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid"
        " JOIN pg_namespace n ON n.oid = t.relnamespace JOIN pg_class r ON r.oid = c.confrelid"
        " WHERE c.contype = 'f' AND ((c.conrelid = ANY(%s::oid[])"
        "  AND pg_has_role(r.relowner, 'USAGE')) OR c.conindid = ANY(%s::oid[]))"
        " ORDER BY c.conname", [owned, [k[4] for k in keys]]).fetchall()
    idx = conn.execute(
        "SELECT n.nspname, x.relname, pg_get_indexdef(i.indexrelid)"
        " FROM pg_index i JOIN pg_class x ON x.oid = i.indexrelid"
        " JOIN pg_namespace n ON n.oid = x.relnamespace"
        " WHERE i.indrelid = ANY(%s::oid[]) AND i.indisvalid"
        " AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)"
        " ORDER BY x.relname", [owned]).fetchall()
    for nsp, rel, name, *_ in (*fks, *keys):
        conn.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
            sql.Identifier(nsp, rel), sql.Identifier(name)))
    for nsp, name, _ in idx:
        conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(nsp, name)))
    log.info("deferred %d key(s), %d foreign key(s) and %d index(es) until the data is in",
             len(keys), len(fks), len(idx))
    yield
    # The definitions are the server's own (pg_get_constraintdef / pg_get_indexdef).
    for nsp, rel, name, definition, *_ in keys:
        conn.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
            sql.Identifier(nsp, rel), sql.Identifier(name), sql.SQL(definition)))
    for _, _, definition in idx:
        conn.execute(sql.SQL(definition))
    for nsp, rel, name, definition in fks:
        conn.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
            sql.Identifier(nsp, rel), sql.Identifier(name), sql.SQL(definition)))


def _owned(conn: psycopg.Connection, tables: list[str]) -> list[int]:
    return [r[0] for r in conn.execute(
        "SELECT c.oid FROM pg_class c WHERE c.oid = ANY(%s::regclass[])"
        " AND pg_has_role(c.relowner, 'USAGE')", [tables]).fetchall()]


def advance_sequences(conn: psycopg.Connection) -> None:
    """Explicit ids bypass the identity sequences: move them past the highest id so the
    application's next insert does not collide (never backwards)."""
    from psycopg import sql

    for table in ("users", "posts"):
        conn.execute(sql.SQL(
            "SELECT setval(s, m) FROM (SELECT pg_get_serial_sequence(%s, 'id') AS s,"
            " (SELECT max(id) FROM {}) AS m) x"
            " WHERE m > coalesce(pg_sequence_last_value(s::regclass), 0)").format(
                sql.Identifier(table)), [table])


def sequences(conn: psycopg.Connection) -> list[tuple[str, int, bool]]:
    """(sequence, last_value, is_called) of the users/posts id sequences."""
    from psycopg import sql

    out = []
    for table in ("users", "posts"):
        nsp, rel = row(
            conn, "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n"
            " ON n.oid = c.relnamespace WHERE c.oid = pg_get_serial_sequence(%s, 'id')::regclass",
            [table])
        last, called = row(conn, sql.SQL("SELECT last_value, is_called FROM {}").format(
            sql.Identifier(nsp, rel)))
        out.append((sql.Identifier(nsp, rel).as_string(conn), last, called))
    return out
