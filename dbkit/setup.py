"""``dbkit setup`` and ``dbkit reset``: one command to a working database, like Rails'
``db:prepare`` and ``db:reset``, with their guards here in the library.

``setup``: create (if needed) → migrate → seed sample data. Idempotent: on an up-to-date
database every step reports that it had nothing to do. If migrating or seeding fails, the role
and database this run created are removed again (existing ones are never dropped).

``reset``: a fresh database in place of the old one, all or nothing. Drop-then-setup would leave
no database at all when setup fails half-way (a broken migration, a seed that no longer fits the
schema). Instead the new database is built beside the old one under a scratch name, and the two
swap names in one transaction (ALTER DATABASE … RENAME is transactional); the old one is
dropped only after that. Any failure before the swap drops the scratch database and leaves the
old one exactly as it was. The role is kept, with its password. Refused in production.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dbkit import envfile, pg, provision
from dbkit.admin import maintenance, project_server
from dbkit.db import connect, translate
from dbkit.errors import Conflict, DbkitError, PermissionDenied
from dbkit.migrate import commands as migrations
from dbkit.seed import commands as seeding
from dbkit.settings import Target
from dbkit.urls import DbURL

if TYPE_CHECKING:
    import psycopg

    from dbkit.settings import Settings

log = logging.getLogger("dbkit")

DEFAULT_NAME = "posts"  # role and database when DATABASE_URL is unset
SWAP_WAIT_S = 10.0  # how long reset waits for the old database's sessions to end


@dataclass
class SetupResult:
    url: str  # masked
    env_file: str | None
    changed: bool
    app_url: str | None = None  # masked DBKIT_APP_URL, in two-role mode
    steps: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def setup(settings: Settings, admin: DbURL, *, seed: bool = True, rotate: bool = False
          ) -> SetupResult:
    """Create (if needed), migrate and seed the application's database on ``admin``'s server."""
    started = time.perf_counter()
    return _complete(settings, ensure(settings, admin, rotate=rotate), seed=seed, started=started)


def reset(settings: Settings, admin: DbURL, *, seed: bool = True, env: str | None = None
          ) -> SetupResult:
    """Replace the application's database with a freshly set-up one (create → migrate → seed).

    Refused (``Refused``) when the settings say production, or ``env`` does (either is enough).
    """
    import psycopg

    refuse_reset_in_production(settings, env)
    started = time.perf_counter()
    app = ensure(settings, admin)  # roles converged; the password known; the old db kept
    db = provision.check_name(app.target.dbname, "database")
    if f"database {db}" in app.created:  # nothing to replace: a plain setup
        return _complete(settings, app, seed=seed, started=started)
    scratch, retired = side_name(db, "reset"), side_name(db, "retired")
    server = maintenance(app.admin, db)
    powers: pg.AdminPowers | None = None  # known once connected: hints a refusal
    # One reset of a database at a time: a second one waits, then makes its own fresh copy.
    try:
        with pg.serialised(server, settings, pg.reset_key(db), "reset"), \
                connect(server, settings, autocommit=True) as conn:
            powers = pg.admin_powers(conn)
            for leftover in (scratch, retired):  # from a reset that was killed
                pg.drop_database(conn, leftover)
            steps = [{"step": "create", "changed": True, "detail": f"built as {scratch}"}]
            try:
                provision.create(app.target.at(scratch), app.admin, write_env=False)
                steps += fill(app.target.at(scratch), seed=seed)
                _swap(conn, db, scratch, retired)
            except BaseException:
                pg.drop_database(conn, scratch)
                raise
            pg.drop_database(conn, retired)
    except psycopg.Error as exc:  # the server said no to one of reset's own steps
        hint = pg.refused_hint(powers) if powers else pg.ADMIN_HINT
        raise translate(exc, f"cannot reset database {db!r}",
                        hints={PermissionDenied: hint}) from None
    steps.append({"step": "swap", "changed": True, "detail": f"replaced {db}; old copy dropped"})
    return SetupResult(url=str(app.target.url), env_file=app.env_file, changed=True,
                       steps=steps, seconds=round(time.perf_counter() - started, 3),
                       app_url=app.app_url)


def refuse_reset_in_production(settings: Settings, env: str | None = None) -> None:
    """The production guard of ``reset``: DBKIT_ENV=production, or ``env`` saying so."""
    if env == "production":
        settings = dataclasses.replace(settings, env="production")
    settings.refuse_in_production(
        "dbkit reset", override=None,
        hint="reset drops the database: do it by hand, deliberately, if ever")


def default_url(admin: DbURL) -> DbURL:
    """Without DATABASE_URL: role and database 'posts' on the admin's server."""
    return DbURL(user=DEFAULT_NAME, host=admin.host, port=admin.port, dbname=DEFAULT_NAME,
                 params=tuple((k, v) for k, v in admin.params if k in ("sslmode", "sslrootcert")))


