"""The PostgreSQL steps dbkit takes, each written once: login roles (with a password the server
only ever sees as a SCRAM verifier), UTF8 databases and their clones, handing schema ``public``
to its owner, dropping and renaming databases, and the advisory locks that serialise dbkit's
own work (their keys are all defined here, so no two uses can collide).

Functions that only build a statement return it (provisioning plans before it applies);
functions that need the catalog or must run at once take a connection.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, LiteralString, NamedTuple

from dbkit.db import connect, value
from dbkit.errors import Conflict, PermissionDenied

if TYPE_CHECKING:
    import psycopg
    from psycopg import sql

    from dbkit.settings import Settings
    from dbkit.urls import DbURL

log = logging.getLogger("dbkit")

# -- advisory locks -------------------------------------------------------------------------
# Every advisory lock dbkit takes is pg_advisory*(classid int4, objid int4) with one of these
# class ids ("dbkt" and the next two). Advisory locks belong to the database they are taken in:
# the same key in two databases never conflicts, so per-database work (migrations) takes its
# lock in that database, and per-server work takes it in the admin's maintenance database.
DBKIT = 0x64626B74  # "dbkt"
CLONE_TOKENS = DBKIT + 1  # objid: a live clone session's token (see dbkit.testdb.clones)
NAMED = DBKIT + 2  # objid: hashtext(name), for work on one named thing


class LockKey(NamedTuple):
    classid: int
    objid: int | None  # None: hashtext(name)
    name: str = ""


MIGRATIONS = LockKey(DBKIT, 1, "migrations")  # one migrate/rollback/accept per database
TEMPLATE_BUILDS = LockKey(DBKIT, 0, "template builds")  # one test-template build per server
PROVISIONING = LockKey(NAMED, None, "provision")  # plan+apply of create/setup, per server


def reset_key(dbname: str) -> LockKey:
    """One reset of ``dbname`` at a time (per server)."""
    return LockKey(NAMED, None, f"reset:{dbname}")


def clone_token_key(token: int) -> LockKey:
    return LockKey(CLONE_TOKENS, token)


def _key_sql(key: LockKey) -> tuple[sql.Composable, tuple[Any, ...]]:
    from psycopg import sql

    if key.objid is None:
        return sql.SQL("%s::int4, hashtext(%s)"), (key.classid, key.name)
    return sql.SQL("%s::int4, %s::int4"), (key.classid, key.objid)


def try_xact_lock(conn: psycopg.Connection[Any], key: LockKey) -> bool:
    """Take ``key`` until the current transaction ends, if free; never waits."""
    from psycopg import sql

    args, params = _key_sql(key)
    return bool(value(conn, sql.SQL("SELECT pg_try_advisory_xact_lock({})").format(args), params))


def xact_lock(conn: psycopg.Connection[Any], key: LockKey) -> None:
    """Take ``key`` until the current transaction ends, waiting (bounded by lock_timeout)."""
    from psycopg import sql

    args, params = _key_sql(key)
    conn.execute(sql.SQL("SELECT pg_advisory_xact_lock({})").format(args), params)


def session_lock(conn: psycopg.Connection[Any], key: LockKey) -> None:
    """Take ``key`` until unlocked or the session ends, waiting (bounded by lock_timeout)."""
    from psycopg import sql

    args, params = _key_sql(key)
    conn.execute(sql.SQL("SELECT pg_advisory_lock({})").format(args), params)


def session_lock_shared(conn: psycopg.Connection[Any], key: LockKey) -> None:
    """Take ``key`` in shared mode until the session ends: any number of sessions may hold it
    so, and an exclusive ``try_session_lock`` succeeds only once every one of them is gone."""
    from psycopg import sql

    args, params = _key_sql(key)
    conn.execute(sql.SQL("SELECT pg_advisory_lock_shared({})").format(args), params)


def try_session_lock(conn: psycopg.Connection[Any], key: LockKey) -> bool:
    from psycopg import sql

    args, params = _key_sql(key)
    return bool(value(conn, sql.SQL("SELECT pg_try_advisory_lock({})").format(args), params))


def session_unlock(conn: psycopg.Connection[Any], key: LockKey) -> None:
    from psycopg import sql

    args, params = _key_sql(key)
    conn.execute(sql.SQL("SELECT pg_advisory_unlock({})").format(args), params)


def lock_holder(conn: psycopg.Connection[Any], key: LockKey) -> tuple[Any, ...] | None:
    """(pid, application_name, role, client address, seconds in its transaction) of the session
    holding ``key`` in this database, or None."""
    assert key.objid is not None, "holders are looked up by a fixed key"
    found = conn.execute(
        "SELECT a.pid, a.application_name, a.usename, a.client_addr::text,"
        " round(extract(epoch FROM clock_timestamp() - a.xact_start)::numeric, 1)"
        " FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
        " WHERE l.locktype = 'advisory' AND l.granted AND l.classid::bigint = %s"
        " AND l.objid::bigint = %s AND l.objsubid = 2"
        " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        (key.classid, key.objid)).fetchone()
    return tuple(found) if found else None


# -- roles ----------------------------------------------------------------------------------
# What an application's role may do: log in, nothing else cluster-wide.
PLAIN_ROLE = "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION"
# The keywords role_drift may ask for (a closed set: they are pasted into the statement).
_ATTRIBUTE_KEYWORDS: dict[str, LiteralString] = {
    "LOGIN": "LOGIN", "NOCREATEDB": "NOCREATEDB", "NOCREATEROLE": "NOCREATEROLE",
    "NOREPLICATION": "NOREPLICATION", "NOBYPASSRLS": "NOBYPASSRLS"}


def verifier(conn: psycopg.Connection[Any], role: str, password: str) -> str:
    """The SCRAM-SHA-256 verifier of ``password``, computed here by libpq: the server (and its
    statement log) only ever sees the hash."""
    return conn.pgconn.encrypt_password(password.encode(), role.encode(),
                                        b"scram-sha-256").decode()


class Statement(NamedTuple):
    sql: sql.Composed
    shown: str  # what --dry-run / --verbose print: passwords masked


def role_statement(conn: psycopg.Connection[Any], name: str, *, exists: bool,
                   attributes: bool | Sequence[str] = True, password: str | None = None,
                   connection_limit: int | None = None) -> Statement:
    """CREATE ROLE (or ALTER ROLE for an existing one) as a plain login role, with the password
    as a verifier. For an existing role, ``attributes`` is True (assert them all), False (leave
    them alone) or the keywords to set: PostgreSQL makes a non-superuser admin prove it may
    change an attribute whenever the statement names it, even to the value it already has."""
    from psycopg import sql

    parts: list[sql.Composable] = []
    if not exists or attributes is True:
        parts.append(sql.SQL(PLAIN_ROLE))
    elif attributes:
        parts += [sql.SQL(_ATTRIBUTE_KEYWORDS[a]) for a in attributes]
    if connection_limit is not None:
        parts.append(sql.SQL("CONNECTION LIMIT {}").format(sql.Literal(connection_limit)))
    shown_parts = list(parts)
    if password is not None:
        parts.append(sql.SQL("PASSWORD {}").format(sql.Literal(verifier(conn, name, password))))
        shown_parts.append(sql.SQL("PASSWORD '***'"))
    verb = sql.SQL("ALTER ROLE" if exists else "CREATE ROLE")
    stmt = sql.SQL("{} {} {}").format(verb, sql.Identifier(name), sql.SQL(" ").join(parts))
    shown = sql.SQL("{} {} {}").format(verb, sql.Identifier(name), sql.SQL(" ").join(shown_parts))
    return Statement(stmt, shown.as_string(conn))


def role_drift(info: dict[str, Any]) -> list[str]:
    """The keywords that make an existing role (``role_info``) a plain login role again."""
    return [fix for key, bad, fix in (
        ("login", False, "LOGIN"), ("createdb", True, "NOCREATEDB"),
        ("createrole", True, "NOCREATEROLE"), ("replication", True, "NOREPLICATION"),
        ("bypassrls", True, "NOBYPASSRLS")) if info[key] is bad]


def role_info(conn: psycopg.Connection[Any], role: str) -> dict[str, Any] | None:
    """The attributes of ``role`` that dbkit checks and converges (None: no such role)."""
    found = conn.execute(
        "SELECT rolsuper, rolcanlogin, rolconnlimit, rolcreatedb, rolcreaterole, rolreplication,"
        " rolbypassrls FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
    if found is None:
        return None
    keys = ("super", "login", "connlimit", "createdb", "createrole", "replication", "bypassrls")
    return dict(zip(keys, found, strict=True))


# -- the admin's own rights -------------------------------------------------------------------
# Managed services (RDS, Cloud SQL, Azure) give no superuser: their admin is a role WITH
# CREATEROLE CREATEDB. PostgreSQL 15 lets such a role alter any non-superuser, non-replication
# role; from 16 only the roles it holds ADMIN OPTION on (its creator gets that by itself).
PG16 = 160000
ADMIN_HINT = "use a superuser or a role WITH CREATEROLE CREATEDB in DBKIT_ADMIN_URL"


class AdminPowers(NamedTuple):
    superuser: bool
    createrole: bool
    createdb: bool
    replication: bool
    bypassrls: bool
    version: int  # server_version_num


def admin_powers(conn: psycopg.Connection[Any]) -> AdminPowers:
    found = conn.execute(
        "SELECT rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls,"
        " current_setting('server_version_num')::int FROM pg_roles"
        " WHERE rolname = current_user").fetchone()
    assert found is not None, "current_user is always in pg_roles"
    return AdminPowers(*found)


def check_admin(conn: psycopg.Connection[Any]) -> AdminPowers:
    """The admin may create roles and databases (a superuser, or CREATEROLE + CREATEDB):
    checked before anything is changed, so a weak admin leaves nothing half-made."""
    powers = admin_powers(conn)
    missing = [p for p, ok in (("CREATEROLE", powers.createrole), ("CREATEDB", powers.createdb))
               if not (powers.superuser or ok)]
    if missing:
        raise PermissionDenied(f"the admin role lacks {' and '.join(missing)}", hint=ADMIN_HINT)
    return powers


def refused_hint(powers: AdminPowers, *, tail: str = "") -> str:
    """The hint for a permission the server refused the admin. An admin that already has
    CREATEROLE and CREATEDB gains nothing from being told to get them: name what it lacks
    instead (membership in, or from PostgreSQL 16 ADMIN OPTION on, the roles it manages)."""
    if powers.superuser or not (powers.createrole and powers.createdb):
        return ADMIN_HINT + tail
    needs = ("ADMIN OPTION on the roles it manages (it has it on roles it created)"
             if powers.version >= PG16 else "membership in the roles it manages")
    return (f"the admin role has CREATEROLE and CREATEDB; it also needs {needs}: grant that "
            f"as a superuser, or use one{tail}")


def check_manageable(conn: psycopg.Connection[Any], role: str, powers: AdminPowers) -> None:
    """From PostgreSQL 16 a CREATEROLE admin may alter, grant or drop only roles it holds
    ADMIN OPTION on: refuse before changing anything, naming that right and its fix."""
    from psycopg import sql

    if powers.superuser or powers.version < PG16:
        return
    if value(conn, "SELECT pg_has_role(current_user, oid, 'MEMBER WITH ADMIN OPTION')"
             " FROM pg_roles WHERE rolname = %s", (role,)):
        return
    grant = sql.SQL("GRANT {} TO CURRENT_USER WITH ADMIN OPTION").format(
        sql.Identifier(role)).as_string(conn)
    raise PermissionDenied(f"the admin role lacks ADMIN OPTION on role {role!r}, which "
                           "PostgreSQL 16+ requires to alter, grant or drop it; nothing was "
                           "changed", hint=f"as a superuser: {grant} (for this admin)")


def check_changeable(conn: psycopg.Connection[Any], role: str, fix: Sequence[str],
                     powers: AdminPowers) -> None:
    """REPLICATION and BYPASSRLS: only a superuser may take them away (from PostgreSQL 16 also
    a role holding the attribute itself). Refuse up front with the statement that fixes it."""
    from psycopg import sql

    if powers.superuser:
        return
    stuck = [f for f in fix
             if (f == "NOREPLICATION" and not (powers.version >= PG16 and powers.replication))
             or (f == "NOBYPASSRLS" and not (powers.version >= PG16 and powers.bypassrls))]
    if stuck:
        name = sql.Identifier(role).as_string(conn)
        raise Conflict(f"role {role!r} has {', '.join(f.removeprefix('NO') for f in stuck)}, "
                       "which the admin role may not take away",
                       hint=f"as a superuser: ALTER ROLE {name} {' '.join(stuck)}; then run "
                       "the dbkit command again")


# Predefined roles that reach past the application's own database: the server's files and
# programs, every table of every database, other sessions, the server's own operations.
SERVER_ACCESS_ROLES = (
    "pg_execute_server_program", "pg_read_server_files", "pg_write_server_files",
    "pg_read_all_data", "pg_write_all_data", "pg_signal_backend", "pg_checkpoint",
    "pg_create_subscription",
)


class Membership(NamedTuple):
    granted: str  # the role ``member`` belongs to directly
    grantor: str | None
    reaches: str  # the superuser or server-access role(s) it leads to, "a, b"


def dangerous_memberships(conn: psycopg.Connection[Any], member: str) -> list[Membership]:
    """Direct memberships of ``member`` that lead (directly or through further memberships)
    to a superuser role or a server-access role: through them it can SET ROLE to a superuser
    or act on the server beyond its database."""
    return [Membership(*r) for r in conn.execute(
        "WITH RECURSIVE up(start, grantor, roleid) AS ("
        "  SELECT m.roleid, m.grantor, m.roleid FROM pg_auth_members m"
        "  WHERE m.member = (SELECT oid FROM pg_roles WHERE rolname = %(r)s)"
        "  UNION SELECT up.start, up.grantor, m.roleid FROM up"
        "  JOIN pg_auth_members m ON m.member = up.roleid)"
        " SELECT s.rolname, pg_get_userbyid(up.grantor), string_agg(DISTINCT r.rolname, ', ')"
        " FROM up JOIN pg_roles s ON s.oid = up.start JOIN pg_roles r ON r.oid = up.roleid"
        " WHERE r.rolsuper OR r.rolname = ANY(%(danger)s)"
        " GROUP BY s.rolname, up.grantor ORDER BY 1",
        {"r": member, "danger": list(SERVER_ACCESS_ROLES)}).fetchall()]


def revoke_membership_sql(granted: str, member: str) -> sql.Composed:
    from psycopg import sql

    return sql.SQL("REVOKE {} FROM {}").format(sql.Identifier(granted), sql.Identifier(member))


# A role dbkit made carries this comment (cluster-wide, like the role): drop removes a role
# only when dbkit made it, for that very database.
_MADE_BY = "dbkit: {kind} role of database {db}"


def mark_role_sql(role: str, kind: str, db: str) -> sql.Composed:
    from psycopg import sql

    return sql.SQL("COMMENT ON ROLE {} IS {}").format(
        sql.Identifier(role), sql.Literal(_MADE_BY.format(kind=kind, db=db)))


def made_by_dbkit(conn: psycopg.Connection[Any], role: str, kind: str, db: str) -> bool:
    said = value(conn, "SELECT shobj_description(oid, 'pg_authid') FROM pg_roles"
                 " WHERE rolname = %s", (role,))
    return said == _MADE_BY.format(kind=kind, db=db)


def drop_role_sql(name: str, *, if_exists: bool = False) -> sql.Composed:
    from psycopg import sql

    return sql.SQL("DROP ROLE {}{}").format(sql.SQL("IF EXISTS " if if_exists else ""),
                                            sql.Identifier(name))


def grant_to_admin_sql(role: str, version: int) -> sql.Composed:
    """A non-superuser admin (CREATEROLE, as on managed services) must have a role's privileges
    to create a database owned by it, alter, rename or drop that database and end its sessions.
    From PostgreSQL 16 the grant says so explicitly: the membership its creator got by itself
    may carry neither (``createrole_self_grant``), and the admin may be NOINHERIT."""
    from psycopg import sql

    tail = " WITH INHERIT TRUE, SET TRUE" if version >= PG16 else ""
    return sql.SQL("GRANT {} TO CURRENT_USER{}").format(sql.Identifier(role), sql.SQL(tail))


def admin_is_member(conn: psycopg.Connection[Any], role: str) -> bool:
    """Superuser, or already holding ``role``'s privileges (USAGE: ownership checks and ending
    its sessions need them, mere membership is not enough) and, from PostgreSQL 16, the right
    to SET ROLE to it (CREATE DATABASE … OWNER needs that). On 16 a CREATEROLE admin is a
    member of every role it created, often with neither."""
    # 'SET' is a privilege name only from 16 on (15 rejects it): two fixed queries.
    query = ("SELECT rolsuper OR EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname = %s"
             " AND pg_has_role(current_user, r.oid, 'USAGE')"
             " AND pg_has_role(current_user, r.oid, 'SET'))"
             " FROM pg_roles WHERE rolname = current_user"
             if conn.info.server_version >= PG16 else
             "SELECT rolsuper OR EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname = %s"
             " AND pg_has_role(current_user, r.oid, 'USAGE'))"
             " FROM pg_roles WHERE rolname = current_user")
    return bool(value(conn, query, (role,)))


# -- databases ------------------------------------------------------------------------------
def create_database_sql(conn: psycopg.Connection[Any], name: str, owner: str) -> sql.Composed:
    """A UTF8 database owned by ``owner`` (from template0 with C collation when template1 has
    another encoding: a server initialised as SQL_ASCII or LATIN1 still gives UTF8)."""
    from psycopg import sql

    enc = value(conn, "SELECT pg_encoding_to_char(encoding) FROM pg_database"
                " WHERE datname = 'template1'")
    tail = sql.SQL("" if enc == "UTF8" else " TEMPLATE template0 LC_COLLATE 'C' LC_CTYPE 'C'")
    return sql.SQL("CREATE DATABASE {} OWNER {} ENCODING 'UTF8'{}").format(
        sql.Identifier(name), sql.Identifier(owner), tail)


def clone_database(conn: psycopg.Connection[Any], template: str, name: str, owner: str) -> None:
    """A copy of ``template`` (WAL_LOG strategy, the fastest for small schemas)."""
    from psycopg import sql

    log.info("cloning %s as %s", template, name)
    conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {} OWNER {}").format(
        sql.Identifier(name), sql.Identifier(template), sql.Identifier(owner)))


def own_public_schema_sql(owner: str) -> list[sql.Composed]:
    """Inside a new database: schema ``public`` belongs to its owner, and PUBLIC may not create
    in it (the default before PostgreSQL 15)."""
    from psycopg import sql

    return [sql.SQL("ALTER SCHEMA public OWNER TO {}").format(sql.Identifier(owner)),
            sql.SQL("REVOKE CREATE ON SCHEMA public FROM PUBLIC").format()]


def drop_database_sql(name: str, *, force: bool = True) -> sql.Composed:
    """``force`` ends the sessions still using it (PostgreSQL 13+)."""
    from psycopg import sql

    return sql.SQL("DROP DATABASE IF EXISTS {}{}").format(
        sql.Identifier(name), sql.SQL(" WITH (FORCE)" if force else ""))


def drop_database(conn: psycopg.Connection[Any], name: str, *, template: bool = False,
                  settle_s: float = 2.0) -> None:
    """Drop ``name`` if it exists, ending its sessions. Sessions that just closed are given
    ``settle_s`` to leave first: DROP would otherwise sleep in 100 ms steps for them."""
    from psycopg import sql

    if template:
        conn.execute(sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE false").format(
            sql.Identifier(name)))
    wait_sessions_gone(conn, name, settle_s)
    log.info("dropping database %s", name)
    conn.execute(drop_database_sql(name))


def wait_sessions_gone(conn: psycopg.Connection[Any], name: str, timeout_s: float = 2.0) -> None:
    deadline = time.monotonic() + timeout_s
    while value(conn, "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = %s"
                " AND pid <> pg_backend_pid())", (name,)):
        if time.monotonic() > deadline:
            return  # WITH (FORCE) ends whatever is still there
        time.sleep(0.002)


def rename_database_sql(old: str, new: str) -> sql.Composed:
    from psycopg import sql

    return sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(old),
                                                            sql.Identifier(new))


def allow_connections_sql(name: str, allow: bool) -> sql.Composed:
    from psycopg import sql

    return sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS {}").format(
        sql.Identifier(name), sql.SQL("true" if allow else "false"))


def make_template_sql(name: str) -> sql.Composed:
    """Mark a finished build as a template nobody connects to (clones need it idle)."""
    from psycopg import sql

    return sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false").format(
        sql.Identifier(name))


@contextlib.contextmanager
def serialised(admin: DbURL, settings: Settings, key: LockKey, what: str,
               wait_s: float = 120.0) -> Iterator[None]:
    """Serialise ``what`` across processes: ``key`` as a transaction lock on a connection of its
    own, held for the block. It ends with this process whatever happens, even behind a pooler
    (a session lock can stay behind with a pooled server connection)."""
    import psycopg

    with connect(admin, settings, autocommit=True) as conn, conn.transaction():
        conn.execute("SELECT set_config('lock_timeout', %s, true)", (f"{round(wait_s * 1000)}ms",))
        try:
            xact_lock(conn, key)
        except psycopg.errors.LockNotAvailable:
            raise Conflict(f"another dbkit {what} has been running for {wait_s:g}s",
                           hint=f"wait for it to finish, or stop it, then {what} again") from None
        yield  # the transaction stays open (and idle) until the work is done
