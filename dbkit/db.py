"""Connections: the one place that turns a ``DbURL`` into a psycopg connection, the one place
that turns psycopg's errors into dbkit's named errors, and the one wait for a server."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, LiteralString, NamedTuple, cast

from dbkit.errors import (
    ConfigError,
    Conflict,
    ConnectError,
    DbkitError,
    InvalidName,
    LockTimeout,
    PermissionDenied,
    ServerRefused,
    first_line,
)
from dbkit.urls import DbURL

if TYPE_CHECKING:
    import psycopg
    from psycopg import sql
    from psycopg.abc import Params

    from dbkit.settings import Settings

    # What Connection.execute takes (psycopg 3.3 adds template strings, which dbkit never uses).
    Query = LiteralString | bytes | sql.SQL | sql.Composed

log = logging.getLogger("dbkit")


def connect(url: DbURL, settings: Settings, *, autocommit: bool = False,
            timeout_ms: int | None = None) -> psycopg.Connection[tuple[Any, ...]]:
    """A connection to ``url``; ConnectError (or ConfigError for a URL libpq refuses) if not."""
    import psycopg

    kw = url.connect_kwargs()
    seconds = max(1, -(-timeout_ms // 1000)) if timeout_ms else settings.connect_timeout_s
    kw.setdefault("connect_timeout", str(seconds))
    kw.setdefault("application_name", "dbkit")
    shown = url.with_(params=tuple(p for p in url.params if p[0] != "application_name"))
    log.debug("connecting to %s", shown)
    try:
        return psycopg.connect(autocommit=autocommit, **cast("dict[str, Any]", kw))
    except psycopg.OperationalError as exc:
        if _BAD_OPTION_VALUE.search(str(exc)):  # libpq refused the URL itself: no server involved
            raise ConfigError(f"invalid connection option in {shown}: {first_line(exc)}") from None
        err = connect_error(exc, shown)
        if "refused" in err.message.lower() and _project_server_stopped(settings):
            err.hint = "this project's local server is stopped: run dbkit server start (or setup)"
        raise err from None
    except psycopg.ProgrammingError as exc:  # e.g. an unknown query parameter in the URL
        raise ConfigError(f"invalid connection option in {shown}: {first_line(exc)}") from None


_BAD_OPTION_VALUE = re.compile(r"invalid [a-z_]+ value")


def connect_error(exc: Exception, url: DbURL) -> ConnectError:
    """Why a login failed, in words that say what to fix."""
    import getpass

    if url.user is None:  # libpq logs in as the OS user: name that one, not "None"
        try:
            url = url.with_(user=getpass.getuser())
        except (KeyError, OSError):
            pass
    text = first_line(exc)
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


def _project_server_stopped(settings: Settings) -> bool:
    from dbkit.server import LocalServer

    server = LocalServer(settings.data_dir, settings.pg_bin)
    return server.initialized() and not server.running()


# -- the one translator ---------------------------------------------------------------------
# SQLSTATE -> what it means for the user. Exact codes first, then their class (first two
# characters). Anything else the server refuses is ServerRefused (exit 18): expected refusals
# never look like a bug (exit 1).
_BY_CODE: dict[str, type[DbkitError]] = {
    "42501": PermissionDenied,  # insufficient_privilege
    "55P03": LockTimeout,  # lock_not_available: lock_timeout ran out
    "55006": Conflict,  # object_in_use: open sessions
    "42P04": Conflict,  # duplicate_database
    "42710": Conflict,  # duplicate_object (a role made meanwhile)
    "2BP01": Conflict,  # dependent_objects_still_exist
    "40001": Conflict,  # serialization_failure
    "40P01": Conflict,  # deadlock_detected
    "3D000": ConnectError,  # invalid_catalog_name: the database went away
    "53300": ConnectError,  # too_many_connections
    "57P01": ConnectError,  # admin_shutdown
    "57P02": ConnectError,  # crash_shutdown
    "57P03": ConnectError,  # cannot_connect_now
    "42939": InvalidName,  # reserved_name
}
_BY_CLASS: dict[str, type[DbkitError]] = {
    "08": ConnectError,  # connection exceptions
    "28": ConnectError,  # invalid authorization
    "23": Conflict,  # integrity constraint violations
}


def error_class(exc: BaseException, *, within: type[DbkitError] | None = None,
                data: type[DbkitError] | None = None) -> type[DbkitError]:
    """Which of dbkit's errors ``exc`` is (see ``translate`` for ``within`` and ``data``)."""
    import psycopg

    state = getattr(exc, "sqlstate", None) or ""
    if state == "55P03":
        return LockTimeout
    if within is not None:
        return within
    if not state:
        if isinstance(exc, psycopg.OperationalError):
            return ConnectError  # the connection broke: no server verdict
        if isinstance(exc, psycopg.InterfaceError | psycopg.ProgrammingError):
            return ConfigError
        return ServerRefused
    if data is not None and state.startswith("22"):
        return data
    return _BY_CODE.get(state) or _BY_CLASS.get(state[:2]) or ServerRefused


