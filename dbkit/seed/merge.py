"""Loading checked seed rows (``dbkit.seed.files``) by natural key, in the caller's transaction.

Valid rows are COPYed into a temporary staging table that keeps each row's line number; the
checks that need the database (does this owner exist? is this id someone else's?) run there as
set queries reporting the first offending line. Rows then go in as "insert if missing", so
loading the same files again adds nothing:

- users: by ``id`` when given, else by ``lower(email)``;
- posts: by ``id`` when given, else by (owner, title);
- votes: by (post, user). Existing rows are never updated.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, LiteralString

from dbkit.errors import DataError
from dbkit.seed.files import SPEC, TABLES, Source, convert, records

if TYPE_CHECKING:
    import psycopg
    from psycopg import sql

    from dbkit.seed.bulk import Progress

_SQL_TYPES: dict[str, LiteralString] = {"id": "bigint", "key": "text", "body": "text",
                                        "text": "text", "bool": "boolean", "ts": "timestamptz"}
_CHUNK = 5000  # rows between progress calls


# -- loading ------------------------------------------------------------------------------
def load(conn: psycopg.Connection, sources: list[Source], progress: Progress | None = None
         ) -> tuple[dict[str, int], dict[str, int]]:
    """Load every source, parents first; returns (inserted, skipped) per table."""
    inserted, skipped = dict.fromkeys(TABLES, 0), dict.fromkeys(TABLES, 0)
    for table in TABLES:
        for src in sources:
            if src.table in (table, None):
                total = _stage(conn, src, table, progress)
                if total:
                    new = _merge(conn, src, table)
                    inserted[table] += new
                    skipped[table] += total - new
    return inserted, skipped


def _stage(conn: psycopg.Connection, src: Source, table: str, progress: Progress | None) -> int:
    from psycopg import sql

    spec = SPEC[table]
    stage = sql.Identifier(f"dbkit_seed_{table}")
    cols = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(_SQL_TYPES[k])) for c, k in spec.items())
    conn.execute(sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} (line int, {}) ON COMMIT DROP"
                         ).format(stage, cols))
    conn.execute(sql.SQL("TRUNCATE {}").format(stage))
    n = 0
    copy_sql = sql.SQL("COPY {} FROM STDIN").format(stage)
    with conn.cursor() as cur, cur.copy(copy_sql) as copy:
        for line, rec in records(src, table):
            copy.write_row(convert(src, table, line, rec))
            n += 1
            if progress and n % _CHUNK == 0:
                progress(_CHUNK)
    if progress and n % _CHUNK:
        progress(n % _CHUNK)
    return n


def _q(table: str, template: LiteralString) -> sql.Composed:
    """A constant query template; ``{s}`` is the table's staging table."""
    from psycopg import sql

    return sql.SQL(template).format(s=sql.Identifier(f"dbkit_seed_{table}"))


def _first(conn: psycopg.Connection[Any], table: str, template: LiteralString) -> tuple[Any, ...] | None:
    return conn.execute(_q(table, template)).fetchone()


def _run(conn: psycopg.Connection[Any], table: str, template: LiteralString) -> int:
    return conn.execute(_q(table, template)).rowcount


def _merge(conn: psycopg.Connection, src: Source, table: str) -> int:
    if table == "users":
        return _merge_users(conn, src)
    if table == "posts":
        return _merge_posts(conn, src)
    return _merge_votes(conn, src)


_SAME: dict[str, LiteralString] = {"id": "a.id = b.id", "email": "lower(a.email) = lower(b.email)"}


def _dupes(conn: psycopg.Connection, src: Source, table: str, col: str, what: str) -> None:
    from psycopg import sql

    query = sql.SQL("SELECT b.line, a.line FROM {s} a JOIN {s} b ON {same} AND a.line < b.line"
                    " ORDER BY b.line LIMIT 1").format(s=sql.Identifier(f"dbkit_seed_{table}"),
                                                       same=sql.SQL(_SAME[col]))
    hit = conn.execute(query).fetchone()
    if hit:
        raise DataError(f"{src.where(hit[0], col)}: duplicate {what} (also on line {hit[1]})")


