"""A non-superuser admin (LOGIN CREATEROLE CREATEDB, as on RDS, Cloud SQL, Azure) is a first-class
mode: every command that creates, converges, rotates, resets or drops works under it, twice in
a row, and what it truly may not do is refused up front (exit 5) naming the missing right."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from cluster import unique_name
from conftest import App, CliResult
from helpers import clean_env
from psycopg import sql

from dbkit.envfile import read as read_env_file
from dbkit.testdb.template import OWNER, PLUGIN_PREFIX
from dbkit.urls import DbURL

SAMPLE = Path(__file__).resolve().parent / "plugin_sample" / "sample_dbkit.py"
MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


@dataclass
class Managed:
    """The app, run by a CREATEROLE CREATEDB admin named ``name``."""

    app: App
    name: str
    url: DbURL

    def cli(self, *args: str, **env: str | None) -> CliResult:
        return self.app.cli(*args, DBKIT_ADMIN_URL=self.url.render(reveal=True), **env)


def _create_admin(admin_conn: psycopg.Connection, app: App, attributes: str) -> DbURL:
    name, password = unique_name("mgd"), unique_name("pw")
    app.extra_roles.append(name)
    admin_conn.execute(sql.SQL("CREATE ROLE {} WITH LOGIN {} PASSWORD {}").format(
        sql.Identifier(name), sql.SQL(attributes), sql.Literal(password)))
    return app.pg.with_(user=name, password=password, dbname="postgres")


def _cleanup(admin_conn: psycopg.Connection, app: App, admin: str) -> None:
    """What the admin made that the app fixture does not know of (reset's side databases, the
    app role of two-role mode): dropped before the app fixture drops the rest; the admin's
    grants and anything it came to own go with it."""
    for (db,) in admin_conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s",
            (app.db + "_dbkit_%",)).fetchall():
        admin_conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(db)))
    admin_conn.execute(sql.SQL("REASSIGN OWNED BY {} TO CURRENT_USER").format(
        sql.Identifier(admin)))
    admin_conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(admin)))


def grant_admin_option(admin_conn: psycopg.Connection, role_name: str, admin: str) -> None:
    """PostgreSQL 16+: a CREATEROLE admin may alter, grant or drop only the roles it holds ADMIN
    OPTION on (those it created itself); a role another admin made needs this grant, the one
    dbkit's own refusal names as the fix."""
    admin_conn.execute(sql.SQL("GRANT {} TO {} WITH ADMIN OPTION").format(
        sql.Identifier(role_name), sql.Identifier(admin)))


@pytest.fixture
def managed(app: App, admin_conn: psycopg.Connection) -> Iterator[Managed]:
    url = _create_admin(admin_conn, app, "CREATEROLE CREATEDB")
    assert url.user is not None
    if admin_conn.info.server_version >= 160000 and role(admin_conn, OWNER) is not None:
        # the shared test role was made by the superuser (by an earlier test of this run)
        grant_admin_option(admin_conn, OWNER, url.user)
    yield Managed(app, url.user, url)
    _cleanup(admin_conn, app, url.user)


def role(conn: psycopg.Connection, name: str) -> dict[str, object] | None:
    found = conn.execute(
        "SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolcanlogin"
        " FROM pg_roles WHERE rolname = %s", (name,)).fetchone()
    keys = ("super", "createdb", "createrole", "replication", "login")
    return dict(zip(keys, found, strict=True)) if found else None


def database(conn: psycopg.Connection, name: str) -> str | None:
    found = conn.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s",
                         (name,)).fetchone()
    return found[0] if found else None


def logs_in(url: DbURL) -> bool:
    try:
        psycopg.connect(connect_timeout=5, **url.connect_kwargs()).close()
    except psycopg.OperationalError:
        return False
    return True


def env_url(app: App) -> DbURL:
    return DbURL.parse(read_env_file(app.cwd / ".env")["DATABASE_URL"])


def ok(r: CliResult) -> CliResult:
    assert r.code == 0, r.output
    return r


# -- each command, twice in a row --------------------------------------------------------------
def test_setup_twice(managed: Managed, admin_conn: psycopg.Connection) -> None:
    ok(managed.cli("setup"))
    ok(managed.cli("setup"))
    assert database(admin_conn, managed.app.db) == managed.app.role
    assert role(admin_conn, managed.app.role) == {
        "super": False, "createdb": False, "createrole": False, "replication": False,
        "login": True}
    with managed.app.connect() as c:
        assert c.execute("SELECT count(*) > 0 FROM posts").fetchone() == (True,)