class ServerSaid(NamedTuple):
    """What the server said about a failed statement (all None when it said nothing: the
    connection broke, or the driver refused before sending)."""

    primary: str | None
    detail: str | None
    sqlstate: str | None
    position: int | None  # 1-based character position in the statement


def server_said(exc: BaseException) -> ServerSaid:
    diag = getattr(exc, "diag", None)
    if diag is None:
        return ServerSaid(None, None, None, None)
    pos = diag.statement_position
    return ServerSaid(diag.message_primary, diag.message_detail, getattr(exc, "sqlstate", None),
                      int(pos) if pos else None)


def describe(exc: BaseException) -> str:
    """The server's message (and its detail), else the driver's first line."""
    said = server_said(exc)
    if not said.primary:
        return first_line(exc)
    return f"{said.primary} ({said.detail})" if said.detail else said.primary


def translate(exc: BaseException, doing: str, *, within: type[DbkitError] | None = None,
              data: type[DbkitError] | None = None,
              hints: Mapping[type[DbkitError], str] | None = None) -> DbkitError:
    """psycopg's ``exc`` as one of dbkit's named errors: ``"<doing>: <the server's message>"``.

    ``within``: the operation runs the user's own statements (a migration), so any failure is
    that error, except a lock timeout (exit 9 says "retry later"). ``data``: the error for
    invalid values (SQLSTATE class 22), e.g. bad seed input. ``hints`` overrides the hint of a
    kind with one that fits the operation.
    """
    kind = error_class(exc, within=within, data=data)
    message = describe(exc)
    if kind is ConnectError and not getattr(exc, "sqlstate", None):
        message = f"lost the connection to the server: {message}"
    return kind(f"{doing}: {message}", hint=(hints or {}).get(kind))


def as_refusal(exc: BaseException) -> DbkitError | None:
    """A psycopg error that no caller translated, as a refusal with its documented exit code,
    or None when it is not one: not psycopg's, or the kind that means dbkit itself sent
    something wrong (SQLSTATE class 42 but for privileges and reserved names, internal errors,
    misuse of the driver), which stays a bug (exit 1)."""
    import psycopg

    if not isinstance(exc, psycopg.Error):
        return None
    state = getattr(exc, "sqlstate", None) or ""
    if (state[:2] in ("42", "XX") and state not in _BY_CODE) or (
            not state and not isinstance(exc, psycopg.OperationalError)):
        return None
    return translate(exc, "the server refused")


# -- small helpers --------------------------------------------------------------------------
def value(conn: psycopg.Connection[Any], query: Query, params: Params | None = None) -> Any:
    """The first column of the one row ``query`` returns (an aggregate, an EXISTS, ...)."""
    row = conn.execute(query, params).fetchone()
    assert row is not None, "the query returns exactly one row"
    return row[0]


def row(conn: psycopg.Connection[Any], query: Query, params: Params | None = None
        ) -> tuple[Any, ...]:
    """The one row ``query`` returns."""
    found = conn.execute(query, params).fetchone()
    assert found is not None, "the query returns exactly one row"
    return tuple(found)


# -- the one wait ---------------------------------------------------------------------------
def wait_ready(url: DbURL, settings: Settings, timeout_ms: int) -> float:
    """Return (seconds waited) as soon as the server at ``url`` accepts connections, like
    pg_isready: no login is needed, so a wrong password is the next step's error, not a wait."""
    from psycopg import pq
    from psycopg.conninfo import make_conninfo

    start = time.monotonic()
    deadline = start + timeout_ms / 1000
    kw = url.connect_kwargs()
    last = "no response"
    while True:
        left = deadline - time.monotonic()
        kw["connect_timeout"] = str(max(2, min(int(left) + 1, settings.connect_timeout_s)))
        status = pq.PGconn.ping(make_conninfo(**kw).encode())
        if status == pq.Ping.OK:
            return round(time.monotonic() - start, 3)
        if status == pq.Ping.NO_ATTEMPT:
            raise ConfigError(f"cannot try to connect to {url}: invalid connection parameters")
        last = ("the server is starting up or shutting down" if status == pq.Ping.REJECT
                else "no response")
        left = deadline - time.monotonic()
        if left <= 0:
            raise ConnectError(f"server at {url} did not accept connections within "
                               f"{timeout_ms / 1000:g}s ({last})",
                               hint="check the host/port and that the server is running")
        time.sleep(min(0.1, left))  # the last attempt lands on the deadline
