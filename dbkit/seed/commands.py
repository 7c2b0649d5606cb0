"""``dbkit seed``: the shipped sample data, synthetic volume, or the user's own files.

Every seed runs as the ``DATABASE_URL`` role in ONE transaction that first locks the three
tables (SHARE ROW EXCLUSIVE: readers go on, a concurrent seed or writer waits), so a failure
anywhere leaves the database as it was and two seeds cannot interleave.

- ``seed_sample``: ``sample.json`` (next to this module) through the same loader as ``--from``
  (``dbkit.seed.merge``), idempotent by natural keys (user e-mail, post (owner, title), vote PK).
- ``seed_synthetic``: rows from ``dbkit.seed.synthetic`` streamed as COPY text
  (``dbkit.seed.bulk``). Ids are explicit so the same seed gives the same rows, ids included, on
  every empty database. A database that already holds exactly that data is left alone
  (idempotent); other existing rows make it refuse unless ``append`` (ids then continue after
  the highest existing ones).
- ``seed_files``: CSV / JSON / JSON Lines files (``dbkit.seed.files``).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, LiteralString

from dbkit.db import LockWatch, connect, error_class, translate, value
from dbkit.errors import (
    ConfigError,
    Conflict,
    ConnectError,
    DataError,
    LockTimeout,
    PermissionDenied,
    SchemaNotReady,
)
from dbkit.migrate.commands import pending_ids
from dbkit.replicas import refuse_standby
from dbkit.seed import files, merge
from dbkit.seed.bulk import (
    COLUMNS,
    DEFER_MIN_ROWS,
    Progress,
    advance_sequences,
    copy_text,
    deferred,
    sequences,
)
from dbkit.seed.files import TABLES
from dbkit.settings import Target

if TYPE_CHECKING:
    import psycopg

    from dbkit.seed.synthetic import Generator

log = logging.getLogger("dbkit")

SAMPLE = Path(__file__).resolve().parent / "sample.json"


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
def seed_sample(target: Target, progress: Progress | None = None, *, dry_run: bool = False,
                allow_production: bool = False) -> SeedResult:
    """Load the shipped sample data; rows already present (by natural key) are skipped.
    Demo users have no place in production: refused there unless ``allow_production``."""
    if not dry_run:
        target.settings.refuse_in_production("seeding the demo data", allowed=allow_production)
    return _load(target, "sample", [SAMPLE], progress, dry_run, shown=["dbkit sample data"])


def seed_files(target: Target, paths: list[Path], progress: Progress | None = None, *,
               dry_run: bool = False) -> SeedResult:
    """Load the user's files (a directory, or files named after their table)."""
    return _load(target, "files", paths, progress, dry_run)


def _load(target: Target, mode: str, paths: list[Path], progress: Progress | None,
          dry_run: bool, shown: list[str] | None = None) -> SeedResult:
    sources = files.discover(paths)  # file errors before touching the database
    started = time.perf_counter()
    with session(target, dry_run) as conn:
        inserted, skipped = merge.load(conn, sources, progress)
        advance_sequences(conn)
    return SeedResult(mode, target.dbname, target.role, inserted, skipped,
                      round(time.perf_counter() - started, 3),
                      sources=shown or [str(s.path) for s in sources], dry_run=dry_run)


