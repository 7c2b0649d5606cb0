"""Least privilege that holds under hostile input: drop destroys only what the URL's role owns,
the app role cannot reach the migration bookkeeping, two-role mode persists, dangerous role
state is converged or refused, and a rotation really rotates. All against a real server."""

from __future__ import annotations

import psycopg
import pytest
from cluster import unique_name
from psycopg import sql

from dbkit.envfile import read as read_env_file
from dbkit.migrate.bookkeeping import ALL_TABLES
from dbkit.urls import DbURL


def one_line_error(result, code: int) -> None:  # noqa: ANN001
    assert result.code == code, result.output
    assert "Traceback" not in result.output
    lines = [ln for ln in result.err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("dbkit: error:"), result.err


def ident(name: str) -> sql.Identifier:
    return sql.Identifier(name)


def exists(conn: psycopg.Connection, kind: str, name: str) -> bool:
    table, column = ("pg_roles", "rolname") if kind == "role" else ("pg_database", "datname")
    return conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE {} = %s").format(
        ident(table), ident(column)), (name,)).fetchone()[0] == 1


def env_url(app, key: str = "DATABASE_URL") -> DbURL:  # noqa: ANN001
    return DbURL.parse(read_env_file(app.cwd / ".env")[key])


def logs_in(url: DbURL) -> bool:
    try:
        psycopg.connect(connect_timeout=5, **url.connect_kwargs()).close()
        return True
    except psycopg.OperationalError:
        return False


# -- drop: the ownership rule ---------------------------------------------------------------
@pytest.fixture
def someone_elses_db(app, admin_conn):  # noqa: ANN001
    """A database with rows, owned by a role dbkit knows nothing of."""
    other = unique_name("other")
    app.extra_roles.append(other)
    admin_conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(ident(other)))
    admin_conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(ident(app.db), ident(other)))
    with psycopg.connect(**app.pg.with_(dbname=app.db).connect_kwargs()) as c:
        c.execute("CREATE TABLE precious (x int)")
        c.execute("INSERT INTO precious SELECT generate_series(1, 5)")
    return other


def _rows(app) -> int:  # noqa: ANN001
    with psycopg.connect(**app.pg.with_(dbname=app.db).connect_kwargs()) as c:
        return c.execute("SELECT count(*) FROM precious").fetchone()[0]


@pytest.mark.parametrize("role_exists", [False, True])
def test_drop_refuses_a_database_another_role_owns(app, admin_conn, someone_elses_db,
                                                   role_exists):  # noqa: ANN001
    # A mistyped role in DATABASE_URL (absent, or an unrelated existing one) naming someone
    # else's database.
    if role_exists:
        admin_conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(ident(app.role)))
    for args in (("drop", "--yes"), ("drop", "--dry-run"), ("drop", "--yes", "--force")):
        r = app.cli(*args)
        one_line_error(r, 7)
        assert someone_elses_db in r.err and "nothing was dropped" in r.err
    assert _rows(app) == 5
    assert exists(admin_conn, "role", app.role) is role_exists


def test_drop_refuses_a_role_that_owns_objects_in_another_database(app, admin_conn):  # noqa: ANN001
    assert app.cli("create").code == 0
    other_db = unique_name("elsewhere")
    app.extra_dbs.append(other_db)
    admin_conn.execute(sql.SQL("CREATE DATABASE {}").format(ident(other_db)))
    with psycopg.connect(autocommit=True, **app.pg.with_(dbname=other_db).connect_kwargs()) as c:
        c.execute(sql.SQL("CREATE TABLE theirs (x int)"))
        c.execute(sql.SQL("ALTER TABLE theirs OWNER TO {}").format(ident(app.role)))
    for args in (("drop", "--dry-run"), ("drop", "--yes")):
        r = app.cli(*args)
        one_line_error(r, 7)
        assert other_db in r.err
    assert exists(admin_conn, "database", app.db) and exists(admin_conn, "role", app.role)


def test_drop_keeps_a_role_dbkit_did_not_make(app, admin_conn):  # noqa: ANN001
    admin_conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
        ident(app.role), sql.Literal(app.password)))
    assert app.cli("create").code == 0
    r = app.cli("drop", "--yes")
    assert r.code == 0, r.output
    assert "kept    role" in r.out
    assert not exists(admin_conn, "database", app.db)
    assert exists(admin_conn, "role", app.role)
    assert app.cli("drop", "--yes").code == 0  # and again: nothing left to drop


