"""dbkit create / drop against a real server: a dedicated role and database with least
privilege, idempotent, secrets kept out of sight, strange names taken literally, all or nothing."""

from __future__ import annotations

import os
import stat

import psycopg
import pytest
from cluster import unique_name
from psycopg import sql

from dbkit.urls import DbURL


def catalog(conn: psycopg.Connection, names: list[str]) -> dict:
    """Roles, databases and ACLs for the given names: what 'the same catalog' means here."""
    roles = conn.execute(
        "SELECT rolname, rolsuper, rolcanlogin, rolcreatedb, rolcreaterole, rolreplication,"
        " rolconnlimit, rolpassword FROM pg_authid WHERE rolname = ANY(%s) ORDER BY 1",
        (names,)).fetchall()
    dbs = conn.execute(
        "SELECT datname, pg_get_userbyid(datdba), pg_encoding_to_char(encoding), datacl::text"
        " FROM pg_database WHERE datname = ANY(%s) ORDER BY 1", (names,)).fetchall()
    return {"roles": roles, "databases": dbs}


def inside(app, conn_url: DbURL | None = None) -> tuple:
    url = conn_url or app.pg.with_(dbname=app.db)
    with psycopg.connect(**url.connect_kwargs()) as c:
        return (
            c.execute("SELECT pg_get_userbyid(nspowner), nspacl::text FROM pg_namespace"
                      " WHERE nspname = 'public'").fetchone(),
            c.execute("SELECT defaclrole::regrole::text, defaclobjtype, defaclacl::text"
                      " FROM pg_default_acl ORDER BY 1, 2").fetchall(),
        )


def one_line_error(result, code: int) -> None:
    assert result.code == code, result.output
    assert "Traceback" not in result.output
    lines = [ln for ln in result.err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("dbkit: error:"), result.err


# -- the role logs in; nobody else may ------------------------------------------------------
def test_role_logs_in_with_generated_password_and_others_cannot_connect(app, admin_conn):
    r = app.cli("create", DATABASE_URL=app.url.with_(password=None).render())
    assert r.code == 0, r.output
    env_file = app.cwd / ".env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    url = app.read_env_url()
    assert url.user == app.role and url.dbname == app.db and len(url.password) >= 22
    assert url.password not in r.output
    # over TCP, with scram-sha-256 (the verifier is what the server stores)
    assert url.host == "127.0.0.1" or app.pg.host not in (None, "127.0.0.1")
    with psycopg.connect(**url.connect_kwargs()) as c:
        assert c.execute("SELECT current_user, current_database()").fetchone() == (app.role, app.db)
        assert c.pgconn.used_password
    pw = admin_conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s",
                            (app.role,)).fetchone()[0]
    assert pw.startswith("SCRAM-SHA-256$")
    other = unique_name("other")
    app.extra_roles.append(other)
    admin_conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'x-other-pw'").format(
        sql.Identifier(other)))
    with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
        psycopg.connect(**url.with_(user=other, password="x-other-pw").connect_kwargs())
    role = admin_conn.execute(
        "SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolcanlogin FROM pg_roles"
        " WHERE rolname = %s", (app.role,)).fetchone()
    assert role == (False, False, False, False, True)
    owner, enc = admin_conn.execute(
        "SELECT pg_get_userbyid(datdba), pg_encoding_to_char(encoding) FROM pg_database"
        " WHERE datname = %s", (app.db,)).fetchone()
    assert (owner, enc) == (app.role, "UTF8")


def test_public_cannot_create_in_schema_and_schema_owned_by_role(app):
    assert app.cli("create").code == 0
    (owner, _acl), _ = inside(app)
    assert owner == app.role
    with psycopg.connect(**app.pg.with_(dbname=app.db).connect_kwargs()) as c:
        public_create = c.execute(
            "SELECT count(*) FROM pg_namespace n, aclexplode(n.nspacl) a WHERE n.nspname = 'public'"
            " AND a.grantee = 0 AND a.privilege_type = 'CREATE'").fetchone()[0]
        acl_set = c.execute("SELECT nspacl IS NOT NULL FROM pg_namespace WHERE nspname = 'public'"
                            ).fetchone()[0]
    assert acl_set and public_create == 0


def test_env_file_keeps_other_lines_and_comments(app):
    (app.cwd / ".env").write_text("# my settings\nFOO=bar\n\nDATABASE_URL=" +
                                  app.url.with_(password=None).render() + "\nLAST=1")
    r = app.cli("create", DATABASE_URL=None)
    assert r.code == 0, r.output
    text = (app.cwd / ".env").read_text()
    assert text.startswith("# my settings\nFOO=bar\n\n")
    assert "LAST=1" in text and text.count("DATABASE_URL=") == 1
    assert app.read_env_url().password


