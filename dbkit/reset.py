"""``dbkit reset``: a fresh database in place of the old one, all or nothing.

Drop-then-setup leaves no database at all when setup fails half-way (a broken migration, a seed
that no longer fits the schema). Instead the new database is built beside the old one under a
scratch name, and the two swap names in one transaction (ALTER DATABASE … RENAME is
transactional); the old one is dropped only after that. Any failure before the swap drops the
scratch database and leaves the old one exactly as it was. The role is kept, with its password.
"""

from __future__ import annotations

import hashlib
import time
from typing import TYPE_CHECKING

from dbkit.db import admin_lock, away_from, connect
from dbkit.errors import Conflict, PermissionDenied

if TYPE_CHECKING:
    import psycopg

    from dbkit.prepare import SetupResult
    from dbkit.settings import Settings

SWAP_WAIT = 10.0  # seconds to wait for the old database's sessions to end


def side_name(db: str, tag: str) -> str:
    """``<db>_dbkit_<tag>_<hash>``, cut to PostgreSQL's 63 bytes on a character boundary; the
    hash keeps two long names that share a prefix apart."""
    suffix = f"_dbkit_{tag}_{hashlib.sha1(db.encode()).hexdigest()[:8]}"
    return db.encode()[: 63 - len(suffix)].decode(errors="ignore") + suffix


def reset(settings: Settings, *, seed: bool = True) -> SetupResult:
    """Replace the application's database with a freshly set-up one (create → migrate → seed)."""
    from dbkit import prepare, provision

    started = time.perf_counter()
    app = prepare.ensure(settings)  # roles converged; the password known; the old db kept
    db = provision.check_name(app.url.dbname, "database")
    if f"database {db}" in app.created:  # nothing to replace: a plain setup
        return prepare.complete(settings, app, seed=seed, started=started)
    scratch, retired = side_name(db, "reset"), side_name(db, "retired")
    admin = away_from(app.admin, db)
    # One reset of a database at a time: a second one waits, then makes its own fresh copy.
    with admin_lock(admin, settings, f"reset:{db}", "reset"), \
            connect(admin, settings, autocommit=True) as conn:
        for leftover in (scratch, retired):  # from a reset that was killed
            _drop(conn, leftover)
        steps = [{"step": "create", "changed": True, "detail": f"built as {scratch}"}]
        try:
            provision.create(settings, app_url=app.url.with_(dbname=scratch), admin=app.admin,
                             write_env=False)
            steps += prepare.fill(app.settings(settings, dbname=scratch), seed=seed)
            _swap(conn, db, scratch, retired)
        except BaseException:
            _drop(conn, scratch)
            raise
        _drop(conn, retired)
    steps.append({"step": "swap", "changed": True, "detail": f"replaced {db}; old copy dropped"})
    return prepare.SetupResult(url=str(app.url), env_file=app.env_file, changed=True,
                               steps=steps, seconds=round(time.perf_counter() - started, 3))


def _drop(conn: psycopg.Connection, db: str) -> None:
    from psycopg import sql

    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db)))


def _swap(conn: psycopg.Connection, db: str, scratch: str, retired: str) -> None:
    """Rename ``db`` away and ``scratch`` into its place in one transaction, so a crash leaves
    one or the other under the name, never neither. RENAME needs the database free of
    sessions: they are ended in the same transaction (RENAME waits up to 5 s for them to go)."""
    import psycopg
    from psycopg import sql

    D = sql.Identifier(db)
    deadline = time.monotonic() + SWAP_WAIT
    locked_out = False
    try:
        while True:
            try:
                with conn.transaction():
                    conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                                 " WHERE datname IN (%s, %s) AND pid <> pg_backend_pid()",
                                 (db, scratch))
                    conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                        D, sql.Identifier(retired)))
                    conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                        sql.Identifier(scratch), D))
                return
            except psycopg.errors.ObjectInUse:
                if time.monotonic() > deadline:
                    raise Conflict(f"database {db!r} still has open connections after "
                                   f"{SWAP_WAIT:g}s; it was left as it was",
                                   hint="close the sessions using it, then reset again") from None
                if not locked_out:
                    # Sessions keep coming back: keep new ones out. Undone below on failure;
                    # if dbkit dies right here, dbkit create/setup/reset turn it back on.
                    conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false")
                                 .format(D))
                    locked_out = True
    except BaseException as exc:
        if locked_out:
            try:  # the old database stays: let its users back in
                conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(D))
            except psycopg.Error:
                pass
        if isinstance(exc, psycopg.errors.InsufficientPrivilege):
            raise PermissionDenied(f"cannot replace database {db!r}: {exc.diag.message_primary}",
                                   hint="the admin must be able to end the sessions using it "
                                   "(superuser, or a member of their roles)") from None
        raise
