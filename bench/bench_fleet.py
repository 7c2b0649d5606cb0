"""Fleet mode (``--targets FILE``) at scale: many databases on one local server.

- status: ``dbkit status --check --targets FILE`` over N up-to-date databases (the posts schema,
  cloned from one template migrated by dbkit) vs N sequential ``dbkit status --check`` processes,
  one per database through DATABASE_URL (a spread-out sample of them is timed and extrapolated
  linearly to N, to keep the run short), vs the floor "one query per database": a Python loop of
  ``psycopg.connect`` + ``SELECT migration_id FROM _yoyo_migration`` + close, and the same loop
  on as many threads as the fleet's --parallel. The issue's goal: the fleet run at least 20x
  faster than the sequential processes, and close to one query per database.
- migrate: ``dbkit migrate --targets FILE --parallel 8`` of the posts schema into N empty
  databases vs the same with ``--parallel 1`` vs a shell loop of ``yoyo apply --batch`` per
  database; every case on fresh empty databases (created untimed), ms per database at each N.

All targets are on one server, so ``--per-server`` is set to ``--parallel``: otherwise its
default (4) would cap ``--parallel 8`` at 4 here. Sizes come from the environment:

- ``BENCH_FLEET_N`` databases for status (default 1000), ``BENCH_FLEET_SAMPLE`` sequential
  processes timed (default 50),
- ``BENCH_FLEET_MIGRATE`` sizes for migrate (default ``10,100``; ``10,100,1000`` adds the big
  one, about 10 more minutes, most of them the yoyo loop),
- ``BENCH_FLEET_PARALLEL`` (default 8), ``BENCH_FLEET_RUNS`` interleaved runs (default 3).

The server is the fsync-off throwaway cluster, or DBKIT_TEST_ADMIN_URL's. ``python -m bench
fleet``. At the defaults it took 21 minutes on the shared 2-core machine under a load average of
9-13 (one ``dbkit status`` process then took ~1 s, 3-4x its quiet time). Most of that is the
shell loop of yoyo at 100 databases and the status rounds over 1000.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from bench.common import cluster, interleaved, median, save, table

if TYPE_CHECKING:
    import psycopg

    from dbkit.urls import DbURL

ROLE, PASSWORD = "bench_fleet", "bench-fleet-pw"
PREFIX = "bench_fleet_"  # every database this benchmark makes; dropped by it at the end
TEMPLATE = PREFIX + "template"
GOAL = 20.0  # the issue: the fleet status at least this much faster than sequential processes
POSTS_MIGRATIONS = 6
# The same end state in every case (yoyo's CLI included): the posts schema's indexes.
SCHEMA = """SELECT string_agg(format('%s %s', tablename, indexdef), E'\\n' ORDER BY indexdef)
FROM pg_indexes WHERE schemaname = 'public' AND tablename IN ('users', 'posts', 'votes')"""


def _connect(kw: dict[str, str], **extra: Any) -> psycopg.Connection[Any]:
    import psycopg

    return psycopg.connect(**cast("dict[str, Any]", kw), **extra)


def _ints(name: str, default: str) -> list[int]:
    raw = os.environ.get(name) or default
    try:
        values = [int(x) for x in raw.replace(" ", "").split(",") if x]
    except ValueError:
        raise SystemExit(f"{name}={raw!r}: give whole numbers, comma-separated") from None
    if not values or min(values) < 1:
        raise SystemExit(f"{name}={raw!r}: give numbers of at least 1")
    return values


class Bench:
    """What both parts share: the admin session, the role, the files, the child environment."""

    def __init__(self, admin: DbURL, conn: psycopg.Connection[Any], work: Path) -> None:
        from dbkit.migrate.files import packaged_dir

        self.admin, self.conn, self.work = admin, conn, work
        self.migrations = packaged_dir()
        self.parallel = _ints("BENCH_FLEET_PARALLEL", "8")[0]
        self.runs = _ints("BENCH_FLEET_RUNS", "3")[0]
        # The children see no DATABASE_URL, DBKIT_* or PG* of ours: only what each case gives.
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("DBKIT_", "PG")) and k != "DATABASE_URL"}

    def url(self, db: str) -> DbURL:
        return self.admin.with_(user=ROLE, password=PASSWORD, dbname=db)

    def create(self, names: list[str], template: str | None = None) -> None:
        from psycopg import sql

        for name in names:
            stmt = sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name),
                                                                 sql.Identifier(ROLE))
            if template:
                stmt = sql.SQL("{} TEMPLATE {}").format(stmt, sql.Identifier(template))
            self.conn.execute(stmt)

    def drop(self, names: list[str]) -> None:
        from psycopg import sql

        for name in names:
            self.conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))

    def drop_all(self) -> None:
        """Every database of this benchmark, including an interrupted run's."""
        rows = self.conn.execute("SELECT datname FROM pg_database WHERE starts_with(datname, %s)",
                                 (PREFIX,)).fetchall()
        self.drop([r[0] for r in rows])

    def targets_file(self, name: str, dbs: list[str]) -> Path:
        """The password is in the file (mode 0600), never in argv."""
        path = self.work / name
        path.write_text("".join(self.url(db).render(reveal=True) + "\n" for db in dbs))
        path.chmod(0o600)
        return path

    def run(self, args: list[str], env: dict[str, str] | None = None) -> None:
        """A child process that must succeed; when it fails, the end of what it said."""
        done = subprocess.run(args, cwd=self.work, env={**self.env, **(env or {})},
                              capture_output=True, text=True)
        if done.returncode:
            said = (done.stderr.strip() or done.stdout.strip()).splitlines()[-3:]
            raise SystemExit(f"{' '.join(args[:4])} ... exited {done.returncode}: "
                             + " / ".join(said))

    def dbkit(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.run([sys.executable, "-m", "dbkit", *args], env)

    def fleet_flags(self, parallel: int) -> list[str]:
        return ["--migrations", str(self.migrations), "--parallel", str(parallel),
                "--per-server", str(parallel)]

    def state(self, db: str) -> tuple[int, str]:
        """(migrations recorded, schema fingerprint) of one database."""
        with _connect(self.url(db).connect_kwargs()) as c:
            applied = c.execute("SELECT count(*) FROM _yoyo_migration").fetchone()
            schema = c.execute(SCHEMA).fetchone()
        return (applied[0] if applied else -1), str(schema[0] if schema else None)


def main() -> list[dict[str, object]]:
    from psycopg import sql

    started = time.perf_counter()
    status_n = _ints("BENCH_FLEET_N", "1000")[0]
    sample = min(_ints("BENCH_FLEET_SAMPLE", "50")[0], status_n)
    migrate_sizes = _ints("BENCH_FLEET_MIGRATE", "10,100")
    rows: list[dict[str, object]] = []
    with cluster(os.environ.get("DBKIT_TEST_ADMIN_URL")) as admin, \
            tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp, \
            _connect(admin.connect_kwargs(), autocommit=True) as conn:
        b = Bench(admin, conn, Path(tmp))
        b.drop_all()
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(ROLE)))
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
            sql.Identifier(ROLE), sql.Literal(PASSWORD)))
        try:
            rows += _status(b, status_n, sample)
            rows += _migrate(b, migrate_sizes)
        finally:
            b.drop_all()
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(ROLE)))
    print(f"\n(bench fleet took {time.perf_counter() - started:.0f} s)")
    save("fleet", rows)
    return rows


