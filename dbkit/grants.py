"""The privileges inside an application database: schema ownership, PUBLIC's CREATE, and the
app role's grants (now and for future objects). Read from the catalog, so a converged database
needs nothing; ``dbkit.provision`` turns what is missing into steps of its plan."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

from dbkit import pg
from dbkit.db import row, value
from dbkit.migrate import bookkeeping

if TYPE_CHECKING:
    import psycopg
    from psycopg import sql


class Grant(NamedTuple):
    sql: sql.Composed
    where: str  # "admin" (any database of the server) or "target" (inside the database)


def missing(target: psycopg.Connection[Any] | None, *, database: str, owner: str,
            app_role: str | None) -> list[Grant]:
    """What the database lacks; ``target`` is an admin connection inside it, or None for a
    database that is new (or closed to connections): then everything, each step idempotent."""
    from psycopg import sql

    state = _state(target, owner, app_role) if target is not None else {
        "owner": None, "public_create": True, "app": {}}
    handover, revoke = pg.own_public_schema_sql(owner)
    out: list[Grant] = []
    if state["owner"] != owner:
        out.append(Grant(handover, "target"))
    if state["public_create"]:
        out.append(Grant(revoke, "target"))
    # A grant on the bookkeeping, made by hand or by an older dbkit, is taken back.
    seal = [Grant(stmt, "target") for stmt in bookkeeping.seal_sql(target, "public")] \
        if target is not None else []
    if not app_role:
        return out + seal
    R, A, D = sql.Identifier(owner), sql.Identifier(app_role), sql.Identifier(database)
    wanted = [
        ("connect", sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(D, A), "admin"),
        ("usage", sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(A), "target"),
        ("tables", sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public"
                           " TO {}").format(A), "target"),
        ("sequences", sql.SQL("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {}"
                              ).format(A), "target"),
        ("default_tables", sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA public GRANT"
                                   " SELECT, INSERT, UPDATE, DELETE ON TABLES TO {}").format(R, A),
         "target"),
        ("default_sequences", sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA public"
                                      " GRANT USAGE, SELECT ON SEQUENCES TO {}").format(R, A),
         "target"),
    ]
    app = state["app"]
    out += [Grant(stmt, where) for key, stmt, where in wanted if not app.get(key)]
    # GRANT … ON ALL TABLES reaches the bookkeeping too; a hand-made grant may have: both are
    # taken back in the same transaction.
    granting_all = any(not app.get(k) for k in ("tables", "sequences"))
    if target is not None and granting_all:
        out += [Grant(stmt, "target") for stmt in
                bookkeeping.revoke_sql(target, app_role, "public")]
    return out + seal


def _state(target: psycopg.Connection[Any], owner: str, app_role: str | None) -> dict[str, Any]:
    found = target.execute(
        "SELECT pg_get_userbyid(nspowner),"
        " nspacl IS NULL OR EXISTS (SELECT 1 FROM aclexplode(nspacl) a"
        "   WHERE a.grantee = 0 AND a.privilege_type = 'CREATE')"
        " FROM pg_namespace WHERE nspname = 'public'").fetchone()
    if found is None:
        return {"owner": None, "public_create": False, "app": {}}
    app: dict[str, bool] = {}
    if app_role and value(target, "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = %s)",
                          (app_role,)):
        a, r = app_role, owner
        app["connect"], app["usage"], app["tables"], app["sequences"] = row(
            target,
            # (has_*_privilege with a list is true when ANY of them is held: ask one by one)
            "SELECT has_database_privilege(%(a)s, current_database(), 'CONNECT'),"
            " has_schema_privilege(%(a)s, 'public', 'USAGE'),"
            " (SELECT bool_and(has_table_privilege(%(a)s, c.oid, 'SELECT')"
            "    AND has_table_privilege(%(a)s, c.oid, 'INSERT')"
            "    AND has_table_privilege(%(a)s, c.oid, 'UPDATE')"
            "    AND has_table_privilege(%(a)s, c.oid, 'DELETE'))"
            "  IS NOT FALSE FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace"
            "  AND c.relkind IN ('r', 'p', 'v') AND c.relname <> ALL(%(bk)s)),"
            " (SELECT bool_and(has_sequence_privilege(%(a)s, c.oid, 'USAGE')"
            "    AND has_sequence_privilege(%(a)s, c.oid, 'SELECT')) IS NOT FALSE"
            "  FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'S'"
            "  AND NOT EXISTS (SELECT 1 FROM pg_depend d JOIN pg_class t ON t.oid = d.refobjid"
            "    WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid"
            "    AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')"
            "    AND t.relname = ANY(%(bk)s)))",
            {"a": a, "bk": list(bookkeeping.ALL_TABLES)})
        for key, objtype in (("default_tables", "r"), ("default_sequences", "S")):
            app[key] = value(
                target,
                "SELECT EXISTS (SELECT 1 FROM pg_default_acl d, aclexplode(d.defaclacl) x"
                " WHERE d.defaclrole = (SELECT oid FROM pg_roles WHERE rolname = %s)"
                " AND d.defaclnamespace = 'public'::regnamespace AND d.defaclobjtype = %s"
                " AND x.grantee = (SELECT oid FROM pg_roles WHERE rolname = %s))",
                (r, objtype, a))
    return {"owner": found[0], "public_create": found[1], "app": app}
