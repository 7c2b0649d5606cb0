"""The pytest plugin, run the way users run it: a separate pytest process on a sample module,
plain and under pytest-xdist, passing, failing, interrupted and killed; with the clone pool on
(the default) unless a test turns it off."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from helpers import clean_env

from dbkit.testdb.template import PLUGIN_PREFIX
from dbkit.urls import DbURL

SAMPLE = Path(__file__).resolve().parent / "plugin_sample" / "sample_dbkit.py"
MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
PASSING = 12  # tests in the sample that run without DBKIT_SAMPLE_* switches


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A user's project: the sample module and an ini naming the migrations."""
    shutil.copy(SAMPLE, tmp_path / "test_sample.py")
    (tmp_path / "pytest.ini").write_text(f"[pytest]\ndbkit_migrations = {MIGRATIONS}\n")
    return tmp_path


def pytest_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args]


def env_for(pg: DbURL, **extra: str) -> dict[str, str]:
    return clean_env(DBKIT_ADMIN_URL=pg.render(reveal=True), **extra)


def run_sample(project: Path, pg: DbURL, *args: str, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(pytest_cmd(*args), cwd=project, env=env_for(pg, **extra),
                          capture_output=True, text=True, timeout=180)


def clones(pg: DbURL) -> list[str]:
    with psycopg.connect(autocommit=True, **pg.connect_kwargs()) as conn:
        return [r[0] for r in conn.execute(
            "SELECT datname FROM pg_database WHERE left(datname, length(%s)) = %s",
            (PLUGIN_PREFIX, PLUGIN_PREFIX))]


def passed(proc: subprocess.CompletedProcess) -> int:
    m = re.search(r"(\d+) passed", proc.stdout)
    return int(m.group(1)) if m else 0


@pytest.mark.parametrize("mode", [("-o", "dbkit_background=true"), ("-o", "dbkit_background=false"),
                                  ("--dbkit-pool=0",), ("-o", "dbkit_pool=2")],
                         ids=["pool-auto", "no-background", "pool-off", "pool-2"])
def test_sample_passes_under_plain_pytest_and_leaves_no_database(project, pg, mode):
    proc = run_sample(project, pg, *mode)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert passed(proc) == PASSING
    assert clones(pg) == []


def test_sample_passes_under_xdist_n2_and_leaves_no_database(project, pg):
    proc = run_sample(project, pg, "-n", "2", "-vv")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert passed(proc) == PASSING
    assert "[gw0]" in proc.stdout and "[gw1]" in proc.stdout  # both workers ran tests
    assert clones(pg) == []


def test_a_failing_run_leaves_no_database(project, pg):
    proc = run_sample(project, pg, "-n", "2", DBKIT_SAMPLE_FAIL="1")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "failing on purpose" in proc.stdout and passed(proc) == PASSING
    assert clones(pg) == []


def start_hanging(project: Path, pg: DbURL, *args: str) -> tuple[subprocess.Popen, str]:
    flag = project / "hanging"
    # Ctrl-C must reach it as Ctrl-C even when this suite was started in the background, where
    # the shell leaves SIGINT ignored and children inherit that.
    proc = subprocess.Popen(pytest_cmd("-k", "hangs", *args), cwd=project,
                            env=env_for(pg, DBKIT_SAMPLE_HANG=str(flag)),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while not flag.exists() or not flag.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"sample did not start: {proc.communicate()[0]}")
        time.sleep(0.05)
    return proc, flag.read_text()


def test_an_interrupted_run_leaves_no_database(project, pg):
    proc, dbname = start_hanging(project, pg)
    assert dbname in clones(pg)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
    out = proc.communicate(timeout=60)[0]
    assert "KeyboardInterrupt" in out
    assert clones(pg) == []


def test_a_killed_runs_databases_are_collected_next_time(project, pg):
    proc, dbname = start_hanging(project, pg)
    os.killpg(proc.pid, signal.SIGKILL)  # no teardown at all
    proc.wait(30)
    time.sleep(0.2)  # the server notices the closed connection
    left = clones(pg)
    assert dbname in left and any(n.endswith("_shared") for n in left)
    again = run_sample(project, pg, "-k", "template_is_migrated")
    assert again.returncode == 0, again.stdout + again.stderr
    assert clones(pg) == []


def made_ahead(pg: DbURL, dbname: str) -> list[str]:
    """The hanging run's clones that no test holds: the pool's ready ones."""
    run_prefix = dbname.rsplit("_", 1)[0] + "_"
    return [n for n in clones(pg) if n.startswith(run_prefix) and n != dbname
            and not n.endswith("_shared")]


def test_a_run_killed_while_its_pool_holds_ready_clones_is_collected_next_time(project, pg):
    proc, dbname = start_hanging(project, pg, "-o", "dbkit_pool=3")
    deadline = time.monotonic() + 30
    while not made_ahead(pg, dbname) and time.monotonic() < deadline:
        time.sleep(0.05)  # the pool makes the next test's clone while this one hangs
    ready = made_ahead(pg, dbname)
    assert ready, "the pool made no clone ahead"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)
    time.sleep(0.2)
    assert set(ready) <= set(clones(pg))  # a kill leaves them behind …
    again = run_sample(project, pg, "-k", "template_is_migrated")
    assert again.returncode == 0, again.stdout + again.stderr
    assert clones(pg) == []  # … and the next run collects them


