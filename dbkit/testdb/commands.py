"""``dbkit testdb create`` / ``drop``: N isolated databases for a CI job, cloned from the test
template (``dbkit.testdb.template``), all or none; and dropping them again."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dbkit import pg
from dbkit.db import connect
from dbkit.errors import ConfigError, Conflict, InvalidName
from dbkit.testdb.clones import collect_stale
from dbkit.testdb.pool import AUTO_MAKERS
from dbkit.testdb.template import (
    BUILD_PREFIX,
    CLI_PREFIX,
    OWNER,
    TEMPLATE_PREFIX,
    build_lock,
    check_prefix,
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

# How many clones ``create`` makes at once, each on its own admin connection: the pool's
# run-wide number of makers (past a few, parallel clones only queue on the server's disk and
# CPUs).
CONNECTIONS = AUTO_MAKERS


@contextlib.contextmanager
def _admin_session(admin: DbURL, settings: Settings) -> Iterator[psycopg.Connection[Any]]:
    with connect(admin, settings, autocommit=True) as conn, db_errors(conn):
        yield conn


@dataclass
class CreateResult:
    template: str
    template_built: bool
    databases: list[str]
    urls: list[str]  # masked unless reveal=True
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def create(settings: Settings, admin: DbURL, *, count: int = 1, prefix: str = CLI_PREFIX,
           seed: bool = False, reveal: bool = False, allow_production: bool = False,
           connections: int | None = None) -> CreateResult:
    """N fresh databases PREFIX1..PREFIXN at the latest schema (existing ones are replaced),
    cloned on up to ``connections`` admin connections at once (default ``CONNECTIONS``).
    Refused in production unless ``allow_production``: test databases belong on test servers."""
    settings.refuse_in_production("dbkit testdb create", allowed=allow_production)
    check_prefix(prefix)
    if count < 1:
        raise ConfigError("--count must be at least 1")
    if connections is not None and connections < 1:
        raise ConfigError("connections must be at least 1")
    names = [f"{prefix}{i}" for i in range(1, count + 1)]
    for n in names:
        if len(n.encode()) > 63:
            raise InvalidName(f"test database name {n!r} is longer than 63 bytes")
    started = time.perf_counter()
    with _admin_session(admin, settings) as conn:
        tpl = ensure_template(conn, admin, settings, seed=seed)
        foreign = conn.execute(
            "SELECT datname FROM pg_database WHERE datname = ANY(%s)"
            " AND datdba <> (SELECT oid FROM pg_roles WHERE rolname = %s)", (names, OWNER)).fetchall()
        if foreign:
            raise Conflict(f"database {foreign[0][0]!r} exists and is not a dbkit test database",
                           hint="choose another --prefix")
        _make_clones(admin, settings, conn, tpl.name, names,
                     min(count, connections or CONNECTIONS))
    urls = [owner_url(admin, n).render(reveal=reveal) for n in names]
    return CreateResult(template=tpl.name, template_built=tpl.built, databases=names, urls=urls,
                        seconds=round(time.perf_counter() - started, 3))


def _make_clones(admin: DbURL, settings: Settings, conn: psycopg.Connection[Any], template: str,
                 names: list[str], k: int) -> None:
    """Replace each of ``names`` by a clone of ``template``, ``k`` at a time: ``conn`` and k-1
    fresh admin connections, each in a thread of its own taking the next name. All or none:
    a failure on any of them, or an interruption of the main thread (which only waits, so
    that Ctrl-C and SIGTERM land there), stops the others and drops every name begun."""
    conns = [conn]
    work = _Clones(template, names)
    threads: list[threading.Thread] = []
    pids: list[int] = []
    try:
        while len(conns) < k:  # all opened here, before any clone: every session is known
            conns.append(connect(admin, settings, autocommit=True))
        pids = [c.info.backend_pid for c in conns]
        work.running = len(conns)
        threads = [threading.Thread(target=work.run, args=(c,), name=f"dbkit-clone-{i}",
                                    daemon=True) for i, c in enumerate(conns)]
        for t in threads:
            t.start()
        while not work.done.wait(0.05):  # a timed wait: a signal is handled between waits
            pass
        if work.failure is not None:
            raise work.failure
    except BaseException:  # all N or none: a half-made set is no use to a test run
        begun = work.stop()
        if threads:  # else nothing was begun: only connections were being opened
            _undo_clones(admin, settings, pids, begun)
            for t in threads:  # their sessions are gone: each thread's statement has failed
                t.join(10)
        raise
    finally:
        if not any(t.is_alive() for t in threads):  # never close one a thread still uses
            for c in conns[1:]:
                with contextlib.suppress(Exception):
                    c.close()


class _Clones:
    """The names still to clone, handed out in order to ``_make_clones``' threads, and what
    they have begun (a name counts from the moment a thread takes it: its CREATE DATABASE may
    land even when the statement is cut off)."""

    def __init__(self, template: str, names: list[str]) -> None:
        self.template = template
        self.todo = deque(names)
        self.begun: list[str] = []
        self.failure: BaseException | None = None
        self.running = 0
        self.done = threading.Event()
        self._stopped = False
        self._lock = threading.Lock()

    def _next(self) -> str | None:
        with self._lock:
            if self._stopped or not self.todo:
                return None
            name = self.todo.popleft()
            self.begun.append(name)
            return name

    def stop(self) -> list[str]:
        """No thread takes another name after this; returns every name taken."""
        with self._lock:
            self._stopped = True
            return list(self.begun)

    def run(self, conn: psycopg.Connection[Any]) -> None:
        try:
            while (name := self._next()) is not None:
                pg.drop_database(conn, name)
                pg.clone_database(conn, self.template, name, OWNER)
        except BaseException as exc:
            with self._lock:
                # the first failure is the one to report; those after a stop are its echo
                if self.failure is None and not self._stopped:
                    self.failure = exc
                    self.done.set()
        finally:
            with self._lock:
                self.running -= 1
                if self.running == 0:
                    self.done.set()


def _undo_clones(admin: DbURL, settings: Settings, pids: list[int], names: list[str]) -> None:
    """Drop what a stopped create made. A CREATE DATABASE still running on one of the clone
    sessions may be completed by the server after all: end those sessions first, on a fresh
    connection, and wait for them to go, so the drops see everything they made. (Ended from
    the server's side: a connection is never closed under the thread using it.)"""
    try:
        with connect(admin, settings, autocommit=True) as fresh:
            fresh.execute("SELECT pg_terminate_backend(p) FROM unnest(%s::int[]) AS p", (pids,))
            deadline = time.monotonic() + 10
            while fresh.execute("SELECT 1 FROM pg_stat_activity WHERE pid = ANY(%s)",
                                (pids,)).fetchone() and time.monotonic() < deadline:
                time.sleep(0.01)
            for n in names:
                with contextlib.suppress(Exception):
                    pg.drop_database(fresh, n)
    except Exception as exc:  # report the interruption, not this
        log.warning("could not drop the test databases this run made (%s): %s",
                    ", ".join(names), exc)


@dataclass
class DropResult:
    dropped: list[str]

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def drop(settings: Settings, admin: DbURL, *, prefix: str = CLI_PREFIX, everything: bool = False,
         allow_production: bool = False) -> DropResult:
    """Drop the test databases named PREFIX… (only those owned by the test role).

    ``everything`` also drops the templates, interrupted builds and the plugin's clones whose
    process is gone (clones of a live pytest run are left alone)."""
    settings.refuse_in_production("dbkit testdb drop", allowed=allow_production)
    check_prefix(prefix)
    dropped: list[str] = []
    with _admin_session(admin, settings) as conn:
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (OWNER,)).fetchone():
            return DropResult(dropped)
        for dbname, is_tpl in owned(conn, prefix, OWNER):
            pg.drop_database(conn, dbname, template=is_tpl)
            dropped.append(dbname)
        if everything:
            dropped += collect_stale(conn, own_token=None)
            with build_lock(conn):
                for pre in (BUILD_PREFIX, TEMPLATE_PREFIX):
                    for dbname, is_tpl in owned(conn, pre, OWNER):
                        pg.drop_database(conn, dbname, template=is_tpl)
                        dropped.append(dbname)
    return DropResult(dropped)
