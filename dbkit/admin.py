"""Which server is the admin server: the connection allowed to create roles and databases.

Resolving it is an explicit step that commands take once, before they call the library,
because it may start dbkit's own local PostgreSQL. The documented order: ``--local``,
DBKIT_ADMIN_URL, libpq's PG* variables, this project's own server if it has one, whatever
answers at libpq's defaults, then a new local server.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from dbkit import NOTICE
from dbkit.db import connect
from dbkit.errors import ConfigError, ConnectError, DbkitError
from dbkit.server import LocalServer
from dbkit.urls import DbURL

if TYPE_CHECKING:
    from dbkit.settings import Settings, Target

log = logging.getLogger("dbkit")

LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1"}


def resolve(settings: Settings, *, start_local: bool = True) -> DbURL:
    """The admin server's URL (its maintenance database unless the URL names another)."""
    if settings.local:
        return start_project_server(settings)
    configured = configured_url(settings)
    if configured is not None:
        if settings.admin_url is None:  # libpq's variables: say which, if nothing answers there
            try:
                connect(configured, settings, autocommit=True).close()
            except ConnectError as exc:
                raise ConnectError(f"{exc.message} (the admin server named by "
                                   f"{configured_by(settings)})", hint=exc.hint) from None
        return configured
    if project_server(settings).initialized():
        # This project already has its own server: keep using it rather than switching to
        # whatever may answer at libpq's defaults later (and skip the probe).
        return start_project_server(settings)
    defaults = DbURL(dbname="postgres")
    try:
        connect(defaults, settings, autocommit=True, timeout_ms=2000).close()
        return defaults
    except ConnectError as exc:
        low = exc.message.lower()
        nothing_there = ("refused" in low or "no such file" in low or "timeout" in low
                         or "could not translate" in low)
        if not start_local:
            raise ConnectError(f"a server answers at the libpq defaults but: {exc.message}",
                               hint="set DBKIT_ADMIN_URL, or pass --local for dbkit's own "
                               "server") from None
        if not nothing_there:
            # A system PostgreSQL that will not let this user in (peer authentication, no
            # role for them) is not ours to use: dbkit's own server is the main job's way.
            log.warning("the PostgreSQL at libpq's defaults refused the login (%s); using "
                        "dbkit's own server in %s instead", exc.message, settings.data_dir)
    return start_project_server(settings)


def configured_url(settings: Settings) -> DbURL | None:
    """DBKIT_ADMIN_URL, else the PG* variables, else None (nothing configured)."""
    if settings.admin_url is not None:
        return settings.admin_url.with_(dbname=settings.admin_url.dbname or "postgres")
    if settings.pg_env:
        env = settings.pg_env
        params = tuple((key, env[var]) for var, key in (
            ("PGHOSTADDR", "hostaddr"), ("PGSERVICE", "service"), ("PGPASSFILE", "passfile"),
            ("PGSERVICEFILE", "servicefile")) if env.get(var))
        return DbURL(user=env.get("PGUSER"), password=env.get("PGPASSWORD"),
                     host=env.get("PGHOST"), port=int(env["PGPORT"]) if env.get("PGPORT") else None,
                     dbname=env.get("PGDATABASE", "postgres"), params=params)
    return None


def configured_by(settings: Settings) -> str:
    """Which setting named the admin server, for an error that says where to look."""
    if settings.admin_url is not None:
        return "DBKIT_ADMIN_URL"
    return ", ".join(f"{k}={settings.pg_env[k]}" if k != "PGPASSWORD" else k
                     for k in sorted(settings.pg_env))


def wait_target(settings: Settings) -> DbURL:
    """The server ``dbkit wait`` waits for: the admin's, else DATABASE_URL's, else libpq's
    defaults. Never starts dbkit's local server (that would defeat the point of waiting)."""
    configured = configured_url(settings)
    if configured is not None:
        return configured
    if settings.database_url is not None:
        return settings.database_url
    return DbURL(dbname="postgres")


def for_diagnosis(settings: Settings) -> tuple[DbURL | None, str]:
    """The admin server for ``dbkit doctor``, which never starts a server: the project's own
    counts only while it runs. (None, why) when there is none to use."""
    server = project_server(settings)
    if not (settings.local or configured_url(settings) is not None or server.running()):
        return None, "no admin connection configured (DBKIT_ADMIN_URL)"
    try:
        return resolve(settings, start_local=settings.local), ""
    except DbkitError as exc:
        return None, f"admin connection failed: {exc.message}"


def maintenance(admin: DbURL, dbname: str) -> DbURL:
    """The admin URL, moved to the maintenance database when it names ``dbname`` itself: a
    database cannot be dropped or renamed from a session inside it."""
    return admin.with_(dbname="postgres") if admin.dbname == dbname else admin


def project_server(settings: Settings) -> LocalServer:
    """This project's own local PostgreSQL (it may not exist yet)."""
    return LocalServer(settings.data_dir, settings.pg_bin, pg_search=settings.pg_search)


def start_project_server(settings: Settings) -> DbURL:
    server = project_server(settings)
    if server.start():
        # Said at the default level: the server outlives the command, and the user should
        # know there is one to stop.
        log.log(NOTICE, "started dbkit's own PostgreSQL in %s on port %s; it keeps running "
                "until 'dbkit server stop'", settings.data_dir, server.state().get("port"))
    return server.admin_url()


def is_local(host: str | None) -> bool:
    """A host that means this machine: libpq's default (none), a socket directory, loopback."""
    return not host or host.startswith("/") or host in LOCAL_HOSTS


def server_of(url: DbURL, settings: Settings) -> tuple[str, int]:
    """Where ``url`` connects, as (host, port), libpq's defaults filled in from PG* variables;
    every local way in (socket directory, localhost, loopback) counts as one host, "local"."""
    host = url.host or settings.pg_env.get("PGHOST") or "local"
    if is_local(host):
        host = "local"
    port = url.port or int(settings.pg_env.get("PGPORT") or 5432)
    return host.lower(), port


def check_same_server(target: Target, admin: DbURL) -> None:
    """Provisioning acts on the admin's server: refuse when the application's URL names
    another one, or create and drop would quietly act somewhere the user did not mean.
    DBKIT_MIGRATE_URL, when set, is the direct way to the server behind a pooler."""
    admin_at = server_of(admin, target.settings)
    # An HA URL names several hosts; the admin's server being one of them is enough.
    every = [server_of(u, target.settings) for u in target.migrate_url.each_host()]
    if admin_at in every:
        return
    where = every[0]
    named = "DBKIT_MIGRATE_URL" if target.migrate_url != target.url else "DATABASE_URL"
    raise ConfigError(
        f"{named} names the server at {_shown(where)}, but the admin connection is to "
        f"{_shown(admin_at)}; nothing was changed",
        hint="point DBKIT_ADMIN_URL at the server of DATABASE_URL (if DATABASE_URL goes "
        "through a pooler, set DBKIT_MIGRATE_URL to the direct URL)")


def _shown(server: tuple[str, int]) -> str:
    host, port = server
    return f"{'localhost' if host == 'local' else host}:{port}"
