"""``dbkit testdb create`` / ``drop``: N isolated databases for a CI job, cloned from the test
template (``dbkit.testdb.template``), all or none; and dropping them again."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dbkit import pg
from dbkit.db import connect
from dbkit.errors import ConfigError, Conflict, InvalidName
from dbkit.testdb.clones import collect_stale
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
           seed: bool = False, reveal: bool = False, allow_production: bool = False
           ) -> CreateResult:
    """N fresh databases PREFIX1..PREFIXN at the latest schema (existing ones are replaced).
    Refused in production unless ``allow_production``: test databases belong on test servers."""
    settings.refuse_in_production("dbkit testdb create", allowed=allow_production)
    check_prefix(prefix)
    if count < 1:
        raise ConfigError("--count must be at least 1")
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
        touched: list[str] = []  # including the one being cloned: it may land after all
        try:
            for n in names:
                touched.append(n)
                pg.drop_database(conn, n)
                pg.clone_database(conn, tpl.name, n, OWNER)
        except BaseException:  # all N or none: a half-made set is no use to a test run
            _undo_clones(admin, settings, conn, touched)
            raise
    urls = [owner_url(admin, n).render(reveal=reveal) for n in names]
    return CreateResult(template=tpl.name, template_built=tpl.built, databases=names, urls=urls,
                        seconds=round(time.perf_counter() - started, 3))


def _undo_clones(admin: DbURL, settings: Settings, conn: psycopg.Connection[Any],
                 names: list[str]) -> None:
    """Drop what an interrupted create made. A signal can land while a CREATE DATABASE is
    still running on ``conn``, which the server may then complete after all: end that session
    first, on a fresh connection, so the drops see everything it made."""
    pid = conn.info.backend_pid
    with contextlib.suppress(Exception):
        conn.close()
    try:
        with connect(admin, settings, autocommit=True) as fresh:
            fresh.execute("SELECT pg_terminate_backend(%s)", (pid,))
            deadline = time.monotonic() + 10
            while fresh.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s",
                                (pid,)).fetchone() and time.monotonic() < deadline:
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
