"""``dbkit setup``: create (if needed) → migrate → seed sample data, like Rails' db:prepare.

Idempotent: on an up-to-date database every step reports that it had nothing to do.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dbkit.db import admin_url
from dbkit.errors import DbkitError
from dbkit.urls import DbURL

if TYPE_CHECKING:
    from dbkit.settings import Settings

log = logging.getLogger("dbkit")

DEFAULT_NAME = "posts"  # role and database when DATABASE_URL is unset


@dataclass
class SetupResult:
    url: str  # masked
    env_file: str | None
    changed: bool
    steps: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def default_app_url(admin: DbURL) -> DbURL:
    """Without DATABASE_URL: role and database 'posts' on the admin's server."""
    return DbURL(user=DEFAULT_NAME, host=admin.host, port=admin.port, dbname=DEFAULT_NAME,
                 params=tuple((k, v) for k, v in admin.params if k in ("sslmode", "sslrootcert")))


def setup(settings: Settings, *, seed: bool = True, rotate: bool = False) -> SetupResult:
    started = time.perf_counter()
    return complete(settings, ensure(settings, rotate=rotate), seed=seed, started=started)


def complete(settings: Settings, app: Ensured, *, seed: bool, started: float) -> SetupResult:
    """After ``ensure``: migrate and seed, as one result."""
    try:
        steps = app.steps + fill(app.settings(settings), seed=seed)
    except BaseException as exc:
        # A setup that made the database leaves none behind when migrating or seeding fails:
        # the server is as it was before the command (what existed before is never dropped).
        if not app.created or not _undo_created(settings, app) or not isinstance(exc, DbkitError):
            raise
        said = exc.message.replace("; earlier migrations stay applied", "")
        raise type(exc)(f"{said}; setup removed the {' and '.join(app.created)} it had created",
                        hint="fix the cause and run dbkit setup again") from None
    return SetupResult(url=str(app.url), env_file=app.env_file,
                       changed=any(s["changed"] for s in steps), steps=steps,
                       seconds=round(time.perf_counter() - started, 3))


@dataclass
class Ensured:
    admin: DbURL
    url: DbURL  # with the password, when there is one
    env_file: str | None
    steps: list[dict[str, Any]]
    created: list[str]  # "role R", "database D": what this run made

    def settings(self, settings: Settings, dbname: str | None = None) -> Settings:
        """Settings for the next steps; with ``dbname``, aimed at that database instead, also
        for migrations run through DBKIT_MIGRATE_URL (a direct route to the same database)."""
        url = self.url.with_(dbname=dbname) if dbname else self.url
        out = dataclasses.replace(settings, database_url=url.render(reveal=True))
        if dbname and settings.migrate_url:
            direct = settings.migration_url().with_(dbname=dbname)
            out = dataclasses.replace(out, migrate_url=direct.render(reveal=True))
        return out


def ensure(settings: Settings, *, rotate: bool = False) -> Ensured:
    """The role(s) and database exist with their privileges (``dbkit create``), on the local
    server's current port; the password generated for a new role is read back from .env."""
    from dbkit import provision

    admin = admin_url(settings)
    url = settings.app_url() if settings.database_url else default_app_url(admin)
    moved = _follow_local_server(settings, admin, url)
    if moved:
        url = moved
    created = provision.create(settings, app_url=url, admin=admin, rotate=rotate)
    final = url
    if not url.password:
        # create generated the password and wrote it to .env, or a setup running beside this
        # one did (it held the lock first): read it back for the next steps
        from dbkit.settings import read_env_file

        written = read_env_file(settings.env_file).get("DATABASE_URL")
        if written and DbURL.parse(written).with_(password=None) == url:
            final = DbURL.parse(written)
    steps: list[dict[str, Any]] = [] if not moved else [{
        "step": "server", "changed": True,
        "detail": f"the local server moved to port {admin.port}; DATABASE_URL updated"}]
    steps.append({
        "step": "create", "changed": bool(created.statements),
        "detail": ", ".join(f"created {c}" for c in created.created) or
        (f"new password for role {created.role}" if rotate and created.statements else
         "converged privileges" if created.statements else "role and database exist"),
    })
    return Ensured(admin=admin, url=final, steps=steps, created=created.created, env_file=created.env_file or
                   (str(settings.env_file) if settings.env_file.exists() else None))


def _undo_created(settings: Settings, app: Ensured) -> bool:
    import psycopg
    from psycopg import sql

    from dbkit.db import connect

    try:
        with connect(app.admin, settings, autocommit=True) as conn:
            for what in reversed(app.created):  # the database first, then its role(s)
                kind, name = what.split(" ", 1)
                stmt = ("DROP DATABASE IF EXISTS {} WITH (FORCE)" if kind == "database"
                        else "DROP ROLE IF EXISTS {}")
                log.info("setup failed: undoing the creation of %s", what)
                conn.execute(sql.SQL(stmt).format(sql.Identifier(name)))
        return True
    except (psycopg.Error, DbkitError) as exc:  # report the first failure, not this one
        log.warning("could not undo what setup created (%s): %s", ", ".join(app.created), exc)
        return False


def fill(app_settings: Settings, *, seed: bool = True) -> list[dict[str, Any]]:
    """migrate → seed sample data, as the role in ``app_settings.database_url``."""
    from dbkit import migrate
    from dbkit import seed as seeding

    applied = migrate.migrate(app_settings)
    steps: list[dict[str, Any]] = [{
        "step": "migrate", "changed": bool(applied.applied),
        "detail": f"applied {len(applied.applied)} migration(s)" if applied.applied
        else "schema up to date"}]
    if seed:
        seeded = seeding.seed_sample(app_settings)
        rows = sum(seeded.inserted.values())
        steps.append({"step": "seed", "changed": rows > 0,
                      "detail": f"inserted {rows} sample row(s)" if rows else "sample data present"})
    return steps


def _follow_local_server(settings: Settings, admin: DbURL, url: DbURL) -> DbURL | None:
    """When this project's own server had to move to another port (its old one was taken
    while it was down), point the DATABASE_URL that dbkit wrote to .env at the new port."""
    from dbkit.db import local_server_exists
    from dbkit.server import LocalServer
    from dbkit.settings import read_env_file, update_env_file

    if not local_server_exists(settings) or url.host not in ("127.0.0.1", "localhost"):
        return None
    port = LocalServer(settings.data_path, settings.pg_bin).state().get("port")
    if port != admin.port or url.port == port:
        return None
    in_file = read_env_file(settings.env_file)
    if in_file.get("DATABASE_URL") != settings.database_url:  # set elsewhere: not ours to edit
        return None
    moved = url.with_(port=port)
    update_env_file(settings.env_file, "DATABASE_URL", moved.render(reveal=True))
    # The two-role app URL that create wrote beside it points at the same server: it moves
    # too, or the application itself could no longer connect.
    app = DbURL.parse(in_file["DBKIT_APP_URL"], "DBKIT_APP_URL") if "DBKIT_APP_URL" in in_file \
        else None
    if app and app.host == url.host and app.port == url.port:
        update_env_file(settings.env_file, "DBKIT_APP_URL", app.with_(port=port).render(reveal=True))
    return moved
