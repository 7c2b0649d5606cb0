"""Connections: one place that turns a DbURL into a psycopg connection and driver errors into
dbkit's named errors, and that decides which server is the admin server."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from dbkit.errors import ConfigError, Conflict, ConnectError
from dbkit.urls import DbURL

if TYPE_CHECKING:
    import psycopg

    from dbkit.settings import Settings

log = logging.getLogger("dbkit")


def connect(url: DbURL, settings: Settings, *, dbname: str | None = None,
            autocommit: bool = False, timeout: float | None = None) -> psycopg.Connection:
    import psycopg

    kw = url.connect_kwargs(dbname)
    kw.setdefault("connect_timeout", str(max(1, round(timeout or float(settings.connect_timeout)))))
    kw.setdefault("application_name", "dbkit")
    shown = url.with_(dbname=dbname or url.dbname,  # dbkit's own session label is noise here
                      params=tuple(p for p in url.params if p[0] != "application_name"))
    log.debug("connecting to %s", shown)
    try:
        return psycopg.connect(autocommit=autocommit, **kw)
    except psycopg.OperationalError as exc:
        if _BAD_OPTION_VALUE.search(str(exc)):  # libpq refused the URL itself: no server involved
            raise ConfigError(f"invalid connection option in {shown}: {_first_line(exc)}") from None
        err = connect_error(exc, shown)
        if "refused" in err.message.lower() and _local_server_stopped(settings):
            err.hint = "this project's local server is stopped: run dbkit server start (or setup)"
        raise err from None
    except psycopg.ProgrammingError as exc:  # e.g. an unknown query parameter in the URL
        raise ConfigError(f"invalid connection option in {shown}: {_first_line(exc)}") from None


_BAD_OPTION_VALUE = re.compile(r"invalid [a-z_]+ value")


def connect_error(exc: Exception, url: DbURL) -> ConnectError:
    text = _first_line(exc)
    low = str(exc).lower()
    if "no password supplied" in low or (url.password is None and "password auth" in low):
        return ConnectError(f"no password for role {url.user!r} at {url}: the URL has none",
                            hint="put the role's password in DATABASE_URL (or .env), or give the "
                            "role a new one with dbkit setup --rotate-password")
    if "password authentication failed" in low:
        return ConnectError(f"login refused for role {url.user!r} at {url}: wrong password",
                            hint="check the password in the URL (or .env)")
    if "does not exist" in low and "database" in low:
        return ConnectError(f"database {url.dbname!r} does not exist at {url}",
                            hint="run dbkit create (or dbkit setup)")
    if "does not exist" in low and "role" in low:
        return ConnectError(f"role {url.user!r} does not exist at {url}",
                            hint="run dbkit create (or dbkit setup)")
    return ConnectError(f"cannot connect to {url}: {text}")


def _first_line(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    # libpq puts the useful part after "connection failed: ... failed: "
    text = lines[0] if lines else exc.__class__.__name__
    return text.rsplit("failed: ", 1)[-1] if "failed: " in text else text


def wait_for(url: DbURL, settings: Settings, timeout: float, dbname: str | None = None) -> float:
    """Retry connecting until the server accepts connections; returns seconds waited."""
    start = time.monotonic()
    deadline = start + timeout
    while True:
        left = deadline - time.monotonic()
        try:
            connect(url, settings, dbname=dbname, autocommit=True,
                    timeout=max(1.0, min(left, 5.0))).close()
            return time.monotonic() - start
        except ConnectError as exc:
            if time.monotonic() + 0.2 >= deadline:
                raise ConnectError(f"{exc.message} (gave up after {timeout:g}s)",
                                   hint=exc.hint) from None
            time.sleep(0.2)


LOCK_CLASS = 0x64626B74  # "dbkt": dbkit's advisory-lock class (objids: 1 migrations, others here)


@contextmanager
def admin_lock(admin: DbURL, settings: Settings, key: str, what: str) -> Iterator[None]:
    """Serialise ``what`` across processes: a transaction-level advisory lock on a connection
    of its own, so it ends with this process whatever happens, even behind a pooler (a session
    lock can stay behind with a pooled server connection). Waits up to 2 minutes."""
    import psycopg

    with connect(admin, settings) as conn:
        conn.execute("SET LOCAL lock_timeout = '120s'")
        try:
            conn.execute("SELECT pg_advisory_xact_lock(%s::int4, hashtext(%s))", (LOCK_CLASS, key))
        except psycopg.errors.LockNotAvailable:
            raise Conflict(f"another dbkit {what} has been running for 2 minutes",
                           hint=f"wait for it to finish, or stop it, then {what} again") from None
        yield  # the transaction stays open (and idle) until the work is done


def away_from(admin: DbURL, db: str) -> DbURL:
    """The admin URL, moved to the maintenance database when it names ``db`` itself: a
    database cannot be dropped or renamed from a session inside it."""
    return admin.with_(dbname="postgres") if admin.dbname == db else admin


def admin_url(settings: Settings, start_local: bool = True) -> DbURL:
    """The admin server, in the documented order: --local, DBKIT_ADMIN_URL, PG* variables,
    this project's local server if it has one, whatever answers at libpq's defaults, then a
    new local server."""
    if settings.local:
        return local_admin_url(settings)
    configured = settings.admin()
    if configured:
        return configured.with_(dbname=configured.dbname or "postgres")
    if settings.pg_env:
        env = settings.pg_env
        return DbURL(user=env.get("PGUSER"), password=env.get("PGPASSWORD"),
                     host=env.get("PGHOST"), port=int(env["PGPORT"]) if env.get("PGPORT") else None,
                     dbname=env.get("PGDATABASE", "postgres"))
    if local_server_exists(settings):
        # This project already has its own server: keep using it rather than switching to
        # whatever may answer at libpq's defaults later (and skip the probe).
        return local_admin_url(settings)
    defaults = DbURL(dbname="postgres")
    try:
        connect(defaults, settings, autocommit=True, timeout=2).close()
        return defaults
    except ConnectError as exc:
        low = exc.message.lower()
        nothing_there = ("refused" in low or "no such file" in low or "timeout" in low
                         or "could not translate" in low)
        if not nothing_there or not start_local:
            raise ConnectError(f"a server answers at the libpq defaults but: {exc.message}",
                               hint="set DBKIT_ADMIN_URL, or pass --local for dbkit's own "
                               "server") from None
    return local_admin_url(settings)


def _local_server_stopped(settings: Settings) -> bool:
    return local_server_exists(settings) and not local_server_running(settings)


def local_server_running(settings: Settings) -> bool:
    from dbkit.server import LocalServer

    return local_server_exists(settings) and LocalServer(settings.data_path,
                                                         settings.pg_bin).running()


def local_server_exists(settings: Settings) -> bool:
    return (settings.data_path / "pgdata" / "PG_VERSION").exists()


def local_admin_url(settings: Settings) -> DbURL:
    from dbkit.server import LocalServer

    server = LocalServer(settings.data_path, settings.pg_bin)
    if server.start():
        log.info("started dbkit's local PostgreSQL in %s", settings.data_path)
    return server.admin_url()
