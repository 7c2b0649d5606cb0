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
from typing import TYPE_CHECKING

from dbkit.db import admin_url, connect
from dbkit.testdb import (
    LOCK_CLASS,
    OWNER,
    PLUGIN_PREFIX,
    clone,
    db_errors,
    drop_database,
    ensure_template,
    owned,
    owner_url,
)

if TYPE_CHECKING:
    import psycopg

    from dbkit.settings import Settings
    from dbkit.urls import DbURL

log = logging.getLogger("dbkit")

_TOKEN_CLASS = LOCK_CLASS + 1  # advisory lock class id; objid = a live process's token


def _token_key(token: str) -> int:
    value = int(token, 16)
    return value - (1 << 32) if value >= (1 << 31) else value  # advisory objid is int4


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
        if not conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (_TOKEN_CLASS, key)).fetchone()[0]:
            continue  # its process is alive
        try:
            for dbname in names:
                drop_database(conn, dbname)
                dropped.append(dbname)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s, %s)", (_TOKEN_CLASS, key))
    if dropped:
        log.info("collected %d test database(s) left by killed runs", len(dropped))
    return dropped


class CloneSession:
    """One process's (or xdist worker's) source of clones; used by the pytest plugin.

    Holds an admin connection for its whole life, and on it the advisory lock on its token:
    the server releases that lock when the process dies, which is how leftovers are recognised.
    """

    def __init__(self, settings: Settings, *, worker: str = "main", seed: bool = False) -> None:
        self.settings = settings
        self.seed = seed
        self.token = secrets.token_hex(4)
        self.worker = "".join(c for c in worker if c.isalnum())[:8] or "main"
        self._seq = 0
        self.admin = admin_url(settings)
        self.conn = connect(self.admin, settings, autocommit=True)
        self.alive: set[str] = set()
        try:
            with db_errors():
                self.conn.execute("SELECT pg_advisory_lock(%s, %s)",
                                  (_TOKEN_CLASS, _token_key(self.token)))
                self.collected = collect_stale(self.conn, self.token)
                self.template = ensure_template(self.conn, self.admin, settings, seed=seed)
        except BaseException:
            self.conn.close()
            raise

    def url(self, dbname: str) -> DbURL:
        return owner_url(self.admin, dbname, self.template.owner)

    def new_name(self, tag: str = "") -> str:
        self._seq += 1
        return f"{PLUGIN_PREFIX}{self.token}_{self.worker}_{tag or self._seq}"

    def clone(self, tag: str = "") -> DbURL:
        import psycopg

        name = self.new_name(tag)
        try:
            clone(self.conn, self.template.name, name)
        except psycopg.errors.InvalidCatalogName:
            # another run rebuilt the template for newer files and dropped ours: follow it
            self.template = ensure_template(self.conn, self.admin, self.settings, seed=self.seed)
            clone(self.conn, self.template.name, name)
        except psycopg.Error as exc:
            with db_errors():
                raise exc
        self.alive.add(name)
        return self.url(name)

    def drop(self, dbname: str) -> None:
        with db_errors():
            drop_database(self.conn, dbname)
        self.alive.discard(dbname)

    def close(self) -> None:
        """Drop every clone still alive, then end the session (and release the token)."""
        try:
            if not self.conn.closed:
                for name in sorted(self.alive):
                    with contextlib.suppress(Exception):
                        self.drop(name)
        finally:
            self.conn.close()
