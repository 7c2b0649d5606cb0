"""The privileges inside an application database: schema ownership, PUBLIC's CREATE, and the
app role's grants (now and for future objects). Read from the catalog so a converged database
plans nothing; used by ``dbkit.provision``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg

    from dbkit.provision import Plan


def role_info(conn: psycopg.Connection, role: str) -> dict[str, Any] | None:
    row = conn.execute(
        "SELECT rolsuper, rolcanlogin, rolconnlimit, rolcreatedb, rolcreaterole, rolreplication"
        " FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
    if row is None:
        return None
    keys = ("super", "login", "connlimit", "createdb", "createrole", "replication")
    return dict(zip(keys, row, strict=True))


def plan_inside(plan: Plan, target: psycopg.Connection | None, add: Any) -> None:
    """Steps inside the new database: schema ownership, PUBLIC's CREATE, the app role's grants."""
    from psycopg import sql

    R = sql.Identifier(plan.role)
    state: dict[str, Any] = {"owner": None, "public_create": True, "app": {}}
    if target is not None:
        state = inside_state(target, plan)
    if state["owner"] != plan.role:
        add(sql.SQL("ALTER SCHEMA public OWNER TO {}").format(R), where="target")
    if state["public_create"]:
        add(sql.SQL("REVOKE CREATE ON SCHEMA public FROM PUBLIC"), where="target")
    if not plan.app_role:
        return
    A, D = sql.Identifier(plan.app_role), sql.Identifier(plan.database)
    app = state["app"]
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
    for key, stmt, where in wanted:
        if not app.get(key):
            add(stmt, where=where)


def inside_state(target: psycopg.Connection, plan: Plan) -> dict[str, Any]:
    row = target.execute(
        "SELECT pg_get_userbyid(nspowner),"
        " nspacl IS NULL OR EXISTS (SELECT 1 FROM aclexplode(nspacl) a"
        "   WHERE a.grantee = 0 AND a.privilege_type = 'CREATE')"
        " FROM pg_namespace WHERE nspname = 'public'").fetchone()
    if row is None:
        return {"owner": None, "public_create": False, "app": {}}
    app: dict[str, bool] = {}
    if plan.app_role and role_info(target, plan.app_role):
        a, r = plan.app_role, plan.role
        app["connect"] = target.execute(
            "SELECT has_database_privilege(%s, current_database(), 'CONNECT')", (a,)).fetchone()[0]
        app["usage"] = target.execute(
            "SELECT has_schema_privilege(%s, 'public', 'USAGE')", (a,)).fetchone()[0]
        app["tables"] = target.execute(
            "SELECT bool_and(has_table_privilege(%s, c.oid, 'SELECT,INSERT,UPDATE,DELETE'))"
            " IS NOT FALSE FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace"
            " AND c.relkind IN ('r', 'p', 'v')", (a,)).fetchone()[0]
        app["sequences"] = target.execute(
            "SELECT bool_and(has_sequence_privilege(%s, c.oid, 'USAGE,SELECT')) IS NOT FALSE"
            " FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'S'",
            (a,)).fetchone()[0]
        for key, objtype in (("default_tables", "r"), ("default_sequences", "S")):
            app[key] = target.execute(
                "SELECT EXISTS (SELECT 1 FROM pg_default_acl d, aclexplode(d.defaclacl) x"
                " WHERE d.defaclrole = (SELECT oid FROM pg_roles WHERE rolname = %s)"
                " AND d.defaclnamespace = 'public'::regnamespace AND d.defaclobjtype = %s"
                " AND x.grantee = (SELECT oid FROM pg_roles WHERE rolname = %s))",
                (r, objtype, a)).fetchone()[0]
    return {"owner": row[0], "public_create": row[1], "app": app}

