"""``dbkit doctor``: what state is this database in, and is it safe to deploy to?

Each check returns pass, warn or fail (or skip when what it needs is unavailable, e.g. the server
is down). Warnings never fail the run; ``run`` returns the report and the CLI turns any failure
into exit code 17 (CheckFailed). Checks read the catalog through the application's own
connection (DATABASE_URL) and, where one is configured, the admin connection (which can see
pg_hba_file_rules and other roles' attributes).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from dbkit import replicas
from dbkit.admin import is_local
from dbkit.db import connect, describe, row, value
from dbkit.errors import DbkitError
from dbkit.migrate import commands as migrations

if TYPE_CHECKING:
    import psycopg

    from dbkit.settings import Settings, Target
    from dbkit.urls import DbURL

log = logging.getLogger("dbkit")

PASS, WARN, FAIL, SKIP = "pass", "warn", "fail", "skip"
# auth methods by how much they protect a password-less or sniffed login
WEAK_AUTH = {"trust": FAIL, "password": FAIL, "md5": WARN}
LOCK_AGE_S = 5.0  # a lock held this long by an open transaction makes a migration wait
# A replica further behind than this serves reads from an older schema for a noticeable while
# after a migration (one WAL segment; seconds of replay_lag).
REPLICA_LAG_BYTES = 16 * 1024 * 1024
REPLICA_LAG_S = 10.0


@dataclass
class Check:
    name: str
    status: str
    detail: str
    hint: str = ""

    def line(self) -> str:
        text = f"{self.status:<4}  {self.name:<20} {self.detail}"
        return text + (f" (hint: {self.hint})" if self.hint and self.status != PASS else "")


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status == FAIL]

    def as_dict(self) -> dict[str, Any]:
        counts = {s: sum(c.status == s for c in self.checks) for s in (PASS, WARN, FAIL, SKIP)}
        return {"ok": not self.failed, "counts": counts, "checks": [asdict(c) for c in self.checks]}


@dataclass
class _Ctx:
    target: Target
    app: psycopg.Connection[Any] | None = None
    admin: psycopg.Connection[Any] | None = None
    admin_problem: str = ""
    long_tx_s: float = 300.0

    @property
    def settings(self) -> Settings:
        return self.target.settings

    @property
    def url(self) -> DbURL:
        return self.target.url


def run(target: Target, admin: DbURL | None, admin_problem: str = "", *,
        long_transaction_s: float = 300.0) -> Report:
    """Run every check; never raises for a failed check (only for unusable settings).
    ``admin`` is the admin server when there is one to use (see ``dbkit.admin.for_diagnosis``),
    else None and ``admin_problem`` says why."""
    ctx = _Ctx(target, long_tx_s=long_transaction_s)
    report = Report()
    try:
        ctx.app = connect(target.url, target.settings, autocommit=True)
    except DbkitError as exc:
        report.checks.append(Check("server", FAIL, exc.message, exc.hint))
    ctx.admin, ctx.admin_problem = _admin_connection(target.settings, admin, admin_problem)
    try:
        for check in CHECKS:
            if ctx.app is None and check is not _check_admin_role:
                if check is not _check_server:  # already reported as failed above
                    report.checks.append(Check(_name(check), SKIP, "server not reachable"))
                continue
            report.checks.append(_run_one(check, ctx))
    finally:
        for conn in (ctx.app, ctx.admin):
            if conn is not None:
                conn.close()
    return report


def _run_one(check: Callable[[_Ctx], Check], ctx: _Ctx) -> Check:
    """A check that cannot run reports why as its failure; the others still run."""
    import psycopg

    try:
        return check(ctx)
    except DbkitError as exc:
        return Check(_name(check), FAIL, exc.message, exc.hint)
    except psycopg.Error as exc:
        return Check(_name(check), FAIL, describe(exc))


def _admin_connection(settings: Settings, admin: DbURL | None, problem: str
                      ) -> tuple[psycopg.Connection[Any] | None, str]:
    if admin is None:
        return None, problem or "no admin connection configured (DBKIT_ADMIN_URL)"
    try:
        return connect(admin, settings, autocommit=True), ""
    except DbkitError as exc:
        return None, f"admin connection failed: {exc.message}"


def _check_server(ctx: _Ctx) -> Check:
    assert ctx.app is not None
    # (a major older than dbkit supports is refused by connect: reported as this check failing)
    version = value(ctx.app, "SELECT current_setting('server_version')")
    return Check("server", PASS, f"PostgreSQL {version} at {ctx.url}")


def _check_tls(ctx: _Ctx) -> Check:
    assert ctx.app is not None
    if ctx.app.pgconn.ssl_in_use:
        version = ctx.app.execute("SELECT version FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
                                  ).fetchone()
        return Check("tls", PASS, f"in use ({version[0] if version else 'TLS'})")
    local = is_local(ctx.url.host)
    if local:
        return Check("tls", PASS, "not in use (local connection: traffic stays on this machine)")
    status = FAIL if ctx.settings.production else WARN
    return Check("tls", status, f"not in use: passwords and data cross the network to "
                 f"{ctx.url.host} in clear text", "add ?sslmode=verify-full to DATABASE_URL")


def _check_auth(ctx: _Ctx) -> Check:
    assert ctx.app is not None
    method, source = _hba_method(ctx), "pg_hba.conf"
    if method is None:
        method, source = _used_method(ctx)
    status = WEAK_AUTH.get(method, PASS)
    if method == "trust" and not ctx.settings.production and is_local(ctx.url.host):
        status = WARN  # a developer's own server often trusts local logins
    hint = {"trust": "anyone reaching the server logs in as this role without a password: "
                     "use scram-sha-256 in pg_hba.conf",
            "password": "the password crosses the wire in clear text: use scram-sha-256",
            "md5": "md5 is deprecated: set password_encryption = scram-sha-256, re-set the "
                   "password (dbkit create --rotate-password) and use scram-sha-256 in pg_hba.conf"}
    return Check("auth", status, f"{method} (from {source})", hint.get(method, ""))


def _hba_method(ctx: _Ctx) -> str | None:
    """The first pg_hba.conf rule matching this connection, read by whoever may read it."""
    import psycopg

    assert ctx.app is not None
    client, ssl = row(ctx.app, "SELECT inet_client_addr()::text, coalesce((SELECT ssl"
                      " FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false)")
    groups = {r[0] for r in ctx.app.execute(
        "SELECT b.rolname FROM pg_roles b WHERE pg_has_role(current_user, b.oid, 'MEMBER')")}
    for conn in (ctx.admin, ctx.app):
        if conn is None:
            continue
        try:
            rows = conn.execute("SELECT type, database, user_name, address, netmask, auth_method"
                                " FROM pg_hba_file_rules WHERE error IS NULL"
                                " ORDER BY line_number").fetchall()
        except psycopg.errors.InsufficientPrivilege:
            continue
        for typ, dbs, users, address, mask, method in rows:
            if hba_matches(typ, dbs, users, address, mask, client, ssl, ctx.url, groups):
                return str(method)
        return None
    return None


def hba_matches(typ: str, dbs: list[str], users: list[str], address: str | None,
                 mask: str | None, client: str | None, ssl: bool, url: DbURL,
                 groups: set[str]) -> bool:
    if client is None:
        if typ != "local":
            return False
    elif typ == "local" or (typ == "hostssl" and not ssl) or (typ == "hostnossl" and ssl) \
            or typ.startswith("hostgss"):
        return False
    if not any(d in ("all", url.dbname) or (d == "sameuser" and url.dbname == url.user)
               for d in dbs):
        return False
    if not any(u in ("all", url.user) or (u.startswith("+") and u[1:] in groups) for u in users):
        return False
    if client is None or address in (None, "all"):
        return True
    if address in ("samehost", "samenet"):
        return True  # cannot be judged from here; the rule is plausible
    try:
        net = ipaddress.ip_network(f"{address}/{mask}" if mask else address, strict=False)
        return ipaddress.ip_address(client.split("/")[0]) in net
    except ValueError:
        return False  # a host name rule: cannot resolve it the way the server did


def _used_method(ctx: _Ctx) -> tuple[str, str]:
    """Without pg_hba_file_rules: what libpq saw during this login."""
    assert ctx.app is not None
    if ctx.app.info.server_version >= 160000:
        system_user = value(ctx.app, "SELECT system_user")
        if system_user:
            return system_user.split(":", 1)[0], "system_user"
    if ctx.app.pgconn.used_password:
        enc = value(ctx.app, "SELECT current_setting('password_encryption')")
        return f"password ({enc} by password_encryption)", "this login; pg_hba.conf not readable"
    if ctx.app.pgconn.ssl_in_use and dict(ctx.url.params).get("sslcert"):
        return "cert", "this login"
    return "trust", "this login used no password; pg_hba.conf not readable"


def _check_admin_role(ctx: _Ctx) -> Check:
    if ctx.admin is None:
        return Check("admin-role", WARN, ctx.admin_problem,
                     "set DBKIT_ADMIN_URL to a role WITH CREATEROLE CREATEDB")
    name, sup, createrole, createdb = row(
        ctx.admin, "SELECT rolname, rolsuper, rolcreaterole, rolcreatedb FROM pg_roles"
        " WHERE rolname = current_user")
    if sup:
        return Check("admin-role", PASS, f"{name} is a superuser (CREATEROLE and CREATEDB would "
                     "be enough)")
    missing = [p for p, ok in (("CREATEROLE", createrole), ("CREATEDB", createdb)) if not ok]
    if missing:
        return Check("admin-role", FAIL, f"{name} lacks {' and '.join(missing)}",
                     f"ALTER ROLE {name} {' '.join(missing)} (as a superuser)")
    return Check("admin-role", PASS, f"{name} has CREATEROLE and CREATEDB")


def _check_owner_role(ctx: _Ctx) -> Check:
    """The URL's role (and the app role): plain login roles, no way to a superuser."""
    from psycopg import sql

    from dbkit.pg import dangerous_memberships, revoke_membership_sql

    conn = ctx.admin or ctx.app
    assert conn is not None
    names = [r for r in (ctx.url.user, ctx.settings.app_role) if r]
    problems: list[str] = []
    fails = False
    hint = ""
    for name in names:
        row = conn.execute(
            "SELECT rolsuper, rolcanlogin, rolconnlimit, rolvaliduntil < now(), rolcreaterole,"
            " rolcreatedb, rolbypassrls, rolreplication FROM pg_roles WHERE rolname = %s",
            (name,)).fetchone()
        if row is None:
            problems.append(f"role {name} does not exist")
            fails = True
            hint = hint or "run dbkit setup (or dbkit create)"
            continue
        ident = sql.Identifier(name).as_string(conn)
        sup, login, limit, expired, createrole, createdb, bypass, replication = row
        for bad, text in ((sup, "is a superuser"), (not login, "cannot log in (NOLOGIN)"),
                          (limit == 0, "has CONNECTION LIMIT 0"), (expired, "password expired")):
            if bad:
                problems.append(f"{name} {text}")
                fails = True
        if sup:
            hint = f"as a superuser: ALTER ROLE {ident} NOSUPERUSER; then dbkit create"
        for m in dangerous_memberships(conn, name):
            problems.append(f"{name} is a member of {m.granted} (reaches {m.reaches})")
            fails = True
            hint = hint or (f"dbkit create revokes it (a superuser admin can always: "
                            f"{revoke_membership_sql(m.granted, name).as_string(conn)})")
        stuck = [p for p, on in (("BYPASSRLS", bypass), ("REPLICATION", replication)) if on]
        extra = [p for p, on in (("CREATEROLE", createrole), ("CREATEDB", createdb)) if on]
        if stuck:
            problems.append(f"{name} has {', '.join(stuck)} (bypasses row security / can "
                            "stream the whole cluster)")
            fails = True
            hint = hint or (f"as a superuser: ALTER ROLE {ident} "
                            f"{' '.join('NO' + p for p in stuck)}")
        if extra:
            problems.append(f"{name} has {', '.join(extra)} (not needed by an application)")
        if not login or extra:
            hint = hint or "run dbkit create: it converges the role's attributes"
    if not problems:
        return Check("owner-role", PASS, f"{', '.join(names)}: exists, can log in, no path to "
                     "a superuser or the server's files")
    return Check("owner-role", FAIL if fails else WARN, "; ".join(problems), hint)