def test_create_and_drop_refuse_when_database_url_names_another_server(app, admin_conn):  # noqa: ANN001
    elsewhere = app.url.with_(port=app.pg.port + 1)
    for args in (("create",), ("drop", "--yes"), ("setup", "--no-seed")):
        r = app.cli(*args, DATABASE_URL=elsewhere.render(reveal=True))
        one_line_error(r, 3)
        assert f":{app.pg.port}" in r.err and f":{app.pg.port + 1}" in r.err
    assert not exists(admin_conn, "role", app.role)
    assert not exists(admin_conn, "database", app.db)


# -- two-role mode persists; the bookkeeping is out of the app role's reach ------------------
@pytest.fixture
def two_roles(app):  # noqa: ANN001
    app_role = app.role + "_app"
    app.extra_roles.append(app_role)
    r = app.cli("setup", "--app-role", app_role)
    assert r.code == 0, r.output
    assert "DBKIT_APP_URL=" in r.out and app_role in r.out
    app_url = env_url(app, "DBKIT_APP_URL")
    assert app_url.password and app_url.password not in r.out  # masked
    assert read_env_file(app.cwd / ".env")["DBKIT_APP_ROLE"] == app_role
    return app_role


def test_setup_json_reports_the_app_url_masked(app):  # noqa: ANN001
    app_role = app.role + "_app"
    app.extra_roles.append(app_role)
    r = app.cli("setup", "--app-role", app_role, "--json")
    assert r.code == 0, r.output
    import json

    shown = DbURL.parse(json.loads(r.out)["app_url"])
    assert shown.user == app_role and shown.password == "***"


def _writes_as_app(app) -> None:  # noqa: ANN001
    with psycopg.connect(autocommit=True, **env_url(app, "DBKIT_APP_URL").connect_kwargs()) as c:
        c.execute("INSERT INTO users (email, password_hash) VALUES (%s, 'x')",
                  (unique_name("u") + "@example.com",))
        assert c.execute("SELECT count(*) FROM users").fetchone()[0] >= 1


def test_reset_keeps_the_app_role_working_and_drop_removes_it(app, admin_conn, two_roles):  # noqa: ANN001
    _writes_as_app(app)
    r = app.cli("reset", "--yes")  # no --app-role, no variable: .env says so
    assert r.code == 0, r.output
    _writes_as_app(app)
    r = app.cli("drop", "--yes")
    assert r.code == 0, r.output
    assert not exists(admin_conn, "role", two_roles)
    assert not exists(admin_conn, "role", app.role)


def test_the_app_role_cannot_touch_the_bookkeeping(app, admin_conn, two_roles):  # noqa: ANN001
    app_url = env_url(app, "DBKIT_APP_URL")
    with psycopg.connect(autocommit=True, **app_url.connect_kwargs()) as c:
        for table in ALL_TABLES:
            t = ident(table)
            for stmt in (sql.SQL("SELECT * FROM {} LIMIT 1").format(t),
                         sql.SQL("INSERT INTO {} DEFAULT VALUES").format(t),
                         sql.SQL("UPDATE {t} SET {c} = {c}").format(
                             t=t, c=ident(_column(app, table))),
                         sql.SQL("DELETE FROM {}").format(t)):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    c.execute(stmt)
    # the owner still migrates and yoyo's own CLI still sees every migration applied
    from test_migrate import POSTS_IDS, yoyo

    listed = yoyo(app, "list", str(_packaged()))
    assert listed.returncode == 0, listed.stderr
    status = {ln.split()[1]: ln.split()[0] for ln in listed.stdout.splitlines()
              if ln.split() and ln.split()[0] in ("A", "U")}
    assert status == {i: "A" for i in POSTS_IDS}


def _packaged():  # noqa: ANN202
    from test_migrate import PACKAGED

    return PACKAGED


def _column(app, table: str) -> str:  # noqa: ANN001
    with psycopg.connect(**app.pg.with_(dbname=app.db).connect_kwargs()) as c:
        return c.execute("SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass"
                         " AND attnum > 0 AND NOT attisdropped AND attidentity <> 'a'"
                         " ORDER BY attnum LIMIT 1",
                         (table,)).fetchone()[0]


