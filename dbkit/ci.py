"""CI helpers: ``dbkit wait`` (until the server accepts connections) and ``dbkit reset``
(a fresh database swapped in for the old one), guarded against production."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dbkit.db import admin_url
from dbkit.errors import ConfigError, ConnectError, Refused
from dbkit.urls import DbURL

if TYPE_CHECKING:
    from dbkit.settings import Settings


@dataclass
class WaitResult:
    url: str  # masked
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def wait_target(settings: Settings) -> DbURL:
    """The server to wait for: the admin's, else DATABASE_URL's, else libpq's defaults.
    Never starts dbkit's local server (that would defeat the point of waiting)."""
    if settings.admin() or settings.pg_env:
        return admin_url(settings, start_local=False)
    if settings.database_url:
        return settings.app_url()
    return DbURL(dbname="postgres")


def wait_ready(settings: Settings, timeout: float) -> WaitResult:
    """Return as soon as the server accepts connections (like pg_isready: no login needed)."""
    import psycopg
    from psycopg import pq

    url = wait_target(settings)
    start = time.monotonic()
    deadline = start + timeout
    kw = url.connect_kwargs()
    last = "no response"
    while True:
        left = deadline - time.monotonic()
        kw["connect_timeout"] = str(max(2, min(int(left) + 1, int(float(settings.connect_timeout)))))
        conninfo = psycopg.conninfo.make_conninfo(**kw)
        status = pq.PGconn.ping(conninfo.encode())
        if status == pq.Ping.OK:
            return WaitResult(url=str(url), seconds=round(time.monotonic() - start, 3))
        if status == pq.Ping.NO_ATTEMPT:
            raise ConfigError(f"cannot try to connect to {url}: invalid connection parameters")
        last = "the server is starting up or shutting down" if status == pq.Ping.REJECT \
            else "no response"
        left = deadline - time.monotonic()
        if left <= 0:
            raise ConnectError(f"server at {url} did not accept connections within "
                               f"{timeout:g}s ({last})",
                               hint="check the host/port and that the server is running")
        time.sleep(min(0.1, left))  # the last attempt lands on the deadline


def guard_reset(settings: Settings, env: str | None = None) -> None:
    """Refuse when either the settings or the --env flag say production."""
    if settings.production or env == "production":
        raise Refused("dbkit reset is refused in production (DBKIT_ENV=production)",
                      hint="reset drops the database: do it by hand, deliberately, if ever")


def reset(settings: Settings, *, seed: bool = True, env: str | None = None) -> Any:
    """Replace the application's database with a freshly set-up one (see dbkit.reset)."""
    from dbkit import reset as resetting

    guard_reset(settings, env)
    return resetting.reset(settings, seed=seed)