def _check_bookkeeping(ctx: _Ctx) -> Check:
    """Only the owner may touch the migration bookkeeping: any other role could un-record a
    migration or wipe the history."""
    from dbkit.migrate.bookkeeping import exposed

    assert ctx.app is not None
    found = exposed(ctx.app)
    if found:
        shown = "; ".join(f"{e.grantee} may {e.privileges} on {e.relation}" for e in found[:3])
        return Check("bookkeeping", FAIL, f"the migration bookkeeping is open to other roles: "
                     f"{shown}", "run dbkit create: it revokes them")
    return Check("bookkeeping", PASS, "the migration bookkeeping is the owner's alone")


def _check_app_role(ctx: _Ctx) -> Check:
    """Two-role mode: log in as the app role from DBKIT_APP_URL and try what it must and must
    not do, in a transaction that is rolled back."""
    app_role = ctx.settings.app_role
    if not app_role:
        return Check("app-role", SKIP, "single-role mode (DBKIT_APP_ROLE is not set)")
    app_url = ctx.settings.app_url
    if app_url is None or app_url.user != app_role:
        return Check("app-role", FAIL, f"no DBKIT_APP_URL for app role {app_role}",
                     "run dbkit setup: it writes DBKIT_APP_URL to .env")
    try:
        conn = connect(app_url.with_(dbname=app_url.dbname or ctx.url.dbname), ctx.settings)
    except DbkitError as exc:
        return Check("app-role", FAIL, f"cannot log in as {app_role}: {exc.message}",
                     "run dbkit setup --rotate-password (a fresh DBKIT_APP_URL), or dbkit "
                     "setup if the role is gone")
    with conn:
        problems = _probe_app_role(conn)
        conn.rollback()
    if problems:
        return Check("app-role", FAIL, f"{app_role}: " + "; ".join(problems[:3]),
                     "run dbkit create: it converges the app role's grants")
    return Check("app-role", PASS, f"{app_role} logs in, reads and writes rows, cannot change "
                 "the schema or touch the bookkeeping")