def _doctor(app) -> tuple[int, dict]:  # noqa: ANN001
    import json

    r = app.cli("doctor", "--json")
    return r.code, {c["name"]: c for c in json.loads(r.out)["checks"]}


def test_doctor_logs_in_as_the_app_role_and_fails_on_a_hand_made_grant(app, two_roles):  # noqa: ANN001
    code, checks = _doctor(app)
    assert checks["app-role"]["status"] == "pass", checks["app-role"]
    assert checks["bookkeeping"]["status"] == "pass", checks["bookkeeping"]
    with psycopg.connect(autocommit=True, **app.pg.with_(dbname=app.db).connect_kwargs()) as c:
        c.execute(sql.SQL("GRANT SELECT, DELETE ON _yoyo_migration TO {}").format(ident(two_roles)))
    code, checks = _doctor(app)
    assert code == 17
    assert checks["bookkeeping"]["status"] == "fail"
    assert two_roles in checks["bookkeeping"]["detail"]
    assert checks["app-role"]["status"] == "fail"
    assert "_yoyo_migration" in checks["app-role"]["detail"]
    # the hint works when followed
    assert "dbkit create" in checks["bookkeeping"]["hint"]
    assert app.cli("create").code == 0
    code, checks = _doctor(app)
    assert checks["bookkeeping"]["status"] == "pass" and checks["app-role"]["status"] == "pass"


def test_doctor_fails_when_the_app_role_lost_its_grants(app, two_roles):  # noqa: ANN001
    with psycopg.connect(autocommit=True, **app.pg.with_(dbname=app.db).connect_kwargs()) as c:
        c.execute(sql.SQL("REVOKE DELETE ON posts FROM {}").format(ident(two_roles)))
    code, checks = _doctor(app)
    assert code == 17 and checks["app-role"]["status"] == "fail"
    assert "DELETE on posts" in checks["app-role"]["detail"]
    assert app.cli("create").code == 0
    assert _doctor(app)[1]["app-role"]["status"] == "pass"


# -- dangerous role state: converged, or refused with the fix -------------------------------
def test_membership_in_a_superuser_role_is_revoked(app, admin_conn):  # noqa: ANN001
    boss, group = unique_name("boss"), unique_name("group")
    app.extra_roles += [boss, group]
    admin_conn.execute(sql.SQL("CREATE ROLE {} SUPERUSER NOLOGIN").format(ident(boss)))
    admin_conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(ident(group)))
    admin_conn.execute(sql.SQL("GRANT {} TO {}").format(ident(boss), ident(group)))
    admin_conn.execute(sql.SQL("CREATE ROLE {} LOGIN BYPASSRLS PASSWORD {}").format(
        ident(app.role), sql.Literal(app.password)))
    for granted in (boss, group, "pg_execute_server_program", "pg_read_server_files"):
        admin_conn.execute(sql.SQL("GRANT {} TO {}").format(ident(granted), ident(app.role)))
    code, checks = _doctor_before_create(app)
    assert checks["owner-role"]["status"] == "fail" and boss in checks["owner-role"]["detail"]
    r = app.cli("create")
    assert r.code == 0, r.output
    with app.connect(autocommit=True) as c:
        for target in (boss, group):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute(sql.SQL("SET ROLE {}").format(ident(target)))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("COPY (SELECT 1) TO PROGRAM 'true'")
    assert admin_conn.execute("SELECT rolbypassrls FROM pg_roles WHERE rolname = %s",
                              (app.role,)).fetchone()[0] is False
    assert _doctor(app)[1]["owner-role"]["status"] == "pass"


def _doctor_before_create(app) -> tuple[int, dict]:  # noqa: ANN001
    # doctor needs a database to connect to; the role's own check reads the admin connection
    admin_db = app.url.with_(dbname="postgres")
    import json

    r = app.cli("doctor", "--json", DATABASE_URL=admin_db.render(reveal=True))
    return r.code, {c["name"]: c for c in json.loads(r.out)["checks"]}


