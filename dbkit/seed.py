"""``dbkit seed``: the shipped sample data, synthetic volume, or the user's own files.

Every seed runs as the ``DATABASE_URL`` role in ONE transaction that first locks the three
tables (SHARE ROW EXCLUSIVE: readers go on, a concurrent seed or writer waits), so a failure
anywhere leaves the database as it was and two seeds cannot interleave.

- ``seed_sample``: ``dbkit/data/sample.json`` through the same loader as ``--from``
  (``dbkit.seed_load``), idempotent by natural keys (user e-mail, post (owner, title), vote PK).
- ``seed_synthetic``: rows from ``dbkit.seed_gen`` streamed as COPY text. Ids are explicit so
  the same seed gives the same rows, ids included, on every empty database. A database that
  already holds exactly that data is left alone (idempotent); other existing rows make it
  refuse unless ``append`` (ids then continue after the highest existing ones).
- ``seed_files``: CSV / JSON / JSON Lines files (see ``dbkit.seed_load``).

For a big load into a (nearly) empty table the per-row work of foreign-key triggers and
index upkeep costs more than the COPY itself (measured: about 3x); like pg_restore, we drop
those constraints and indexes inside the transaction and recreate them from their catalog
definitions after the data is in (``_deferred``), which validates every row once, in bulk.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dbkit.db import connect
from dbkit.errors import (
    ConfigError,
    Conflict,
    DataError,
    DbkitError,
    LockTimeout,
    PermissionDenied,
    SchemaNotReady,
)

if TYPE_CHECKING:
    from pathlib import Path

    import psycopg

    from dbkit.seed_gen import Generator
    from dbkit.settings import Settings

log = logging.getLogger("dbkit")

TABLES = ("users", "posts", "votes")  # load order: parents first
COLUMNS = {"users": ("id", "email", "password_hash", "created_at"),
           "posts": ("id", "title", "content", "published", "created_at", "owner_id"),
           "votes": ("post_id", "user_id")}
# Below this many rows, dropping and rebuilding constraints costs more than it saves.
DEFER_MIN_ROWS = 50_000

Progress = Callable[[int], None]  # called with the number of rows just written


@dataclass
class SeedResult:
    mode: str  # sample | synthetic | files
    database: str
    role: str
    inserted: dict[str, int]
    skipped: dict[str, int] = field(default_factory=dict)  # rows already present (natural keys)
    seconds: float = 0.0
    seed: int | None = None
    sources: list[str] = field(default_factory=list)
    note: str | None = None
    dry_run: bool = False

    @property
    def rows(self) -> int:
        return sum(self.inserted.values())

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if v is not None}
        d.update(rows=self.rows, rows_per_s=round(self.rows_per_s))
        return d


# -- entry points -------------------------------------------------------------------------
def seed_sample(settings: Settings, progress: Progress | None = None, *, dry_run: bool = False
                ) -> SeedResult:
    """Load the shipped sample data; rows already present (by natural key) are skipped."""
    from importlib import resources

    ref = resources.files("dbkit") / "data" / "sample.json"
    with resources.as_file(ref) as path:
        return _load(settings, "sample", [path], progress, dry_run,
                     shown=["dbkit/data/sample.json"])


def seed_files(settings: Settings, paths: list[Path], progress: Progress | None = None, *,
               dry_run: bool = False) -> SeedResult:
    """Load the user's files (a directory, or files named after their table)."""
    return _load(settings, "files", paths, progress, dry_run)


def _load(settings: Settings, mode: str, paths: list[Path], progress: Progress | None,
          dry_run: bool, shown: list[str] | None = None) -> SeedResult:
    from dbkit import seed_load, seed_read

    sources = seed_read.discover(paths)  # file errors before touching the database
    started = time.perf_counter()
    with session(settings, dry_run) as conn:
        inserted, skipped = seed_load.load(conn, sources, progress)
        _advance_sequences(conn)
    url = settings.app_url()
    return SeedResult(mode, url.dbname or "", url.user or "", inserted, skipped,
                      round(time.perf_counter() - started, 3),
                      sources=shown or [str(s.path) for s in sources], dry_run=dry_run)