def test_print_url_prints_instead_of_writing(app):
    r = app.cli("create", "--print-url", DATABASE_URL=app.url.with_(password=None).render())
    assert r.code == 0, r.output
    assert not (app.cwd / ".env").exists()
    printed = [ln for ln in r.out.splitlines() if ln.startswith("postgresql://")]
    assert len(printed) == 1
    with psycopg.connect(**DbURL.parse(printed[0]).connect_kwargs()):
        pass


def test_password_from_stdin(app):
    url = app.url.with_(password=None)
    r = app.cli("create", "--password-stdin", input="s3cret from stdin\n",
                DATABASE_URL=url.render())
    assert r.code == 0, r.output
    # written where a generated one would have gone: the next command can log in
    assert app.read_env_url().password == "s3cret from stdin"
    assert "s3cret" not in r.output
    with psycopg.connect(**url.with_(password="s3cret from stdin").connect_kwargs()):
        pass


def test_rotate_password(app):
    assert app.cli("create").code == 0
    r = app.cli("create", "--rotate-password", DATABASE_URL=app.url.with_(password=None).render())
    assert r.code == 0, r.output
    new = app.read_env_url()
    assert new.password != app.password
    with psycopg.connect(**new.connect_kwargs()):
        pass
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(**app.url.connect_kwargs())


def test_lost_password_gets_a_clear_error_and_setup_rotate_password_recovers(app):
    assert app.cli("create").code == 0
    # .env lost its password (say, recreated from .env.example); the role keeps its old one
    (app.cwd / ".env").write_text(f"DATABASE_URL={app.url.with_(password=None).render()}\n")
    r = app.cli("setup", "--no-seed", DATABASE_URL=None)
    assert r.code == 4 and r.err.count("\n") == 1, r.output
    assert f"no password for role {app.role!r}" in r.err and "setup --rotate-password" in r.err
    assert "application_name" not in r.err  # dbkit's session label is not part of the story
    r = app.cli("setup", "--no-seed", "--rotate-password", DATABASE_URL=None)
    assert r.code == 0, r.output
    assert f"new password for role(s) {app.role}" in r.out
    new = app.read_env_url()
    assert new.password and new.password != app.password
    with psycopg.connect(**new.connect_kwargs()):
        pass
    assert app.cli("status", "--check", DATABASE_URL=None).code == 0


def test_an_env_file_that_cannot_take_the_password_stops_create_before_anything(app, admin_conn):
    (app.cwd / ".env").mkdir()  # in the way: the generated password would be lost
    no_password = app.url.with_(password=None).render()
    for command in (("create",), ("setup", "--no-seed")):
        r = app.cli(*command, DATABASE_URL=no_password)
        one_line_error(r, 3)
        assert ".env is not a regular file" in r.err
        assert catalog(admin_conn, [app.role, app.db]) == {"roles": [], "databases": []}


def test_an_unparsable_env_line_is_named_not_silently_dropped(app):
    (app.cwd / ".env").write_text(f"# mine\nDATABASE_URL=\"{app.url.render(reveal=True)}\n")
    r = app.cli("status", DATABASE_URL=None)
    assert r.code == 3, r.output
    warning, error = r.err.splitlines()
    assert warning == f"dbkit: warning: {app.cwd / '.env'}:2: cannot parse this line; it is ignored"
    assert error.startswith("dbkit: error: DATABASE_URL is not set")
    assert app.password not in r.output


def test_connection_limit(app, admin_conn):
    assert app.cli("create", "--connection-limit", "7").code == 0
    assert admin_conn.execute("SELECT rolconnlimit FROM pg_roles WHERE rolname = %s",
                              (app.role,)).fetchone()[0] == 7


# -- twice is the same as once --------------------------------------------------------------
def test_create_twice_same_catalog(app, admin_conn):
    first = app.cli("create")
    assert first.code == 0, first.output
    before = catalog(admin_conn, [app.role, app.db]), inside(app)
    second = app.cli("create")
    assert second.code == 0, second.output
    assert "nothing to do" in second.out and "exists  role" in second.out
    assert (catalog(admin_conn, [app.role, app.db]), inside(app)) == before


