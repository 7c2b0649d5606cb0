"""Clones owned by a live process: the pytest plugin's source of test databases.

Each process (or xdist worker) has a random token. Its clones are named
``dbkit_pt_<token>_<worker>_<n>``, and its admin session holds an advisory lock on the token for
as long as the process lives; the server releases it when the process dies, however it dies.
A clone whose token lock can be taken therefore belongs to a dead process and is collected by
the next session (``collect_stale``); clones of runs still going are left alone.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

from dbkit import pg
from dbkit.db import connect
from dbkit.testdb.template import (
    OWNER,
    PLUGIN_PREFIX,
    db_errors,
    ensure_template,
    owned,
    owner_url,
)

if TYPE_CHECKING:
    import psycopg

    from dbkit.settings import Settings
    from dbkit.urls import DbURL

log = logging.getLogger("dbkit")


def _token_key(token: str) -> pg.LockKey:
    number = int(token, 16)
    return pg.clone_token_key(number - (1 << 32) if number >= (1 << 31) else number)  # int4


def collect_stale(conn: psycopg.Connection, own_token: str | None,
                  owner: str = OWNER) -> list[str]:
    """Drop plugin clones whose process is gone (its token lock is free)."""
    by_token: dict[str, list[str]] = {}
    for dbname, _ in owned(conn, PLUGIN_PREFIX, owner):
        token = dbname[len(PLUGIN_PREFIX):len(PLUGIN_PREFIX) + 8]
        if token != own_token and len(token) == 8:
            by_token.setdefault(token, []).append(dbname)
    dropped = []
    for token, names in by_token.items():
        try:
            key = _token_key(token)
        except ValueError:
            continue
        if not pg.try_session_lock(conn, key):
            continue  # its process is alive
        try:
            for dbname in names:
                pg.drop_database(conn, dbname)
                dropped.append(dbname)
        finally:
            pg.session_unlock(conn, key)
    if dropped:
        log.info("collected %d test database(s) left by killed runs", len(dropped))
    return dropped


class CloneSession:
    """One process's (or xdist worker's) source of clones; used by the pytest plugin.

    Holds an admin connection for its whole life, and on it the advisory lock on its token:
    the server releases that lock when the process dies, which is how leftovers are recognised.

    With ``background=True`` a second admin session, in one worker thread, drops used clones
    and makes the next clone while the current test runs, so a test that does real work does
    not wait for either. Its clones carry the same token, so a kill still leaves nothing for
    good; ``close()`` waits for it, then drops whatever is left.
    """

    def __init__(self, settings: Settings, admin: DbURL, *, worker: str = "main",
                 seed: bool = False, background: bool = False) -> None:
        self.settings = settings
        self.seed = seed
        self.token = secrets.token_hex(4)
        self.worker = "".join(c for c in worker if c.isalnum())[:8] or "main"
        self._seq = 0
        self.admin = admin
        self.conn = connect(self.admin, settings, autocommit=True)
        self.alive: set[str] = set()
        self._failed: list[str] = []  # background drops that did not happen: retried at close
        self._pool: ThreadPoolExecutor | None = None
        self._bg_conn: psycopg.Connection | None = None
        self._next: tuple[Future[None], str] | None = None
        try:
            with db_errors(self.conn):
                pg.session_lock(self.conn, _token_key(self.token))
                self.collected = collect_stale(self.conn, self.token)
                self.template = ensure_template(self.conn, self.admin, settings, seed=seed)
        except BaseException:
            self.conn.close()
            raise
        if background:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dbkit-clones")

    def url(self, dbname: str) -> DbURL:
        return owner_url(self.admin, dbname, self.template.owner)

    def new_name(self, tag: str = "") -> str:
        self._seq += 1
        return f"{PLUGIN_PREFIX}{self.token}_{self.worker}_{tag or self._seq}"

    def clone(self, tag: str = "") -> DbURL:
        """A fresh clone: the one made in the background if ready, else made now."""
        name = None
        if self._next is not None:
            future, name = self._next
            self._next = None
            try:
                future.result()
            except Exception as exc:  # e.g. the template was replaced: the direct path copes
                log.debug("background clone %s failed (%s); cloning directly", name, exc)
                self.alive.discard(name)
                self._failed.append(name)
                name = None
        if name is None:
            name = self.new_name(tag)
            self._clone_now(name)
        if self._pool is not None and not tag:
            nxt = self.new_name()
            self.alive.add(nxt)  # before it exists, so close() drops it whatever happens
            self._next = (self._pool.submit(self._bg, clone_job=nxt), nxt)
        return self.url(name)

    def _clone_now(self, name: str) -> None:
        import psycopg

        try:
            pg.clone_database(self.conn, self.template.name, name, self.template.owner)
        except psycopg.errors.InvalidCatalogName:
            # another run rebuilt the template for newer files and dropped ours: follow it
            self.template = ensure_template(self.conn, self.admin, self.settings, seed=self.seed)
            pg.clone_database(self.conn, self.template.name, name, self.template.owner)
        except psycopg.Error as exc:
            with db_errors(self.conn):
                raise exc
        self.alive.add(name)

    def drop(self, dbname: str) -> None:
        self.alive.discard(dbname)
        if self._pool is not None:
            self._pool.submit(self._bg, drop_job=dbname)
            return
        try:
            with db_errors(self.conn):
                pg.drop_database(self.conn, dbname)
        except BaseException:
            self.alive.add(dbname)
            raise

    def _bg(self, clone_job: str | None = None, drop_job: str | None = None) -> None:
        """Runs in the worker thread, on its own connection (opened on first use)."""
        if self._bg_conn is None or self._bg_conn.closed:
            self._bg_conn = connect(self.admin, self.settings, autocommit=True)
        if clone_job:
            pg.clone_database(self._bg_conn, self.template.name, clone_job, self.template.owner)
        if drop_job:
            try:
                pg.drop_database(self._bg_conn, drop_job)
            except Exception as exc:
                log.debug("background drop of %s failed (%s); retried at close", drop_job, exc)
                self._failed.append(drop_job)

    def close(self) -> None:
        """Wait for background work, drop every clone still alive, end the session (and with
        it the token lock)."""
        try:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
            if not self.conn.closed:
                for name in sorted(self.alive | set(self._failed)):
                    with contextlib.suppress(Exception):
                        pg.drop_database(self.conn, name)
                self.alive.clear()
        finally:
            if self._bg_conn is not None:
                self._bg_conn.close()
            self.conn.close()
