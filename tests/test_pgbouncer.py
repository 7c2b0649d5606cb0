"""migrate / status / seed through a real PgBouncer in transaction pooling mode, where session
state (locks, SETs, prepared statements) does not survive from one transaction to the next.

The PgBouncer started here hands each transaction to the next server connection in turn
(server_round_robin, several connections kept open), so anything that relies on session state
across transactions -- session advisory locks, server-side prepared statements, SET outside a
transaction -- breaks visibly instead of working by luck on one reused connection.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from dbkit.urls import DbURL

PGBOUNCER = shutil.which("pgbouncer") or next(
    (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.path.exists(p)), None)
pytestmark = pytest.mark.skipif(
    PGBOUNCER is None,
    reason="pgbouncer binary not found (Debian package 'pgbouncer'; .ci/run installs it as root)")

POOL = 4  # server connections per pool, all used in turn


def _version() -> tuple[int, ...]:
    out = subprocess.run([PGBOUNCER, "--version"], capture_output=True, text=True,  # type: ignore[list-item]
                         timeout=10).stdout.split()
    return tuple(int(x) for x in out[1].split(".")[:2]) if len(out) > 1 else (0,)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Bouncer:
    def __init__(self, server: DbURL, users: dict[str, str]) -> None:
        self.server = server
        self.port = _free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="dbkit-pgbouncer-"))
        self.proc: subprocess.Popen[bytes] | None = None
        # PgBouncer refuses to run as root: run it as the unprivileged 'postgres' account
        self.user = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
        quoted = "\n".join(f'"{u}" "{p}"' for u, p in users.items())
        (self.dir / "userlist.txt").write_text(quoted + "\n")
        (self.dir / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host={server.host} port={server.port}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = scram-sha-256\nauth_file = {self.dir / 'userlist.txt'}\n"
            "pool_mode = transaction\n"
            f"default_pool_size = {POOL}\nmin_pool_size = {POOL}\nserver_round_robin = 1\n"
            f"logfile = {self.dir / 'pgbouncer.log'}\npidfile = {self.dir / 'pgbouncer.pid'}\n"
            # 1.21+ can track protocol-level prepared statements (on by default from 1.22);
            # keep them off so the test sees what most deployed PgBouncers do
            + ("max_prepared_statements = 0\n" if _version() >= (1, 21) else ""))
        for path in (self.dir, *self.dir.iterdir()):
            os.chmod(path, 0o700 if path.is_dir() else 0o600)
            if self.user:
                os.chown(path, self.user.pw_uid, self.user.pw_gid)

    def start(self) -> None:
        kw = {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []} \
            if self.user else {}
        self.proc = subprocess.Popen([PGBOUNCER, str(self.dir / "pgbouncer.ini")],  # type: ignore[list-item]
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pgbouncer exited: {self.proc.stderr.read().decode()}"  # type: ignore[union-attr]
                                   f"{self.log()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                return
            time.sleep(0.05)
        raise RuntimeError(f"pgbouncer did not listen on {self.port}: {self.log()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.dir / "pgbouncer.log").read_text()
        return ""

    def url(self, direct: DbURL) -> DbURL:
        """``direct`` (the server's URL for a role) rewritten to go through PgBouncer."""
        return direct.with_(host="127.0.0.1", port=self.port)


@pytest.fixture
def bouncer(app) -> Iterator[Bouncer]:  # noqa: ANN001
    """The app's role and database (created directly), and a PgBouncer in front of them."""
    r = app.cli("create")
    assert r.code == 0, r.output
    b = Bouncer(app.pg, {app.role: app.password})
    try:
        b.start()
        _fill_pool(b.url(app.url))
        yield b
    finally:
        b.stop()


def _fill_pool(url: DbURL) -> None:
    """Open POOL server connections now (POOL clients in a transaction at once), so the
    round robin has several to rotate through from the first test statement on."""
    with contextlib.ExitStack() as stack:
        for _ in range(POOL):
            conn = stack.enter_context(psycopg.connect(**url.connect_kwargs(),
                                                       prepare_threshold=None))
            conn.execute("SELECT 1")  # BEGIN + SELECT: the client now holds a server
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # wait until all of them are idle again
        with psycopg.connect(**url.connect_kwargs(), autocommit=True,
                             prepare_threshold=None) as conn:
            pids = {conn.execute("SELECT pg_backend_pid()").fetchone()[0] for _ in range(POOL * 2)}
        if len(pids) == POOL:
            return
        time.sleep(0.05)
    raise AssertionError(f"PgBouncer did not rotate over {POOL} server connections")


def _pooled_env(app, b: Bouncer) -> dict[str, str]:  # noqa: ANN001
    return {"DATABASE_URL": b.url(app.url).render(reveal=True)}


def test_the_harness_really_pools_by_transaction(app, bouncer: Bouncer) -> None:  # noqa: ANN001
    """Without this, 'works through PgBouncer' could mean 'happened to reuse one connection'."""
    with psycopg.connect(**bouncer.url(app.url).connect_kwargs(), autocommit=True,
                         prepare_threshold=None) as conn:
        pids = {conn.execute("SELECT pg_backend_pid()").fetchone()[0] for _ in range(POOL * 2)}
        assert len(pids) > 1
        conn.execute("SET lock_timeout = '7s'")  # session state: lands on one server only
        seen = {conn.execute("SHOW lock_timeout").fetchone()[0] for _ in range(POOL * 2)}
        assert seen == {"7s", "0"}
        conn.execute("RESET lock_timeout")  # on some server; the fixture's pool dies with it
    # psycopg's automatic prepared statements (after 5 runs of one query) break here
    with psycopg.connect(**bouncer.url(app.url).connect_kwargs(), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InvalidSqlStatementName):
            for i in range(POOL * 3):
                conn.execute("SELECT %s::int", (i,))


def test_migrate_status_seed_through_pgbouncer(app, bouncer: Bouncer) -> None:  # noqa: ANN001
    env = _pooled_env(app, bouncer)
    r = app.subprocess("migrate", "--json", **env)
    assert r.code == 0, r.output + bouncer.log()
    shipped = [f for f in (Path(__file__).parent.parent / "migrations").glob("*.sql")
               if not f.name.endswith(".rollback.sql")]
    assert len(json.loads(r.out)["applied"]) == len(shipped)
    r = app.subprocess("status", "--json", **env)
    assert r.code == 0, r.output
    assert json.loads(r.out)["pending"] == []
    r = app.subprocess("migrate", **env)  # idempotent through the pooler too
    assert r.code == 0 and "up to date" in r.out, r.output
    _seed_all_ways(app, bouncer, env)
    # doctor sees the pooler and names the fix
    r = app.cli("doctor", "--json", **env)
    pooler = {c["name"]: c for c in json.loads(r.out)["checks"]}["pooler"]
    assert pooler["status"] == "warn" and "DBKIT_MIGRATE_URL" in pooler["hint"]


def _seed_all_ways(app, bouncer: Bouncer, env: dict[str, str]) -> None:  # noqa: ANN001
    r = app.subprocess("seed", **env)  # the shipped sample data
    assert r.code == 0, r.output + bouncer.log()
    r = app.subprocess("seed", "--users", "30", "--posts", "200", "--votes", "100", "--append",
                       **env)
    assert r.code == 0, r.output + bouncer.log()
    data = app.cwd / "seed-data"
    data.mkdir(exist_ok=True)
    (data / "users.csv").write_text("email,password_hash\n" + "".join(
        f"pooled{i}@example.com,!\n" for i in range(40)))
    r = app.subprocess("seed", "--from", str(data), **env)
    assert r.code == 0, r.output + bouncer.log()
    with app.connect() as conn:
        assert conn.execute("SELECT count(*) FROM users WHERE email LIKE 'pooled%'"
                            ).fetchone()[0] == 40
        assert conn.execute("SELECT count(*) FROM votes").fetchone()[0] >= 100


def test_with_a_direct_migrate_url_nothing_is_left_on_pooled_connections(
        app, bouncer: Bouncer) -> None:  # noqa: ANN001
    """The documented set-up: DATABASE_URL through PgBouncer, DBKIT_MIGRATE_URL direct."""
    env = {**_pooled_env(app, bouncer), "DBKIT_MIGRATE_URL": app.url.render(reveal=True)}
    r = app.subprocess("migrate", **env)
    assert r.code == 0, r.output
    r = app.subprocess("status", **env)
    assert r.code == 0, r.output
    _seed_all_ways(app, bouncer, env)
    _assert_no_session_state_left(app, bouncer)
    r = app.cli("doctor", "--json", **env)
    pooler = {c["name"]: c for c in json.loads(r.out)["checks"]}["pooler"]
    assert pooler["status"] == "pass" and "DBKIT_MIGRATE_URL" in pooler["detail"]


def test_pooled_migrate_leaves_no_session_state(app, bouncer: Bouncer) -> None:  # noqa: ANN001
    r = app.subprocess("migrate", **_pooled_env(app, bouncer))
    assert r.code == 0, r.output
    _assert_no_session_state_left(app, bouncer)


def _assert_no_session_state_left(app, bouncer: Bouncer) -> None:  # noqa: ANN001
    """Every pooled server connection still has default timeouts and no prepared statements."""
    with psycopg.connect(**bouncer.url(app.url).connect_kwargs(), autocommit=True,
                         prepare_threshold=None) as conn:
        for _ in range(POOL * 2):
            row = conn.execute("SELECT current_setting('lock_timeout'),"
                               " current_setting('statement_timeout'),"
                               " (SELECT count(*) FROM pg_prepared_statements)").fetchone()
            assert row == ("0", "0", 0)