def test_an_interrupted_run_with_ready_clones_leaves_no_database(project, pg):
    proc, dbname = start_hanging(project, pg, "-o", "dbkit_pool=3")
    deadline = time.monotonic() + 30
    while not made_ahead(pg, dbname) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert made_ahead(pg, dbname)
    os.killpg(proc.pid, signal.SIGINT)
    out = proc.communicate(timeout=60)[0]
    assert "KeyboardInterrupt" in out
    assert clones(pg) == []


def test_a_bad_pool_setting_is_one_usage_error(project, pg):
    proc = run_sample(project, pg, "--dbkit-pool=lots")
    assert proc.returncode == 4, proc.stdout + proc.stderr  # pytest's usage error
    assert "dbkit_pool must be 'auto' or a number of clones" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_dbkit_url_connects_and_its_password_stays_out_of_failure_output(project, pg):
    from dbkit.testdb.template import owner_password

    secret = owner_password(pg)
    assert secret, "the test cluster's admin has a password, so the test role has one"
    proc = run_sample(project, pg, "-k", "leak or url_connects", "-l", "-rA",
                      DBKIT_SAMPLE_LEAK="1")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert passed(proc) == 1 and "3 failed" in out  # the URL connects; the three leaks fail
    assert "somewhere/else" in out and "cannot use postgresql://dbkit_test:***@" in out
    assert "connecting to postgresql://dbkit_test:***@" in out  # captured output, masked
    assert secret not in out


def test_unreachable_server_is_one_clear_failure(project, pg):
    from dbkit.server import free_port

    closed = pg.with_(port=free_port(), host="127.0.0.1")
    proc = subprocess.run(pytest_cmd("-k", "template_is_migrated"), cwd=project,
                          env=env_for(closed, DBKIT_CONNECT_TIMEOUT="2"), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1
    assert "dbkit: cannot connect to" in proc.stdout
    assert (closed.password or "\0") not in proc.stdout + proc.stderr


def test_xdist_with_nothing_configured_shares_one_local_server():
    """No server configured: every worker wants dbkit's local server at once; one initdb,
    one server, every test passes, no clone left."""
    import tempfile

    from dbkit.server import LocalServer

    d = Path(tempfile.mkdtemp(prefix="dbkit-xdist-"))
    os.chmod(d, 0o755)  # the server's OS user (as root: postgres) must reach .dbkit
    server = LocalServer(d / ".dbkit")
    try:
        shutil.copy(SAMPLE, d / "test_sample.py")
        (d / "pytest.ini").write_text(f"[pytest]\ndbkit_migrations = {MIGRATIONS}\n")
        proc = subprocess.run(pytest_cmd("-n", "3"), cwd=d, env=clean_env(),
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
        assert passed(proc) == PASSING
        assert server.running()
        assert clones(server.admin_url()) == []
    finally:
        server.destroy()
        shutil.rmtree(d, ignore_errors=True)
