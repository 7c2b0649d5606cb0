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
from dbkit.errors import ConfigError, Conflict, InvalidName, PermissionDenied, Refused
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
    # Run after the step: raises when the step did not reach its goal (a REVOKE that leaves
    # a membership granted by someone else in place), so apply undoes the run.
    verify: Callable[[psycopg.Connection[Any]], None] | None = None


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
    rotated: list[str] = field(default_factory=list)  # roles whose old password stops working
    powers: pg.AdminPowers | None = None  # the admin's: names what it lacks when refused


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
    app_url: str | None = None  # masked DBKIT_APP_URL, in two-role mode
    rotated: list[str] = field(default_factory=list)  # roles given a new password
    kept: list[str] = field(default_factory=list)  # drop: roles left because dbkit did not make them
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


def check_password(password: str, where: str) -> str:
    if not password.strip():
        raise ConfigError(f"the password {where} is blank",
                          hint="give a real password, or none and dbkit generates one")
    return password


def plan_create(conn: psycopg.Connection[Any], url: DbURL, open_target: OpenTarget, *,
                app_role: str | None = None, password: str | None = None, rotate: bool = False,
                connection_limit: int | None = None, app_password: str | None = None,
                new_app_password: bool = True) -> Plan:
    """Statements that bring the cluster to the goal from its current state.

    ``password`` is one given apart from the URL (standard input); ``url.password`` one the URL
    already carries; ``app_password`` the app role's known one (DBKIT_APP_URL). A generated,
    rotated or separately given password is put on the plan, for the caller to write to .env.
    ``new_app_password=False`` leaves an existing app role's unknown password alone (when
    nothing could write the new one down).
    ``open_target(dbname)`` opens an admin connection to the target database, needed only when
    it exists already (to read schema ownership and grants inside it).
    """
    db = check_name(url.dbname, "database")
    role = check_name(url.user, "role")
    if app_role is not None:
        check_name(app_role, "app role")
        if app_role == role:
            raise InvalidName("the app role must differ from the owner role in DATABASE_URL")
    admin = pg.admin_powers(conn)
    plan = Plan(database=db, role=role, app_role=app_role, powers=admin)

    def add(stmt: sql.SQL | sql.Composed, shown: str | None = None, **kw: Any) -> None:
        plan.steps.append(Step(stmt, shown or stmt.as_string(conn), **kw))

    for name, is_app in ((role, False), (app_role, True)):
        if name is None:
            continue
        info = pg.role_info(conn, name)
        if info and info["super"]:
            raise InvalidName(f"role {name!r} is a superuser; dbkit will not hand it an "
                              "application database", hint="name a dedicated role")
        limit = connection_limit if not is_app else None
        separate, in_url = (None, app_password) if is_app else (password, url.password)
        new_pw: str | None = None
        # A rotation always makes a fresh password (unless one is given apart from the URL):
        # re-setting the one already in the URL would leave the old password working.
        # An existing app role without a known password gets one: the app needs its URL.
        if rotate or info is None or (is_app and in_url is None and new_app_password):
            if separate is not None:
                new_pw = check_password(separate, "on standard input")
            elif in_url is not None and not rotate:
                new_pw = check_password(in_url, "in the URL")
            else:
                new_pw = secrets.token_urlsafe(24)  # 192 bits
            if new_pw != in_url or rotate:
                if is_app:
                    plan.app_password = new_pw
                else:
                    plan.password = new_pw
        kind = "app" if is_app else "owner"
        if info is None:
            plan.will_create.append(f"role {name}")
            stmt = pg.role_statement(conn, name, exists=False, password=new_pw,
                                     connection_limit=limit)
            add(stmt.sql, stmt.shown, undo=pg.drop_role_sql(name, if_exists=True))
            add(pg.mark_role_sql(name, kind, db))
            continue
        plan.existed.append(f"role {name}")
        fix = pg.role_drift(info)
        pg.check_changeable(conn, name, fix, admin)
        if limit is not None and info["connlimit"] == limit:
            limit = None  # already so: a statement naming it would be a change for nothing
        if fix or new_pw is not None or limit is not None or not pg.admin_is_member(conn, name):
            pg.check_manageable(conn, name, admin)  # PostgreSQL 16+: refused before any change
        if fix or new_pw is not None or limit is not None:
            stmt = pg.role_statement(conn, name, exists=True, attributes=fix, password=new_pw,
                                     connection_limit=limit)
            add(stmt.sql, stmt.shown)
            if new_pw is not None:
                plan.rotated.append(name)
        dangerous = pg.dangerous_memberships(conn, name)
        for i, m in enumerate(dangerous, 1):
            _check_revocable(conn, name, m, admin)
            add(pg.revoke_membership_sql(m.granted, name),
                verify=_no_dangerous(name) if i == len(dangerous) else None)

    if not pg.admin_is_member(conn, role):
        add(pg.grant_to_admin_sql(role, admin.version))

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


