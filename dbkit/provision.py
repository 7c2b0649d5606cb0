"""``dbkit create`` / ``dbkit drop``: a dedicated database and login role, least privilege.

Plan, then apply: ``plan_create`` inspects the catalog and returns the statements needed to
reach the goal from what exists now (nothing, on a converged database); ``apply`` runs them and,
if one fails, removes what this run created. Passwords reach the server only as SCRAM verifiers
computed here on the client, so they never appear in the server's statement log.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dbkit import envfile, grants, pg
from dbkit.admin import maintenance
from dbkit.db import connect, row, translate
from dbkit.errors import Conflict, InvalidName, PermissionDenied, Refused
from dbkit.urls import DbURL

if TYPE_CHECKING:
    import psycopg
    from psycopg import sql

    from dbkit.settings import Settings, Target

log = logging.getLogger("dbkit")

RESERVED_DATABASES = {"postgres", "template0", "template1"}
RESERVED_ROLES = {"postgres", "public", "none", "current_user", "session_user", "current_role"}
OpenTarget = Callable[[str], "psycopg.Connection[Any]"]


@dataclass
class Step:
    """One statement. ``where`` is "admin" (maintenance db) or "target" (the new database)."""

    sql: sql.SQL | sql.Composed
    shown: str  # what --dry-run / --verbose print: passwords masked
    where: str = "admin"
    transactional: bool = True
    undo: sql.SQL | sql.Composed | None = None  # how to remove what this step creates


@dataclass
class Plan:
    database: str
    role: str
    app_role: str | None
    steps: list[Step] = field(default_factory=list)
    existed: list[str] = field(default_factory=list)
    will_create: list[str] = field(default_factory=list)
    password: str | None = field(default=None, repr=False)  # generated/rotated: goes to .env
    app_password: str | None = field(default=None, repr=False)


@dataclass
class Result:
    database: str
    role: str
    app_role: str | None
    created: list[str]
    existed: list[str]
    statements: list[str]
    dry_run: bool
    url: str  # masked
    env_file: str | None = None
    printed_url: str | None = None  # only with --print-url (carries the password)
    # The URL with the password this run generated (or that the role already had in the URL):
    # for the next steps of setup/reset, never printed.
    login: DbURL | None = field(default=None, repr=False)

    def as_dict(self) -> dict[str, Any]:
        skip = {"login"}
        return {k: v for k, v in self.__dict__.items()
                if k not in skip and (v is not None or k == "app_role")}


def check_name(name: str | None, kind: str) -> str:
    if not name:
        raise InvalidName(f"the {kind} name is empty")
    if "\x00" in name:
        raise InvalidName(f"the {kind} name contains a NUL byte")
    if len(name.encode()) > 63:
        raise InvalidName(f"the {kind} name {name!r} is {len(name.encode())} bytes; "
                          "PostgreSQL allows at most 63",
                          hint="PostgreSQL would silently truncate it: choose a shorter name")
    if kind == "database" and name in RESERVED_DATABASES:
        raise InvalidName(f"database {name!r} is reserved; dbkit gives the application its own",
                          hint="name another database in DATABASE_URL")
    if kind != "database" and (name.lower() in RESERVED_ROLES or name.startswith("pg_")):
        raise InvalidName(f"role {name!r} is reserved",
                          hint="name a dedicated role in DATABASE_URL")
    return name


def check_admin(conn: psycopg.Connection[Any]) -> None:
    """The admin may create roles and databases (a superuser, or CREATEROLE + CREATEDB)."""
    sup, createrole, createdb = row(
        conn, "SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles"
        " WHERE rolname = current_user")
    missing = [p for p, ok in (("CREATEROLE", createrole), ("CREATEDB", createdb)) if not (sup or ok)]
    if missing:
        raise PermissionDenied(f"the admin role lacks {' and '.join(missing)}",
                               hint="use a superuser or a role WITH CREATEROLE CREATEDB "
                               "in DBKIT_ADMIN_URL")


def role_info(conn: psycopg.Connection[Any], role: str) -> dict[str, Any] | None:
    found = conn.execute(
        "SELECT rolsuper, rolcanlogin, rolconnlimit, rolcreatedb, rolcreaterole, rolreplication"
        " FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
    if found is None:
        return None
    keys = ("super", "login", "connlimit", "createdb", "createrole", "replication")
    return dict(zip(keys, found, strict=True))


def plan_create(conn: psycopg.Connection[Any], url: DbURL, open_target: OpenTarget, *,
                app_role: str | None = None, password: str | None = None, rotate: bool = False,
                connection_limit: int | None = None) -> Plan:
    """Statements that bring the cluster to the goal from its current state.

    ``open_target(dbname)`` opens an admin connection to the target database, needed only when
    it exists already (to read schema ownership and grants inside it).
    """
    db = check_name(url.dbname, "database")
    role = check_name(url.user, "role")
    if app_role is not None:
        check_name(app_role, "app role")
        if app_role == role:
            raise InvalidName("the app role must differ from the owner role in DATABASE_URL")
    plan = Plan(database=db, role=role, app_role=app_role)

    def add(stmt: sql.SQL | sql.Composed, shown: str | None = None, **kw: Any) -> None:
        plan.steps.append(Step(stmt, shown or stmt.as_string(conn), **kw))

    for name, is_app in ((role, False), (app_role, True)):
        if name is None:
            continue
        info = role_info(conn, name)
        if info and info["super"]:
            raise InvalidName(f"role {name!r} is a superuser; dbkit will not hand it an "
                              "application database", hint="name a dedicated role")
        limit = connection_limit if not is_app else None
        new_pw: str | None = None
        if info is None or rotate:
            given = password if not is_app else None
            new_pw = given or secrets.token_urlsafe(24)  # 192 bits
            if not given:
                if is_app:
                    plan.app_password = new_pw
                else:
                    plan.password = new_pw
            elif rotate and not is_app:
                plan.password = given
        if info is None:
            plan.will_create.append(f"role {name}")
            stmt = pg.role_statement(conn, name, exists=False, password=new_pw,
                                     connection_limit=limit)
            add(stmt.sql, stmt.shown, undo=pg.drop_role_sql(name, if_exists=True))
            continue
        plan.existed.append(f"role {name}")
        drift = (not info["login"] or info["createdb"] or info["createrole"]
                 or info["replication"] or (limit is not None and info["connlimit"] != limit))
        if drift or new_pw is not None:
            stmt = pg.role_statement(conn, name, exists=True, password=new_pw,
                                     connection_limit=limit)
            add(stmt.sql, stmt.shown)

    if not pg.admin_is_member(conn, role):
        add(pg.grant_to_admin_sql(role))

    found = conn.execute(
        "SELECT pg_get_userbyid(datdba), pg_encoding_to_char(encoding),"
        " datacl IS NULL OR EXISTS (SELECT 1 FROM aclexplode(datacl) a WHERE a.grantee = 0),"
        " datallowconn FROM pg_database WHERE datname = %s", (db,)).fetchone()
    if found is None:
        from psycopg import sql

        plan.will_create.append(f"database {db}")
        add(pg.create_database_sql(conn, db, role), transactional=False,
            undo=pg.drop_database_sql(db))
        add(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(db)))
        needed = grants.missing(None, database=db, owner=role, app_role=app_role)
    else:
        owner, encoding, public_open, allow_connections = found
        if owner != role:
            raise Conflict(f"database {db!r} exists and is owned by {owner!r}, not {role!r}",
                           hint="dbkit will not take it over: drop it, or name another database")
        if encoding != "UTF8":
            raise Conflict(f"database {db!r} exists with encoding {encoding}, not UTF8",
                           hint="drop it (dbkit drop) and run dbkit create again")
        plan.existed.append(f"database {db}")
        if not allow_connections:  # e.g. left so by a reset killed while it was swapping
            add(pg.allow_connections_sql(db, True))
        if public_open:
            from psycopg import sql

            add(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(db)))
        if allow_connections:
            with open_target(db) as target:
                needed = grants.missing(target, database=db, owner=role, app_role=app_role)
        else:  # not open to look inside: plan every (idempotent) step
            needed = grants.missing(None, database=db, owner=role, app_role=app_role)
    for grant in needed:
        add(grant.sql, where=grant.where)
    return plan


def apply(plan: Plan, admin: psycopg.Connection[Any], open_target: OpenTarget) -> None:
    """Run the plan. On failure, undo what this run created, then re-raise."""
    import psycopg

    done: list[Step] = []
    target = None
    try:
        admin.autocommit = True
        for step in plan.steps:
            log.info("%s", step.shown)
            if step.where == "target":
                if target is None:
                    target = open_target(plan.database)
                target.execute(step.sql)
            else:
                admin.execute(step.sql)
            done.append(step)
        if target is not None:
            target.commit()  # the in-database steps are one transaction
    except BaseException as exc:
        if target is not None:
            target.close()
            target = None
        _undo(admin, done)
        if isinstance(exc, psycopg.Error):
            raise translate(exc, f"cannot provision database {plan.database!r}", hints={
                PermissionDenied: "use a superuser or a role WITH CREATEROLE CREATEDB in "
                "DBKIT_ADMIN_URL; nothing was left behind"}) from None
        raise
    finally:
        if target is not None:
            target.close()


def _undo(admin: psycopg.Connection[Any], done: list[Step]) -> None:
    for step in reversed(done):
        if step.undo is not None:
            try:
                admin.execute(step.undo)
            except Exception as exc:  # best effort: report, keep undoing the rest
                log.warning("could not undo %s: %s", step.shown, exc)


def create(target: Target, admin: DbURL, *, dry_run: bool = False, password: str | None = None,
           rotate: bool = False, connection_limit: int | None = None, print_url: bool = False,
           write_env: bool = True) -> Result:
    """Create (or converge) the role and database of ``target`` on the ``admin`` server."""
    settings = target.settings
    url = target.url
    if password is not None and url.password is not None and password != url.password:
        raise Refused("a password was given both in DATABASE_URL and on standard input",
                      hint="give it in one place only")
    given = password or url.password
    app_role = settings.app_role

    def open_target(db: str) -> psycopg.Connection[Any]:
        return connect(admin.with_(dbname=db), settings)

    # Plan and apply under one lock: two setups at once would both plan to create the role.
    serial = (contextlib.nullcontext() if dry_run
              else pg.serialised(admin, settings, pg.PROVISIONING, "create"))
    with serial, connect(admin, settings, autocommit=True) as conn:
        check_admin(conn)
        plan = plan_create(conn, url, open_target, app_role=app_role, password=given,
                           rotate=rotate, connection_limit=connection_limit)
        if not dry_run:
            if write_env and not print_url and (plan.password or plan.app_password):
                envfile.check_writable(settings.env_file)  # the generated password must land
            apply(plan, conn, open_target)
        if given is None and plan.password is None and not dry_run:
            given = _written_beside(settings, url)
    final = url.with_(password=plan.password or given)
    result = Result(database=plan.database, role=plan.role, app_role=app_role,
                    created=[] if dry_run else plan.will_create, existed=plan.existed,
                    statements=[s.shown for s in plan.steps], dry_run=dry_run, url=str(final),
                    login=final)
    if dry_run:
        return result
    if print_url and plan.password:
        result.printed_url = final.render(reveal=True)
    elif write_env and (plan.password or plan.app_password):
        if plan.password:
            envfile.update(settings.env_file, "DATABASE_URL", final.render(reveal=True))
        if plan.app_password and app_role:
            app = final.with_(user=app_role, password=plan.app_password)
            envfile.update(settings.env_file, "DBKIT_APP_URL", app.render(reveal=True))
        result.env_file = str(settings.env_file)
    return result


def _written_beside(settings: Settings, url: DbURL) -> str | None:
    """The password of an existing role whose URL has none, when a setup running beside this
    one created the role (it held the lock first) and wrote its URL to the same .env."""
    written = envfile.read(settings.env_file).get("DATABASE_URL")
    if not written:
        return None
    found = DbURL.parse(written, "DATABASE_URL")
    return found.password if found.with_(password=None) == url.with_(password=None) else None


def drop(target: Target, admin: DbURL, *, force: bool = False, dry_run: bool = False) -> Result:
    """Drop the database, then its role(s). Missing objects are fine (idempotent)."""
    settings = target.settings
    settings.refuse_in_production("dbkit drop", override=None,
                                  hint="drop a production database by hand, deliberately")
    url = target.url
    db, role = check_name(url.dbname, "database"), check_name(url.user, "role")
    roles = [r for r in (settings.app_role, role) if r]
    admin = maintenance(admin, db)
    steps: list[str] = []
    existed: list[str] = []
    with connect(admin, settings, autocommit=True) as conn:
        check_admin(conn)
        for r in roles:  # check first: a dropped database cannot come back if the role then fails
            _check_droppable(conn, r, db)
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,)).fetchone():
            existed.append(f"database {db}")
            stmt = pg.drop_database_sql(db, force=force)
            steps.append(stmt.as_string(conn))
            if not dry_run:
                _run(conn, stmt, f"cannot drop database {db!r}",
                     in_use="close its connections, or pass --force to terminate them")
        for r in roles:
            info = role_info(conn, r)
            if info is None:
                continue
            if info["super"]:
                raise InvalidName(f"role {r!r} is a superuser; dbkit will not drop it")
            existed.append(f"role {r}")
            stmt = pg.drop_role_sql(r)
            steps.append(stmt.as_string(conn))
            if not dry_run:
                _run(conn, stmt, f"cannot drop role {r!r}",
                     in_use="run DROP OWNED BY in the databases where it owns objects or holds "
                     "privileges, then dbkit drop again")
    return Result(database=db, role=role, app_role=settings.app_role, created=[],
                  existed=existed, statements=steps, dry_run=dry_run, url=str(url))


def _check_droppable(conn: psycopg.Connection[Any], role: str, db: str) -> None:
    """Refuse before changing anything when the role owns or is granted things outside
    ``db`` (dropping the role would fail after the database is already gone)."""
    elsewhere = conn.execute(
        "SELECT CASE WHEN s.classid = 'pg_database'::regclass THEN 'database '"
        "   || (SELECT datname FROM pg_database WHERE oid = s.objid)"
        " WHEN d.datname IS NULL THEN 'a cluster-wide object' ELSE 'database ' || d.datname END"
        " FROM pg_shdepend s"
        " JOIN pg_roles r ON r.oid = s.refobjid AND s.refclassid = 'pg_authid'::regclass"
        " LEFT JOIN pg_database d ON d.oid = s.dbid"
        " WHERE r.rolname = %s AND s.deptype IN ('o', 'a')"
        " AND coalesce(d.datname, '') <> %s"
        " AND NOT (s.classid = 'pg_database'::regclass"
        "          AND s.objid = (SELECT oid FROM pg_database WHERE datname = %s))"
        " ORDER BY 1 LIMIT 1", (role, db, db)).fetchone()
    if elsewhere:
        raise Conflict(f"role {role!r} owns objects or holds privileges outside database "
                       f"{db!r} ({elsewhere[0]}); nothing was dropped",
                       hint="REASSIGN OWNED / DROP OWNED BY that role there, then dbkit drop again")


def _run(conn: psycopg.Connection[Any], stmt: sql.Composed, doing: str, in_use: str) -> None:
    """One drop; "in use" (sessions, dependent objects) is the conflict it most often meets."""
    import psycopg

    log.info("%s", stmt.as_string(conn))
    try:
        conn.execute(stmt)
    except psycopg.Error as exc:
        raise translate(exc, doing, hints={Conflict: in_use}) from None
