"""Connections: the one place that turns a ``DbURL`` into a psycopg connection, the one place
that turns psycopg's errors into dbkit's named errors, the one look at who is in the way of a
lock, and the one wait for a server."""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, LiteralString, NamedTuple, cast

from dbkit.errors import (
    ConfigError,
    Conflict,
    ConnectError,
    DbkitError,
    InvalidName,
    LockTimeout,
    NoPrimary,
    PermissionDenied,
    ServerRefused,
    UnsupportedServer,
    first_line,
)
from dbkit.urls import DbURL, mask_secrets

if TYPE_CHECKING:
    import psycopg
    from psycopg import sql
    from psycopg.abc import Params

    from dbkit.settings import Settings

    # What Connection.execute takes (psycopg 3.3 adds template strings, which dbkit never uses).
    Query = LiteralString | bytes | sql.SQL | sql.Composed

log = logging.getLogger("dbkit")


class _DriverNotes(logging.Handler):
    """psycopg logs, as warnings, the errors it ignores while cleaning up after the error being
    raised anyway: ending a COPY, or rolling back, on a connection already lost. That raised
    error is the news (dbkit translates it into one line); the notes belong in the debug output,
    not as a second line on stderr, where Python's last-resort handler would print them since
    psycopg's logger has no handler of its own."""

    def emit(self, record: logging.LogRecord) -> None:
        log.debug("psycopg: %s", record.getMessage())


if not any(isinstance(h, _DriverNotes) for h in logging.getLogger("psycopg").handlers):
    logging.getLogger("psycopg").addHandler(_DriverNotes())