def test_rotate_password_twice(managed: Managed) -> None:
    app = managed.app
    (app.cwd / ".env").write_text(f"DATABASE_URL={app.url.render(reveal=True)}\n")
    ok(managed.cli("setup", "--no-seed", DATABASE_URL=None))
    for _ in range(2):
        old = env_url(app)
        r = ok(managed.cli("setup", "--rotate-password", "--no-seed", DATABASE_URL=None))
        assert "no longer works" in r.out
        new = env_url(app)
        assert new.password != old.password
        assert not logs_in(old)
        assert logs_in(new)


def test_create_converges_a_drifted_attribute_twice(managed: Managed,
                                                    admin_conn: psycopg.Connection) -> None:
    app = managed.app
    ok(managed.cli("create"))
    for _ in range(2):
        admin_conn.execute(sql.SQL("ALTER ROLE {} CREATEDB").format(sql.Identifier(app.role)))
        r = ok(managed.cli("create"))
        assert "applied 1 statement" in r.out, r.output  # only the drifted attribute
        info = role(admin_conn, app.role)
        assert info is not None and info["createdb"] is False
    assert "nothing to do" in ok(managed.cli("create")).out


def test_testdb_create_and_drop_twice(managed: Managed, admin_conn: psycopg.Connection) -> None:
    prefix = unique_name("mgdtest") + "_"
    managed.app.extra_dbs += [f"{prefix}1", f"{prefix}2"]
    for _ in range(2):
        ok(managed.cli("testdb", "create", "--count", "2", "--prefix", prefix))
        assert database(admin_conn, f"{prefix}1") == OWNER
        assert database(admin_conn, f"{prefix}2") == OWNER
        info = role(admin_conn, OWNER)
        assert info is not None and not info["super"] and not info["createdb"]
        ok(managed.cli("testdb", "drop", "--prefix", prefix))
        assert database(admin_conn, f"{prefix}1") is None


def test_testdb_create_converges_a_drifted_test_role(managed: Managed,
                                                     admin_conn: psycopg.Connection) -> None:
    """The test role existing already (made by another admin), with a right it should not have:
    taken away, naming only that attribute (a superuser-only one is never named)."""
    prefix = unique_name("mgdtest") + "_"
    managed.app.extra_dbs.append(f"{prefix}1")
    ok(managed.cli("testdb", "create", "--prefix", prefix))
    admin_conn.execute(sql.SQL("ALTER ROLE {} CREATEDB").format(sql.Identifier(OWNER)))
    ok(managed.cli("testdb", "create", "--prefix", prefix))
    info = role(admin_conn, OWNER)
    assert info is not None and info["createdb"] is False
    ok(managed.cli("testdb", "drop", "--prefix", prefix))


def test_reset_twice(managed: Managed, admin_conn: psycopg.Connection) -> None:
    app = managed.app
    ok(managed.cli("setup"))
    with app.connect(autocommit=True) as c:
        c.execute("CREATE TABLE scribble (x int)")
    for _ in range(2):
        ok(managed.cli("reset", "--yes"))
        assert database(admin_conn, app.db) == app.role
        with app.connect() as c:
            assert c.execute("SELECT to_regclass('scribble') IS NULL").fetchone() == (True,)
            assert c.execute("SELECT count(*) > 0 FROM posts").fetchone() == (True,)
    left = admin_conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s",
                              (app.db + "_dbkit_%",)).fetchall()
    assert left == []


def test_drop_twice(managed: Managed, admin_conn: psycopg.Connection) -> None:
    app = managed.app
    ok(managed.cli("setup"))
    ok(managed.cli("drop", "--yes"))
    assert database(admin_conn, app.db) is None and role(admin_conn, app.role) is None
    ok(managed.cli("drop", "--yes"))


def test_doctor_passes_the_admin_role(managed: Managed) -> None:
    import json

    ok(managed.cli("setup"))
    r = managed.cli("doctor", "--json")
    checks = {c["name"]: c for c in json.loads(r.out)["checks"]}
    assert checks["admin-role"]["status"] == "pass", checks["admin-role"]
    assert checks["owner-role"]["status"] == "pass", checks["owner-role"]


# -- what the admin truly lacks ---------------------------------------------------------------
@pytest.mark.parametrize("command", [("setup",), ("create",), ("testdb", "create")])
def test_an_admin_without_createdb_is_refused_and_nothing_is_created(
        app: App, admin_conn: psycopg.Connection, command: tuple[str, ...]) -> None:
    url = _create_admin(admin_conn, app, "CREATEROLE NOCREATEDB")
    prefix = unique_name("mgdtest") + "_"
    app.extra_dbs.append(f"{prefix}1")
    owner_before = role(admin_conn, OWNER)
    args = (*command, "--prefix", prefix) if command[0] == "testdb" else command
    r = app.cli(*args, DBKIT_ADMIN_URL=url.render(reveal=True))
    assert r.code == 5, r.output
    assert "CREATEDB" in r.err and "Traceback" not in r.output
    assert "use a superuser or a role WITH CREATEROLE CREATEDB" in r.err  # it lacks one
    assert role(admin_conn, app.role) is None and database(admin_conn, app.db) is None
    assert database(admin_conn, f"{prefix}1") is None
    assert role(admin_conn, OWNER) == owner_before


