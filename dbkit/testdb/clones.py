"""Clones owned by a live process: the pytest plugin's source of test databases.

Each process (or xdist worker) has a random token. Its clones are named
``dbkit_pt_<token>_<worker>_<n>``, and each of its admin sessions (the main one and the clone
pool's, ``dbkit.testdb.pool``) holds an advisory lock on the token, in shared mode, for as long
as the process lives; the server releases them when the process dies, however it dies. A clone
whose token lock can be taken exclusively therefore belongs to a process none of whose sessions
is left, not even one still finishing a ``CREATE DATABASE``, and is collected by the next
session (``collect_stale``); clones of runs still going are left alone.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import secrets
from typing import TYPE_CHECKING

from dbkit import pg
from dbkit.db import connect
from dbkit.testdb.pool import Pool
from dbkit.testdb.template import (
    OWNER,
    PLUGIN_PREFIX,
    db_errors,
    ensure_template,
    fingerprint,
    owned,
    owner_url,
    signature,
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

    With ``background=True`` a pool (``dbkit.testdb.pool``) drops used clones in its own
    threads and sessions, and makes up to ``pool`` clones ahead with ``makers`` of them, so a
    test that does real work finds its database waiting and never waits for a drop; ``pool=0``
    makes none ahead (each clone is made when asked for). ``demand``, when known, is how many
    clones will be asked for (the pool makes no more than that). ``close()`` waits for the pool,
    then drops whatever is left.

    Before each clone is handed out, the migration files are checked (a few stat calls; the
    fingerprint again only if one changed): a clone of a stale template is never handed out.
    """

    def __init__(self, settings: Settings, admin: DbURL, *, worker: str = "main",
                 seed: bool = False, background: bool = False, pool: int = 0, makers: int = 1,
                 demand: int | None = None) -> None:
        self.settings = settings
        self.seed = seed
        self.token = secrets.token_hex(4)
        self.worker = "".join(c for c in worker if c.isalnum())[:8] or "main"
        self._seq = itertools.count(1)  # next() is atomic: the pool's threads name clones too
        self.admin = admin
        self.conn = connect(self.admin, settings, autocommit=True)
        self.alive: set[str] = set()
        self.pool: Pool | None = None
        try:
            with db_errors(self.conn):
                pg.session_lock_shared(self.conn, _token_key(self.token))
                self.collected = collect_stale(self.conn, self.token)
                self._signature = signature(settings, seed=seed)
                self.template = ensure_template(self.conn, self.admin, settings, seed=seed)
        except BaseException:
            self.conn.close()
            raise
        if background:
            self.pool = Pool(admin, settings, key=_token_key(self.token),
                             template=self.template.name, owner=self.template.owner,
                             new_name=self.new_name, size=pool, makers=makers, demand=demand)

    def url(self, dbname: str) -> DbURL:
        return owner_url(self.admin, dbname, self.template.owner)

    def new_name(self, tag: str = "") -> str:
        return f"{PLUGIN_PREFIX}{self.token}_{self.worker}_{tag or next(self._seq)}"

    def clone(self, tag: str = "") -> DbURL:
        """A fresh clone of the current template: one made ahead if the pool has it, else
        made now. ``tag`` names it (such clones are always made now)."""
        self._check_template()
        if self.pool is not None and not tag:
            name = self.pool.take()
            if name is not None:
                self.alive.add(name)
                return self.url(name)
        name = self.new_name(tag)
        self._clone_now(name)
        return self.url(name)

    def _check_template(self) -> None:
        """Follow edited migration files: rebuild the template, and let none of the clones made
        from the old one out."""
        now = signature(self.settings, seed=self.seed)
        if now == self._signature:
            return
        self._signature = now  # taken before the files are read: a later edit shows next time
        if fingerprint(self.settings, seed=self.seed) != self.template.fingerprint:
            self._rebuild()

    def _rebuild(self) -> None:
        with db_errors(self.conn):
            self.template = ensure_template(self.conn, self.admin, self.settings, seed=self.seed)
        if self.pool is not None:
            self.pool.invalidate(self.template.name)

    def _clone_now(self, name: str) -> None:
        import psycopg

        self.alive.add(name)  # before it exists: an interrupted CREATE may complete after all
        try:
            pg.clone_database(self.conn, self.template.name, name, self.template.owner)
        except psycopg.errors.InvalidCatalogName:
            # another run rebuilt the template for newer files and dropped ours: follow it
            self._rebuild()
            with db_errors(self.conn):
                pg.clone_database(self.conn, self.template.name, name, self.template.owner)
        except psycopg.Error as exc:
            with db_errors(self.conn):
                raise exc

    def drop(self, dbname: str) -> None:
        self.alive.discard(dbname)
        if self.pool is not None:
            self.pool.give_back(dbname)
            return
        try:
            with db_errors(self.conn):
                pg.drop_database(self.conn, dbname)
        except BaseException:
            self.alive.add(dbname)
            raise

    def close(self) -> None:
        """Wait for the pool (it drops what it holds), drop every clone still alive, end the
        session (and with it the token lock)."""
        try:
            left = self.pool.close() if self.pool is not None else []
            if not self.conn.closed:
                for name in sorted(self.alive | set(left)):
                    with contextlib.suppress(Exception):
                        pg.drop_database(self.conn, name)
                self.alive.clear()
        finally:
            self.conn.close()
