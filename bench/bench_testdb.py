"""Per-test database wait: dbkit's ``dbkit_db`` with its warm pool of clones, the same with the
pool off (each clone made when the test asks), a raw ``CREATE DATABASE … TEMPLATE`` fixture and
pytest-postgresql's per-test ``postgresql`` fixture; and the same tests with no database.

One run measures both servers in turn: an fsync-off cluster (the test suite's kind) and a
durable one (fsync on, as a CI service container runs). On each, every variant runs the same
200 tests in its own pytest process, variants taking turns for ``BENCH_ROUNDS`` rounds so the
machine's noise hits them alike. Each test does 20 ms of work with its own database: it
connects, runs a query and sleeps out the rest of the 20 ms (the no-database variant sleeps the
20 ms). Reported:
  wait   what the test spends outside its own body (its setup + teardown: making, handing out
         and dropping its database), p50 and p95 over every test of every round;
  suite  wall clock from the first test's start to the last one's end (session fixtures,
         template check and the pool's final drops included), median over rounds, and its ratio
         to the no-database suite and to the same work on one shared database (what connecting
         and querying cost by themselves, which no fixture can hide).
Then, on each server, ``testdb create --count 20`` with its clones made on one admin connection
(as before issue 16) against its default number at once.
Goals (issue 16): fsync off, pool: wait p50 <= 5 ms, p95 <= 20 ms, suite <= 1.15x no database;
durable: pool wait >= 3x shorter than the raw fixture's.

pytest-postgresql is not a dbkit dependency. Install it somewhere of its own and point
BENCH_EXTRA_PATH at it (it is then loaded only by these runs), e.g.::

    pip install --target /tmp/bench-pkgs --no-deps pytest-postgresql mirakuru port-for psutil
    BENCH_EXTRA_PATH=/tmp/bench-pkgs python -m bench testdb

Without it, that variant is skipped. BENCH_N (default 200) and BENCH_ROUNDS (default 2) size
the run; DBKIT_TEST_ADMIN_URL replaces the fsync-off cluster with a given server.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.common import cluster, save

REPO = Path(__file__).resolve().parent.parent
MIGRATIONS = REPO / "migrations"
WORK_S = 0.020


@contextlib.contextmanager
def durable_cluster() -> Iterator[Any]:
    """A local cluster with PostgreSQL's default durability (the test clusters turn fsync off)."""
    from dbkit.server import LocalServer

    base = Path(tempfile.mkdtemp(prefix="dbkit-bench-pg-"))
    os.chmod(base, 0o711)  # as root the server runs as 'postgres', which must reach its data
    server = LocalServer(base / "cluster", fast=False)
    try:
        server.start()
        yield server.admin_url()
    finally:
        server.destroy()
        shutil.rmtree(base, ignore_errors=True)


CONFTEST = '''
import json, os, time
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

PHASES = {}


def pytest_runtest_logreport(report):
    PHASES.setdefault(report.nodeid, {})[report.when] = [report.duration, report.start,
                                                         report.stop]


def pytest_sessionfinish(session):
    Path(os.environ["BENCH_OUT"]).write_text(json.dumps(PHASES))


ADMIN = json.loads(os.environ["BENCH_ADMIN"])
WORK_S = float(os.environ["BENCH_WORK_S"])


def work(connect):
    """The test's 20 ms: connect, one query, then sleep out the rest."""
    started = time.perf_counter()
    if connect is not None:
        with connect() as conn:
            assert conn.execute("SELECT count(*) FROM posts").fetchone()[0] == 0
    time.sleep(max(0.0, WORK_S - (time.perf_counter() - started)))


@pytest.fixture(scope="session")
def raw_admin():
    with psycopg.connect(autocommit=True, **ADMIN) as conn:
        yield conn


@pytest.fixture(scope="session")
def shared_db(raw_admin):
    """One database for every test: the same work, without a database per test."""
    name = "bench_shared"
    raw_admin.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
    raw_admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
        sql.Identifier(name), sql.Identifier(os.environ["BENCH_TEMPLATE"])))
    yield {**ADMIN, "dbname": name}
    raw_admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def raw_db(raw_admin, request):
    """What one would write by hand: clone the template, drop it afterwards."""
    name = "bench_raw_" + str(abs(hash(request.node.nodeid)) % 10**9)
    raw_admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
        sql.Identifier(name), sql.Identifier(os.environ["BENCH_TEMPLATE"])))
    yield {**ADMIN, "dbname": name}
    raw_admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


if os.environ.get("BENCH_PPG"):
    from pytest_postgresql import factories

    LOAD = sorted(p for p in Path(os.environ["BENCH_MIGRATIONS"]).glob("*.sql")
                  if not p.name.endswith(".rollback.sql"))
    ppg_noproc = factories.postgresql_noproc(
        host=ADMIN["host"], port=ADMIN["port"], user=ADMIN["user"], password=ADMIN["password"],
        dbname="bench_ppg", load=LOAD, load_autocommit=True)
    postgresql = factories.postgresql("ppg_noproc")
'''