def seed_synthetic(settings: Settings, users: int, posts: int, votes: int, seed: int = 0, *,
                   append: bool = False, defer: bool = True, progress: Progress | None = None,
                   dry_run: bool = False) -> SeedResult:
    """Generate and COPY synthetic rows (see the module docstring for the rules)."""
    from dbkit.seed_gen import Generator, Plan

    check_counts(users, posts, votes)
    url = settings.app_url()
    started = time.perf_counter()
    with session(settings, dry_run) as conn:
        have = {t: _scalar(conn, "SELECT count(*) FROM {}", t) for t in TABLES}
        plan = Plan(users, posts, votes, seed)
        if not users + posts + votes:
            return SeedResult("synthetic", url.dbname or "", url.user or "",
                              dict.fromkeys(TABLES, 0), seed=seed, dry_run=dry_run,
                              note="no rows asked for: nothing to do")
        if any(have.values()):
            if not append and _holds(conn, Generator(plan), have):
                return SeedResult("synthetic", url.dbname or "", url.user or "",
                                  dict.fromkeys(TABLES, 0), have, 0.0, seed, dry_run=dry_run,
                                  note="this data set is already loaded: nothing to do")
            if not append:
                raise Conflict(
                    "the tables already hold other rows (" +
                    ", ".join(f"{t} {n}" for t, n in have.items()) + ")",
                    hint="pass --append to add after the existing ids, or seed an empty "
                         "database (dbkit reset)")
            top = {t: _scalar(conn, "SELECT coalesce(max(id), 0) FROM {}", t)
                   for t in ("users", "posts")}
            plan = Plan(users, posts, votes, seed, top["users"] + 1, top["posts"] + 1)
        gen = Generator(plan)
        inserted = dict.fromkeys(TABLES, 0)
        counts = {"users": users, "posts": posts, "votes": votes}
        big = [t for t in TABLES if defer and counts[t] >= max(DEFER_MIN_ROWS, have[t])]
        cheap = [t for t in TABLES if t in big or (not have[t] and not counts[t])]
        with _deferred(conn, big, cheap):
            for table in TABLES:
                if counts[table]:
                    inserted[table] = copy_text(conn, table, gen.stream(table), progress)
        _advance_sequences(conn)
    return SeedResult("synthetic", url.dbname or "", url.user or "", inserted,
                      seconds=round(time.perf_counter() - started, 3), seed=seed, dry_run=dry_run)


def check_counts(users: int, posts: int, votes: int) -> None:
    hint = "e.g. dbkit seed --users 1000 --posts 100000 --votes 50000"
    if min(users, posts, votes) < 0:
        raise ConfigError("row counts must not be negative", hint=hint)
    if posts and not users:
        raise ConfigError("--posts needs --users (every post has an owner)", hint=hint)
    if votes and not posts:
        raise ConfigError("--votes needs --posts (every vote is on a post)", hint=hint)
    if votes > posts * users:
        raise ConfigError(f"--votes {votes} is more than posts x users ({posts * users}): "
                          "each user votes at most once per post", hint=hint)


# -- the transaction ----------------------------------------------------------------------
@contextlib.contextmanager
def session(settings: Settings, dry_run: bool = False) -> Iterator[psycopg.Connection]:
    """A connection as the DATABASE_URL role, schema checked, tables locked, in a transaction
    that commits when the block ends (rolls back on any error, or always when ``dry_run``)."""
    import psycopg

    url = settings.app_url()
    with connect(url, settings) as conn:
        check_schema(conn, settings)
        try:
            with conn.transaction():
                conn.execute("SELECT set_config('lock_timeout', %s, true)", [settings.lock_timeout])
                conn.execute("SET LOCAL TimeZone = 'UTC'")
                conn.execute("LOCK TABLE users, posts, votes IN SHARE ROW EXCLUSIVE MODE")
                # Sequences ignore rollbacks (nextval for rows without ids, our setval): a dry
                # run puts them back itself, while the lock still keeps other inserters out.
                before = _sequences(conn) if dry_run else []
                yield conn
                if dry_run:
                    for seq, last, called in before:
                        conn.execute("SELECT setval(%s::regclass, %s, %s)", [seq, last, called])
                    raise psycopg.Rollback()
        except psycopg.Error as exc:
            raise db_error(exc) from None


def check_schema(conn: psycopg.Connection, settings: Settings) -> None:
    """Refuse before writing anything when the tables are missing or migrations pending."""
    from dbkit.migrate import pending_ids

    missing = [t for t in TABLES
               if conn.execute("SELECT to_regclass(%s)", [t]).fetchone()[0] is None]
    conn.rollback()
    if missing:
        raise SchemaNotReady(f"the schema is missing: no table {', '.join(missing)} in database "
                             f"{settings.app_url().dbname!r}", hint="run dbkit migrate")
    # The database being seeded, even when DBKIT_MIGRATE_URL names another way in.
    pending = pending_ids(settings, url=settings.app_url())
    if pending:
        shown = ", ".join(pending[:3]) + (", ..." if len(pending) > 3 else "")
        raise SchemaNotReady(f"{len(pending)} migration(s) pending ({shown})",
                             hint="run dbkit migrate")


