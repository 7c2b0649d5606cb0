"""Dry runs: every ``--dry-run`` of every command leaves a catalog snapshot unchanged.

Commands with ``--dry-run``: create, drop, migrate, rollback, seed (sample, synthetic, files).
Each runs in every state it can meet — nothing provisioned, provisioned and empty, migrated,
migrated and seeded — including runs that end in a documented refusal. The snapshot covers
the whole cluster's roles (with password verifiers), memberships, role settings and databases
(owners, ACLs, limits), and inside the application's database: namespaces, relations, columns,
constraints, indexes, default privileges, functions, every table's full contents (yoyo's and
dbkit's bookkeeping included) and the sequences' positions.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from cluster import unique_name
from psycopg import sql

pytestmark = pytest.mark.faults

CLUSTER = {
    "roles": "SELECT rolname, rolsuper, rolinherit, rolcreaterole, rolcreatedb, rolcanlogin,"
             " rolreplication, rolbypassrls, rolconnlimit, rolpassword, rolvaliduntil"
             " FROM pg_authid ORDER BY 1",
    "members": "SELECT roleid::regrole::text, member::regrole::text, admin_option"
               " FROM pg_auth_members ORDER BY 1, 2",
    "role settings": "SELECT setdatabase, setrole, setconfig FROM pg_db_role_setting ORDER BY 1, 2",
    "databases": "SELECT datname, pg_get_userbyid(datdba), encoding, datistemplate, datallowconn,"
                 " datconnlimit, datacl::text FROM pg_database ORDER BY 1",
}
USER_NS = "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_%'"
DATABASE = {
    "namespaces": "SELECT nspname, pg_get_userbyid(nspowner), nspacl::text FROM pg_namespace n"
                  " WHERE {ns} ORDER BY 1",
    "relations": "SELECT n.nspname, c.relname, c.relkind, pg_get_userbyid(c.relowner),"
                 " c.relacl::text, c.relpersistence FROM pg_class c JOIN pg_namespace n"
                 " ON n.oid = c.relnamespace WHERE {ns} ORDER BY 1, 2",
    "columns": "SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod),"
               " a.attnotnull, a.attidentity, pg_get_expr(d.adbin, d.adrelid)"
               " FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid"
               " JOIN pg_namespace n ON n.oid = c.relnamespace"
               " LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum"
               " WHERE {ns} AND a.attnum > 0 AND NOT a.attisdropped ORDER BY 1, 2",
    "constraints": "SELECT c.conrelid::regclass::text, c.conname, pg_get_constraintdef(c.oid),"
                   " c.convalidated FROM pg_constraint c JOIN pg_namespace n"
                   " ON n.oid = c.connamespace WHERE {ns} ORDER BY 1, 2",
    "indexes": "SELECT x.relname, pg_get_indexdef(i.indexrelid), i.indisvalid FROM pg_index i"
               " JOIN pg_class x ON x.oid = i.indexrelid JOIN pg_namespace n"
               " ON n.oid = x.relnamespace WHERE {ns} ORDER BY 1",
    "default acl": "SELECT pg_get_userbyid(defaclrole), defaclobjtype, defaclacl::text"
                   " FROM pg_default_acl ORDER BY 1, 2",
    "functions": "SELECT p.proname, pg_get_function_identity_arguments(p.oid) FROM pg_proc p"
                 " JOIN pg_namespace n ON n.oid = p.pronamespace WHERE {ns} ORDER BY 1, 2",
    "sequences": "SELECT schemaname, sequencename, last_value FROM pg_sequences"
                 " WHERE schemaname NOT LIKE 'pg_%' ORDER BY 1, 2",
}


def _q(query: str) -> sql.Composed:
    return sql.SQL(query).format(ns=sql.SQL(USER_NS))


def snapshot(admin: psycopg.Connection, app) -> dict[str, object]:
    snap: dict[str, object] = {k: admin.execute(q).fetchall() for k, q in CLUSTER.items()}
    if admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (app.db,)).fetchone():
        with psycopg.connect(**app.pg.connect_kwargs(app.db), autocommit=True) as conn:
            snap |= {k: conn.execute(_q(q)).fetchall() for k, q in DATABASE.items()}
            tables = conn.execute(
                _q("SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid ="
                   " c.relnamespace WHERE c.relkind IN ('r', 'p') AND {ns} ORDER BY 1, 2")
            ).fetchall()
            for nsp, rel in tables:
                snap[f"rows of {rel}"] = conn.execute(sql.SQL(
                    "SELECT count(*), md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text),"
                    " '')) FROM {} t").format(sql.Identifier(nsp, rel))).fetchone()
    return snap


def assert_unchanged(admin: psycopg.Connection, app, before: dict[str, object], what: str) -> None:
    after = snapshot(admin, app)
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    assert not changed, f"{what} changed: " + "; ".join(
        f"{k}: {before.get(k)} -> {after.get(k)}" for k in sorted(changed))


def dry(admin, app, args: tuple[str, ...], codes: set[int]) -> None:
    """Run one dry run; assert its exit code and that the snapshot did not move."""
    before = snapshot(admin, app)
    r = app.cli(*args)
    assert r.code in codes, (args, r.output)
    assert "Traceback" not in r.output
    assert_unchanged(admin, app, before, " ".join(args))


@pytest.fixture
def seed_files(tmp_path: Path) -> Path:
    d = tmp_path / "seed-data"
    d.mkdir()
    (d / "users.csv").write_text("email,created_at\nada@example.com,2024-01-01T00:00:00Z\n"
                                 "bob@example.com,\n")
    (d / "posts.csv").write_text("title,content,owner_email\nHello,first post,ada@example.com\n")
    (d / "votes.jsonl").write_text('{"post_owner_email": "ada@example.com", "post_title": '
                                   '"Hello", "user_email": "bob@example.com"}\n')
    return d


def run_everywhere(admin, app, app_role: str) -> None:
    common = [
        ("create", "--dry-run"), ("create", "--dry-run", "--json"),
        ("create", "--dry-run", "--app-role", app_role),
        ("create", "--dry-run", "--rotate-password"),
        ("create", "--dry-run", "--connection-limit", "3"),
        ("drop", "--dry-run"), ("drop", "--dry-run", "--force"),
        ("drop", "--dry-run", "--force", "--app-role", app_role),
    ]
    for args in common:
        dry(admin, app, args, {0})


def test_every_dry_run_before_anything_exists(app, admin_conn, seed_files):
    role2 = unique_name("approle")
    app.extra_roles.append(role2)
    run_everywhere(admin_conn, app, role2)
    # the database does not exist: clean refusals, still nothing changed
    for args in [("migrate", "--dry-run"), ("rollback", "--dry-run", "--all"),
                 ("seed", "--dry-run"), ("seed", "--dry-run", "--users", "5")]:
        dry(admin_conn, app, args, {4})
    dry(admin_conn, app, ("create", "--dry-run", "--print-url"), {0})


def test_every_dry_run_on_a_provisioned_empty_database(app, admin_conn, seed_files):
    assert app.cli("create").code == 0
    role2 = unique_name("approle")
    app.extra_roles.append(role2)
    run_everywhere(admin_conn, app, role2)
    dry(admin_conn, app, ("migrate", "--dry-run"), {0})
    dry(admin_conn, app, ("migrate", "--dry-run", "--to", "0002_create_users", "--json"), {0})
    dry(admin_conn, app, ("migrate", "--dry-run", "--mark-applied", "--to", "0003_add_post_owner"),
        {0})
    dry(admin_conn, app, ("rollback", "--dry-run"), {0})
    dry(admin_conn, app, ("rollback", "--dry-run", "--all"), {0})
    for args in [("seed", "--dry-run"), ("seed", "--dry-run", "--users", "5"),
                 ("seed", "--dry-run", "--from", str(seed_files))]:
        dry(admin_conn, app, args, {13})  # schema not ready


def test_every_dry_run_on_a_migrated_database(app, admin_conn, seed_files):
    assert app.cli("create").code == 0
    assert app.cli("migrate").code == 0
    role2 = unique_name("approle")
    app.extra_roles.append(role2)
    with app.connect() as open_session:  # drop --force --dry-run must not end it
        run_everywhere(admin_conn, app, role2)
        assert open_session.execute("SELECT 1").fetchone() == (1,)
    dry(admin_conn, app, ("migrate", "--dry-run"), {0})
    for args in [("rollback", "--dry-run"), ("rollback", "--dry-run", "--steps", "3"),
                 ("rollback", "--dry-run", "--to", "0001_create_posts"),
                 ("rollback", "--dry-run", "--all", "--json")]:
        dry(admin_conn, app, args, {0})
    for args in [("seed", "--dry-run"), ("seed", "--dry-run", "--json"),
                 ("seed", "--dry-run", "--users", "50", "--posts", "200", "--votes", "100"),
                 # big enough to take the drop-and-rebuild-constraints path
                 ("seed", "--dry-run", "--users", "1000", "--posts", "60000"),
                 ("seed", "--dry-run", "--from", str(seed_files))]:
        dry(admin_conn, app, args, {0})


def test_every_dry_run_on_a_seeded_database_with_pending_work(app, admin_conn, seed_files,
                                                               tmp_path):
    assert app.cli("create").code == 0
    assert app.cli("migrate").code == 0
    assert app.cli("seed").code == 0
    assert app.cli("seed", "--from", str(seed_files)).code == 0
    role2 = unique_name("approle")
    app.extra_roles.append(role2)
    run_everywhere(admin_conn, app, role2)
    for args in [("seed", "--dry-run"), ("seed", "--dry-run", "--from", str(seed_files)),
                 ("seed", "--dry-run", "--users", "20", "--posts", "40", "--append"),
                 ("seed", "--dry-run", "--users", "60000", "--append")]:
        dry(admin_conn, app, args, {0})
    dry(admin_conn, app, ("seed", "--dry-run", "--users", "5"), {7})  # other rows: refused
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "posts.csv").write_text("title,content,owner_email\nX,y,nobody@example.com\n")
    dry(admin_conn, app, ("seed", "--dry-run", "--from", str(bad)), {14})
    # a directory with the shipped migrations plus a pending one
    from dbkit.migrate.files import packaged_dir

    PACKAGED = packaged_dir()

    mig = tmp_path / "migrations"
    mig.mkdir()
    for p in PACKAGED.glob("*.sql"):
        (mig / p.name).write_text(p.read_text())
    (mig / "0099_add_slug.sql").write_text("ALTER TABLE posts ADD COLUMN slug text;\n")
    (mig / "0099_add_slug.rollback.sql").write_text("ALTER TABLE posts DROP COLUMN slug;\n")
    for args in [("migrate", "--dry-run", "--migrations", str(mig)),
                 ("rollback", "--dry-run", "--all", "--migrations", str(mig))]:
        dry(admin_conn, app, args, {0})


def test_seed_dry_runs_leave_sequences_where_they_were(app, admin_conn, seed_files):
    """nextval() and setval() ignore rollbacks: a seed --dry-run must put the identity
    sequences back itself (it did not at first; found by this suite)."""
    assert app.cli("create").code == 0
    assert app.cli("migrate").code == 0
    for args in [("seed", "--dry-run"), ("seed", "--dry-run", "--from", str(seed_files)),
                 ("seed", "--dry-run", "--users", "20", "--posts", "40")]:
        before = snapshot(admin_conn, app)["sequences"]
        assert app.cli(*args).code == 0
        assert snapshot(admin_conn, app)["sequences"] == before, args