TESTS = '''
import os

import psycopg
import pytest
from conftest import work

N = range(int(os.environ["BENCH_N"]))


@pytest.mark.parametrize("i", N)
def test_none(i):
    work(None)


@pytest.mark.parametrize("i", N)
def test_shared(shared_db, i):
    work(lambda: psycopg.connect(**shared_db))


@pytest.mark.parametrize("i", N)
def test_dbkit(dbkit_db, i):
    work(lambda: psycopg.connect(**dbkit_db.connect_kwargs()))


@pytest.mark.parametrize("i", N)
def test_raw(raw_db, i):
    work(lambda: psycopg.connect(**raw_db))


@pytest.mark.parametrize("i", N)
def test_ppg(postgresql, i):
    work(lambda: psycopg.connect(**{k: v for k, v in postgresql.info.get_parameters().items()},
                                 password=postgresql.info.password))
'''

# variant: (test function, extra pytest arguments)
VARIANTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "none": ("test_none", ()),
    "shared": ("test_shared", ()),
    "pool": ("test_dbkit", ()),
    "plain": ("test_dbkit", ("--dbkit-pool=0",)),
    "raw": ("test_raw", ()),
    "ppg": ("test_ppg", ()),
}
LABELS = {"none": "no database", "shared": "one shared database (same work, no database per test)",
          "pool": "dbkit_db, pool on (default)",
          "plain": "dbkit_db, pool off (--dbkit-pool=0)",
          "raw": "raw CREATE DATABASE … TEMPLATE fixture",
          "ppg": "pytest-postgresql `postgresql`"}


def read_run(out: Path) -> tuple[list[float], float]:
    """(each test's wait in seconds, the suite's wall clock in seconds)."""
    phases = json.loads(out.read_text())
    waits = [p["setup"][0] + p["teardown"][0] for p in phases.values()]
    starts = [p["setup"][1] for p in phases.values()]
    stops = [p["teardown"][2] for p in phases.values()]
    return waits, max(stops) - min(starts)