# -- passwords stay out of argv, output and the server's log --------------------------------
def test_passwords_never_in_output_argv_or_server_log(app, admin_conn, request):
    log_file = _server_log(request)
    admin_conn.execute("ALTER SYSTEM SET log_statement = 'all'")
    admin_conn.execute("SELECT pg_reload_conf()")
    try:
        offset = log_file.stat().st_size
        given = "Given-Pw-" + unique_name("x")
        r1 = app.subprocess("--verbose", "--debug", "create")  # password from DATABASE_URL
        app2_role, app2_db = unique_name("role"), unique_name("db")
        app.extra_roles.append(app2_role)
        app.extra_dbs.append(app2_db)
        url2 = app.url.with_(user=app2_role, dbname=app2_db, password=None)
        r2 = app.subprocess("-v", "create", "--password-stdin", input=given + "\n",
                            DATABASE_URL=url2.render())
        r3 = app.subprocess("-v", "create", "--rotate-password", DATABASE_URL=url2.render())
        generated = app.read_env_url().password
        assert (r1.code, r2.code, r3.code) == (0, 0, 0), (r1.output, r2.output, r3.output)
        log = log_file.read_text(errors="replace")[offset:]
        assert "CREATE ROLE" in log  # the log really records statements
        for secret in (app.password, given, generated):
            for text in (log, r1.output, r2.output, r3.output):
                assert secret not in text
    finally:
        admin_conn.execute("ALTER SYSTEM RESET log_statement")
        admin_conn.execute("SELECT pg_reload_conf()")


def test_password_not_in_process_arguments(app):
    """dbkit passes the password on stdin/.env only; scan every process's argv while it runs."""
    import subprocess
    import sys
    import threading

    secret = "Argv-Secret-" + unique_name("x")
    seen: list[str] = []
    stop = threading.Event()

    def scan() -> None:
        while not stop.is_set():
            for pid in os.listdir("/proc"):
                if pid.isdigit():
                    try:
                        with open(f"/proc/{pid}/cmdline", "rb") as f:
                            if secret.encode() in f.read():
                                seen.append(pid)
                    except OSError:
                        pass

    t = threading.Thread(target=scan)
    t.start()
    try:
        env = {k: v for k, v in app.env().items() if v is not None}
        proc = subprocess.run([sys.executable, "-m", "dbkit", "create", "--password-stdin"],
                              input=secret + "\n", capture_output=True, text=True, cwd=app.cwd,
                              env={**{k: v for k, v in os.environ.items()
                                      if k not in env and not k.startswith("DBKIT")}, **env,
                                   "DATABASE_URL": app.url.with_(password=None).render()})
    finally:
        stop.set()
        t.join()
    assert proc.returncode == 0, proc.stderr
    assert seen == []


def _server_log(request):
    from pathlib import Path

    if os.environ.get("DBKIT_TEST_ADMIN_URL"):
        pytest.skip("needs the throwaway cluster's log file (external server in use)")
    pg = request.getfixturevalue("pg")
    candidates = [p for base in ("/tmp", "/dev/shm")
                  for p in Path(base).glob("dbkit-test-*/cluster/pgdata/server.log")
                  if f"port = {pg.port}" in (p.parent / "dbkit.conf").read_text()]
    assert candidates, "throwaway cluster log not found"
    return candidates[0]


# -- any name PostgreSQL accepts, quoted literally ------------------------------------------
@pytest.mark.parametrize("role,db", [
    ('we"ird; role', "my db; DROP DATABASE postgres; --"),
    ("rôle ünïcode ✓", "データベース 'quoted'"),
    ("%percent%", "a/slash"),
])
def test_strange_names_created_literally(app, admin_conn, role, db):
    app.role, app.db = role + unique_name(""), db + unique_name("")
    r = app.cli("create")
    assert r.code == 0, r.output
    assert admin_conn.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s",
                              (app.db,)).fetchone() == (app.role,)
    assert admin_conn.execute("SELECT 1 FROM pg_database WHERE datname = 'postgres'").fetchone()
    with app.connect() as c:
        assert c.execute("SELECT current_database()").fetchone()[0] == app.db


# -- bad input: one line, a documented exit code, nothing made ------------------------------
@pytest.mark.parametrize("mutate,code,needle", [
    (lambda a: a.url.with_(dbname="postgres"), 6, "reserved"),
    (lambda a: a.url.with_(dbname="template1"), 6, "reserved"),
    (lambda a: a.url.with_(dbname="template0"), 6, "reserved"),
    (lambda a: a.url.with_(user="postgres"), 6, "reserved"),
    (lambda a: a.url.with_(user="pg_monitor"), 6, "reserved"),
    (lambda a: a.url.with_(dbname="x" * 64), 6, "63"),
    (lambda a: a.url.with_(user="é" * 32), 6, "63"),
    (lambda a: a.url.with_(dbname=None), 3, "name both"),
])
def test_refused_names_leave_nothing(app, admin_conn, mutate, code, needle):
    url = mutate(app)
    r = app.cli("create", DATABASE_URL=url.render(reveal=True))
    one_line_error(r, code)
    assert needle in r.err
    assert catalog(admin_conn, [app.role, app.db]) == {"roles": [], "databases": []}


