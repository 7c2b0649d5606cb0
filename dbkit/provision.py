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

from dbkit.db import admin_lock, admin_url, away_from, connect
from dbkit.errors import Conflict, DbkitError, InvalidName, PermissionDenied, Refused
from dbkit.grants import plan_inside, role_info
from dbkit.urls import DbURL

if TYPE_CHECKING:
    import psycopg
    from psycopg import sql

    from dbkit.settings import Settings

log = logging.getLogger("dbkit")

RESERVED_DATABASES = {"postgres", "template0", "template1"}
RESERVED_ROLES = {"postgres", "public", "none", "current_user", "session_user", "current_role"}


@dataclass
class Step:
    """One statement. ``where`` is "admin" (maintenance db) or "target" (the new database)."""

    sql: sql.Composable
    shown: str  # what --dry-run / --verbose print: passwords masked
    where: str = "admin"
    transactional: bool = True
    undo: sql.Composable | None = None  # how to remove what this step creates


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

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None or k == "app_role"}


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


def _check_admin(conn: psycopg.Connection, need_createdb: bool) -> None:
    sup, createrole, createdb = conn.execute(
        "SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = current_user"
    ).fetchone()
    missing = [p for p, ok in (("CREATEROLE", createrole), ("CREATEDB", createdb or not need_createdb))
               if not (sup or ok)]
    if missing:
        raise PermissionDenied(f"the admin role lacks {' and '.join(missing)}",
                               hint="use a superuser or a role WITH CREATEROLE CREATEDB "
                               "in DBKIT_ADMIN_URL")


def _verifier(conn: psycopg.Connection, role: str, password: str) -> str:
    # libpq computes the SCRAM-SHA-256 verifier locally; the server only ever sees the hash.
    return conn.pgconn.encrypt_password(password.encode(), role.encode(),
                                        b"scram-sha-256").decode()