def _probe_app_role(conn: psycopg.Connection[Any]) -> list[str]:
    import psycopg
    from psycopg import sql

    from dbkit.migrate.bookkeeping import ALL_TABLES

    def refused(stmt: sql.Composed) -> bool:
        try:
            with conn.transaction():
                conn.execute(stmt)
        except psycopg.errors.InsufficientPrivilege:
            return True
        except psycopg.Error:  # allowed, and then failed for another reason
            return False
        return False

    problems: list[str] = []
    tables = conn.execute(
        "SELECT c.relname, (SELECT a.attname FROM pg_attribute a WHERE a.attrelid = c.oid"
        "  AND a.attnum > 0 AND NOT a.attisdropped AND a.attidentity <> 'a'"
        "  AND a.attgenerated = '' ORDER BY a.attnum LIMIT 1)"
        " FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace"
        " AND c.relkind IN ('r', 'p') ORDER BY 1").fetchall()
    for name, column in tables:
        t = sql.Identifier("public", name)
        if name in ALL_TABLES:
            for verb, stmt in (("read", sql.SQL("SELECT 1 FROM {} LIMIT 0").format(t)),
                               ("delete from", sql.SQL("DELETE FROM {} WHERE false").format(t))):
                if not refused(stmt):
                    problems.append(f"can {verb} the bookkeeping table {name}")
            continue
        probes = [("SELECT", sql.SQL("SELECT 1 FROM {} LIMIT 0").format(t)),
                  ("DELETE", sql.SQL("DELETE FROM {} WHERE false").format(t))]
        if column is not None:
            c = sql.Identifier(column)
            probes += [("UPDATE", sql.SQL("UPDATE {} SET {} = {} WHERE false").format(t, c, c)),
                       ("INSERT", sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} WHERE false"
                                          ).format(t, c, c, t))]
        denied = [verb for verb, stmt in probes if refused(stmt)]
        if denied:
            problems.append(f"cannot {'/'.join(denied)} on {name}")
    probe = sql.Identifier("public", "_dbkit_doctor_probe")
    if not refused(sql.SQL("CREATE TABLE {} ()").format(probe)):
        problems.append("can create tables in schema public (DDL)")
    return problems