def pct(xs: list[float], q: float) -> float:
    ordered = sorted(xs)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def one_server(kind: str, admin: Any, variants: list[str], n: int, rounds: int,
               extra: str) -> list[dict[str, object]]:
    from dbkit.settings import Settings
    from dbkit.testdb.clones import CloneSession

    with tempfile.TemporaryDirectory(prefix="dbkit-bench-") as tmp:
        project = Path(tmp)
        (project / "conftest.py").write_text(textwrap.dedent(CONFTEST))
        (project / "test_bench.py").write_text(textwrap.dedent(TESTS))
        (project / "pytest.ini").write_text(f"[pytest]\ndbkit_migrations = {MIGRATIONS}\n")
        settings = Settings.load(flags={"admin_url": admin.render(reveal=True),
                                        "migrations": str(MIGRATIONS)}, environ={}, cwd=project)
        session = CloneSession(settings, admin)  # builds the template every variant clones
        template = session.template.name
        session.close()
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("DBKIT_", "PG")) and k != "DATABASE_URL"}
        kw = admin.connect_kwargs()
        env.update(DBKIT_ADMIN_URL=admin.render(reveal=True), BENCH_N=str(n),
                   BENCH_TEMPLATE=template, BENCH_MIGRATIONS=str(MIGRATIONS),
                   BENCH_WORK_S=str(WORK_S),
                   BENCH_ADMIN=json.dumps({k: kw[k] for k in ("host", "port", "user", "password")}))
        if "ppg" in variants:
            env.update(BENCH_PPG="1")
        if extra:
            env.update(PYTHONPATH=os.pathsep.join([extra, env.get("PYTHONPATH", "")]))

        def run(variant: str, i: int) -> tuple[list[float], float]:
            test, args = VARIANTS[variant]
            out = project / f"{variant}-{i}.json"
            proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                   "-p", "no:randomly", "-k", test, *args, "test_bench.py"],
                                  cwd=project, env={**env, "BENCH_OUT": str(out)},
                                  capture_output=True, text=True, timeout=1200)
            if proc.returncode != 0:
                raise SystemExit(f"{variant} run failed:\n{proc.stdout[-3000:]}"
                                 f"{proc.stderr[-2000:]}")
            return read_run(out)

        waits: dict[str, list[float]] = {v: [] for v in variants}
        walls: dict[str, list[float]] = {v: [] for v in variants}
        for i in range(rounds):
            for v in variants:
                w, wall = run(v, i)
                waits[v] += w
                walls[v].append(wall)
                print(f"  {kind} round {i + 1} {v}: wait p50 {pct(w, .5) * 1000:.1f} ms, "
                      f"p95 {pct(w, .95) * 1000:.1f} ms, suite {wall:.2f} s", flush=True)

    none_wall = statistics.median(walls["none"])
    shared_wall = statistics.median(walls["shared"])
    raw_p50 = pct(waits["raw"], .5)
    print(f"\n## {kind}: {n} tests x {rounds} rounds, each test 20 ms of work with its own "
          "database\n")
    print("| variant | wait p50 (ms) | wait p95 (ms) | suite (s) | suite / no database "
          "| suite / one shared database | raw fixture's wait p50 / this one's |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    rows: list[dict[str, object]] = []
    for v in variants:
        p50, p95 = pct(waits[v], .5) * 1000, pct(waits[v], .95) * 1000
        wall = statistics.median(walls[v])
        vs_raw = raw_p50 / max(pct(waits[v], .5), 1e-6)
        own = v not in ("none", "shared")
        print(f"| {LABELS[v]} | {p50:.1f} | {p95:.1f} | {wall:.2f} | {wall / none_wall:.2f}x "
              f"| {wall / shared_wall:.2f}x | {f'{vs_raw:.1f}x' if own else ''} |")
        rows.append({"server": kind, "variant": v, "wait_p50_ms": round(p50, 2),
                     "wait_p95_ms": round(p95, 2), "suite_s": round(wall, 3),
                     "suite_vs_none": round(wall / none_wall, 3),
                     "suite_vs_shared": round(wall / shared_wall, 3),
                     "raw_wait_vs_this": round(vs_raw, 2)})
    return rows


def create_count(kind: str, admin: Any, count: int = 20, rounds: int = 5) -> dict[str, object]:
    """``dbkit testdb create --count 20`` (the library call) making its clones on one admin
    connection, as it did before issue 16 (the floor), and on its default number at once,
    taking turns; each run starts from none of them existing."""
    from dbkit.settings import Settings
    from dbkit.testdb import commands

    with tempfile.TemporaryDirectory(prefix="dbkit-bench-") as tmp:
        settings = Settings.load(flags={"admin_url": admin.render(reveal=True),
                                        "migrations": str(MIGRATIONS)}, environ={}, cwd=Path(tmp))
        commands.create(settings, admin, prefix="bench_warm_")  # the template
        times: dict[int, list[float]] = {1: [], commands.CONNECTIONS: []}
        for i in range(rounds):
            for k in (times if i % 2 == 0 else list(times)[::-1]):
                commands.drop(settings, admin, prefix="bench_cc_")
                times[k].append(commands.create(settings, admin, count=count, prefix="bench_cc_",
                                                connections=k).seconds)
        commands.drop(settings, admin, prefix="bench_cc_")
        commands.drop(settings, admin, prefix="bench_warm_")
    one, par = (statistics.median(times[k]) for k in times)
    print(f"\n## {kind}: testdb create --count {count}, median of {rounds}\n")
    print(f"- one connection: {one * 1000:.0f} ms; {commands.CONNECTIONS} at once: "
          f"{par * 1000:.0f} ms ({one / par:.2f}x faster)")
    return {"server": kind, "variant": f"create --count {count}", "one_connection_s": one,
            "parallel_s": par, "speedup": round(one / par, 2)}


def goals(rows: list[dict[str, object]]) -> None:
    by = {(r["server"], r["variant"]): r for r in rows}
    fast, durable = by.get(("fsync off", "pool")), by.get(("durable", "pool"))
    print("\n## Goals (issue 16)\n")
    if fast:
        for what, got, goal in (("fsync off: pool wait p50", fast["wait_p50_ms"], "<= 5 ms"),
                                ("fsync off: pool wait p95", fast["wait_p95_ms"], "<= 20 ms"),
                                ("fsync off: pool suite / no database", fast["suite_vs_none"],
                                 "<= 1.15x"),
                                ("fsync off: pool suite / the same work on one shared database",
                                 fast["suite_vs_shared"], "<= 1.15x")):
            limit = float(goal.split()[1].rstrip("x"))
            print(f"- {what}: {got} (goal {goal}): {'met' if float(str(got)) <= limit else 'MISSED'}")
    if durable:
        got = float(str(durable["raw_wait_vs_this"]))
        print(f"- durable: raw fixture's wait / pool's: {got:.1f}x (goal >= 3x): "
              f"{'met' if got >= 3 else 'MISSED'}")


def main(n: int | None = None, rounds: int | None = None) -> list[dict[str, object]]:
    n = n or int(os.environ.get("BENCH_N", "200"))
    rounds = rounds or int(os.environ.get("BENCH_ROUNDS", "2"))
    extra = os.environ.get("BENCH_EXTRA_PATH", "")
    has_ppg = (bool(extra) and (Path(extra) / "pytest_postgresql").is_dir()
               or importlib.util.find_spec("pytest_postgresql") is not None)
    variants = ["none", "shared", "pool", "plain", "raw"] + (["ppg"] if has_ppg else [])
    if not has_ppg:
        print("pytest-postgresql not found (see BENCH_EXTRA_PATH): its variant is skipped")
    rows: list[dict[str, object]] = []
    with cluster(os.environ.get("DBKIT_TEST_ADMIN_URL")) as admin:
        rows += one_server("fsync off", admin, variants, n, rounds, extra)
        rows.append(create_count("fsync off", admin))
    with durable_cluster() as admin:
        rows += one_server("durable", admin, variants, n, rounds, extra)
        rows.append(create_count("durable", admin))
    goals(rows)
    save("testdb", rows)
    return rows


if __name__ == "__main__":
    main()