def test_existing_superuser_role_refused(app, admin_conn):
    app.extra_roles.append(app.role)
    admin_conn.execute(sql.SQL("CREATE ROLE {} SUPERUSER LOGIN").format(sql.Identifier(app.role)))
    r = app.cli("create")
    one_line_error(r, 6)
    assert "superuser" in r.err
    assert catalog(admin_conn, [app.db])["databases"] == []


def test_bad_url_is_config_error_without_echoing_password():
    from dbkit.cli import run  # noqa: F401 - imported for parity with the CLI path
    from dbkit.errors import InvalidURL

    with pytest.raises(InvalidURL) as exc:
        DbURL.parse("postgresql://u:topsecret@host:notaport/db")
    assert "topsecret" not in str(exc.value)
    with pytest.raises(InvalidURL):
        DbURL.parse("mysql://u@h/db")


@pytest.mark.parametrize("option", ["sslmode=bogus", "nosuchopt=1", "target_session_attrs=odd"])
def test_a_bad_connection_option_is_a_config_error(app, option):
    bad = f"{app.url.render(reveal=True)}?{option}"
    r = app.cli("status", DATABASE_URL=bad)
    one_line_error(r, 3)
    assert "invalid connection option" in r.err and app.password not in r.err


def test_admin_without_createdb_is_refused_and_nothing_created(app, admin_conn):
    weak = unique_name("weak")
    app.extra_roles.append(weak)
    admin_conn.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEROLE NOCREATEDB PASSWORD 'weak-pw'"
                               ).format(sql.Identifier(weak)))
    r = app.cli("create", DBKIT_ADMIN_URL=app.pg.with_(user=weak, password="weak-pw").render(
        reveal=True))
    one_line_error(r, 5)
    assert "CREATEDB" in r.err
    assert catalog(admin_conn, [app.role, app.db]) == {"roles": [], "databases": []}


def test_non_superuser_admin_with_createrole_createdb_works(app, admin_conn):
    admin = unique_name("adm")
    app.extra_roles.append(admin)
    admin_conn.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEROLE CREATEDB PASSWORD 'adm-pw'"
                               ).format(sql.Identifier(admin)))
    env = {"DBKIT_ADMIN_URL": app.pg.with_(user=admin, password="adm-pw").render(reveal=True)}
    r = app.cli("create", "--app-role", app.role + "_app", **env)
    app.extra_roles.append(app.role + "_app")
    assert r.code == 0, r.output
    assert app.cli("create", "--app-role", app.role + "_app", **env).out.count("nothing to do")
    with app.connect() as c:
        assert c.execute("SELECT current_database()").fetchone()[0] == app.db
    # drop needs the same admin; it must own nothing left behind
    admin_conn.execute(sql.SQL("REASSIGN OWNED BY {} TO CURRENT_USER").format(
        sql.Identifier(admin)))


def test_unreachable_server(app):
    r = app.cli("create", DBKIT_ADMIN_URL="postgresql://x:y-secret@127.0.0.1:1/postgres",
                DATABASE_URL=app.url.with_(port=1).render(reveal=True))
    one_line_error(r, 4)
    assert "y-secret" not in r.output


def test_unreachable_server_wait_gives_up_after_timeout(app):
    import time

    start = time.monotonic()
    r = app.cli("create", "--wait", "1.5", DBKIT_ADMIN_URL="postgresql://x@127.0.0.1:1/postgres")
    one_line_error(r, 4)
    assert 1.0 <= time.monotonic() - start < 8
    assert "did not accept connections within 1.5s" in r.err


def test_database_owned_by_someone_else_is_a_conflict(app, admin_conn):
    app.extra_dbs.append(app.db)
    admin_conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(app.db)))
    r = app.cli("create")
    one_line_error(r, 7)
    assert "owned by" in r.err
    assert catalog(admin_conn, [app.role])["roles"] == []  # nothing created before refusing