# -- status over N up-to-date databases ------------------------------------------------------
def _status(b: Bench, n: int, sample: int) -> list[dict[str, object]]:
    from dbkit.fleet import FleetOptions, status_all
    from dbkit.migrate import commands as migrate
    from dbkit.settings import Settings, Target

    p = b.parallel
    settings = Settings.load(flags={"migrations": str(b.migrations)}, environ={}, cwd=b.work)
    b.create([TEMPLATE])
    migrate.migrate(Target.of(b.url(TEMPLATE), settings))
    made = time.perf_counter()
    dbs = [f"{PREFIX}s_{i:05d}" for i in range(n)]
    b.create(dbs, template=TEMPLATE)
    print(f"\n(status: {n} databases cloned from a template migrated by dbkit in "
          f"{time.perf_counter() - made:.1f} s, untimed)")
    targets = b.targets_file("status.targets", dbs)
    urls = [b.url(db) for db in dbs]
    kwargs = [u.connect_kwargs() for u in urls]
    step = n / sample
    sampled = [urls[int(i * step)].render(reveal=True) for i in range(sample)]

    def one_query(kw: dict[str, str]) -> int:
        with _connect(kw) as c:
            return len(c.execute("SELECT migration_id FROM _yoyo_migration").fetchall())

    def floor_loop() -> None:
        assert all(one_query(kw) == POSTS_MIGRATIONS for kw in kwargs)

    def floor_threads() -> None:
        with ThreadPoolExecutor(max_workers=p) as pool:
            assert all(c == POSTS_MIGRATIONS for c in pool.map(one_query, kwargs))

    def fleet_in_process() -> None:
        report = status_all(urls, settings, FleetOptions(parallel=p, per_server=p), check=True)
        assert report.exit_code == 0 and report.counts == {"up to date": n}, report.counts

    def sequential_sample() -> None:
        for url in sampled:
            b.dbkit("status", "--check", "--migrations", str(b.migrations),
                    env={"DATABASE_URL": url})

    cases: dict[str, Callable[[], object]] = {
        "fleet CLI": lambda: b.dbkit("status", "--check", "--targets", str(targets),
                                     *b.fleet_flags(p)),
        "fleet in-process": fleet_in_process,
        "sequential CLI": sequential_sample,
        "query loop": floor_loop,
        "query threads": floor_threads,
    }
    # At 100 and more the template's migration and the clones warmed the server already.
    times = interleaved(cases, runs=b.runs, warmup=1 if n < 100 else 0)
    values = {k: median(v) * 1000 for k, v in times.items()}
    values["sequential CLI"] *= n / sample  # a sample of the processes, extrapolated
    rows = table(f"status --check over {n} up-to-date databases (parallel {p})", [
        (f"fleet CLI vs {n} sequential `dbkit status --check` processes "
         f"(extrapolated from {sample})", "fleet CLI", "sequential CLI"),
        ("fleet CLI vs one query per database, a loop (floor)", "fleet CLI", "query loop"),
        (f"fleet CLI vs one query per database, {p} threads (floor)", "fleet CLI",
         "query threads"),
        (f"fleet in-process vs one query per database, {p} threads (floor)",
         "fleet in-process", "query threads"),
    ], times, values=values)
    vs_seq = values["sequential CLI"] / values["fleet CLI"]
    vs_floor = values["fleet CLI"] / values["query threads"]
    print(f"\nThe sequential processes: {sample} of {n} timed (spread over the list), their "
          f"median {values['sequential CLI'] / n:.1f} ms each, times {n}.")
    print("Per database: " + ", ".join(f"{k} {v / n:.2f} ms" for k, v in values.items()))
    print(f"Goal >= {GOAL:.0f}x faster than the sequential processes: {vs_seq:.1f}x "
          f"({'met' if vs_seq >= GOAL else 'MISSED'}). Cost against one query per database on "
          f"{p} threads: {vs_floor:.2f}x (1.00x would be the floor).")
    for r in rows:
        r["n"] = n
    rows.append({"what": f"status n={n}: fleet CLI speed vs sequential processes",
                 "speed_ratio": round(vs_seq, 3), "goal": GOAL, "met": vs_seq >= GOAL,
                 "sample": sample, "n": n})
    rows.append({"what": f"status n={n}: fleet CLI cost / one query per database ({p} threads)",
                 "cost_ratio": round(vs_floor, 3), "n": n})
    b.drop(dbs)
    return rows


