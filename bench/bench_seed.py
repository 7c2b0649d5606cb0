"""Seeding 1M posts: dbkit's synthetic seed vs the ways one would load the same rows by hand.

Every case loads the same 1,000 users and 1,000,000 posts (generated once by dbkit's generator,
seed 7) into a fresh clone of a migrated posts database (foreign keys and indexes in place),
and is timed from connect to commit. Runs are interleaved; medians; rows/s; speed ratios:

- ``dbkit seed``: ``dbkit.seed.commands.seed_synthetic`` in-process (schema and migration checks,
  generation, COPY, constraint rebuild, sequences), as ``dbkit seed --users 1000 --posts 1000000``;
- ``dbkit seed, constraints kept``: the same with ``defer=False`` (COPY row by row through
  the foreign-key triggers, like every other case here);
- ``raw COPY``: psycopg ``cursor.copy()`` + ``write_row`` of the rows held in memory as
  Python values (int, str, bool, datetime), generation not timed;
- ``psql \\copy``: one ``psql -1`` process copying users.csv and posts.csv written beforehand;
- ``executemany``: psycopg ``executemany`` of INSERTs (pipelined by psycopg 3).

Targets for dbkit seed's speed ratio (MISSED is printed below one): >= 0.9x raw COPY,
>= 1x psql \\copy, >= 4x executemany.

Then, unless ``--no-rss``: ``python -m dbkit seed`` of 10M rows (100k users, 5M posts, 4.9M
votes) as a subprocess, reporting its peak RSS (target < 150 MB).

Server: a throwaway fsync-off cluster (``throwaway_cluster`` of tests/cluster.py) unless
``--url URL`` or DBKIT_TEST_ADMIN_URL names one. ``python -m bench seed`` or
``python -m bench.bench_seed [--url URL] [--runs N] [--posts N] [--no-rss]``.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.common import cluster, interleaved, median, save

ROLE, PASSWORD = "bench_seed", "bench-seed-pw"
TEMPLATE = "bench_seed_tpl"
USERS = 1000
COLS = {"users": "id, email, password_hash, created_at",
        "posts": "id, title, content, published, created_at, owner_id"}
TARGETS = {"raw COPY": 0.9, "psql \\copy": 1.0, "executemany": 4.0}


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(prog="bench_seed")
    ap.add_argument("--url", default=os.environ.get("DBKIT_TEST_ADMIN_URL"))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--posts", type=int, default=1_000_000)
    ap.add_argument("--no-rss", action="store_true")
    args = ap.parse_args(argv or [])
    with cluster(args.url) as admin, tempfile.TemporaryDirectory(prefix="bench-seed-") as tmp:
        rows = _run(admin, Path(tmp), args)
    save("seed", rows)
    return rows


def _run(admin: Any, tmp: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    import psycopg
    from psycopg import sql

    from dbkit.migrate import commands as migrate
    from dbkit.seed import commands as seed
    from dbkit.seed.synthetic import Generator, Plan
    from dbkit.server import find_pg_bin
    from dbkit.settings import Settings, Target

    posts = args.posts
    with psycopg.connect(autocommit=True, **admin.connect_kwargs()) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(TEMPLATE)))
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [ROLE]).fetchone():
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(ROLE), sql.Literal(PASSWORD)))
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
            sql.Identifier(TEMPLATE), sql.Identifier(ROLE)))
    owner = admin.with_(user=ROLE, password=PASSWORD)
    settings = Settings.load(environ={}, cwd=tmp)
    migrate.migrate(Target.of(owner.with_(dbname=TEMPLATE), settings))

    print(f"\n## Seeding {USERS:,} users + {posts:,} posts (same rows in every case)\n", flush=True)
    started = time.perf_counter()
    gen = Generator(Plan(USERS, posts, 0, seed=7))
    users_rows = [_typed("users", ln) for text, _ in gen.stream("users") for ln in text.splitlines()]
    posts_rows = [_typed("posts", ln) for text, _ in gen.stream("posts") for ln in text.splitlines()]
    for name, data in (("users", users_rows), ("posts", posts_rows)):
        with open(tmp / f"{name}.csv", "w", newline="") as f:
            csv.writer(f).writerows(_csv_row(r) for r in data)
    print(f"(rows prepared in {time.perf_counter() - started:.1f} s, not timed)", flush=True)

    psql = str(find_pg_bin() / "psql")
    env = {**os.environ, "PGPASSWORD": PASSWORD}
    dbs = {name: f"bench_seed_{i}" for i, name in enumerate(
        ("dbkit seed", "dbkit seed, constraints kept", "raw COPY", "psql \\copy", "executemany"))}
    total = USERS + posts

    def url(name: str) -> Any:
        return owner.with_(dbname=dbs[name])

    def fresh(name: str) -> None:
        with psycopg.connect(autocommit=True, **admin.connect_kwargs()) as conn:
            ident = sql.Identifier(dbs[name])
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
            conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {} OWNER {}").format(
                ident, sql.Identifier(TEMPLATE), sql.Identifier(ROLE)))

    def dbkit_seed(defer: bool, name: str) -> None:
        seed.seed_synthetic(Target.of(url(name), settings), USERS, posts, 0, 7, defer=defer)

    def raw_copy() -> None:
        with psycopg.connect(**url("raw COPY").connect_kwargs()) as conn, conn.cursor() as cur:
            for table, data in (("users", users_rows), ("posts", posts_rows)):
                with cur.copy(sql.SQL("COPY {} ({}) FROM STDIN").format(
                        sql.Identifier(table), sql.SQL(COLS[table]))) as copy:
                    for row in data:
                        copy.write_row(row)

    def psql_copy() -> None:
        u = url("psql \\copy")
        subprocess.run([psql, "-q", "-X", "-1", "-v", "ON_ERROR_STOP=1",
                        "-h", str(u.host), "-p", str(u.port), "-U", ROLE, "-d", u.dbname,
                        "-c", f"\\copy users ({COLS['users']}) FROM '{tmp / 'users.csv'}' CSV",
                        "-c", f"\\copy posts ({COLS['posts']}) FROM '{tmp / 'posts.csv'}' CSV"],
                       env=env, check=True, capture_output=True)

    def executemany() -> None:
        with psycopg.connect(**url("executemany").connect_kwargs()) as conn, conn.cursor() as cur:
            cur.executemany("INSERT INTO users (id, email, password_hash, created_at)"
                            " VALUES (%s, %s, %s, %s)", users_rows)
            cur.executemany("INSERT INTO posts (id, title, content, published, created_at, owner_id)"
                            " VALUES (%s, %s, %s, %s, %s, %s)", posts_rows)

    cases = {
        "dbkit seed": lambda: dbkit_seed(True, "dbkit seed"),
        "dbkit seed, constraints kept": lambda: dbkit_seed(False, "dbkit seed, constraints kept"),
        "raw COPY": raw_copy,
        "psql \\copy": psql_copy,
        "executemany": executemany,
    }
    times = interleaved(cases, runs=args.runs, warmup=0, setup=fresh)
    check = _check(admin, dbs)
    rate = {name: total / median(t) for name, t in times.items()}
    print("| case | median s | rows/s | dbkit seed speed ratio | target |")
    print("|---|---:|---:|---:|---|")
    rows: list[dict[str, Any]] = []
    for name, t in times.items():
        ratio = rate["dbkit seed"] / rate[name]
        target = TARGETS.get(name)
        verdict = "" if target is None else f">= {target}x: {'ok' if ratio >= target else 'MISSED'}"
        print(f"| {name} | {median(t):.2f} | {rate[name]:,.0f} | {ratio:.2f}x | {verdict} |")
        rows.append({"what": name, "median_s": round(median(t), 3), "rows_per_s": round(rate[name]),
                     "dbkit_speed_ratio": round(ratio, 3), "target": target, "runs": t})
    print(f"\nall cases hold identical data: {check}")
    with psycopg.connect(autocommit=True, **admin.connect_kwargs()) as conn:
        for db in dbs.values():
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db)))
    if not args.no_rss:
        rows.append(_rss(admin, owner, tmp))
    with psycopg.connect(autocommit=True, **admin.connect_kwargs()) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(TEMPLATE)))
    return rows


def _typed(table: str, line: str) -> tuple[Any, ...]:
    """A COPY text line as the Python values a hand-written loader would hold."""
    v = line.split("\t")
    if table == "users":
        return int(v[0]), v[1], v[2], datetime.fromisoformat(v[3])
    return int(v[0]), v[1], v[2], v[3] == "t", datetime.fromisoformat(v[4]), int(v[5])


def _csv_row(row: tuple[Any, ...]) -> list[Any]:
    return [("t" if x else "f") if isinstance(x, bool) else
            x.isoformat() if isinstance(x, datetime) else x for x in row]


def _check(admin: Any, dbs: dict[str, str]) -> bool:
    """Same md5 over every row in every case's database (they must load the same data)."""
    import psycopg

    sums = set()
    for db in dbs.values():
        with psycopg.connect(**admin.connect_kwargs(db)) as conn:
            sums.add(conn.execute(
                "SELECT (SELECT md5(string_agg(md5(u::text), '' ORDER BY id)) FROM users u),"
                " (SELECT md5(string_agg(md5(p::text), '' ORDER BY id)) FROM posts p)").fetchone())
    return len(sums) == 1


