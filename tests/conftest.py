"""Fixtures: a real PostgreSQL (a throwaway cluster, or DBKIT_TEST_ADMIN_URL), per-test
application names, and a way to run the dbkit CLI in-process or as a real subprocess."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner
from cluster import (
    StreamingReplica,
    chosen_pg_bin,
    drop_everything,
    streaming_replica,
    throwaway_cluster,
    unique_name,
)

from dbkit.cli import run
from dbkit.urls import DbURL

REPO = Path(__file__).resolve().parent.parent
# Settings the developer's own shell may carry; every test starts without them.
_CLEAR = [k for k in os.environ if k.startswith(("DBKIT_", "PG")) or k == "DATABASE_URL"]


@pytest.fixture(scope="session")
def pg() -> Iterator[DbURL]:
    """Admin URL of the test server."""
    with throwaway_cluster(os.environ.get("DBKIT_TEST_ADMIN_URL")) as url:
        yield url


@pytest.fixture(scope="session")
def replica(pg: DbURL) -> Iterator[StreamingReplica]:
    """A hot standby streaming from ``pg``, started by the first test that asks for it (about
    a second) and kept for the session: from then on ``pg`` has a replica in
    pg_stat_replication."""
    if os.environ.get("DBKIT_TEST_ADMIN_URL"):
        pytest.skip("a replica needs the suite's own cluster (DBKIT_TEST_ADMIN_URL is set)")
    with streaming_replica(pg) as standby:
        yield standby


@pytest.fixture
def admin_conn(pg: DbURL) -> Iterator[psycopg.Connection]:
    with psycopg.connect(autocommit=True, **pg.connect_kwargs()) as conn:
        yield conn


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    @property
    def output(self) -> str:
        return self.out + self.err


@dataclass
class App:
    """One test's application: its own role and database names, env and working directory."""

    pg: DbURL
    cwd: Path
    role: str
    db: str
    password: str | None = None
    extra_dbs: list[str] = field(default_factory=list)
    extra_roles: list[str] = field(default_factory=list)

    @property
    def url(self) -> DbURL:
        return DbURL(user=self.role, password=self.password, host=self.pg.host,
                     port=self.pg.port, dbname=self.db)

    def env(self, **extra: str | None) -> dict[str, str | None]:
        env: dict[str, str | None] = {k: None for k in _CLEAR}
        env["DBKIT_ADMIN_URL"] = self.pg.render(reveal=True)
        env["DATABASE_URL"] = self.url.render(reveal=True)
        env.update(extra)
        return env

    def cli(self, *args: str, input: str | None = None, **env: str | None) -> CliResult:
        """Run dbkit in-process (fast); cwd is the app's directory (so ./.env is its own)."""
        runner = CliRunner()
        old = os.getcwd()
        os.chdir(self.cwd)
        try:
            with runner.isolation(input=input, env=self.env(**env)) as streams:
                code = run(list(args))
                out, err = streams[0].getvalue().decode(), streams[1].getvalue().decode()
        finally:
            os.chdir(old)
        return CliResult(code, out, err)

    def subprocess(self, *args: str, input: str | None = None, timeout: float = 120,
                   **env: str | None) -> CliResult:
        """Run dbkit as a real process (for signals, concurrency, argv checks)."""
        full = {k: v for k, v in os.environ.items() if k not in _CLEAR}
        full.update({k: v for k, v in self.env(**env).items() if v is not None})
        proc = subprocess.run([sys.executable, "-m", "dbkit", *args], cwd=self.cwd, env=full,
                              input=input, capture_output=True, text=True, timeout=timeout)
        return CliResult(proc.returncode, proc.stdout, proc.stderr)

    def connect(self, **kw: object) -> psycopg.Connection:
        return psycopg.connect(**self.url.connect_kwargs(), **kw)  # type: ignore[arg-type]

    def read_env_url(self) -> DbURL:
        from dbkit.envfile import read as read_env_file

        return DbURL.parse(read_env_file(self.cwd / ".env")["DATABASE_URL"])


@pytest.fixture
def project() -> Iterator[Path]:
    """An empty project directory the server's OS user can reach (tmp_path is 0700 as root);
    its local server, if a test started one, is destroyed afterwards."""
    from dbkit.server import LocalServer

    d = Path(tempfile.mkdtemp(prefix="dbkit-proj-"))
    os.chmod(d, 0o755)
    yield d
    LocalServer(d / ".dbkit").destroy()
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def app(pg: DbURL, tmp_path: Path) -> Iterator[App]:
    """A fresh application (names unique per test); its database and roles are dropped after."""
    a = App(pg=pg, cwd=tmp_path, role=unique_name("role"), db=unique_name("db"),
            password=unique_name("pw"))
    yield a
    drop_everything(pg, [a.db, *a.extra_dbs], [*a.extra_roles, a.role])


@pytest.fixture
def created(app: App) -> App:
    """``app`` with its role and database already made by ``dbkit create``."""
    r = app.cli("create")
    assert r.code == 0, r.output
    return app


@pytest.fixture
def migrated(created: App) -> App:
    """``created`` with the posts migrations applied by ``dbkit migrate``."""
    r = created.cli("migrate")
    assert r.code == 0, r.output
    return created


def pytest_configure(config: pytest.Config) -> None:
    """With a major chosen (DBKIT_TEST_PG_MAJOR / DBKIT_TEST_PG_BIN), its bin directory goes
    first on PATH: dbkit's own discovery (pg_config on PATH first) then finds the same major in
    every test, in-process and in the dbkit processes tests start (their local servers, pg_dump,
    psql), not only in the throwaway cluster."""
    bin_dir = chosen_pg_bin()
    if bin_dir is not None:
        path = os.environ.get("PATH", "")
        if path.split(os.pathsep)[0] != str(bin_dir):
            os.environ["PATH"] = f"{bin_dir}{os.pathsep}{path}"


def pytest_report_header(config: pytest.Config) -> str:
    from dbkit.server import binary_major, find_pg_bin

    try:
        bin_dir = chosen_pg_bin() or find_pg_bin()
        return f"PostgreSQL {binary_major(bin_dir)}: {bin_dir}"
    except Exception as exc:  # noqa: BLE001 - a header must not stop the run
        return f"PostgreSQL binaries: {exc}"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--long-faults", action="store_true",
                     help="run the fault-injection suite's long version (more rounds/examples)")


@pytest.fixture(scope="session")
def fault_scale(request: pytest.FixtureRequest) -> int:
    """1 for the short version in the default run, 10 with --long-faults."""
    return 10 if request.config.getoption("--long-faults") else 1