def db_error(exc: Exception) -> DbkitError:
    """A server error during a seed, as one of dbkit's named errors (nothing was written)."""
    import psycopg.errors as e

    diag = getattr(exc, "diag", None)
    text = (diag.message_primary if diag and diag.message_primary else str(exc)).strip()
    detail = f" ({diag.message_detail})" if diag and diag.message_detail else ""
    if isinstance(exc, e.InsufficientPrivilege):
        return PermissionDenied(f"the DATABASE_URL role may not seed: {text}",
                                hint="seed as the role that owns the tables (dbkit create)")
    if isinstance(exc, e.LockNotAvailable):
        return LockTimeout(f"could not lock the tables to seed: {text}",
                           hint="another session is writing to them; retry later")
    if isinstance(exc, e.IntegrityError):
        return Conflict(f"the data conflicts with rows in the database: {text}{detail}",
                        hint="nothing was loaded; remove the conflicting rows and retry")
    if isinstance(exc, e.DataError):
        return DataError(f"the server rejected a value: {text}{detail}")
    return DbkitError(f"seeding failed: {exc.__class__.__name__}: {text}{detail}")


# -- COPY ---------------------------------------------------------------------------------
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
def _deferred(conn: psycopg.Connection, tables: list[str], cheap: list[str]) -> Iterator[None]:
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


def _advance_sequences(conn: psycopg.Connection) -> None:
    """Explicit ids bypass the identity sequences: move them past the highest id so the
    application's next insert does not collide (never backwards)."""
    from psycopg import sql

    for table in ("users", "posts"):
        conn.execute(sql.SQL(
            "SELECT setval(s, m) FROM (SELECT pg_get_serial_sequence(%s, 'id') AS s,"
            " (SELECT max(id) FROM {}) AS m) x"
            " WHERE m > coalesce(pg_sequence_last_value(s::regclass), 0)").format(
                sql.Identifier(table)), [table])


def _sequences(conn: psycopg.Connection) -> list[tuple[str, int, bool]]:
    """(sequence, last_value, is_called) of the users/posts id sequences."""
    from psycopg import sql

    out = []
    for table in ("users", "posts"):
        nsp, rel = conn.execute(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n"
            " ON n.oid = c.relnamespace WHERE c.oid = pg_get_serial_sequence(%s, 'id')::regclass",
            [table]).fetchone()
        last, called = conn.execute(sql.SQL("SELECT last_value, is_called FROM {}").format(
            sql.Identifier(nsp, rel))).fetchone()
        out.append((sql.Identifier(nsp, rel).as_string(conn), last, called))
    return out


def _scalar(conn: psycopg.Connection, query: str, table: str) -> Any:
    from psycopg import sql

    return conn.execute(sql.SQL(query).format(sql.Identifier(table))).fetchone()[0]


# -- "already seeded with this data?" -------------------------------------------------------
def _holds(conn: psycopg.Connection, gen: Generator, have: dict[str, int]) -> bool:
    """True when the tables hold exactly the counts of ``gen``'s plan and its first and last
    row of each table (a cheap fingerprint: any other seed or count differs there)."""
    p = gen.plan
    if (have["users"], have["posts"], have["votes"]) != (p.users, p.posts, p.votes):
        return False
    for table, make in (("users", gen.users), ("posts", gen.posts), ("votes", gen.votes)):
        batches = p.batches(table)
        if not batches:
            continue
        lines = [ln for b in sorted({0, batches - 1}) for ln in make(b).splitlines()]
        for line in lines[:1] + lines[-1:]:
            if not _row_exists(conn, table, line):
                return False
    return True


def _row_exists(conn: psycopg.Connection, table: str, line: str) -> bool:
    from psycopg import sql

    values = [None if v == "\\N" else _unescape(v) for v in line.split("\t")]
    cols = COLUMNS[table]
    cond = sql.SQL(" AND ").join(
        sql.SQL("{} IS NOT DISTINCT FROM CAST({} AS {})").format(
            sql.Identifier(c), sql.Placeholder(), sql.SQL(_TYPES[c])) for c in cols)
    q = sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE {})").format(sql.Identifier(table), cond)
    return bool(conn.execute(q, values).fetchone()[0])


_TYPES = {"id": "bigint", "email": "text", "password_hash": "text", "created_at": "timestamptz",
          "title": "text", "content": "text", "published": "boolean", "owner_id": "bigint",
          "post_id": "bigint", "user_id": "bigint"}


def _unescape(value: str) -> str:
    if "\\" not in value:
        return value
    out, i = [], 0
    while i < len(value):
        ch = value[i]
        if ch == "\\" and i + 1 < len(value):
            nxt = value[i + 1]
            out.append({"t": "\t", "n": "\n", "r": "\r"}.get(nxt, nxt))
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)
