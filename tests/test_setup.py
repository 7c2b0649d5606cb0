"""dbkit setup with nothing configured: dbkit's own local PostgreSQL, started, reused, moved
and recovered."""

from __future__ import annotations

import os
import subprocess

from helpers import run_dbkit as dbkit

from dbkit.envfile import read as read_env_file
from dbkit.server import LocalServer, find_pg_bin
from dbkit.urls import DbURL


def psql(url: DbURL, query: str) -> str:
    """Ask psql, the password in PGPASSWORD (never in argv)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGPASSWORD"] = url.password or ""
    proc = subprocess.run(
        [str(find_pg_bin() / "psql"), "-X", "-At", "-h", url.host or "", "-p", str(url.port),
         "-U", url.user or "", "-d", url.dbname or "", "-c", query],
        capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def counts(url: DbURL) -> str:
    return psql(url, "SELECT (SELECT count(*) FROM users) || ',' || (SELECT count(*) FROM posts)"
                     " || ',' || (SELECT count(*) FROM votes)")


def test_setup_from_nothing_then_again_then_after_stop(project):
    # 1. empty directory, no configuration at all
    first = dbkit(project, "setup")
    assert first.returncode == 0, first.stderr
    url = DbURL.parse(read_env_file(project / ".env")["DATABASE_URL"])
    assert url.dbname != "postgres" and url.user != "postgres"
    assert f"DATABASE_URL={url}" in first.stdout and url.password not in first.stdout
    assert str(project / ".env") in first.stdout
    tables = psql(url, "SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables"
                       " WHERE schemaname = 'public' AND tablename IN ('posts','users','votes')")
    assert tables == "posts,users,votes"
    users, posts, votes = map(int, counts(url).split(","))
    assert users > 0 and posts > 0 and votes > 0
    # the server outlives the command: the first setup says so, in one plain line
    said = [ln for ln in first.stderr.splitlines() if "keeps running" in ln]
    assert len(said) == 1 and "dbkit server stop" in said[0] and "warning" not in said[0]
    # 2. again: exit 0, nothing changed, nothing said about a server it did not start
    second = dbkit(project, "setup")
    assert second.returncode == 0, second.stderr
    assert "nothing changed" in second.stdout
    assert "keeps running" not in second.stderr
    assert "written to" not in second.stdout  # nothing was written
    assert counts(url) == f"{users},{posts},{votes}"
    assert read_env_file(project / ".env")["DATABASE_URL"] == url.render(reveal=True)
    # 3. stop the server, setup again: it starts, data intact
    assert dbkit(project, "server", "stop").returncode == 0
    stopped = dbkit(project, "server", "status")
    assert stopped.returncode == 0 and stopped.stdout.startswith("stopped")
    assert "None" not in stopped.stdout and "pid" not in stopped.stdout
    third = dbkit(project, "setup")
    assert third.returncode == 0, third.stderr
    assert counts(url) == f"{users},{posts},{votes}"


def test_setup_no_seed_and_json(project):
    import json

    r = dbkit(project, "setup", "--no-seed", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert [s["step"] for s in data["steps"]] == ["create", "migrate"]
    url = DbURL.parse(read_env_file(project / ".env")["DATABASE_URL"])
    assert counts(url) == "0,0,0"
    assert url.password not in r.stdout


def test_commands_after_server_stop_say_how_to_start_it(project):
    assert dbkit(project, "setup", "--no-seed").returncode == 0
    assert dbkit(project, "server", "stop").returncode == 0
    r = dbkit(project, "status")
    assert r.returncode == 4, r.stderr
    assert "dbkit server start" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_setup_follows_the_local_server_to_a_new_port(project):
    import socket

    two_roles = {"DBKIT_APP_ROLE": "posts_app"}  # .env also holds the app role's URL
    assert dbkit(project, "setup", **two_roles).returncode == 0
    url = DbURL.parse(read_env_file(project / ".env")["DATABASE_URL"])
    app_url = DbURL.parse(read_env_file(project / ".env")["DBKIT_APP_URL"])
    assert app_url.port == url.port
    before = counts(url)
    assert dbkit(project, "server", "stop").returncode == 0
    with socket.socket() as squatter:  # someone else took the port while the server was down
        # The server closed its connections first, so its port may sit in TIME_WAIT; a listener
        # with SO_REUSEADDR still takes it (as PostgreSQL would), and then really holds it.
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", url.port))
        squatter.listen()
        r = dbkit(project, "setup", **two_roles)
        assert r.returncode == 0, r.stderr
        assert "moved to port" in r.stdout
        new = DbURL.parse(read_env_file(project / ".env")["DATABASE_URL"])
        assert new.port != url.port and new.with_(port=url.port) == url
        assert counts(new) == before
        moved_app = DbURL.parse(read_env_file(project / ".env")["DBKIT_APP_URL"])
        assert moved_app == app_url.with_(port=new.port)
        assert counts(moved_app) == before  # the application's own login follows too
        again = dbkit(project, "setup", **two_roles)
        assert again.returncode == 0 and "nothing changed" in again.stdout


def test_doctor_on_a_set_up_project_uses_its_own_server_as_admin(project):
    import json

    assert dbkit(project, "setup", "--no-seed").returncode == 0
    r = dbkit(project, "doctor", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    checks = {c["name"]: c for c in json.loads(r.stdout)["checks"]}
    assert checks["admin-role"]["status"] == "pass"
    assert checks["public-connect"]["status"] == "pass"
    assert dbkit(project, "server", "stop").returncode == 0
    r = dbkit(project, "doctor", "--json")  # a diagnosis does not start the server again
    assert r.returncode == 17
    assert not LocalServer(project / ".dbkit").running()


def test_parallel_first_setups_share_one_server_and_one_database(project):
    """Two terminals, make -j, or pytest-xdist workers: several first setups at once must not
    race initdb or CREATE ROLE; all succeed and agree on one URL."""
    import sys

    from helpers import clean_env

    procs = [subprocess.Popen([sys.executable, "-m", "dbkit", "setup"], cwd=project,
                              env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(3)]
    results = [(p.wait(timeout=180), *p.communicate()) for p in procs]
    assert [code for code, _, _ in results] == [0, 0, 0], results
    outs = "".join(out for _, out, _ in results)
    assert outs.count("created role posts") == 1 and outs.count("inserted 39 sample") == 1
    url = DbURL.parse(read_env_file(project / ".env")["DATABASE_URL"])
    assert {line for _, out, _ in results for line in out.splitlines()
            if line.startswith("DATABASE_URL=")} == {f"DATABASE_URL={url}"}
    assert counts(url) == "5,10,24"
    assert dbkit(project, "setup").stdout.count("nothing changed") == 1


def test_env_example_copied_to_env_gives_a_working_setup(project):
    """.env.example says 'copy it to .env': that must work as is, with nothing else configured,
    and end with a generated password, not a shared placeholder."""
    import shutil
    from pathlib import Path

    shutil.copy(Path(__file__).resolve().parent.parent / ".env.example", project / ".env")
    r = dbkit(project, "setup")
    assert r.returncode == 0, r.stderr
    url = DbURL.parse(read_env_file(project / ".env")["DATABASE_URL"])
    assert url.password and len(url.password) >= 32
    assert url.port == LocalServer(project / ".dbkit").state()["port"]
    assert counts(url) == "5,10,24"
    assert (project / ".env").read_text().count("# DBKIT_") >= 5  # the comments are kept


def test_pgdata_and_pgbin_do_not_count_as_a_configured_server(project):
    """Variables many PostgreSQL users carry that say nothing about where to connect: with only
    those set, setup still uses (and starts) dbkit's own server."""
    r = dbkit(project, "setup", "--no-seed", PGDATA="/var/lib/postgresql/15/main",
              PGBIN="/usr/lib/postgresql/15/bin", PGAPPNAME="mine")
    assert r.returncode == 0, r.stderr
    assert LocalServer(project / ".dbkit").running()
    url = DbURL.parse(read_env_file(project / ".env")["DATABASE_URL"])
    assert url.port == LocalServer(project / ".dbkit").state()["port"]


def test_a_project_directory_with_quotes_in_its_name(project):
    odd = project / "it's \"x\""
    odd.mkdir()
    os.chmod(odd, 0o755)
    try:
        r = dbkit(odd, "setup", "--no-seed")
        assert r.returncode == 0, r.stderr
        assert counts(DbURL.parse(read_env_file(odd / ".env")["DATABASE_URL"])) == "0,0,0"
    finally:
        LocalServer(odd / ".dbkit").destroy()


def test_a_connection_variable_that_reaches_nothing_is_named(project):
    from dbkit.server import free_port

    port = free_port()
    r = dbkit(project, "create", PGHOST="127.0.0.1", PGPORT=str(port),
              DATABASE_URL="postgresql://a@127.0.0.1/b")
    assert r.returncode == 4 and r.stderr.count("\n") == 1, r.stderr
    assert f"PGPORT={port}" in r.stderr and "PGHOST=127.0.0.1" in r.stderr
    assert not (project / ".dbkit").exists()  # it did not fall back to a server of its own