def _check_public_connect(ctx: _Ctx) -> Check:
    assert ctx.app is not None
    db = ctx.url.dbname
    if value(ctx.app, "SELECT has_database_privilege('public', current_database(), 'CONNECT')"):
        return Check("public-connect", FAIL, f"every role on the server may connect to {db}",
                     f"REVOKE CONNECT ON DATABASE {db} FROM PUBLIC (dbkit create does this)")
    return Check("public-connect", PASS, f"PUBLIC cannot connect to {db}")


def _check_pending_migrations(ctx: _Ctx) -> Check:
    ids = migrations.pending_ids(ctx.target)
    if ids:
        shown = ", ".join(ids[:3]) + (f" and {len(ids) - 3} more" if len(ids) > 3 else "")
        return Check("pending-migrations", WARN, f"{len(ids)} pending: {shown}", "run dbkit migrate")
    return Check("pending-migrations", PASS, "none: the schema is up to date")


def _check_drift(ctx: _Ctx) -> Check:
    drift = migrations.status(ctx.target).drift
    if drift:
        shown = "; ".join(d.detail for d in drift[:3])
        return Check("drift", FAIL, f"{len(drift)} applied migration(s) changed: {shown}",
                     "restore the original files; write a new migration for new changes")
    return Check("drift", PASS, "applied migrations match their files")