def _check_revocable(conn: psycopg.Connection[Any], role: str, m: pg.Membership,
                     admin: pg.AdminPowers) -> None:
    """A membership leading to a superuser or server-access role: revoked by dbkit when the
    admin may revoke it, else refused with the statement that fixes it."""

    if admin.superuser:
        return
    granted_super, has_admin_option = row(
        conn, "SELECT r.rolsuper, pg_has_role(current_user, r.oid, 'USAGE WITH ADMIN OPTION')"
        " FROM pg_roles r WHERE r.rolname = %s", (m.granted,))
    # PostgreSQL 15 lets a CREATEROLE role manage any non-superuser role's members; from 16
    # it needs ADMIN OPTION on the role.
    if not granted_super and (has_admin_option or (admin.version < 160000 and admin.createrole)):
        return
    stmt = pg.revoke_membership_sql(m.granted, role).as_string(conn)
    raise Conflict(f"role {role!r} is a member of {m.granted!r}, which gives it {m.reaches}; "
                   "the admin role may not revoke that",
                   hint=f"as a superuser: {stmt}; then run the dbkit command again")


def _no_dangerous(role: str) -> Callable[[psycopg.Connection[Any]], None]:
    def verify(conn: psycopg.Connection[Any]) -> None:
        left = pg.dangerous_memberships(conn, role)
        if left:
            m = left[0]
            by = f" GRANTED BY {m.grantor}" if m.grantor else ""
            raise Conflict(f"role {role!r} is still a member of {m.granted!r} ({m.reaches}) "
                           "after REVOKE: another role granted it",
                           hint=f"as a superuser: "
                           f"{pg.revoke_membership_sql(m.granted, role).as_string(conn)}{by}")
    return verify


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
            if step.verify is not None:
                step.verify(admin)
        if target is not None:
            target.commit()  # the in-database steps are one transaction
    except BaseException as exc:
        if target is not None:
            target.close()
            target = None
        _undo(admin, done)
        if isinstance(exc, psycopg.Error):
            hint = (pg.refused_hint(plan.powers, tail="; nothing was left behind")
                    if plan.powers else pg.ADMIN_HINT)
            raise translate(exc, f"cannot provision database {plan.database!r}",
                            hints={PermissionDenied: hint}) from None
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
    """Create (or converge) the role and database of ``target`` on the ``admin`` server.

    ``password`` is one given apart from the URL (standard input). What this run generated,
    rotated or was given that way is written to .env (``write_env``) or returned
    (``print_url``); in two-role mode the app role's name is written there too, so later
    commands (reset, drop, doctor) act on both roles without being told again."""
    from dbkit.admin import check_same_server

    settings = target.settings
    url = target.url
    if password is not None and url.password is not None and password != url.password:
        raise Refused("a password was given both in DATABASE_URL and on standard input",
                      hint="give it in one place only")
    check_same_server(target, admin)
    app_role = settings.app_role
    known_app = settings.app_url if settings.app_url and settings.app_url.user == app_role \
        else None

    def open_target(db: str) -> psycopg.Connection[Any]:
        return connect(admin.with_(dbname=db), settings)

    to_env = write_env and not print_url and not dry_run
    # Plan and apply under one lock: two setups at once would both plan to create the role.
    serial = (contextlib.nullcontext() if dry_run
              else pg.serialised(admin, settings, pg.PROVISIONING, "create"))
    with serial, connect(admin, settings, autocommit=True) as conn:
        pg.check_admin(conn)
        plan = plan_create(conn, url, open_target, app_role=app_role, password=password,
                           rotate=rotate, connection_limit=connection_limit,
                           app_password=known_app.password if known_app else None,
                           new_app_password=to_env)
        if not dry_run:
            if to_env and (plan.password or plan.app_password or app_role):
                envfile.check_writable(settings.env_file)  # the generated password must land
            apply(plan, conn, open_target)
        given = plan.password or url.password
        if given is None and not dry_run:
            given = _written_beside(settings, url)
    final = url.with_(password=given)
    app = None
    if app_role:
        app = final.with_(user=app_role, password=plan.app_password or (
            known_app.password if known_app else None))
    result = Result(database=plan.database, role=plan.role, app_role=app_role,
                    created=[] if dry_run else plan.will_create, existed=plan.existed,
                    statements=[s.shown for s in plan.steps], dry_run=dry_run, url=str(final),
                    login=final, app_url=str(app) if app else None,
                    rotated=[] if dry_run else plan.rotated)
    if dry_run:
        return result
    if print_url and plan.password:
        result.printed_url = final.render(reveal=True)
    if to_env:
        wrote = False
        if plan.password:
            wrote |= envfile.update(settings.env_file, "DATABASE_URL", final.render(reveal=True))
        if app is not None:
            if plan.app_password:
                wrote |= envfile.update(settings.env_file, "DBKIT_APP_URL",
                                        app.render(reveal=True))
            wrote |= envfile.update(settings.env_file, "DBKIT_APP_ROLE", app_role or "")
        if not wrote:
            envfile.protect(settings.env_file)  # an existing file holding a password: 0600
        result.env_file = str(settings.env_file) if wrote else None
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
    """Drop the database, then its role(s). Missing objects are fine (idempotent).

    The ownership rule: the database goes only if the URL's role owns it, and a role only if
    dbkit made it for this database and it owns nothing elsewhere; otherwise Conflict (exit 7)
    before anything is dropped, and so also under ``dry_run``. A role dbkit did not make is
    kept (and said so): it was there before dbkit and may serve others."""
    from dbkit.admin import check_same_server

    settings = target.settings
    settings.refuse_in_production("dbkit drop", override=None,
                                  hint="drop a production database by hand, deliberately")
    url = target.url
    db, role = check_name(url.dbname, "database"), check_name(url.user, "role")
    check_same_server(target, admin)
    roles = [(r, kind) for r, kind in ((settings.app_role, "app"), (role, "owner")) if r]
    admin = maintenance(admin, db)
    steps: list[str] = []
    existed: list[str] = []
    kept: list[str] = []
    with connect(admin, settings, autocommit=True) as conn:
        powers = pg.check_admin(conn)
        owner = conn.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s",
                             (db,)).fetchone()
        if owner is not None and owner[0] != role:
            raise Conflict(f"database {db!r} is owned by {owner[0]!r}, not by {role!r} (the role "
                           "in DATABASE_URL); nothing was dropped",
                           hint="dbkit drops only what the URL's role owns: check DATABASE_URL, "
                           "or drop it by hand")
        doomed: list[str] = []
        for r, kind in roles:  # check first: a dropped database cannot come back
            info = pg.role_info(conn, r)
            if info is None:
                continue
            if info["super"]:
                raise InvalidName(f"role {r!r} is a superuser; dbkit will not drop it")
            if not pg.made_by_dbkit(conn, r, kind, db):
                kept.append(r)
                continue
            _check_droppable(conn, r, db)
            pg.check_manageable(conn, r, powers)  # PostgreSQL 16+: DROP ROLE needs ADMIN OPTION
            doomed.append(r)
        if owner is not None and not pg.admin_is_member(conn, role):
            # Dropping a database takes its owner's privileges: a non-superuser admin that did
            # not create it (or whose membership was revoked) gets them first.
            pg.check_manageable(conn, role, powers)
            stmt = pg.grant_to_admin_sql(role, powers.version)
            steps.append(stmt.as_string(conn))
            if not dry_run:
                _run(conn, stmt, f"cannot take the privileges of role {role!r}", in_use="",
                     powers=powers)
        if owner is not None:
            existed.append(f"database {db}")
            stmt = pg.drop_database_sql(db, force=force)
            steps.append(stmt.as_string(conn))
            if not dry_run:
                _run(conn, stmt, f"cannot drop database {db!r}",
                     in_use="close its connections, or pass --force to terminate them",
                     powers=powers)
        for r in doomed:
            existed.append(f"role {r}")
            stmt = pg.drop_role_sql(r)
            steps.append(stmt.as_string(conn))
            if not dry_run:
                _run(conn, stmt, f"cannot drop role {r!r}",
                     in_use="run DROP OWNED BY in the databases where it owns objects or holds "
                     "privileges, then dbkit drop again", powers=powers)
    return Result(database=db, role=role, app_role=settings.app_role, created=[],
                  existed=existed, statements=steps, dry_run=dry_run, url=str(url), kept=kept)


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
                       f"{db!r} (in {elsewhere[0]}); nothing was dropped",
                       hint="REASSIGN OWNED / DROP OWNED BY that role there, then dbkit drop again")


def _run(conn: psycopg.Connection[Any], stmt: sql.Composed, doing: str, in_use: str, *,
         powers: pg.AdminPowers) -> None:
    """One drop step; "in use" (sessions, dependent objects) is the conflict it most often
    meets, a refusal is hinted by what this admin lacks."""
    import psycopg

    log.info("%s", stmt.as_string(conn))
    try:
        conn.execute(stmt)
    except psycopg.Error as exc:
        raise translate(exc, doing, hints={Conflict: in_use,
                                           PermissionDenied: pg.refused_hint(powers)}) from None