def side_name(db: str, tag: str) -> str:
    """``<db>_dbkit_<tag>_<hash>``, cut to PostgreSQL's 63 bytes on a character boundary; the
    hash keeps two long names that share a prefix apart."""
    suffix = f"_dbkit_{tag}_{hashlib.sha1(db.encode()).hexdigest()[:8]}"
    return db.encode()[: 63 - len(suffix)].decode(errors="ignore") + suffix


# -- the steps ------------------------------------------------------------------------------
@dataclass
class Ensured:
    admin: DbURL
    target: Target  # its URL with the password, when there is one
    env_file: str | None
    steps: list[dict[str, Any]]
    created: list[str]  # "role R", "database D": what this run made
    app_url: str | None = None  # masked


def ensure(settings: Settings, admin: DbURL, *, rotate: bool = False) -> Ensured:
    """The role(s) and database exist with their privileges (``dbkit create``), on the local
    server's current port."""
    target = settings.target() if settings.database_url else Target.of(default_url(admin), settings)
    moved = _follow_project_server(settings, admin, target.url)
    if moved:
        target = target.with_url(moved)
    created = provision.create(target, admin, rotate=rotate)
    if created.login is not None:
        target = target.with_url(created.login)
    steps: list[dict[str, Any]] = [] if not moved else [{
        "step": "server", "changed": True,
        "detail": f"the local server moved to port {admin.port}; DATABASE_URL updated"}]
    rotated = (f"new password for role(s) {', '.join(created.rotated)}: the old one no longer "
               "works" if rotate and created.rotated else "")
    steps.append({
        "step": "create", "changed": bool(created.statements),
        "detail": ", ".join(f"created {c}" for c in created.created) or rotated or
        ("converged privileges" if created.statements else "role and database exist"),
    })
    return Ensured(admin=admin, target=target, steps=steps, created=created.created,
                   env_file=created.env_file, app_url=created.app_url)


def fill(target: Target, *, seed: bool = True) -> list[dict[str, Any]]:
    """migrate → seed sample data, as the role in ``target``."""
    applied = migrations.migrate(target)
    steps: list[dict[str, Any]] = [{
        "step": "migrate", "changed": bool(applied.applied),
        "detail": f"applied {len(applied.applied)} migration(s)" if applied.applied
        else "schema up to date"}]
    if seed and target.settings.production:
        steps.append({"step": "seed", "changed": False,
                      "detail": "skipped: no demo data in production"})
    elif seed:
        seeded = seeding.seed_sample(target)
        rows = sum(seeded.inserted.values())
        steps.append({"step": "seed", "changed": rows > 0,
                      "detail": f"inserted {rows} sample row(s)" if rows else "sample data present"})
    return steps


def _complete(settings: Settings, app: Ensured, *, seed: bool, started: float) -> SetupResult:
    """After ``ensure``: migrate and seed, as one result."""
    try:
        steps = app.steps + fill(app.target, seed=seed)
    except BaseException as exc:
        # A setup that made the database leaves none behind when migrating or seeding fails:
        # the server is as it was before the command (what existed before is never dropped).
        if not app.created or not _undo_created(settings, app) or not isinstance(exc, DbkitError):
            raise
        said = exc.message.replace("; earlier migrations stay applied", "")
        raise type(exc)(f"{said}; setup removed the {' and '.join(app.created)} it had created",
                        hint="fix the cause and run dbkit setup again") from None
    return SetupResult(url=str(app.target.url), env_file=app.env_file,
                       changed=any(s["changed"] for s in steps), steps=steps,
                       seconds=round(time.perf_counter() - started, 3), app_url=app.app_url)


