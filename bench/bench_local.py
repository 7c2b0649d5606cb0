"""``dbkit setup`` with nothing configured (dbkit's own server, including initdb), against the
floor of the same binaries run by hand: ``initdb`` + ``pg_ctl start``; and a repeated
``setup`` against one ``psql -c 'SELECT 1'`` on that server (process start + connect)."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import interleaved, median, save, table
from dbkit.server import LocalServer, find_pg_bin, free_port


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("DBKIT_", "PG")) and k != "DATABASE_URL"}


def _as_server_user() -> dict[str, int] | dict[str, None]:
    if os.geteuid() != 0:
        return {}
    pw = pwd.getpwnam("postgres")
    return {"user": pw.pw_uid, "group": pw.pw_gid}


def main(runs: int = 5) -> list[dict[str, object]]:
    bin_dir = find_pg_bin()
    dirs: dict[str, Path] = {}

    def fresh(name: str) -> None:
        if name in dirs:  # the previous round's server: stopped and removed, untimed
            _cleanup_one(name, dirs.pop(name), bin_dir)
        d = Path(tempfile.mkdtemp(prefix="dbkit-bench-"))
        os.chmod(d, 0o755)
        if os.geteuid() == 0 and not name.startswith("dbkit"):
            shutil.chown(d, "postgres", "postgres")
        dirs[name] = d

    def cold_setup() -> None:
        subprocess.run([sys.executable, "-m", "dbkit", "setup"], cwd=dirs["dbkit setup (cold)"],
                       env=_clean_env(), check=True, capture_output=True)

    def initdb_start() -> None:
        d = dirs["initdb + pg_ctl start"]
        pwfile = d / "pw"
        pwfile.write_text("x\n")
        if os.geteuid() == 0:
            shutil.chown(pwfile, "postgres")
        kw = _as_server_user()
        subprocess.run([str(bin_dir / "initdb"), "-D", str(d / "data"), "-U", "postgres",
                        f"--pwfile={pwfile}", "--auth=scram-sha-256", "-E", "UTF8",
                        "--no-locale"], check=True, capture_output=True, cwd="/", **kw)
        subprocess.run([str(bin_dir / "pg_ctl"), "-D", str(d / "data"), "-l", str(d / "log"),
                        "-w", "-o", f"-p {free_port()} -k {d} -h 127.0.0.1", "start"],
                       check=True, capture_output=True, cwd="/", **kw)

    try:
        cold = interleaved({"dbkit setup (cold)": cold_setup,
                            "initdb + pg_ctl start": initdb_start}, runs=runs, warmup=0,
                           setup=fresh)
    finally:
        _cleanup(dirs, bin_dir)
    rows = table("dbkit setup with nothing configured (includes initdb)",
                 [("first setup vs initdb + start", "dbkit setup (cold)", "initdb + pg_ctl start")],
                 cold)

    project = Path(tempfile.mkdtemp(prefix="dbkit-bench-"))
    os.chmod(project, 0o755)
    try:
        subprocess.run([sys.executable, "-m", "dbkit", "setup"], cwd=project, env=_clean_env(),
                       check=True, capture_output=True)
        srv = LocalServer(project / ".dbkit")
        admin = srv.admin_url()
        env = _clean_env() | {"PGPASSWORD": admin.password or ""}
        warm = interleaved({
            "dbkit setup (repeated)": lambda: subprocess.run(
                [sys.executable, "-m", "dbkit", "setup"], cwd=project, env=_clean_env(),
                check=True, capture_output=True),
            "psql -c 'SELECT 1'": lambda: subprocess.run(
                [str(bin_dir / "psql"), "-X", "-h", "127.0.0.1", "-p", str(admin.port), "-U",
                 "postgres", "-d", "postgres", "-c", "SELECT 1"], env=env, check=True,
                capture_output=True)}, runs=runs * 2)
    finally:
        LocalServer(project / ".dbkit").destroy()
        shutil.rmtree(project, ignore_errors=True)
    rows += table("dbkit setup again on an up-to-date database",
                  [("repeated setup vs one psql round trip", "dbkit setup (repeated)",
                    "psql -c 'SELECT 1'")], warm)
    print(f"\nfirst setup median {median(cold['dbkit setup (cold)']):.2f} s (target <= 3 s); "
          f"repeated {median(warm['dbkit setup (repeated)']):.2f} s (target <= 0.5 s)")
    save("local", rows)
    return rows


def _cleanup(dirs: dict[str, Path], bin_dir: Path) -> None:
    for name, d in dirs.items():
        _cleanup_one(name, d, bin_dir)


def _cleanup_one(name: str, d: Path, bin_dir: Path) -> None:
    if name.startswith("dbkit"):
        LocalServer(d / ".dbkit").destroy()
    elif (d / "data").exists():
        subprocess.run([str(bin_dir / "pg_ctl"), "-D", str(d / "data"), "-m", "immediate",
                        "stop"], capture_output=True, cwd="/", **_as_server_user())
    shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