def connect(url: DbURL, settings: Settings, *, autocommit: bool = False,
            timeout_ms: int | None = None) -> psycopg.Connection[tuple[Any, ...]]:
    """A connection to ``url``; ConnectError (or ConfigError for a URL libpq refuses) if not."""
    import psycopg

    kw = url.connect_kwargs()
    seconds = max(1, -(-timeout_ms // 1000)) if timeout_ms else settings.connect_timeout_s
    kw.setdefault("connect_timeout", str(seconds))
    kw.setdefault("application_name", "dbkit")
    for key, value in libpq_settings(settings).items():
        kw.setdefault(key, value)
    shown = url.with_(params=tuple(p for p in url.params if p[0] != "application_name"))
    log.debug("connecting to %s", shown)
    try:
        conn = psycopg.connect(autocommit=autocommit, **cast("dict[str, Any]", kw))
    except psycopg.OperationalError as exc:
        if _BAD_OPTION_VALUE.search(str(exc)):  # libpq refused the URL itself: no server involved
            raise ConfigError(f"invalid connection option in {shown}: {first_line(exc)}") from None
        err = connect_error(exc, shown)
        if "refused" in err.message.lower() and _project_server_stopped(settings):
            err.hint = "this project's local server is stopped: run dbkit server start (or setup)"
        raise err from None
    except psycopg.ProgrammingError as exc:  # e.g. an unknown query parameter in the URL
        raise ConfigError(f"invalid connection option in {shown}: {first_line(exc)}") from None
    try:
        check_version(conn.info.server_version, shown)
    except UnsupportedServer:
        conn.close()
        raise
    return conn


def libpq_settings(settings: Settings) -> dict[str, str]:
    """What libpq would take from the environment but dbkit found in .env: every session
    dbkit opens (yoyo's too) gets it."""
    if "PGPASSFILE" in settings.pg_env:
        return {"passfile": settings.pg_env["PGPASSFILE"]}
    return {}


OLDEST_SUPPORTED = 130000  # PostgreSQL 13; older majors no longer get fixes (nor are tested)


def check_version(num: int, url: DbURL) -> None:
    """Refuse a server older than the oldest supported major, before anything is done there:
    dbkit's statements (and its tests) assume what 13 and later offer."""
    if num < OLDEST_SUPPORTED:
        major = num // 10000 if num >= 100000 else f"{num // 10000}.{num // 100 % 100}"
        raise UnsupportedServer(
            f"the server at {url} runs PostgreSQL {major}; dbkit supports "
            f"{OLDEST_SUPPORTED // 10000} and later")


_BAD_OPTION_VALUE = re.compile(r"invalid [a-z_]+ value")
# libpq's words when target_session_attrs=read-write (or primary) found only standbys.
_STANDBY_ONLY = re.compile(r"session is read-only|server is in hot standby mode")
_WANTS_PRIMARY = ("read-write", "primary")


def wants_primary(url: DbURL, settings: Settings) -> bool:
    """Whether libpq will settle only on a read-write server for ``url``."""
    attrs = dict(url.params).get("target_session_attrs") \
        or settings.pg_env.get("PGTARGETSESSIONATTRS", "")
    return attrs in _WANTS_PRIMARY


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
    if _STANDBY_ONLY.search(low):
        # libpq lists every host it tried, one per line; the first (often a dead host) is not
        # the reason, that every live one was read-only is.
        return NoPrimary(f"no read-write server at {url}: every host that answered is a "
                         "standby (read-only)")
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
              hints: Mapping[type[DbkitError], str] | None = None,
              lost: str | None = None) -> DbkitError:
    """psycopg's ``exc`` as one of dbkit's named errors: ``"<doing>: <the server's message>"``.

    ``within``: the operation runs the user's own statements (a migration), so any failure is
    that error, except a lock timeout (exit 9 says "retry later"). ``data``: the error for
    invalid values (SQLSTATE class 22), e.g. bad seed input. ``hints`` overrides the hint of a
    kind with one that fits the operation. ``lost``: what became of the work when the session
    ended under it (a ConnectError: the connection broke, the server shut down or crashed),
    added to the message, e.g. "nothing was loaded".
    """
    kind = error_class(exc, within=within, data=data)
    message = describe(exc)
    if kind is ConnectError and not getattr(exc, "sqlstate", None):
        message = f"lost the connection to the server: {message}"
    if kind is ConnectError and lost:
        message = f"{message}; {lost}"
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


# -- who is in the way of a lock -----------------------------------------------------------
# What the side connection of a LockWatch shows in pg_stat_activity.
WATCH_APP = "dbkit (lock watch)"
_WATCH_MIN_MS = 50  # below this a look cannot connect in time: no watch
_QUERY_SHOWN = 80  # characters of a blocker's query in a one-line error


@dataclass(frozen=True)
class Blocker:
    """A session in the way of a lock, as pg_stat_activity showed it. pid 0 is a prepared
    transaction; the other fields are None when the session had ended by the time of the look
    or this role may not see them (without pg_read_all_stats, another role's session shows
    its name and role only)."""

    pid: int
    application: str | None
    user: str | None
    client: str | None
    state: str | None
    xact_s: float | None  # how long its transaction had been open at the look
    query_s: float | None  # how long since its current (or last) query had started
    query: str | None  # first line, masked, truncated
    seen_at: float = 0.0  # time.monotonic() of the look: ages are told as of describe()

    def describe(self) -> str:
        if not self.pid:
            return "a prepared transaction (see pg_prepared_xacts)"
        if self.user is None:
            return f"server pid {self.pid} (ended since)"
        parts = [self.application or "no application_name", f"role {self.user}"]
        if self.state is None:
            parts.append("details hidden from this role (pg_read_all_stats shows them)")
            return f"server pid {self.pid} ({', '.join(parts)})"
        parts.append(f"from {self.client or 'local socket'}")
        since = time.monotonic() - self.seen_at if self.seen_at else 0.0
        if self.xact_s is not None:
            parts.append(f"{self.state}, in its transaction for {self.xact_s + since:.1f}s")
        elif self.query_s is not None:
            parts.append(f"{self.state} for {self.query_s + since:.1f}s")
        else:
            parts.append(self.state)
        if self.query:
            parts.append(f"{'running' if self.state == 'active' else 'last query'}: {self.query}")
        return f"server pid {self.pid} ({', '.join(parts)})"


def shown_query(text: str) -> str:
    """A query as an error message may quote it: its first line, passwords masked, cut to a
    length that keeps the message readable."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    first = mask_secrets(lines[0] if lines else "")
    if len(first) > _QUERY_SHOWN:
        return first[:_QUERY_SHOWN - 3].rstrip() + "..."
    return first + (" ..." if len(lines) > 1 else "")


def blockers(conn: psycopg.Connection[Any], pid: int) -> tuple[Blocker, ...]:
    """The sessions in the way of server process ``pid`` (``pg_blocking_pids``: holders of a
    conflicting lock and those queued before it), each once, in the server's order; empty when
    it waits for no lock."""
    found = conn.execute(
        "SELECT b.pid, a.application_name, a.usename, host(a.client_addr), a.state,"
        " extract(epoch FROM clock_timestamp() - a.xact_start)::float8,"
        " extract(epoch FROM clock_timestamp() - a.query_start)::float8,"
        " left(a.query, 4000)"
        " FROM unnest(pg_blocking_pids(%s)) WITH ORDINALITY AS b(pid, n)"
        " LEFT JOIN pg_stat_activity a ON a.pid = b.pid ORDER BY b.n", (pid,)).fetchall()
    now = time.monotonic()
    out: dict[int, Blocker] = {}
    for bpid, app, user, client, state, xact_s, query_s, query in found:
        out.setdefault(bpid, Blocker(bpid, app, user, client, state, xact_s, query_s,
                                     shown_query(query) if query else None, now))
    return tuple(out.values())


class _Look:
    """One watched block's look-out: its thread writes ``seen``; the block reads it after."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.seen: tuple[Blocker, ...] = ()
        self.timed_out_at: float | None = None  # time.monotonic() when a lock timeout ended it


class LockWatch:
    """Who is in the way when a statement waits for a lock until ``lock_timeout`` ends it.

    Once the lock timeout's error arrives the wait is over and ``pg_blocking_pids`` has nothing
    to say, so the look happens while the statement still waits::

        watch = LockWatch(url, settings, lock_timeout_ms)
        with watch.around(conn):      # statements on conn (a block of them is fine)
            conn.execute(...)
        ... except LockNotAvailable: watch.blamed(), watch.advice("raise --lock-timeout")

    ``around`` arms a timer that fires shortly before the lock timeout could expire (at
    ``lock_timeout - min(lock_timeout / 2, 1s)``). A block done by then costs a thread start,
    nothing more: no side connection. A block still running gets one (same URL and settings,
    a short connect timeout, application_name ``WATCH_APP``) that records the blockers of
    ``conn``'s server process, and looks again at the same interval while the block runs: any
    lock wait long enough to time out is seen at least once, with time to spare. What was seen
    stays for ``blamed`` and ``advice`` when the block ends in a lock timeout, only if it was
    seen during that last wait (not an earlier one that got its lock); a look that fails leaves
    them None (the caller then words the error as before), and never fails the block.
    """

    def __init__(self, url: DbURL, settings: Settings, lock_timeout_ms: int) -> None:
        self.settings = settings
        self.lock_ms = lock_timeout_ms
        params = tuple(p for p in url.params if p[0] != "application_name")
        self.side_url = url.with_(params=(*params, ("application_name", WATCH_APP)))
        self.lead_ms = min(lock_timeout_ms // 2, 1000)  # margin for connecting and looking
        self._look = _Look()

    @property
    def seen(self) -> tuple[Blocker, ...]:
        """Who blocked the wait that ended the last watched block in a lock timeout (empty:
        no such ending, or nobody seen)."""
        look = self._look
        if look.timed_out_at is None:
            return ()
        # That wait began lock_timeout before its error: anything seen earlier was in the way
        # of an earlier wait, which got its lock (the slack is for the round trips).
        began = look.timed_out_at - self.lock_ms / 1000 - 0.1
        return look.seen if look.seen and look.seen[0].seen_at >= began else ()

    @contextlib.contextmanager
    def around(self, conn: psycopg.Connection[Any]) -> Iterator[None]:
        """Watch the statements run on ``conn`` inside the block (see the class docstring)."""
        self._look = look = _Look()
        if self.lock_ms < _WATCH_MIN_MS:  # 0: no lock timeout, nothing will time out
            yield
            return
        thread = threading.Thread(target=self._watch, args=(look, conn.info.backend_pid),
                                  name="dbkit lock watch", daemon=True)
        try:
            thread.start()
        except RuntimeError as exc:  # no thread to spare: the block runs unwatched
            log.debug("no lock watch: %s", exc)
            thread = None
        if thread is None:
            yield
            return
        try:
            yield
        except BaseException as exc:
            look.done.set()
            if isinstance(exc, LockTimeout) or error_class(exc) is LockTimeout:
                look.timed_out_at = time.monotonic()
                # a look under way may be the one that sees who is in the way
                thread.join(self.lead_ms / 1000)
            raise
        finally:
            look.done.set()  # the thread ends by itself, closing its connection if it has one

    def _watch(self, look: _Look, pid: int) -> None:
        every = (self.lock_ms - self.lead_ms) / 1000
        if look.done.wait(every):
            return
        try:
            with connect(self.side_url, self.settings, autocommit=True,
                         timeout_ms=self.lead_ms) as side:
                side.prepare_threshold = None  # a pooler in transaction mode takes no prepares
                while not look.done.is_set():
                    with side.transaction():  # SET LOCAL: nothing left on a pooled connection
                        side.execute("SELECT set_config('statement_timeout', %s, true)",
                                     (f"{max(self.lead_ms, 10)}ms",))
                        found = blockers(side, pid)
                    if found:  # a look after the wait ended sees none: keep what the wait showed
                        look.seen = found
                    if look.done.wait(every):
                        return
        except Exception as exc:  # the look is a courtesy: the statement's own error is the news
            log.debug("could not look at who blocks server pid %s: %s", pid, exc)

    def blamed(self) -> str | None:
        """``"blocked by server pid 4711 (app, role, from, state and age, query)"``, or None."""
        seen = self.seen
        if not seen:
            return None
        shown = [b.describe() for b in seen[:3]]
        if len(seen) > 3:
            shown.append(f"{len(seen) - 3} more")
        listed = shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + " and " + shown[-1]
        return f"blocked by {listed}"

    def advice(self, raise_it: str) -> str | None:
        """A hint naming what to do about the blockers seen, ending "; or <raise_it>"; None
        when none were seen."""
        seen = self.seen
        if not seen:
            return None
        pids = [b.pid for b in seen if b.pid]
        if not pids:
            return ("finish the prepared transaction (COMMIT PREPARED or ROLLBACK PREPARED, see "
                    f"pg_prepared_xacts), then retry; or {raise_it}")
        ends = ", ".join(f"pg_terminate_backend({p})" for p in pids[:3])
        who, it = ("that session", "it") if len(pids) == 1 else ("those sessions", "them")
        return f"end {who} with SELECT {ends}, or wait for {it} to finish, then retry; or {raise_it}"


# -- the one wait ---------------------------------------------------------------------------
def wait_ready(url: DbURL, settings: Settings, timeout_ms: int) -> float:
    """Return (seconds waited) as soon as the server at ``url`` accepts connections, like
    pg_isready: no login is needed, so a wrong password is the next step's error, not a wait.
    When the URL asks for a read-write server (``target_session_attrs``), a standby's answer
    does not count: that needs a login, so then a wrong password fails at once."""
    from psycopg import pq
    from psycopg.conninfo import make_conninfo

    start = time.monotonic()
    deadline = start + timeout_ms / 1000
    kw = url.connect_kwargs()
    primary = wants_primary(url, settings)
    last = "no response"
    while True:
        left = deadline - time.monotonic()
        kw["connect_timeout"] = str(max(2, min(int(left) + 1, settings.connect_timeout_s)))
        status = pq.PGconn.ping(make_conninfo(**kw).encode())
        if status == pq.Ping.OK and not primary:
            return round(time.monotonic() - start, 3)
        if status == pq.Ping.OK:
            # A standby answers a ping too; only a login tells whether it is read-write. Any
            # other login failure (a wrong password) is the caller's error, not a wait.
            try:
                connect(url, settings, autocommit=True,
                        timeout_ms=int(kw["connect_timeout"]) * 1000).close()
                return round(time.monotonic() - start, 3)
            except NoPrimary:
                status, last = None, "only standbys answer; waiting for a read-write server"
        if status == pq.Ping.NO_ATTEMPT:
            raise ConfigError(f"cannot try to connect to {url}: invalid connection parameters")
        if status is not None:
            last = ("the server is starting up or shutting down" if status == pq.Ping.REJECT
                    else "no response")
        left = deadline - time.monotonic()
        if left <= 0:
            if primary and status is None:  # servers answered, but none would take writes
                raise NoPrimary(f"no read-write server at {url} within {timeout_ms / 1000:g}s "
                                f"({last})")
            raise ConnectError(f"server at {url} did not accept connections within "
                               f"{timeout_ms / 1000:g}s ({last})",
                               hint="check the host/port and that the server is running")
        time.sleep(min(0.1, left))  # the last attempt lands on the deadline