def test_a_non_superuser_admin_refuses_what_it_cannot_revoke_and_names_the_fix(app, admin_conn):  # noqa: ANN001
    boss, admin = unique_name("boss"), unique_name("admin")
    app.extra_roles += [boss, admin]
    admin_conn.execute(sql.SQL("CREATE ROLE {} SUPERUSER NOLOGIN").format(ident(boss)))
    admin_conn.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEROLE CREATEDB PASSWORD 'adminpw'"
                               ).format(ident(admin)))
    admin_conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
        ident(app.role), sql.Literal(app.password)))
    admin_conn.execute(sql.SQL("GRANT {} TO {}").format(ident(boss), ident(app.role)))
    admin_url = app.pg.with_(user=admin, password="adminpw").render(reveal=True)
    if admin_conn.info.server_version >= 160000:
        # PostgreSQL 16+: without ADMIN OPTION on a role it did not create, the admin may not
        # change it at all: refused first (exit 5), naming the grant that fixes it
        r = app.cli("create", DBKIT_ADMIN_URL=admin_url)
        one_line_error(r, 5)
        assert "ADMIN OPTION" in r.err
        admin_conn.execute(sql.SQL("GRANT {} TO {} WITH ADMIN OPTION").format(
            ident(app.role), ident(admin)))
    r = app.cli("create", DBKIT_ADMIN_URL=admin_url)
    one_line_error(r, 7)
    assert f"REVOKE {boss} FROM {app.role}" in r.err.replace('"', "")
    assert not exists(admin_conn, "database", app.db)
    admin_conn.execute(sql.SQL("REVOKE {} FROM {}").format(ident(boss), ident(app.role)))
    r = app.cli("create", DBKIT_ADMIN_URL=admin_url)
    assert r.code == 0, r.output
    admin_conn.execute(sql.SQL("ALTER ROLE {} BYPASSRLS").format(ident(app.role)))
    r = app.cli("create", DBKIT_ADMIN_URL=admin_url)
    one_line_error(r, 7)
    assert "NOBYPASSRLS" in r.err


# -- rotation ---------------------------------------------------------------------------------
def test_rotate_password_with_the_password_in_env_file(app):  # noqa: ANN001
    env_file = app.cwd / ".env"
    env_file.write_text(f"DATABASE_URL={app.url.render(reveal=True)}\n")
    assert app.cli("setup", "--no-seed", DATABASE_URL=None).code == 0
    old = env_url(app)
    with psycopg.connect(**old.connect_kwargs()) as survivor:  # an open session is not killed
        r = app.cli("setup", "--rotate-password", "--no-seed", DATABASE_URL=None)
        assert r.code == 0, r.output
        assert "no longer works" in r.out
        assert survivor.execute("SELECT 1").fetchone() == (1,)
    new = env_url(app)
    assert new.password != old.password
    assert not logs_in(old)
    assert logs_in(new)
    assert new.password not in r.output


def test_password_stdin_for_a_new_role_is_written_to_env(app):  # noqa: ANN001
    bare = app.url.with_(password=None)
    (app.cwd / ".env").write_text(f"DATABASE_URL={bare.render()}\n")
    r = app.cli("create", "--password-stdin", input="s3cret-from-stdin\n", DATABASE_URL=None)
    assert r.code == 0, r.output
    assert env_url(app).password == "s3cret-from-stdin"
    assert app.cli("migrate", DATABASE_URL=None).code == 0  # the next command logs in


@pytest.mark.parametrize("how", ["stdin", "url"])
def test_blank_passwords_are_refused(app, admin_conn, how):  # noqa: ANN001
    if how == "stdin":
        r = app.cli("create", "--password-stdin", input="   \n",
                    DATABASE_URL=app.url.with_(password=None).render())
    else:
        r = app.cli("create", DATABASE_URL=app.url.with_(password="  ").render(reveal=True))
    one_line_error(r, 3)
    assert not exists(admin_conn, "role", app.role)


def test_reset_after_the_app_url_was_lost_writes_one_that_works(app, two_roles):  # noqa: ANN001
    env_file = app.cwd / ".env"
    env_file.write_text("".join(ln for ln in env_file.read_text().splitlines(keepends=True)
                                if not ln.startswith("DBKIT_APP_URL")))
    r = app.cli("reset", "--yes")
    assert r.code == 0, r.output
    _writes_as_app(app)  # the password written is the one the role has