_RSS = """
import resource, subprocess, sys, time
t = time.perf_counter()
subprocess.run([sys.executable, "-m", "dbkit", *sys.argv[1:]], check=True)
print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def _rss(admin: Any, owner: Any, tmp: Path) -> dict[str, Any]:
    import psycopg
    from psycopg import sql

    db = "bench_seed_rss"
    with psycopg.connect(autocommit=True, **admin.connect_kwargs()) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db)))
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {} OWNER {}").format(
            sql.Identifier(db), sql.Identifier(TEMPLATE), sql.Identifier(ROLE)))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DBKIT_", "PG"))}
    env["DATABASE_URL"] = owner.with_(dbname=db).render(reveal=True)
    counts = {"users": 100_000, "posts": 5_000_000, "votes": 4_900_000}
    args = ["seed", *(x for t, n in counts.items() for x in (f"--{t}", str(n))), "--seed", "1"]
    print(f"\n## Memory: dbkit {' '.join(args)} (10M rows, subprocess)\n", flush=True)
    out = subprocess.run([sys.executable, "-c", _RSS, *args], cwd=tmp, env=env, check=True,
                         capture_output=True, text=True).stdout.strip().splitlines()
    seconds, kib = out[-1].split()
    mib = int(kib) / 1024
    rows = sum(counts.values())
    print(f"peak RSS {mib:.0f} MiB (target < 150 MB), {rows:,} rows in {float(seconds):.1f} s "
          f"({rows / float(seconds):,.0f} rows/s, whole process)")
    with psycopg.connect(autocommit=True, **admin.connect_kwargs()) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db)))
    return {"what": "10M rows peak RSS", "peak_rss_mib": round(mib, 1), "rows": rows,
            "seconds": round(float(seconds), 2), "target_mib": 150}


if __name__ == "__main__":
    main(sys.argv[1:])
