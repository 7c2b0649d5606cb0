"""Per-test database cost: dbkit's ``dbkit_db`` fixture vs a raw ``CREATE DATABASE … TEMPLATE``
fixture vs pytest-postgresql's per-test ``postgresql`` fixture, all on the posts schema.

Every test connects to its database and runs one query, against the same server.
1. One pytest run in which the three variants take turns test by test, so the machine's noise
   (other processes' disk and CPU) hits them alike; dbkit in its synchronous mode, so all of its
   work is inside its tests' phases; per test = setup + call + teardown.
2. Separate runs per variant, dbkit as the plugin runs by default (drops and the next clone in a
   background thread): per test = median wall clock from one test's end to the next one's, so
   background work counts wherever it lands; also the setup phase alone.
The first test of each kind (it pays for session fixtures) is left out.
Also: the library alone (clone + drop in a loop) vs the bare SQL, without pytest.

pytest-postgresql is not a dbkit dependency. Install it somewhere of its own and point
BENCH_EXTRA_PATH at it (it is then loaded only by these runs), e.g.::

    pip install --target /tmp/bench-pkgs --no-deps pytest-postgresql mirakuru port-for psutil
    BENCH_EXTRA_PATH=/tmp/bench-pkgs python -m bench.bench_testdb

Without it, that column is skipped. The server is a durable local cluster (fsync on, as a CI
service container runs), or DBKIT_TEST_ADMIN_URL's; BENCH_FAST=1 uses the fsync-off test cluster.
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
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.common import cluster, interleaved, median, save, table


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

REPO = Path(__file__).resolve().parent.parent
MIGRATIONS = REPO / "migrations"

CONFTEST = '''
import json, os
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

DURATIONS = {}


def pytest_runtest_logreport(report):
    DURATIONS.setdefault(report.nodeid, {})[report.when] = [report.duration, report.stop]


def pytest_sessionfinish(session):
    Path(os.environ["BENCH_OUT"]).write_text(json.dumps(DURATIONS))


ADMIN = json.loads(os.environ["BENCH_ADMIN"])


@pytest.fixture(scope="session")
def raw_admin():
    with psycopg.connect(autocommit=True, **ADMIN) as conn:
        yield conn


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
import psycopg
import pytest

N = int(__import__("os").environ["BENCH_N"])


@pytest.mark.parametrize("i", range(N))
def test_dbkit(dbkit_db, i):
    with psycopg.connect(**dbkit_db.connect_kwargs()) as conn:
        assert conn.execute("SELECT count(*) FROM posts").fetchone()[0] == 0


@pytest.mark.parametrize("i", range(N))
def test_raw(raw_db, i):
    with psycopg.connect(**raw_db) as conn:
        assert conn.execute("SELECT count(*) FROM posts").fetchone()[0] == 0


@pytest.mark.parametrize("i", range(N))
def test_ppg(postgresql, i):
    assert postgresql.execute("SELECT count(*) FROM posts").fetchone()[0] == 0


VARIANTS = __import__("os").environ.get("BENCH_VARIANTS", "dbkit,raw").split(",")
FIXTURE = {"dbkit": "dbkit_db", "raw": "raw_db", "ppg": "postgresql"}


@pytest.mark.parametrize("i,variant", [(i, v) for i in range(N) for v in VARIANTS])
def test_mixed(request, i, variant):
    """The variants take turns, so whatever else the machine does hits them alike."""
    db = request.getfixturevalue(FIXTURE[variant])
    if variant == "ppg":
        assert db.execute("SELECT count(*) FROM posts").fetchone()[0] == 0
        return
    kw = db.connect_kwargs() if variant == "dbkit" else db
    with psycopg.connect(**kw) as conn:
        assert conn.execute("SELECT count(*) FROM posts").fetchone()[0] == 0
'''


def per_test_ms(out: Path) -> float:
    """Wall clock from one test's end to the next one's: background work that overlaps the
    gaps between phases is counted too (a sum of phase durations would miss it)."""
    ends = [phases["teardown"][1] for phases in json.loads(out.read_text()).values()]
    return statistics.median([b - a for a, b in zip(ends, ends[1:], strict=False)]) * 1000


def mixed_ms(out: Path) -> dict[str, list[float]]:
    """setup+call+teardown of each test of the interleaved run, by variant (first ones out)."""
    by: dict[str, list[float]] = {}
    for nodeid, phases in json.loads(out.read_text()).items():
        variant = nodeid.rsplit("-", 1)[1].rstrip("]")
        by.setdefault(variant, []).append(sum(p[0] for p in phases.values()))
    return {v: xs[1:] for v, xs in by.items()}


def setup_ms(out: Path, which: str) -> float:
    data = json.loads(out.read_text())
    return statistics.median([p[which][0] for p in list(data.values())[1:]]) * 1000


def main(n: int = 40, rounds: int = 5, loops: int = 30) -> list[dict[str, object]]:
    from dbkit.settings import Settings
    from dbkit.testdb.clones import CloneSession

    extra = os.environ.get("BENCH_EXTRA_PATH", "")
    has_ppg = (bool(extra) and (Path(extra) / "pytest_postgresql").is_dir()
               or importlib.util.find_spec("pytest_postgresql") is not None)
    rows: list[dict[str, object]] = []
    fast = os.environ.get("BENCH_FAST") == "1" or os.environ.get("DBKIT_TEST_ADMIN_URL")
    server = cluster(os.environ.get("DBKIT_TEST_ADMIN_URL")) if fast else durable_cluster()
    with server as admin, \
            tempfile.TemporaryDirectory(prefix="dbkit-bench-") as tmp:
        project = Path(tmp)
        (project / "conftest.py").write_text(textwrap.dedent(CONFTEST))
        (project / "test_bench.py").write_text(textwrap.dedent(TESTS))
        (project / "pytest.ini").write_text(f"[pytest]\ndbkit_migrations = {MIGRATIONS}\n")
        settings = Settings.load(flags={"admin_url": admin.render(reveal=True),
                                        "migrations": str(MIGRATIONS)}, environ={}, cwd=project)
        session = CloneSession(settings, admin)  # builds the template both fixtures clone
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("DBKIT_", "PG")) and k != "DATABASE_URL"}
        kw = admin.connect_kwargs()
        env.update(DBKIT_ADMIN_URL=admin.render(reveal=True), BENCH_N=str(n),
                   BENCH_TEMPLATE=session.template.name, BENCH_MIGRATIONS=str(MIGRATIONS),
                   BENCH_ADMIN=json.dumps({k: kw[k] for k in ("host", "port", "user", "password")}))
        if has_ppg:
            env.update(BENCH_PPG="1")
        if extra:
            env.update(PYTHONPATH=os.pathsep.join([extra, env.get("PYTHONPATH", "")]))

        def run(variant: str, *extra: str) -> Path:
            out = project / f"{variant}.json"
            proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                   "-k", f"test_{variant}", *extra, "test_bench.py"], cwd=project,
                                  env={**env, "BENCH_OUT": str(out)}, capture_output=True,
                                  text=True, timeout=600)
            if proc.returncode != 0:
                raise SystemExit(f"{variant} run failed:\n{proc.stdout[-3000:]}{proc.stderr[-2000:]}")
            return out

        variants = ["dbkit", "raw"] + (["ppg"] if has_ppg else [])
        env["BENCH_VARIANTS"] = ",".join(variants)
        # 1. Interleaved in one run; dbkit in its synchronous mode so every bit of its work
        #    lands inside its own tests' phases.
        mixed: dict[str, list[float]] = {v: [] for v in variants}
        for _ in range(rounds):
            for v, xs in mixed_ms(run("mixed", "-o", "dbkit_background=false")).items():
                mixed[v] += xs
        mixed_values = {v: median(xs) * 1000 for v, xs in mixed.items()}
        lines = [("dbkit_db (sync) vs raw CREATE DATABASE … TEMPLATE", "dbkit", "raw")]
        if has_ppg:
            lines.append(("dbkit_db (sync) vs pytest-postgresql `postgresql`", "dbkit", "ppg"))
        print(f"\nserver: {'given/fsync-off' if fast else 'durable local cluster (fsync on)'}")
        rows += table(f"Per test, variants interleaved in one run ({rounds}x{n} tests each; "
                      "setup+call+teardown)", lines, {}, values=mixed_values)

        # 2. Separate runs, wall clock: dbkit as the plugin runs by default (background work).
        per_test: dict[str, list[float]] = {v: [] for v in variants}
        setups: dict[str, list[float]] = {v: [] for v in variants}
        for _ in range(rounds):
            for v in variants:
                out = run(v)
                per_test[v].append(per_test_ms(out))
                setups[v].append(setup_ms(out, "setup"))
        for v in variants:
            print(f"{v}: per-test wall clock of each run (ms): "
                  + ", ".join(f"{x:.1f}" for x in per_test[v]))
        values = {f"{v} {kind}": median(d[v]) for kind, d in (("test", per_test), ("setup", setups))
                  for v in variants}
        print(f"\n{n} tests per run, {rounds} interleaved runs per variant; "
              f"medians of the per-run medians")
        lines = [("dbkit_db vs raw CREATE DATABASE … TEMPLATE (wall clock per test)",
                  "dbkit test", "raw test"),
                 ("dbkit_db vs raw CREATE DATABASE … TEMPLATE (setup only)",
                  "dbkit setup", "raw setup")]
        if has_ppg:
            lines += [("dbkit_db vs pytest-postgresql `postgresql` (wall clock per test)",
                       "dbkit test", "ppg test"),
                      ("dbkit_db vs pytest-postgresql `postgresql` (setup only)",
                       "dbkit setup", "ppg setup")]
        rows += table("Per test, separate runs per variant (dbkit with background drop/prefetch)",
                      lines, {}, values=values)

        # The library alone, no pytest: clone+drop vs the bare statements on one connection.
        from psycopg import sql

        conn = session.conn
        counter = iter(range(10**6))

        def bare() -> None:
            name = f"bench_bare_{next(counter)}"
            conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(session.template.name)))
            conn.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(name)))

        def lib() -> None:
            url = session.clone()
            session.drop(url.dbname or "")

        def clone_only() -> None:
            name = f"bench_bare_{next(counter)}"
            started = time.perf_counter()
            conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(session.template.name)))
            clone_times.append(time.perf_counter() - started)
            conn.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(name)))

        clone_times: list[float] = []
        times = interleaved({"dbkit clone+drop": lib, "bare clone+drop": bare,
                             "bare clone": clone_only}, runs=loops, warmup=2)
        rows += table("Library, no pytest", [("CloneSession.clone()+drop() vs bare SQL",
                                               "dbkit clone+drop", "bare clone+drop")], times)
        print(f"\nfloor: bare CREATE DATABASE … TEMPLATE alone, median "
              f"{median(clone_times[2:]) * 1000:.1f} ms")
        session.close()
    save("testdb_fast" if fast else "testdb", rows)
    return rows


if __name__ == "__main__":
    main()