# -- migrate N empty databases ---------------------------------------------------------------
def _migrate(b: Bench, sizes: list[int]) -> list[dict[str, object]]:
    p = b.parallel
    yoyo = str(Path(sys.executable).parent / "yoyo")
    labels = {"par": f"dbkit --parallel {p}", "seq": "dbkit --parallel 1", "yoyo": "yoyo loop"}
    case_of = {label: k for k, label in labels.items()}
    per_db: dict[int, dict[str, float]] = {}
    rows: list[dict[str, object]] = []
    for n in sizes:
        dbs = {k: [f"{PREFIX}m{n}_{k}_{i:04d}" for i in range(n)] for k in labels}
        files = {k: b.targets_file(f"migrate_{n}_{k}.targets", dbs[k]) for k in ("par", "seq")}
        # The shell loop: a URL without the password (PGPASSWORD), as a user would write it.
        base = b.url("x").with_(password=None)
        loop = b.work / f"yoyo_{n}.sh"
        loop.write_text("set -e\nfor db in " + " ".join(dbs["yoyo"]) + "; do\n"
                        f"  {shlex.quote(yoyo)} apply --batch --database "
                        f"{shlex.quote(base.with_(dbname='').render(scheme='postgresql+psycopg'))}"
                        f"/\"$db\" {shlex.quote(str(b.migrations))} >/dev/null\ndone\n")

        def fresh(label: str, dbs: dict[str, list[str]] = dbs) -> None:
            names = dbs[case_of[label]]
            b.drop(names)
            b.create(names)

        cases: dict[str, Callable[[], object]] = {
            labels["par"]: lambda f=files["par"]: b.dbkit("migrate", "--targets", str(f),
                                                          *b.fleet_flags(p)),
            labels["seq"]: lambda f=files["seq"]: b.dbkit("migrate", "--targets", str(f),
                                                          *b.fleet_flags(1)),
            labels["yoyo"]: lambda s=loop: b.run(["bash", str(s)], {"PGPASSWORD": PASSWORD}),
        }
        # At 100 and more, each run is 100+ migrations already; the n=10 runs warmed up.
        warmup = 1 if n < 100 else 0
        times = interleaved(cases, runs=b.runs if n < 1000 else min(b.runs, 2), warmup=warmup,
                            setup=fresh)
        states = {b.state(db) for names in dbs.values() for db in names}
        if len(states) != 1 or next(iter(states))[0] != POSTS_MIGRATIONS:
            raise SystemExit(f"migrate {n}: the cases did not all end with the posts schema: "
                             f"{len(states)} different end states")
        got = table(f"migrate the posts schema into {n} empty databases", [
            (f"{labels['par']} vs {labels['seq']}", labels["par"], labels["seq"]),
            (f"{labels['par']} vs a shell loop of yoyo apply", labels["par"], labels["yoyo"]),
            (f"{labels['seq']} vs a shell loop of yoyo apply", labels["seq"], labels["yoyo"]),
        ], times)
        per_db[n] = {label: median(t) * 1000 / n for label, t in times.items()}
        for r in got:
            r["n"] = n
        rows += got
        rows += [{"what": f"migrate ms per database: {label} (n={n})", "dbkit": round(ms, 3),
                  "unit": "ms", "n": n} for label, ms in per_db[n].items()]
        b.drop([db for names in dbs.values() for db in names])
    print("\n## migrate: ms per database as the fleet grows\n")
    print("| databases | " + " | ".join(labels.values()) + " |")
    print("|---:|" + "---:|" * len(labels))
    for n, ms in per_db.items():
        print(f"| {n:,} | " + " | ".join(f"{ms[label]:,.1f}" for label in labels.values())
              + " |")
    return rows


if __name__ == "__main__":
    main()
