"""Startup: what a process pays before and around its one query, against the stack's floors,
in one run (interleaved, medians).

- ``dbkit --help`` / ``--version`` vs ``python -c "import click"`` (a click CLI's floor);
- ``dbkit status --check`` and a no-op ``dbkit migrate`` on an up-to-date database (the
  deploy gate's common case) vs the floor ``python -c "import psycopg"`` + one connection + one
  query, and vs ``yoyo list`` / a no-op ``yoyo apply`` of the same files on the same database;
- a repeated ``dbkit setup`` with nothing to do vs one ``psql -c 'SELECT 1'``, and vs the floor;
- references: bare ``python -c pass`` and ``python -c "import psycopg"``.

Every process connects as the application role over TCP with SCRAM (the password through
PGPASSWORD or .env, never argv). dbkit's modules are byte-compiled first, as ``pip install``
does for a wheel (this machine runs with PYTHONDONTWRITEBYTECODE=1, which would otherwise make
every run compile dbkit from source while psycopg and click load their installed .pyc).
The server: the fsync-off throwaway cluster, or DBKIT_TEST_ADMIN_URL's.
``python -m bench startup`` or ``bench/run startup``.
"""

from __future__ import annotations

import compileall
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import cluster, interleaved, median, save

ROLE = DB = "bench_startup"
PASSWORD = "bench-startup-pw"
FLOOR = ("import psycopg; c = psycopg.connect(); c.execute('SELECT 1').fetchone(); c.close()")


def compiled() -> None:
    """dbkit's .pyc files, as a wheel install leaves them (idempotent, quick when fresh)."""
    import dbkit

    compileall.compile_dir(str(Path(dbkit.__file__).parent), quiet=1)


def main(runs: int = 15) -> list[dict[str, object]]:
    from dbkit.migrate.files import packaged_dir
    from dbkit.server import find_pg_bin

    compiled()
    py = sys.executable
    yoyo = str(Path(py).parent / "yoyo")
    psql = str(find_pg_bin() / "psql")
    base_env = {k: v for k, v in os.environ.items()
                if not k.startswith(("DBKIT_", "PG")) and k != "DATABASE_URL"}
    with cluster(os.environ.get("DBKIT_TEST_ADMIN_URL")) as admin, \
            tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        work = Path(tmp)
        app = admin.with_(user=ROLE, password=PASSWORD, dbname=DB)
        dbkit_env = {**base_env, "DBKIT_ADMIN_URL": admin.render(reveal=True),
                     "DATABASE_URL": app.render(reveal=True)}
        libpq_env = {**base_env, "PGHOST": str(app.host), "PGPORT": str(app.port),
                     "PGUSER": ROLE, "PGDATABASE": DB, "PGPASSWORD": PASSWORD}
        yoyo_url = app.with_(password=None).render(scheme="postgresql+psycopg")
        migrations = str(packaged_dir())

        cpu: dict[str, list[float]] = {}
        current = [""]

        def run(args: list[str], env: dict[str, str]) -> None:
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            subprocess.run(args, cwd=work, env=env, check=True, capture_output=True)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            if current[0]:
                cpu.setdefault(current[0], []).append(
                    after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)

        run([py, "-m", "dbkit", "setup"], dbkit_env)  # the up-to-date database (untimed)
        cases = {
            "python -c pass": lambda: run([py, "-c", "pass"], base_env),
            "import click": lambda: run([py, "-c", "import click"], base_env),
            "dbkit --help": lambda: run([py, "-m", "dbkit", "--help"], base_env),
            "dbkit --version": lambda: run([py, "-m", "dbkit", "--version"], base_env),
            "import psycopg": lambda: run([py, "-c", "import psycopg"], base_env),
            "floor": lambda: run([py, "-c", FLOOR], libpq_env),
            "psql -c 'SELECT 1'": lambda: run([psql, "-X", "-q", "-c", "SELECT 1"], libpq_env),
            "dbkit status --check": lambda: run([py, "-m", "dbkit", "status", "--check"],
                                                dbkit_env),
            "yoyo list": lambda: run([yoyo, "list", "--batch", "--database", yoyo_url,
                                      migrations], libpq_env),
            "dbkit migrate (no-op)": lambda: run([py, "-m", "dbkit", "migrate"], dbkit_env),
            "yoyo apply (no-op)": lambda: run([yoyo, "apply", "--batch", "--database", yoyo_url,
                                               migrations], libpq_env),
            "dbkit setup (repeat)": lambda: run([py, "-m", "dbkit", "setup"], dbkit_env),
        }
        def timed(name: str) -> object:
            current[0] = name
            return cases[name]()

        times = interleaved({name: (lambda n=name: timed(n)) for name in cases}, runs=runs,
                            warmup=2)
        rows = report(times, {k: v[2:] for k, v in cpu.items()})  # the warmup rounds out
        _drop(admin)
    save("startup", rows)
    return rows


