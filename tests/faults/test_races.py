"""Races: rounds of eight concurrent ``dbkit migrate`` processes on a fresh database.

Every migration also writes a row into ``marks``, so a double apply would show in the data
itself, not only in the bookkeeping. Double applies are counted in four places: yoyo's
``_yoyo_migration`` and ``_yoyo_log``, dbkit's ``_dbkit_history``, and ``marks``. The short
version (default run) does 2 rounds, ``--long-faults`` 20.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from cluster import unique_name
from helpers import clean_env
from psycopg import sql

pytestmark = pytest.mark.faults

PROCESSES = 8

# Transactional ones of different sizes, a non-transactional CREATE INDEX CONCURRENTLY (its
# mark is written in autocommit: a second run of the file would add a second mark), and one
# depending on an earlier id.
MIGRATIONS = {
    "0001_marks": "CREATE TABLE marks (id text NOT NULL, pid int NOT NULL DEFAULT"
                  " pg_backend_pid());\nINSERT INTO marks (id) VALUES ('0001_marks');\n",
    "0002_items": "CREATE TABLE items (id bigint PRIMARY KEY, v text NOT NULL);\n"
                  "INSERT INTO items SELECT g, md5(g::text) FROM generate_series(1, 5000) g;\n"
                  "INSERT INTO marks (id) VALUES ('0002_items');\n",
    "0003_tags": "CREATE TABLE tags (id int PRIMARY KEY, name text NOT NULL);\n"
                 "INSERT INTO marks (id) VALUES ('0003_tags');\n",
    "0004_index_items": "-- transactional: false\n"
                        "CREATE INDEX CONCURRENTLY IF NOT EXISTS items_v ON items (v);\n"
                        "INSERT INTO marks (id) VALUES ('0004_index_items');\n",
    "0005_item_tags": "-- depends: 0003_tags\n"
                      "CREATE TABLE item_tags (item_id bigint NOT NULL REFERENCES items,"
                      " tag_id int NOT NULL REFERENCES tags, PRIMARY KEY (item_id, tag_id));\n"
                      "INSERT INTO marks (id) VALUES ('0005_item_tags');\n",
    "0006_slowish": "SELECT pg_sleep(0.05);\nINSERT INTO marks (id) VALUES ('0006_slowish');\n",
}
IDS = sorted(MIGRATIONS)


@pytest.fixture
def migrations_dir(tmp_path: Path) -> Path:
    d = tmp_path / "race-migrations"
    d.mkdir()
    for mid, text in MIGRATIONS.items():
        (d / f"{mid}.sql").write_text(text)
        (d / f"{mid}.rollback.sql").write_text("SELECT 1;\n")
    return d


def _fresh_database(app, admin: psycopg.Connection) -> str:
    name = unique_name("race")
    app.extra_dbs.append(name)
    admin.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name),
                                                                 sql.Identifier(app.role)))
    return name


def _counts(conn: psycopg.Connection, query: str) -> dict[str, int]:
    return {k: n for k, n in conn.execute(query).fetchall()}


def test_concurrent_migrates_never_apply_twice(app, admin_conn, migrations_dir, fault_scale):
    assert app.cli("create").code == 0
    rounds = 2 * fault_scale
    rng = random.Random(20240801)
    double_applies = 0
    lock_waits_given_up = 0
    for rnd in range(rounds):
        db = _fresh_database(app, admin_conn)
        url = app.url.with_(dbname=db)
        env = clean_env(**{k: v for k, v in app.env(DATABASE_URL=url.render(reveal=True)).items()
                           if v is not None})
        # a long lock timeout: every process must end with exit 0, having waited its turn
        env["DBKIT_LOCK_TIMEOUT"] = rng.choice(["20s", "30s"])
        procs = []
        for _ in range(PROCESSES):
            time.sleep(rng.uniform(0, 0.05))  # jitter: different interleavings per round
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "dbkit", "migrate", "--json", "--migrations",
                 str(migrations_dir)], cwd=app.cwd, env=env, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True))
        outputs = [p.communicate(timeout=120) for p in procs]
        codes = [p.returncode for p in procs]
        for code, (_out, err) in zip(codes, outputs, strict=True):
            assert "Traceback" not in err, err
            assert code == 0, (rnd, code, err)
        lock_waits_given_up += codes.count(9)
        reported = [m["id"] for out, _ in outputs for m in json.loads(out)["applied"]]
        with psycopg.connect(**url.connect_kwargs()) as conn:
            sources = {
                "reported by the processes": {i: reported.count(i) for i in set(reported)},
                "_yoyo_migration": _counts(conn, "SELECT migration_id, count(*) FROM"
                                                 " _yoyo_migration GROUP BY 1"),
                "_yoyo_log": _counts(conn, "SELECT migration_id, count(*) FROM _yoyo_log"
                                           " WHERE operation = 'apply' GROUP BY 1"),
                "_dbkit_history": _counts(conn, "SELECT migration_id, count(*) FROM"
                                                " _dbkit_history WHERE outcome = 'ok' GROUP BY 1"),
                "marks": _counts(conn, "SELECT id, count(*) FROM marks GROUP BY 1"),
            }
            not_ok = conn.execute("SELECT migration_id, outcome FROM _dbkit_history"
                                  " WHERE outcome <> 'ok'").fetchall()
            invalid = conn.execute("SELECT count(*) FROM pg_index WHERE NOT indisvalid"
                                   ).fetchone()[0]
            stale_lock = conn.execute("SELECT count(*) FROM yoyo_lock").fetchone()[0]
        for where, found in sources.items():
            double_applies += sum(n - 1 for n in found.values() if n > 1)
            assert found == dict.fromkeys(IDS, 1), (rnd, where, found)
        assert not_ok == [] and invalid == 0 and stale_lock == 0, (not_ok, invalid, stale_lock)
        r = app.cli("status", "--check", "--migrations", str(migrations_dir),
                    DATABASE_URL=url.render(reveal=True))
        assert r.code == 0, r.output
    print(f"races: {rounds} rounds x {PROCESSES} concurrent dbkit migrate; "
          f"double applies: {double_applies}; lock waits given up: {lock_waits_given_up}")
    assert double_applies == 0


def test_concurrent_migrates_with_short_lock_timeout_wait_or_give_up_cleanly(
        app, admin_conn, migrations_dir, fault_scale):
    """With a lock timeout shorter than the run, waiters may give up: exit 9, one line, and
    nothing of theirs applied; the winners' work is complete and recorded once."""
    assert app.cli("create").code == 0
    rng = random.Random(7)
    slow = migrations_dir / "0007_slow.sql"
    slow.write_text("SELECT pg_sleep(0.6);\nINSERT INTO marks (id) VALUES ('0007_slow');\n")
    ids = [*IDS, "0007_slow"]
    outcomes: dict[int, int] = {}
    for rnd in range(max(1, fault_scale // 2)):
        db = _fresh_database(app, admin_conn)
        url = app.url.with_(dbname=db)
        env = clean_env(**{k: v for k, v in app.env(DATABASE_URL=url.render(reveal=True)).items()
                           if v is not None})
        procs = []
        for _ in range(PROCESSES):
            time.sleep(rng.uniform(0, 0.03))
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "dbkit", "migrate", "--lock-timeout", "200ms",
                 "--migrations", str(migrations_dir)], cwd=app.cwd, env=env,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        results = [(p.wait(timeout=120), *p.communicate()) for p in procs]
        for code, _out, err in results:
            outcomes[code] = outcomes.get(code, 0) + 1
            assert code in (0, 9), (rnd, code, err)
            assert "Traceback" not in err
            if code == 9:
                lines = [ln for ln in err.splitlines() if ln.startswith("dbkit: error:")]
                assert len(lines) == 1 and "migration lock" in lines[0], err
        assert 0 in [code for code, *_ in results]
        with psycopg.connect(**url.connect_kwargs()) as conn:
            applied = _counts(conn, "SELECT migration_id, count(*) FROM _yoyo_migration GROUP BY 1")
            marks = _counts(conn, "SELECT id, count(*) FROM marks GROUP BY 1")
        # whatever the winners applied, each exactly once, and a prefix of the order
        assert set(applied.values()) <= {1} and marks == applied, (applied, marks)
        assert sorted(applied) == ids[:len(applied)]
        r = app.cli("migrate", "--migrations", str(migrations_dir),
                    DATABASE_URL=url.render(reveal=True))
        assert r.code == 0, r.output
    print(f"races with --lock-timeout 200ms: exit codes {outcomes}")