def _undo_created(settings: Settings, app: Ensured) -> bool:
    import psycopg

    try:
        with connect(app.admin, settings, autocommit=True) as conn:
            for what in reversed(app.created):  # the database first, then its role(s)
                kind, name = what.split(" ", 1)
                log.info("setup failed: undoing the creation of %s", what)
                if kind == "database":
                    pg.drop_database(conn, name)
                else:
                    conn.execute(pg.drop_role_sql(name, if_exists=True))
        return True
    except (psycopg.Error, DbkitError) as exc:  # report the first failure, not this one
        log.warning("could not undo what setup created (%s): %s", ", ".join(app.created), exc)
        return False


def _follow_project_server(settings: Settings, admin: DbURL, url: DbURL) -> DbURL | None:
    """When this project's own server had to move to another port (its old one was taken
    while it was down), point the DATABASE_URL that dbkit wrote to .env at the new port."""
    server = project_server(settings)
    if not server.initialized() or url.host not in ("127.0.0.1", "localhost"):
        return None
    port = server.state().get("port")
    if port != admin.port or url.port == port:
        return None
    in_file = envfile.read(settings.env_file)
    written = in_file.get("DATABASE_URL")
    if written is None or settings.database_url is None or \
            DbURL.parse(written, "DATABASE_URL") != settings.database_url:
        return None  # set elsewhere: not ours to edit
    moved = url.with_(port=port)
    envfile.update(settings.env_file, "DATABASE_URL", moved.render(reveal=True))
    # The two-role app URL that create wrote beside it points at the same server: it moves
    # too, or the application itself could no longer connect.
    app = DbURL.parse(in_file["DBKIT_APP_URL"], "DBKIT_APP_URL") if "DBKIT_APP_URL" in in_file \
        else None
    if app and app.host == url.host and app.port == url.port:
        envfile.update(settings.env_file, "DBKIT_APP_URL", app.with_(port=port).render(reveal=True))
    return moved


def _swap(conn: psycopg.Connection[Any], db: str, scratch: str, retired: str) -> None:
    """Rename ``db`` away and ``scratch`` into its place in one transaction, so a crash leaves
    one or the other under the name, never neither. RENAME needs the database free of
    sessions: they are ended in the same transaction (RENAME waits up to 5 s for them to go)."""
    import psycopg

    deadline = time.monotonic() + SWAP_WAIT_S
    locked_out = False
    try:
        while True:
            try:
                with conn.transaction():
                    conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                                 " WHERE datname IN (%s, %s) AND pid <> pg_backend_pid()",
                                 (db, scratch))
                    conn.execute(pg.rename_database_sql(db, retired))
                    conn.execute(pg.rename_database_sql(scratch, db))
                return
            except psycopg.errors.ObjectInUse:
                if time.monotonic() > deadline:
                    raise Conflict(f"database {db!r} still has open connections after "
                                   f"{SWAP_WAIT_S:g}s; it was left as it was",
                                   hint="close the sessions using it, then reset again") from None
                if not locked_out:
                    # Sessions keep coming back: keep new ones out. Undone below on failure;
                    # if dbkit dies right here, dbkit create/setup/reset turn it back on.
                    conn.execute(pg.allow_connections_sql(db, False))
                    locked_out = True
    except BaseException as exc:
        if locked_out:
            try:  # the old database stays: let its users back in
                conn.execute(pg.allow_connections_sql(db, True))
            except psycopg.Error:
                pass
        if isinstance(exc, psycopg.Error):
            raise translate(exc, f"cannot replace database {db!r}", hints={
                PermissionDenied: "the admin must be able to end the sessions using it "
                "(superuser, or a member of their roles)"}) from None
        raise