# (label, dbkit case, other case, goal as the most dbkit may take, in times the other side)
COMPARISONS = [
    ("dbkit --help vs import click", "dbkit --help", "import click", 1.3),
    ("dbkit --version vs import click", "dbkit --version", "import click", 1.3),
    ("dbkit status --check vs the floor", "dbkit status --check", "floor", 1.15),
    ("dbkit status --check vs yoyo list", "dbkit status --check", "yoyo list", 1 / 1.5),
    ("no-op dbkit migrate vs the floor", "dbkit migrate (no-op)", "floor", 1.15),
    ("no-op dbkit migrate vs no-op yoyo apply", "dbkit migrate (no-op)", "yoyo apply (no-op)",
     1 / 1.5),
    ("repeated dbkit setup vs psql -c 'SELECT 1'", "dbkit setup (repeat)",
     "psql -c 'SELECT 1'", 8.0),
    ("repeated dbkit setup vs the floor", "dbkit setup (repeat)", "floor", None),
    ("reference: import psycopg vs psql -c 'SELECT 1'", "import psycopg", "psql -c 'SELECT 1'",
     None),
    ("reference: the floor vs python -c pass", "floor", "python -c pass", None),
]


def report(times: dict[str, list[float]], cpu: dict[str, list[float]]
           ) -> list[dict[str, object]]:
    """Wall-clock medians decide the goals; CPU medians (the process's user + system time,
    which a busy machine inflates less than wall time) are shown beside them."""
    print("\n## Startup (processes; the floor = python -c 'import psycopg' + one connection +"
          " one query)\n")
    print("| what | dbkit (ms) | other (ms) | dbkit / other | CPU: dbkit / other | goal | met |")
    print("|---|---:|---:|---:|---:|---:|---|")
    out: list[dict[str, object]] = []
    for label, mine, other, goal in COMPARISONS:
        a, b = median(times[mine]) * 1000, median(times[other]) * 1000
        ratio = a / b
        cpu_ratio = median(cpu[mine]) / median(cpu[other])
        shown = "" if goal is None else (f"<= {goal:.2f}x" if goal >= 1 else
                                         f"<= {goal:.2f}x ({1 / goal:.1f}x faster)")
        met = "" if goal is None else ("yes" if ratio <= goal else "no")
        print(f"| {label} | {a:,.1f} | {b:,.1f} | {ratio:.2f}x | {cpu_ratio:.2f}x | {shown} |"
              f" {met} |")
        out.append({"what": label, "dbkit": round(a, 2), "comparison": round(b, 2),
                    "unit": "ms", "times_other": round(ratio, 3),
                    "cpu_times_other": round(cpu_ratio, 3), "goal": goal,
                    "speed_ratio": round(b / a, 3)})
    return out


def _drop(admin: object) -> None:
    import psycopg
    from psycopg import sql

    from dbkit.urls import DbURL

    assert isinstance(admin, DbURL)
    with psycopg.connect(autocommit=True, **admin.connect_kwargs()) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DB)))
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(ROLE)))


if __name__ == "__main__":
    main()
