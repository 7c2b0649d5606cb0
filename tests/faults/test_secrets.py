"""Secrets: generated and given passwords never appear in the server's statement log, in
dbkit's output (also with ``--verbose --debug``), or in any process's argv.

A dedicated cluster — the one ``dbkit server start`` creates for a project, so its admin
password is generated too — runs with ``log_statement = all`` (parameters of bound statements
logged in full, PostgreSQL's default), and every command that handles a password runs against
it as a real process: server start, setup (generated and given passwords), migrate, rollback,
status, verify, history, seed (sample, synthetic, files), testdb create/drop, reset, and the
error path of a wrong password. ``dbkit create`` alone is covered by tests/test_create.py.
While they run, a thread records the command line of every process on the machine.

Then, on the suite's server, a password given as ``?password=`` or in a ``key=value``
connection string (in DATABASE_URL, and in DBKIT_ADMIN_URL): it is the password used, and it
shows nowhere, not even when a command fails.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

import psycopg
import pytest
from cluster import fast_tmp, unique_name
from helpers import clean_env

from dbkit.envfile import read as read_env_file
from dbkit.envfile import update as update_env_file
from dbkit.server import LocalServer
from dbkit.testdb.template import owner_password
from dbkit.urls import DbURL

if TYPE_CHECKING:
    from conftest import CliResult

pytestmark = pytest.mark.faults


class ArgvRecorder:
    """Every distinct /proc/*/cmdline seen while it runs (short-lived processes included,
    down to a few milliseconds)."""

    def __init__(self) -> None:
        self.seen: set[bytes] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._scan, daemon=True)

    def _scan(self) -> None:
        while not self._stop.is_set():
            for pid in os.listdir("/proc"):
                if pid.isdigit():
                    try:
                        with open(f"/proc/{pid}/cmdline", "rb") as f:
                            self.seen.add(f.read())
                    except OSError:
                        pass
            time.sleep(0.002)

    def __enter__(self) -> ArgvRecorder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture
def project():
    base = Path(os.path.realpath(fast_tmp() or "/tmp"))
    d = base / unique_name("dbkit-secrets")
    d.mkdir()
    os.chmod(d, 0o711)  # as root the server runs as 'postgres', which must reach .dbkit
    try:
        yield d
    finally:
        LocalServer(d / ".dbkit").destroy()
        shutil.rmtree(d, ignore_errors=True)


def test_passwords_stay_out_of_log_output_and_argv(project):
    outputs: list[str] = []
    base_env = clean_env()

    def dbkit(*args: str, code: int = 0, **env: str) -> str:
        proc = subprocess.run([sys.executable, "-m", "dbkit", "--verbose", "--debug", *args],
                              cwd=project, env={**base_env, **env}, capture_output=True,
                              text=True, timeout=180)
        out = proc.stdout + proc.stderr
        outputs.append(out)
        assert proc.returncode == code, (args, out)
        return out

    server = LocalServer(project / ".dbkit")
    given = "Given-" + unique_name("pw") + "-ü+/ &"  # needs percent-encoding in a URL
    wrong = "Wrong-" + unique_name("pw")
    with ArgvRecorder() as argv:
        dbkit("server", "start")
        admin = server.admin_url()
        with psycopg.connect(autocommit=True, **admin.connect_kwargs()) as conn:
            conn.execute("ALTER SYSTEM SET log_statement = 'all'")
            conn.execute("ALTER SYSTEM SET log_min_error_statement = 'info'")
            conn.execute("SELECT pg_reload_conf()")
        time.sleep(0.2)  # the postmaster passes the reload on to new sessions
        dbkit("server", "status")
        dbkit("server", "url")
        # generated password (no DATABASE_URL): setup writes it to .env
        dbkit("setup")
        generated = read_env_file(project / ".env")["DATABASE_URL"]
        # a given password, through DATABASE_URL
        app2 = DbURL(user="app two", password=given, host=admin.host, port=admin.port,
                     dbname="app two db")
        env2 = {"DATABASE_URL": app2.render(reveal=True)}
        dbkit("setup", "--no-seed", **env2)
        dbkit("rollback", "--steps", "2", **env2)
        dbkit("migrate", **env2)
        dbkit("status", **env2)
        dbkit("verify", **env2)
        dbkit("history", **env2)
        dbkit("dump", **env2)  # pg_dump gets the password through its environment only
        dbkit("seed", **env2)
        dbkit("seed", "--users", "30", "--posts", "300", "--votes", "100", "--append", **env2)
        seed_dir = project / "seed-data"
        seed_dir.mkdir()
        (seed_dir / "users.csv").write_text("email\nsecret-test@example.com\n")
        dbkit("seed", "--from", str(seed_dir), **env2)
        dbkit("testdb", "create", "--count", "2")
        dbkit("testdb", "drop", "--all")
        dbkit("reset", "--yes")
        regenerated = read_env_file(project / ".env")["DATABASE_URL"]
        # .env lost the password: a clean error, then setup --rotate-password generates one
        update_env_file(project / ".env", "DATABASE_URL",
                        DbURL.parse(regenerated).with_(password=None).render())
        dbkit("status", code=4)
        dbkit("setup", "--no-seed", "--rotate-password")
        rotated = read_env_file(project / ".env")["DATABASE_URL"]
        assert DbURL.parse(rotated).password != DbURL.parse(regenerated).password
        # wrong passwords: clean errors that do not echo them
        dbkit("migrate", code=4, DATABASE_URL=app2.with_(password=wrong).render(reveal=True))
        dbkit("seed", code=4, DATABASE_URL=app2.with_(password=wrong).render(reveal=True))
        dbkit("testdb", "create", code=4,
              DBKIT_ADMIN_URL=admin.with_(password=wrong).render(reveal=True))
        dbkit("server", "stop")

    log = (server.pgdata / "server.log").read_text(errors="replace")
    # the log really recorded the commands' statements
    for needle in ("CREATE ROLE", "CREATE TABLE", "COPY", "INSERT INTO", "authentication failed"):
        assert needle in log, needle
    secrets = {
        "admin password (generated by server start)": admin.password,
        "setup's generated password": DbURL.parse(generated).password,
        "reset's generated password": DbURL.parse(regenerated).password,
        "setup --rotate-password's generated password": DbURL.parse(rotated).password,
        "given password": given,
        "wrong password": wrong,
        "testdb role's derived password": owner_password(admin),
    }
    assert all(secrets.values()), secrets.keys()
    places = {"server log": log, "dbkit output": "\n".join(outputs),
              "process arguments": b"\n".join(argv.seen).decode(errors="replace")}
    assert len(argv.seen) > 20 and any(b"initdb" in c for c in argv.seen)  # the scan saw them
    leaks = [f"{name} in {where}" for name, secret in secrets.items()
             for where, text in places.items()
             for form in {secret, quote(secret or "", safe="")} if form and form in text]
    assert leaks == []


# -- a password in a ?password= parameter or a key=value connection string -------------------
# libpq takes a password from either; so does dbkit, and its one masking rule hides both. Each
# command below must succeed with the password from that form (the role has no other), and the
# password's random token must appear nowhere: output, errors, --debug tracebacks, --json.

def distinctive_password() -> tuple[str, str]:
    """(password, its random token): the characters around the token need quoting in every
    form (space, quote, backslash, '&', '+', '=', '%', non-ASCII)."""
    token = secrets.token_hex(12)
    return f"Pw-{token}-ü ' \\ &+=%", token


def as_password_parameter(url: DbURL) -> str:
    plain = url.with_(password=None).render(reveal=True)
    return f"{plain}{'&' if '?' in plain else '?'}password={quote(url.password or '', safe='')}"


def as_conninfo(url: DbURL) -> str:
    """libpq's keyword/value form, every value quoted ('\\' and \"'\" escaped)."""
    pairs = [("host", url.host), ("port", url.port), ("user", url.user),
             ("password", url.password), ("dbname", url.dbname), *url.params]
    return " ".join("{}='{}'".format(k, str(v).replace("\\", "\\\\").replace("'", "\\'"))
                    for k, v in pairs if v is not None)


FORMS = {"password parameter": as_password_parameter, "conninfo": as_conninfo}


def _no_trace(results: list[tuple[tuple[str, ...], CliResult]], *tokens: str) -> None:
    leaks = [(args, token) for args, r in results for token in tokens if token in r.output]
    assert leaks == [], leaks


@pytest.mark.parametrize("form", FORMS)
def test_database_url_password_forms_are_used_and_never_shown(app, form):
    app.password, token = distinctive_password()
    assert app.cli("create").code == 0  # the role's one password is that one
    given = FORMS[form](app.url)
    assert DbURL.parse(given) == app.url  # the same URL, whatever its form
    prefix = unique_name("sec") + "_"
    results: list[tuple[tuple[str, ...], CliResult]] = []

    def dbkit(*args: str, code: int = 0, **env: str) -> CliResult:
        r = app.cli("--verbose", "--debug", *args, **{"DATABASE_URL": given, **env})
        results.append((args, r))
        assert r.code == code, (args, r.output)
        return r

    migrated = json.loads(dbkit("migrate", "--json").out)
    assert migrated["applied"], migrated  # logged in with the password from the form
    assert "0 pending" in dbkit("status").out
    dbkit("doctor")
    dbkit("wait", "--timeout", "10")
    dbkit("testdb", "create", "--prefix", prefix, "--json")
    assert json.loads(dbkit("testdb", "drop", "--prefix", prefix, "--json").out)["dropped"]
    # failures name what is wrong, and still not the password
    other_db = FORMS[form](app.url.with_(dbname=app.db + "_missing"))
    assert "does not exist" in dbkit("status", code=4, DATABASE_URL=other_db).err
    wrong = FORMS[form](app.url.with_(password=app.password.replace(token, token[::-1])))
    assert "wrong password" in dbkit("migrate", code=4, DATABASE_URL=wrong).err
    _no_trace(results, token, token[::-1])


@pytest.mark.parametrize("form", FORMS)
def test_admin_url_password_forms_are_used_and_never_shown(app, form):
    admin = app.pg
    assert admin.password, "the test server's admin needs a password for this test to mean much"
    given = FORMS[form](admin)
    assert DbURL.parse(given, "DBKIT_ADMIN_URL") == admin
    prefix = unique_name("sec") + "_"
    results: list[tuple[tuple[str, ...], CliResult]] = []

    def dbkit(*args: str, code: int = 0, **env: str) -> CliResult:
        r = app.cli("--verbose", "--debug", *args, **{"DBKIT_ADMIN_URL": given, **env})
        results.append((args, r))
        assert r.code == code, (args, r.output)
        return r

    dbkit("create")  # the admin logged in with the password from the form
    dbkit("migrate", "--json")
    dbkit("status")
    dbkit("doctor")
    assert "admin-role" in dbkit("doctor", "--json").out
    assert str(admin.port) in dbkit("wait", "--timeout", "10").out
    created = json.loads(dbkit("testdb", "create", "--prefix", prefix, "--json").out)
    assert created["databases"] == [f"{prefix}1"]
    assert json.loads(dbkit("testdb", "drop", "--prefix", prefix, "--json").out)["dropped"]
    missing = FORMS[form](admin.with_(dbname=unique_name("nodb")))
    assert "does not exist" in dbkit("testdb", "create", "--prefix", prefix, code=4,
                                     DBKIT_ADMIN_URL=missing).err
    wrong_pw = "Wrong-" + secrets.token_hex(12)
    wrong = FORMS[form](admin.with_(password=wrong_pw))
    assert "wrong password" in dbkit("create", code=4, DBKIT_ADMIN_URL=wrong).err
    _no_trace(results, admin.password, quote(admin.password, safe=""), wrong_pw,
              owner_password(admin))


@pytest.mark.parametrize("form", FORMS)
def test_create_sets_the_password_given_in_the_url_form(app, form):
    """A new role gets the password the URL carries: no second, generated one (in .env or
    anywhere) that would leave the given one not working."""
    app.password, token = distinctive_password()
    r = app.cli("create", DATABASE_URL=FORMS[form](app.url))
    assert r.code == 0, r.output
    assert token not in r.output
    with app.connect() as conn:  # logs in with exactly the given password
        assert conn.execute("SELECT current_user").fetchone() == (app.role,)
    env_file = app.cwd / ".env"
    assert not env_file.exists() or "DATABASE_URL" not in read_env_file(env_file), \
        "a generated password was written beside the given one"
    assert "written to" not in r.out