def test_failure_midway_removes_what_this_run_created(app, pg):
    """A step failing after CREATE ROLE and CREATE DATABASE: both are removed again."""
    from dbkit import provision
    from dbkit.errors import DbkitError
    from dbkit.settings import Settings

    s = Settings.load(environ=app.env(), cwd=app.cwd)
    with psycopg.connect(autocommit=True, **pg.connect_kwargs()) as conn:
        def open_target(db):
            return psycopg.connect(**pg.with_(dbname=db).connect_kwargs())

        plan = provision.plan_create(conn, s.target().url, open_target)
        plan.steps.append(provision.Step(sql.SQL("SELECT 1/0"), "SELECT 1/0", where="target"))
        with pytest.raises(DbkitError, match="division by zero"):
            provision.apply(plan, conn, open_target)
        assert catalog(conn, [app.role, app.db]) == {"roles": [], "databases": []}


# -- --dry-run changes nothing --------------------------------------------------------------
def test_dry_run_changes_nothing(app, admin_conn):
    before = catalog(admin_conn, [app.role, app.db])
    r = app.cli("create", "--dry-run")
    assert r.code == 0, r.output
    assert "CREATE ROLE" in r.out and "CREATE DATABASE" in r.out and "PASSWORD '***'" in r.out
    assert app.password not in r.out
    assert catalog(admin_conn, [app.role, app.db]) == before == {"roles": [], "databases": []}
    assert not (app.cwd / ".env").exists()


def test_dry_run_on_converged_database_is_empty(app):
    assert app.cli("create").code == 0
    r = app.cli("create", "--dry-run", "--json")
    import json

    assert json.loads(r.out)["statements"] == []


# -- two-role mode --------------------------------------------------------------------------
def test_two_role_mode(app, admin_conn):
    app_role = app.role + "_app"
    app.extra_roles.append(app_role)
    r = app.cli("create", "--app-role", app_role)
    assert r.code == 0, r.output
    from dbkit.envfile import read as read_env_file

    app_url = DbURL.parse(read_env_file(app.cwd / ".env")["DBKIT_APP_URL"])
    assert app_url.user == app_role
    with app.connect(autocommit=True) as owner:  # the owner creates a table afterwards
        owner.execute("CREATE TABLE items (id bigint GENERATED BY DEFAULT AS IDENTITY, name text)")
    with psycopg.connect(autocommit=True, **app_url.connect_kwargs()) as c:
        c.execute("INSERT INTO items (name) VALUES ('x')")
        assert c.execute("SELECT count(*) FROM items").fetchone()[0] == 1
        c.execute("UPDATE items SET name = 'y'")
        c.execute("DELETE FROM items")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("CREATE TABLE nope (x int)")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("DROP TABLE items")
    assert app.cli("create", "--app-role", app_role).out.count("nothing to do") == 1
    assert app.cli("drop", "--yes", "--app-role", app_role).code == 0
    assert catalog(admin_conn, [app.role, app_role, app.db]) == {"roles": [], "databases": []}


# drop ------------------------------------------------------------------------------------
def test_drop_needs_yes_off_terminal_and_is_idempotent(app, admin_conn):
    assert app.cli("create").code == 0
    one_line_error(app.cli("drop"), 16)
    assert catalog(admin_conn, [app.db])["databases"]
    assert app.cli("drop", "--yes").code == 0
    assert catalog(admin_conn, [app.role, app.db]) == {"roles": [], "databases": []}
    again = app.cli("drop", "--yes")
    assert again.code == 0 and "nothing to drop" in again.out


def test_drop_with_open_connection_needs_force(app, admin_conn):
    assert app.cli("create").code == 0
    with app.connect():
        one_line_error(app.cli("drop", "--yes"), 7)
        assert app.cli("drop", "--yes", "--force").code == 0
    assert catalog(admin_conn, [app.role, app.db]) == {"roles": [], "databases": []}


def test_drop_refused_in_production(app, admin_conn):
    assert app.cli("create").code == 0
    one_line_error(app.cli("drop", "--yes", DBKIT_ENV="production"), 16)
    assert catalog(admin_conn, [app.db])["databases"]


def test_json_output(app):
    import json

    data = json.loads(app.cli("create", "--json").out)
    assert data["database"] == app.db and data["created"] == [f"role {app.role}",
                                                               f"database {app.db}"]
    assert app.password not in json.dumps(data)


def test_drop_when_role_owns_objects_elsewhere_is_a_conflict(app, admin_conn):
    assert app.cli("create").code == 0
    other_db = unique_name("elsewhere")
    app.extra_dbs.append(other_db)
    admin_conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
        sql.Identifier(other_db), sql.Identifier(app.role)))
    r = app.cli("drop", "--yes")
    one_line_error(r, 7)
    assert "owns objects" in r.err and other_db in r.err
    # refused before anything was dropped: role and database both still there
    assert catalog(admin_conn, [app.role])["roles"]
    assert catalog(admin_conn, [app.db])["databases"]