def seed_synthetic(target: Target, users: int, posts: int, votes: int, seed: int = 0, *,
                   append: bool = False, defer: bool = True, progress: Progress | None = None,
                   dry_run: bool = False, allow_production: bool = False) -> SeedResult:
    """Generate and COPY synthetic rows (see the module docstring for the rules); refused in
    production unless ``allow_production``."""
    from dbkit.seed.synthetic import Generator, Plan  # its tables take a while to build

    check_counts(users, posts, votes)
    if not dry_run:
        target.settings.refuse_in_production("seeding synthetic data", allowed=allow_production)
    db, role = target.dbname, target.role
    started = time.perf_counter()
    with session(target, dry_run) as conn:
        have = {t: _scalar(conn, "SELECT count(*) FROM {}", t) for t in TABLES}
        plan = Plan(users, posts, votes, seed)
        if not users + posts + votes:
            return SeedResult("synthetic", db, role, dict.fromkeys(TABLES, 0), seed=seed,
                              dry_run=dry_run, note="no rows asked for: nothing to do")
        if any(have.values()):
            if not append and _holds(conn, Generator(plan), have):
                return SeedResult("synthetic", db, role, dict.fromkeys(TABLES, 0), have, 0.0,
                                  seed, dry_run=dry_run,
                                  note="this data set is already loaded: nothing to do")
            if not append:
                raise Conflict(
                    "the tables already hold other rows (" +
                    ", ".join(f"{t} {n}" for t, n in have.items()) + ")",
                    # reset alone would load the sample again and this would fail again
                    hint="pass --append to add after the existing ids" + (
                        "" if target.settings.production else
                        ", or start from an empty database: dbkit reset --no-seed"))
            top = {t: _scalar(conn, "SELECT coalesce(max(id), 0) FROM {}", t)
                   for t in ("users", "posts")}
            plan = Plan(users, posts, votes, seed, top["users"] + 1, top["posts"] + 1)
        gen = Generator(plan)
        inserted = dict.fromkeys(TABLES, 0)
        counts = {"users": users, "posts": posts, "votes": votes}
        big = [t for t in TABLES if defer and counts[t] >= max(DEFER_MIN_ROWS, have[t])]
        cheap = [t for t in TABLES if t in big or (not have[t] and not counts[t])]
        with deferred(conn, big, cheap):
            for table in TABLES:
                if counts[table]:
                    inserted[table] = copy_text(conn, table, gen.stream(table), progress)
        advance_sequences(conn)
    return SeedResult("synthetic", db, role, inserted,
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
def session(target: Target, dry_run: bool = False) -> Iterator[psycopg.Connection[Any]]:
    """A connection as the DATABASE_URL role, schema checked, tables locked, in a transaction
    that commits when the block ends (rolls back on any error, or always when ``dry_run``).
    Waits for the table locks as long as DBKIT_LOCK_TIMEOUT says (0: as long as it takes), and
    when that runs out names the session in the way. A connection lost on the way (the server
    stopped or crashed) is ConnectError saying what became of the seed: nothing, unless it went
    during COMMIT."""
    import psycopg

    wait_ms = target.settings.lock_timeout_ms
    # The table locks, and the stronger ones the constraint rebuild takes, may wait on another
    # session until lock_timeout: the watch sees who that is while the seed still waits.
    watch = LockWatch(target.url, target.settings, wait_ms)
    committing = False
    with connect(target.url, target.settings) as conn:
        try:
            refuse_standby(conn, target.url, "seed")  # its table locks are refused there
            check_schema(conn, target)
            with watch.around(conn), conn.transaction():
                conn.execute("SELECT set_config('lock_timeout', %s, true)", [f"{wait_ms}ms"])
                conn.execute("SET LOCAL TimeZone = 'UTC'")
                conn.execute("LOCK TABLE users, posts, votes IN SHARE ROW EXCLUSIVE MODE")
                # Sequences ignore rollbacks (nextval for rows without ids, our setval): a dry
                # run puts them back itself, while the lock still keeps other inserters out.
                before = sequences(conn) if dry_run else []
                yield conn
                if dry_run:
                    for seq, last, called in before:
                        conn.execute("SELECT setval(%s::regclass, %s, %s)", [seq, last, called])
                    raise psycopg.Rollback()
                committing = True  # the block's end sends COMMIT
        except psycopg.Error as exc:
            doing = f"cannot seed {target.dbname}"
            blamed = watch.blamed()
            if blamed and error_class(exc) is LockTimeout:
                raise LockTimeout(
                    f"{doing}: gave up waiting {wait_ms / 1000:g}s (DBKIT_LOCK_TIMEOUT) for a "
                    f"table lock: {blamed}; nothing was loaded",
                    hint=watch.advice("raise DBKIT_LOCK_TIMEOUT")) from None
            # A session that ends before COMMIT commits nothing: the server rolls back what it
            # had (at once, or in crash recovery when the server itself went down). One lost
            # during COMMIT may have committed or not, and only the tables can say.
            lost = ("it went during COMMIT, so the seed may or may not have been kept: count "
                    "the rows before seeding again" if committing else
                    "nothing was loaded (the server rolls back an unfinished seed)")
            raise translate(exc, doing, data=DataError, lost=lost, hints={
                PermissionDenied: "seed as the role that owns the tables (dbkit create)",
                LockTimeout: f"another session held the tables for longer than "
                f"{wait_ms / 1000:g}s (DBKIT_LOCK_TIMEOUT); retry later",
                Conflict: "nothing was loaded; remove the conflicting rows and retry",
                ConnectError: "when the server is back (dbkit wait), run the seed again",
            }) from None


def check_schema(conn: psycopg.Connection[Any], target: Target) -> None:
    """Refuse before writing anything when the tables are missing or migrations pending."""
    missing = [t for t in TABLES if value(conn, "SELECT to_regclass(%s)", [t]) is None]
    conn.rollback()
    if missing:
        raise SchemaNotReady(f"the schema is missing: no table {', '.join(missing)} in database "
                             f"{target.dbname!r}", hint="run dbkit migrate")
    # The database being seeded, even when DBKIT_MIGRATE_URL names another way in.
    pending = pending_ids(Target.of(target.url, target.settings))
    if pending:
        shown = ", ".join(pending[:3]) + (", ..." if len(pending) > 3 else "")
        raise SchemaNotReady(f"{len(pending)} migration(s) pending ({shown})",
                             hint="run dbkit migrate")


def _scalar(conn: psycopg.Connection[Any], query: LiteralString, table: str) -> Any:
    from psycopg import sql

    return value(conn, sql.SQL(query).format(sql.Identifier(table)))


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
    return bool(value(conn, q, values))


_TYPES: dict[str, LiteralString] = {
    "id": "bigint", "email": "text", "password_hash": "text", "created_at": "timestamptz",
    "title": "text", "content": "text", "published": "boolean", "owner_id": "bigint",
    "post_id": "bigint", "user_id": "bigint"}


def _unescape(text: str) -> str:
    if "\\" not in text:
        return text
    out, i = [], 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            out.append({"t": "\t", "n": "\n", "r": "\r"}.get(nxt, nxt))
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)