def plan_create(conn: psycopg.Connection, url: DbURL, open_target: Callable[[str], Any], *,
                app_role: str | None = None, password: str | None = None, rotate: bool = False,
                connection_limit: int | None = None) -> Plan:
    """Statements that bring the cluster to the goal from its current state.

    ``open_target(dbname)`` opens an admin connection to the target database, needed only when
    it exists already (to read schema ownership and grants inside it).
    """
    from psycopg import sql

    db = check_name(url.dbname, "database")
    role = check_name(url.user, "role")
    if app_role is not None:
        check_name(app_role, "app role")
        if app_role == role:
            raise InvalidName("the app role must differ from the owner role in DATABASE_URL")
    plan = Plan(database=db, role=role, app_role=app_role)
    R, D = sql.Identifier(role), sql.Identifier(db)

    def add(stmt: sql.Composable, *, shown: sql.Composable | None = None, **kw: Any) -> None:
        plan.steps.append(Step(stmt, (shown or stmt).as_string(conn), **kw))

    for name, is_app in ((role, False), (app_role, True)):
        if name is None:
            continue
        info = role_info(conn, name)
        ident = sql.Identifier(name)
        if info and info["super"]:
            raise InvalidName(f"role {name!r} is a superuser; dbkit will not hand it an "
                              "application database", hint="name a dedicated role")
        attrs = sql.SQL("LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION")
        limit = (connection_limit if not is_app else None)
        if limit is not None:
            attrs = sql.SQL("{} CONNECTION LIMIT {}").format(attrs, sql.Literal(limit))
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
        pw_sql = sql.SQL("")
        pw_shown = sql.SQL("")
        if new_pw is not None:
            pw_sql = sql.SQL(" PASSWORD {}").format(sql.Literal(_verifier(conn, name, new_pw)))
            pw_shown = sql.SQL(" PASSWORD '***'")
        if info is None:
            plan.will_create.append(f"role {name}")
            add(sql.SQL("CREATE ROLE {} {}{}").format(ident, attrs, pw_sql),
                shown=sql.SQL("CREATE ROLE {} {}{}").format(ident, attrs, pw_shown),
                undo=sql.SQL("DROP ROLE IF EXISTS {}").format(ident))
            continue
        plan.existed.append(f"role {name}")
        drift = (not info["login"] or info["createdb"] or info["createrole"]
                 or info["replication"] or (limit is not None and info["connlimit"] != limit))
        if drift or new_pw is not None:
            add(sql.SQL("ALTER ROLE {} {}{}").format(ident, attrs, pw_sql),
                shown=sql.SQL("ALTER ROLE {} {}{}").format(ident, attrs, pw_shown))

    # A non-superuser admin (CREATEROLE + CREATEDB, as on managed services) must be a member
    # of the owner role to create a database owned by it and to set defaults for it.
    admin_super, member = conn.execute(
        "SELECT rolsuper, EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname = %s"
        " AND pg_has_role(current_user, r.oid, 'MEMBER')) FROM pg_roles"
        " WHERE rolname = current_user", (role,)).fetchone()
    if not admin_super and not member:
        add(sql.SQL("GRANT {} TO CURRENT_USER").format(R))

    row = conn.execute(
        "SELECT pg_get_userbyid(datdba), pg_encoding_to_char(encoding),"
        " datacl IS NULL OR EXISTS (SELECT 1 FROM aclexplode(datacl) a WHERE a.grantee = 0),"
        " datallowconn FROM pg_database WHERE datname = %s", (db,)).fetchone()
    if row is None:
        enc = conn.execute("SELECT pg_encoding_to_char(encoding) FROM pg_database"
                           " WHERE datname = 'template1'").fetchone()[0]
        tail = sql.SQL("" if enc == "UTF8" else " TEMPLATE template0 LC_COLLATE 'C' LC_CTYPE 'C'")
        plan.will_create.append(f"database {db}")
        add(sql.SQL("CREATE DATABASE {} OWNER {} ENCODING 'UTF8'{}").format(D, R, tail),
            transactional=False, undo=sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(D))
        public_open = True
    else:
        owner, encoding, public_open, allow_connections = row
        if owner != role:
            raise Conflict(f"database {db!r} exists and is owned by {owner!r}, not {role!r}",
                           hint="dbkit will not take it over: drop it, or name another database")
        if encoding != "UTF8":
            raise Conflict(f"database {db!r} exists with encoding {encoding}, not UTF8",
                           hint="drop it (dbkit drop) and run dbkit create again")
        plan.existed.append(f"database {db}")
        if not allow_connections:  # e.g. left so by a reset killed while it was swapping
            add(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(D))
    if public_open:
        add(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(D))
    if row is None or not row[3]:  # new, or not open to look inside: plan every (idempotent) step
        plan_inside(plan, None, add)
    else:
        with open_target(db) as target:
            plan_inside(plan, target, add)
    return plan


def apply(plan: Plan, admin: psycopg.Connection, open_target: Callable[[str], Any]) -> None:
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
        if isinstance(exc, psycopg.errors.InsufficientPrivilege):
            raise PermissionDenied(f"permission denied: {exc.diag.message_primary}") from None
        if isinstance(exc, psycopg.Error):
            raise DbkitError(f"provisioning failed: {exc.diag.message_primary or exc}",
                             hint="nothing was left behind; fix the cause and retry") from None
        raise
    finally:
        if target is not None:
            target.close()


def _undo(admin: psycopg.Connection, done: list[Step]) -> None:
    for step in reversed(done):
        if step.undo is not None:
            try:
                admin.execute(step.undo)
            except Exception as exc:  # best effort: report, keep undoing the rest
                log.warning("could not undo %s: %s", step.shown, exc)


def _open_target_factory(settings: Settings, url: DbURL) -> Callable[[str], Any]:
    return lambda db: connect(url, settings, dbname=db)