def _check_locks(ctx: _Ctx) -> Check:
    assert ctx.app is not None
    rows = ctx.app.execute(
        "SELECT l.pid, a.usename, l.mode, l.granted, c.relname,"
        " extract(epoch FROM now() - a.xact_start)::float, a.state"
        " FROM pg_locks l JOIN pg_class c ON c.oid = l.relation"
        " LEFT JOIN pg_stat_activity a ON a.pid = l.pid"
        " WHERE l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        " AND l.pid <> pg_backend_pid() AND c.relkind IN ('r', 'p')"
        " AND c.relnamespace NOT IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace)"
        " AND (NOT l.granted OR a.state LIKE 'idle in transaction%%'"
        "      OR coalesce(a.xact_start < now() - make_interval(secs => %s), true))"
        " ORDER BY a.xact_start NULLS FIRST", (LOCK_AGE_S,)).fetchall()
    if not rows:
        return Check("locks", PASS, "no session holds a lock on the application's tables")
    shown = "; ".join(
        f"pid {pid} ({user or '?'}, {state or '?'}, {age or 0:.0f}s) "
        f"{'holds' if granted else 'waits for'} {mode} on {rel}"
        for pid, user, mode, granted, rel, age, state in rows[:3])
    return Check("locks", WARN, f"{len(rows)} lock(s) would make a migration wait: {shown}",
                 "end those transactions (pg_terminate_backend) or migrate later")


def _check_long_transactions(ctx: _Ctx) -> Check:
    assert ctx.app is not None
    rows = ctx.app.execute(
        "SELECT pid, usename, state, extract(epoch FROM now() - xact_start)::float"
        " FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        " AND xact_start < now() - make_interval(secs => %s) ORDER BY xact_start",
        (ctx.long_tx_s,)).fetchall()
    if not rows:
        return Check("long-transactions", PASS, f"none open longer than {ctx.long_tx_s:g}s")
    shown = "; ".join(f"pid {pid} ({user or '?'}, {state or '?'}) open {age:.0f}s"
                      for pid, user, state, age in rows[:3])
    return Check("long-transactions", WARN, f"{len(rows)} transaction(s): {shown}",
                 "they hold back VACUUM and block migrations; commit or end them")


def _check_invalid_indexes(ctx: _Ctx) -> Check:
    assert ctx.app is not None
    names = [r[0] for r in ctx.app.execute(
        "SELECT i.indexrelid::regclass::text FROM pg_index i JOIN pg_class c"
        " ON c.oid = i.indexrelid WHERE NOT i.indisvalid"
        " AND c.relnamespace NOT IN ('pg_catalog'::regnamespace, 'pg_toast'::regnamespace)")]
    if names:
        return Check("invalid-indexes", WARN, f"{', '.join(names)}: left by an interrupted "
                     "CREATE INDEX CONCURRENTLY; not used by queries", "DROP INDEX CONCURRENTLY "
                     "it and build it again (IF NOT EXISTS would keep the broken one)")
    return Check("invalid-indexes", PASS, "every index is valid")