def _merge_users(conn: psycopg.Connection, src: Source) -> int:
    t = "users"
    _dupes(conn, src, t, "id", "id")
    _dupes(conn, src, t, "email", "e-mail")
    hit = _first(conn, t, "SELECT s.line, s.id FROM {s} s JOIN users u ON u.id = s.id"
                 " WHERE lower(u.email) <> lower(s.email) ORDER BY s.line LIMIT 1")
    if hit:
        raise DataError(f"{src.where(hit[0], 'id')}: id {hit[1]} already belongs to another user")
    hit = _first(conn, t, "SELECT s.line, u.id FROM {s} s JOIN users u"
                 " ON lower(u.email) = lower(s.email) WHERE s.id <> u.id ORDER BY s.line LIMIT 1")
    if hit:
        raise DataError(f"{src.where(hit[0], 'email')}: this e-mail already belongs to user "
                        f"id {hit[1]}")
    return _run(conn, t, "INSERT INTO users (id, email, password_hash, created_at)"
                " SELECT id, email, coalesce(password_hash, '!'), coalesce(created_at, now())"
                " FROM {s} s WHERE s.id IS NOT NULL"
                " AND NOT EXISTS (SELECT 1 FROM users u WHERE u.id = s.id) ORDER BY s.line"
                ) + _run(conn, t, "INSERT INTO users (email, password_hash, created_at)"
                         " SELECT email, coalesce(password_hash, '!'), coalesce(created_at, now())"
                         " FROM {s} s WHERE s.id IS NULL AND NOT EXISTS"
                         " (SELECT 1 FROM users u WHERE lower(u.email) = lower(s.email))"
                         " ORDER BY s.line")


def _merge_posts(conn: psycopg.Connection, src: Source) -> int:
    t = "posts"
    _dupes(conn, src, t, "id", "id")
    _run(conn, t, "UPDATE {s} s SET owner_id = (SELECT u.id FROM users u"
         " WHERE lower(u.email) = lower(s.owner_email)) WHERE s.owner_id IS NULL")
    hit = _first(conn, t, "SELECT line, owner_email, owner_id FROM {s} s"
                 " WHERE NOT EXISTS (SELECT 1 FROM users u WHERE u.id = s.owner_id)"
                 " ORDER BY line LIMIT 1")
    if hit and hit[2] is None:
        raise DataError(f"{src.where(hit[0], 'owner_email')}: no user with e-mail {hit[1]!r}")
    if hit:
        raise DataError(f"{src.where(hit[0], 'owner_id')}: no user with id {hit[2]}")
    hit = _first(conn, t, "SELECT s.line, s.id FROM {s} s JOIN posts p ON p.id = s.id"
                 " WHERE (p.owner_id, p.title) IS DISTINCT FROM (s.owner_id, s.title)"
                 " ORDER BY s.line LIMIT 1")
    if hit:
        raise DataError(f"{src.where(hit[0], 'id')}: id {hit[1]} already belongs to another post")
    return _run(conn, t, "INSERT INTO posts (id, title, content, published, created_at, owner_id)"
                " SELECT id, title, content, coalesce(published, true), coalesce(created_at, now()),"
                " owner_id FROM {s} s WHERE s.id IS NOT NULL"
                " AND NOT EXISTS (SELECT 1 FROM posts p WHERE p.id = s.id) ORDER BY s.line"
                ) + _run(conn, t, "INSERT INTO posts (title, content, published, created_at, owner_id)"
                         " SELECT title, content, coalesce(published, true),"
                         " coalesce(created_at, now()), owner_id FROM {s} s WHERE s.id IS NULL"
                         " AND NOT EXISTS (SELECT 1 FROM posts p WHERE p.owner_id = s.owner_id"
                         " AND p.title = s.title) ORDER BY s.line")


def _merge_votes(conn: psycopg.Connection, src: Source) -> int:
    t = "votes"
    _run(conn, t, "UPDATE {s} s SET post_id = (SELECT min(p.id) FROM posts p"
         " JOIN users u ON u.id = p.owner_id WHERE lower(u.email) = lower(s.post_owner_email)"
         " AND p.title = s.post_title) WHERE s.post_id IS NULL")
    _run(conn, t, "UPDATE {s} s SET user_id = (SELECT u.id FROM users u"
         " WHERE lower(u.email) = lower(s.user_email)) WHERE s.user_id IS NULL")
    hit = _first(conn, t, "SELECT line, post_id, post_owner_email, post_title FROM {s} s"
                 " WHERE NOT EXISTS (SELECT 1 FROM posts p WHERE p.id = s.post_id)"
                 " ORDER BY line LIMIT 1")
    if hit and hit[1] is None:
        raise DataError(f"{src.where(hit[0], 'post_title')}: no post titled {hit[3]!r} "
                        f"by {hit[2]!r}")
    if hit:
        raise DataError(f"{src.where(hit[0], 'post_id')}: no post with id {hit[1]}")
    hit = _first(conn, t, "SELECT line, user_id, user_email FROM {s} s"
                 " WHERE NOT EXISTS (SELECT 1 FROM users u WHERE u.id = s.user_id)"
                 " ORDER BY line LIMIT 1")
    if hit and hit[1] is None:
        raise DataError(f"{src.where(hit[0], 'user_email')}: no user with e-mail {hit[2]!r}")
    if hit:
        raise DataError(f"{src.where(hit[0], 'user_id')}: no user with id {hit[1]}")
    return _run(conn, t, "INSERT INTO votes (post_id, user_id) SELECT post_id, user_id"
                " FROM {s} ORDER BY line ON CONFLICT DO NOTHING")