def create(settings: Settings, *, dry_run: bool = False, password: str | None = None,
           rotate: bool = False, connection_limit: int | None = None, print_url: bool = False,
           write_env: bool = True, app_url: DbURL | None = None,
           admin: DbURL | None = None) -> Result:
    """Create (or converge) the role and database named in DATABASE_URL."""
    from dbkit.settings import update_env_file

    admin = admin or admin_url(settings)
    url = app_url or settings.app_url()
    if password is not None and url.password is not None and password != url.password:
        raise Refused("a password was given both in DATABASE_URL and on standard input",
                      hint="give it in one place only")
    given = password or url.password
    app_role = settings.app_role
    open_target = _open_target_factory(settings, admin)
    # Plan and apply under one lock: two setups at once would both plan CREATE ROLE.
    serial = contextlib.nullcontext() if dry_run else admin_lock(admin, settings, "provision",
                                                                 "create")
    with serial, connect(admin, settings, autocommit=True) as conn:
        _check_admin(conn, need_createdb=True)
        plan = plan_create(conn, url, open_target, app_role=app_role, password=given,
                           rotate=rotate, connection_limit=connection_limit)
        if not dry_run:
            if write_env and not print_url and (plan.password or plan.app_password):
                from dbkit.settings import check_env_writable

                check_env_writable(settings.env_file)  # the generated password must land
            apply(plan, conn, open_target)
    final = url.with_(password=plan.password) if plan.password else url
    result = Result(database=plan.database, role=plan.role, app_role=app_role,
                    created=[] if dry_run else plan.will_create, existed=plan.existed,
                    statements=[s.shown for s in plan.steps], dry_run=dry_run, url=str(final))
    if dry_run:
        return result
    if print_url and plan.password:
        result.printed_url = final.render(reveal=True)
    elif write_env and (plan.password or plan.app_password):
        if plan.password:
            update_env_file(settings.env_file, "DATABASE_URL", final.render(reveal=True))
        if plan.app_password and app_role:
            app = final.with_(user=app_role, password=plan.app_password)
            update_env_file(settings.env_file, "DBKIT_APP_URL", app.render(reveal=True))
        result.env_file = str(settings.env_file)
    return result


def drop(settings: Settings, *, force: bool = False, dry_run: bool = False) -> Result:
    """Drop the database, then its role(s). Missing objects are fine (idempotent)."""
    from psycopg import sql

    if settings.production:
        raise Refused("dbkit drop is refused when DBKIT_ENV=production",
                      hint="drop a production database by hand, deliberately")
    url = settings.app_url()
    db, role = check_name(url.dbname, "database"), check_name(url.user, "role")
    roles = [r for r in (settings.app_role, role) if r]
    admin = away_from(admin_url(settings), db)
    steps: list[str] = []
    existed: list[str] = []
    with connect(admin, settings, autocommit=True) as conn:
        _check_admin(conn, need_createdb=True)
        for r in roles:  # check first: DROP DATABASE cannot be undone if DROP ROLE then fails
            _check_droppable(conn, r, db)
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,)).fetchone():
            existed.append(f"database {db}")
            stmt = sql.SQL("DROP DATABASE {}{}").format(
                sql.Identifier(db), sql.SQL(" WITH (FORCE)" if force else ""))
            steps.append(stmt.as_string(conn))
            if not dry_run:
                _drop_database(conn, stmt, db)
        for r in roles:
            info = role_info(conn, r)
            if info is None:
                continue
            if info["super"]:
                raise InvalidName(f"role {r!r} is a superuser; dbkit will not drop it")
            existed.append(f"role {r}")
            stmt = sql.SQL("DROP ROLE {}").format(sql.Identifier(r))
            steps.append(stmt.as_string(conn))
            if not dry_run:
                _drop_role(conn, stmt, r)
    return Result(database=db, role=role, app_role=settings.app_role, created=[],
                  existed=existed, statements=steps, dry_run=dry_run, url=str(url))


def _check_droppable(conn: psycopg.Connection, role: str, db: str) -> None:
    """Refuse before changing anything when the role owns or is granted things outside
    ``db`` (DROP ROLE would fail after the database is already gone)."""
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


def _drop_database(conn: psycopg.Connection, stmt: sql.Composable, db: str) -> None:
    import psycopg

    log.info("%s", stmt.as_string(conn))
    try:
        conn.execute(stmt)
    except psycopg.errors.ObjectInUse:
        raise Conflict(f"database {db!r} has open connections",
                       hint="close them, or pass --force to terminate them") from None
    except psycopg.errors.InsufficientPrivilege as exc:
        raise PermissionDenied(f"cannot drop database {db!r}: {exc.diag.message_primary}") from None


def _drop_role(conn: psycopg.Connection, stmt: sql.Composable, role: str) -> None:
    import psycopg

    log.info("%s", stmt.as_string(conn))
    try:
        conn.execute(stmt)
    except psycopg.errors.DependentObjectsStillExist:
        raise Conflict(f"role {role!r} still owns objects or holds privileges in other databases",
                       hint="run DROP OWNED BY in those databases, then dbkit drop again") from None