def _check_pooler(ctx: _Ctx) -> Check:
    assert ctx.app is not None
    server_port = int(value(ctx.app, "SELECT current_setting('port')"))
    url_port = ctx.url.port or int(ctx.settings.pg_env.get("PGPORT", "5432"))
    if url_port == server_port:
        return Check("pooler", PASS, "DATABASE_URL reaches PostgreSQL directly")
    if ctx.settings.migrate_url:
        return Check("pooler", PASS, f"DATABASE_URL goes through port {url_port}, PostgreSQL "
                     f"listens on {server_port} (a pooler); migrations use DBKIT_MIGRATE_URL")
    return Check("pooler", WARN, f"DATABASE_URL goes through port {url_port} but PostgreSQL "
                 f"listens on {server_port}: a pooler or port mapping",
                 "if it is PgBouncer in transaction mode, set DBKIT_MIGRATE_URL to a direct URL")


def _check_replication(ctx: _Ctx) -> Check:
    """A standby (which migrate and seed refuse), or a primary's replicas and how far behind
    each is; a replica that can never catch up (its slot lost the WAL it needs) fails."""
    assert ctx.app is not None
    if replicas.in_recovery(ctx.app):
        return _standby_check(replicas.standby(ctx.app))
    found = replicas.replicas(ctx.app)
    if any(r.hidden for r in found) and ctx.admin is not None:
        found = replicas.replicas(ctx.admin)  # the admin may read their positions
    slots = [s for s in replicas.idle_slots(ctx.app) if s.lost or s.retained_bytes is not None]
    lost = [s for s in slots if s.lost]
    if lost:
        return Check("replication", FAIL, "replication slot(s) "
                     + ", ".join(s.name for s in lost) + " lost the WAL their replica needs: "
                     "it can never catch up", "rebuild that replica from a new base backup "
                     "and drop the old slot (pg_drop_replication_slot)")
    if not found and not slots:
        return Check("replication", PASS, "a primary; no streaming replicas")
    if any(r.hidden for r in found):
        return Check("replication", WARN, f"a primary with {len(found)} replica(s); their "
                     f"positions are hidden from role {ctx.url.user}", "GRANT "
                     f"pg_read_all_stats TO {ctx.url.user}, or set DBKIT_ADMIN_URL")
    shown = [_replica_line(r) for r in found]
    behind = [r for r in found if r.state != "streaming" or r.behind_bytes is None
              or r.behind_bytes > REPLICA_LAG_BYTES or (r.replay_lag_s or 0) > REPLICA_LAG_S]
    shown += [f"slot {s.name} ({s.kind}): nobody streams from it, it keeps "
              f"{_size(s.retained_bytes or 0)} of WAL" for s in slots]
    detail = f"a primary with {len(found)} streaming replica(s): " + "; ".join(shown)
    if behind or slots:
        return Check("replication", WARN, detail, "a replica behind serves the old schema "
                     "after a migration: migrate --wait-replicas waits for them; a slot whose "
                     "replica is gone keeps WAL until dropped (pg_drop_replication_slot)")
    return Check("replication", PASS, detail)


def _standby_check(st: replicas.Standby) -> Check:
    parts = ["not streaming (restoring from an archive)" if st.receive_lsn is None
             else f"{_size(max(st.unreplayed_bytes or 0, 0))} received but not yet replayed"]
    if st.paused:
        parts.append("replay is paused (SELECT pg_wal_replay_resume() resumes it)")
    if st.last_replay_age_s is not None:
        parts.append(f"last replayed commit {st.last_replay_age_s:.0f}s old")
    return Check("replication", WARN, "a standby (in recovery, read-only): " + "; ".join(parts),
                 "migrate and seed refuse a standby: point DATABASE_URL at the primary, or "
                 "add ?target_session_attrs=read-write to a URL listing every host")


def _replica_line(r: replicas.Replica) -> str:
    lag = "" if r.replay_lag_s is None else f", replay lag {r.replay_lag_s:.1f}s"
    behind = ("no replay position yet" if r.behind_bytes is None
              else f"{_size(max(r.behind_bytes, 0))} behind")
    return f"{r.label()} {r.state}, {behind}{lag}"


def _size(n: int) -> str:
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def _name(check: Callable[[_Ctx], Check]) -> str:
    return check.__name__.removeprefix("_check_").replace("_", "-")


CHECKS: list[Callable[[_Ctx], Check]] = [
    _check_server, _check_tls, _check_auth, _check_admin_role, _check_owner_role, _check_app_role,
    _check_bookkeeping, _check_public_connect,
    _check_pending_migrations, _check_drift, _check_locks, _check_long_transactions, _check_invalid_indexes,
    _check_pooler, _check_replication,
]