GENERIC = "CREATEROLE CREATEDB"  # the advice to get rights this admin already has


def test_a_test_role_with_replication_is_refused_up_front_without_the_generic_hint(
        managed: Managed, admin_conn: psycopg.Connection) -> None:
    """Only a superuser may take REPLICATION away on PostgreSQL 15: refused before any change
    (the password stays), naming the statement that fixes it, not CREATEROLE CREATEDB."""
    prefix = unique_name("mgdtest") + "_"
    managed.app.extra_dbs.append(f"{prefix}1")
    ok(managed.cli("testdb", "create", "--prefix", prefix))
    owner = sql.Identifier(OWNER)
    admin_conn.execute(sql.SQL("ALTER ROLE {} REPLICATION").format(owner))
    try:
        r = managed.cli("testdb", "drop", "--prefix", prefix)
        ok(r)
        r = managed.cli("testdb", "create", "--prefix", prefix)
        assert r.code == 7, r.output
        assert "NOREPLICATION" in r.err and GENERIC not in r.err
        assert database(admin_conn, f"{prefix}1") is None
    finally:
        admin_conn.execute(sql.SQL("ALTER ROLE {} NOREPLICATION").format(owner))
    ok(managed.cli("testdb", "create", "--prefix", prefix))
    ok(managed.cli("testdb", "drop", "--prefix", prefix))


def test_a_refusal_under_an_admin_with_both_rights_names_what_it_lacks(
        managed: Managed, admin_conn: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
        ) -> None:
    """The server refusing a step that dbkit did not foresee: exit 5, everything undone, and
    the hint does not tell an admin WITH CREATEROLE CREATEDB to get them."""
    from dbkit import pg

    app = managed.app

    def refused(conn: psycopg.Connection, name: str, owner: str) -> sql.Composed:
        return sql.SQL("SELECT pg_read_file({})").format(sql.Literal("/etc/hostname"))

    monkeypatch.setattr(pg, "create_database_sql", refused)
    r = managed.cli("create")
    assert r.code == 5, r.output
    assert GENERIC not in r.err and "nothing was left behind" in r.err, r.err
    assert role(admin_conn, app.role) is None and database(admin_conn, app.db) is None


def test_drop_of_a_database_a_superuser_set_up(managed: Managed,
                                              admin_conn: psycopg.Connection) -> None:
    """The admin was never a member of the owner role: drop makes it one, then drops. On
    PostgreSQL 16+ it may not (no ADMIN OPTION on a role it did not create): refused before
    anything is dropped, naming the grant that fixes it; with that grant, drop works."""
    app = managed.app
    ok(app.cli("create"))  # as the superuser of the test server
    if admin_conn.info.server_version >= 160000:
        r = managed.cli("drop", "--yes")
        assert r.code == 5, r.output
        assert "ADMIN OPTION" in r.err and len(r.err.strip().splitlines()) == 1
        assert database(admin_conn, app.db) == app.role
        grant_admin_option(admin_conn, app.role, managed.name)
    ok(managed.cli("drop", "--yes"))
    assert database(admin_conn, app.db) is None and role(admin_conn, app.role) is None


# -- the pytest plugin ------------------------------------------------------------------------
def test_the_plugin_sample_passes_under_the_admin(managed: Managed, tmp_path: Path) -> None:
    project = tmp_path / "proj"
    project.mkdir()
    shutil.copy(SAMPLE, project / "test_sample.py")
    (project / "pytest.ini").write_text(f"[pytest]\ndbkit_migrations = {MIGRATIONS}\n"
                                        f"dbkit_admin_url = {managed.url.render(reveal=True)}\n")
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
                              cwd=project, env=clean_env(), capture_output=True, text=True,
                              timeout=180)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    with psycopg.connect(autocommit=True, **managed.app.pg.connect_kwargs()) as conn:
        left = conn.execute("SELECT datname FROM pg_database WHERE left(datname, length(%s))"
                            " = %s AND datname NOT LIKE 'dbkit_tpl%%'",
                            (PLUGIN_PREFIX, PLUGIN_PREFIX)).fetchall()
    assert left == []
