"""Crashes: SIGKILL at a random moment during ``dbkit migrate``, ``dbkit seed`` and ``dbkit reset``;
and the server itself going down (``pg_ctl stop -m immediate``) under a big seed.

Moments come from a seeded ``random.Random`` (reproducible), uniform over the time an
uninterrupted run of the same command takes on this machine (measured first), so kills land
before connecting, inside migrations/COPY, during the constraint rebuild, and after the commit.
After each kill the database must be at a consistent version — every recorded migration fully
applied, no transactional migration half-applied, seed data all or nothing with every
constraint back, the old database or the whole new one after a reset — and the next run must
complete. 2 rounds each by default, 20 with
``--long-faults``.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import LiteralString

import psycopg
import pytest
from cluster import fast_tmp, unique_name
from helpers import clean_env
from psycopg import sql

from dbkit.server import LocalServer
from dbkit.urls import DbURL

pytestmark = pytest.mark.faults

ROWS = 30_000
TABLES = [f"t_{n:02d}" for n in range(2, 12) if n != 7]


def _migrations() -> dict[str, str]:
    """Eleven migrations: marks, ten data tables of ROWS rows each, an ALTER + backfill of an
    earlier table, and one non-transactional, re-runnable CREATE INDEX CONCURRENTLY.
    (Text of migration files from fixed names and numbers, not queries run by the test.)"""
    out = {"0001_marks": "CREATE TABLE marks (id text NOT NULL);\n"
                         "INSERT INTO marks VALUES ('0001_marks');\n"}
    for n in range(2, 12):
        mid = f"{n:04d}_step"
        if n == 7:
            out[mid] = ("-- transactional: false\n"  # noqa: S608
                        "CREATE INDEX CONCURRENTLY IF NOT EXISTS t_03_v ON t_03 (v);\n"
                        f"INSERT INTO marks SELECT '{mid}' WHERE NOT EXISTS"
                        f" (SELECT 1 FROM marks WHERE id = '{mid}');\n")
            continue
        out[mid] = (f"CREATE TABLE t_{n:02d} (id int PRIMARY KEY, v text NOT NULL);\n"  # noqa: S608
                    f"INSERT INTO t_{n:02d} SELECT g, md5(g::text)"
                    f" FROM generate_series(1, {ROWS}) g;\n"
                    f"INSERT INTO marks VALUES ('{mid}');\n")
    out["0012_backfill"] = ("ALTER TABLE t_02 ADD COLUMN w int;\nUPDATE t_02 SET w = id;\n"
                            "ALTER TABLE t_02 ALTER COLUMN w SET NOT NULL;\n"
                            "INSERT INTO marks VALUES ('0012_backfill');\n")
    return out


MIGRATIONS = _migrations()
IDS = sorted(MIGRATIONS)
NON_TRANSACTIONAL = {"0007_step"}


def _env(app, url) -> dict[str, str]:
    return clean_env(**{k: v for k, v in app.env(DATABASE_URL=url.render(reveal=True)).items()
                        if v is not None})


def _fresh_database(app, admin: psycopg.Connection, prefix: str) -> str:
    name = unique_name(prefix)
    app.extra_dbs.append(name)
    admin.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name),
                                                                 sql.Identifier(app.role)))
    return name


def _timed_run(args: list[str], cwd: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "dbkit", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return time.perf_counter() - started


def _kill_after(args: list[str], cwd: Path, env: dict[str, str], delay: float) -> int:
    proc = subprocess.Popen([sys.executable, "-m", "dbkit", *args], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert "Traceback" not in err, err
    return proc.returncode  # -9, or 0 when the run finished before the kill


def _exists(conn: psycopg.Connection, name: str) -> bool:
    return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()[0]


# -- migrate --------------------------------------------------------------------------------
@pytest.fixture
def crash_migrations(tmp_path: Path) -> Path:
    d = tmp_path / "crash-migrations"
    d.mkdir()
    for mid, text in MIGRATIONS.items():
        (d / f"{mid}.sql").write_text(text)
    return d


def check_migrations_consistent(conn: psycopg.Connection) -> list[str]:
    """Assert the database is at a consistent version; return the applied ids."""
    applied: list[str] = []
    if _exists(conn, "_yoyo_migration"):
        applied = [r[0] for r in conn.execute(
            "SELECT migration_id FROM _yoyo_migration ORDER BY migration_id")]
    assert applied == IDS[:len(applied)], f"not a prefix of the order: {applied}"
    if _exists(conn, "_dbkit_checksum"):
        assert sorted(r[0] for r in conn.execute("SELECT migration_id FROM _dbkit_checksum")
                      ) == applied
    if _exists(conn, "_dbkit_history"):
        rows = conn.execute("SELECT migration_id, outcome FROM _dbkit_history").fetchall()
        assert {o for _, o in rows} <= {"ok", "running", "interrupted"}, rows
        assert sorted(m for m, o in rows if o == "ok") == applied
    marks = Counter(r[0] for r in conn.execute("SELECT id FROM marks")) \
        if _exists(conn, "marks") else Counter()
    for mid in IDS:
        done = mid in applied
        if mid in NON_TRANSACTIONAL:
            # documented: its statements may have run without the record; never recorded early
            if done:
                assert marks[mid] == 1
                assert conn.execute("SELECT indisvalid FROM pg_index WHERE indexrelid ="
                                    " 't_03_v'::regclass").fetchone() == (True,)
            continue
        assert marks[mid] == (1 if done else 0), (mid, applied, marks)
        n = int(mid[:4])
        if mid == "0012_backfill":
            has_w = conn.execute("SELECT count(*) FROM pg_attribute WHERE attrelid ="
                                 " to_regclass('t_02') AND attname = 'w'").fetchone()[0] == 1
            assert has_w == done, (mid, applied)
            if done:
                assert conn.execute("SELECT count(*) FROM t_02 WHERE w = id").fetchone()[0] == ROWS
        elif n >= 2:
            table = f"t_{n:02d}"
            assert _exists(conn, table) == done, (table, applied)
            if done:
                assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
                    sql.Identifier(table))).fetchone()[0] == ROWS
    return applied


def test_sigkill_during_migrate_leaves_a_consistent_version(app, admin_conn, crash_migrations,
                                                            fault_scale):
    assert app.cli("create").code == 0
    rounds = 2 * fault_scale
    rng = random.Random(4711)
    args = ["migrate", "--migrations", str(crash_migrations)]
    scratch = app.url.with_(dbname=_fresh_database(app, admin_conn, "crashref"))
    full = _timed_run(args, app.cwd, _env(app, scratch))
    landed: Counter[int] = Counter()
    invalid_index_recoveries = 0
    for rnd in range(rounds):
        url = app.url.with_(dbname=_fresh_database(app, admin_conn, "crash"))
        delay = rng.uniform(0, full * 1.05)
        _kill_after(args, app.cwd, _env(app, url), delay)
        with psycopg.connect(autocommit=True, **url.connect_kwargs()) as conn:
            landed[len(check_migrations_consistent(conn))] += 1
        r = app.cli(*args, DATABASE_URL=url.render(reveal=True))
        if r.code == 8 and "INVALID" in r.err:
            # documented: a killed CREATE INDEX CONCURRENTLY leaves an INVALID index; the error
            # names the exact statement to run, and then the next run completes
            invalid_index_recoveries += 1
            drop = r.err.split("(DROP INDEX CONCURRENTLY ", 1)[1].split(";", 1)[0]
            with psycopg.connect(autocommit=True, **url.connect_kwargs()) as conn:
                conn.execute(sql.SQL("DROP INDEX CONCURRENTLY {}").format(sql.Identifier(drop)))
            r = app.cli(*args, DATABASE_URL=url.render(reveal=True))
        assert r.code == 0, (rnd, delay, r.output)
        assert "Traceback" not in r.output
        with psycopg.connect(autocommit=True, **url.connect_kwargs()) as conn:
            assert check_migrations_consistent(conn) == IDS
            assert conn.execute("SELECT count(*) FROM _dbkit_history WHERE outcome = 'running'"
                                ).fetchone()[0] == 0  # killed runs are marked interrupted
            assert conn.execute("SELECT count(*) FROM yoyo_lock").fetchone()[0] == 0
    print(f"migrate crashes: {rounds} rounds (full run {full:.2f}s); migrations applied when "
          f"killed: {dict(sorted(landed.items()))}; invalid-index recoveries: "
          f"{invalid_index_recoveries}; half-applied: 0")


# -- seed -----------------------------------------------------------------------------------
SEED_ARGS = ["seed", "--users", "2000", "--posts", "60000", "--votes", "60000", "--seed", "3"]
COUNTS = (2000, 60000, 60000)


def _catalog(conn: psycopg.Connection) -> list[tuple]:
    """Every constraint and index of the three tables, with definition and validity."""
    return conn.execute(
        "SELECT c.conrelid::regclass::text, c.conname, c.contype, pg_get_constraintdef(c.oid),"
        " c.convalidated FROM pg_constraint c WHERE c.conrelid = ANY('{users,posts,votes}'"
        "::regclass[]) UNION ALL SELECT i.indrelid::regclass::text, x.relname, 'i',"
        " pg_get_indexdef(i.indexrelid), i.indisvalid FROM pg_index i JOIN pg_class x ON"
        " x.oid = i.indexrelid WHERE i.indrelid = ANY('{users,posts,votes}'::regclass[])"
        " ORDER BY 1, 2, 3").fetchall()


def _fingerprint(conn: psycopg.Connection) -> tuple:
    return conn.execute(
        "SELECT (SELECT md5(string_agg(md5(u::text), '' ORDER BY id)) FROM users u),"
        " (SELECT md5(string_agg(md5(p::text), '' ORDER BY id)) FROM posts p),"
        " (SELECT md5(string_agg(md5(v::text), '' ORDER BY post_id, user_id)) FROM votes v)"
    ).fetchone()


def _counts(conn: psycopg.Connection) -> tuple[int, int, int]:
    return conn.execute("SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM posts),"
                        " (SELECT count(*) FROM votes)").fetchone()


def _sequences_ahead(conn: psycopg.Connection) -> bool:
    """The identity sequences never lag the highest id (the app's next insert can't collide)."""
    return conn.execute(
        "SELECT bool_and(coalesce(pg_sequence_last_value(pg_get_serial_sequence(t, 'id')"
        "::regclass), 0) >= m) FROM (VALUES ('users', (SELECT coalesce(max(id), 0) FROM users)),"
        " ('posts', (SELECT coalesce(max(id), 0) FROM posts))) x(t, m)").fetchone()[0]


def _wait_for_backends_to_end(admin: psycopg.Connection, db: str, timeout: float = 30) -> float:
    """The killed client's server session ends once PostgreSQL notices (at most one statement)."""
    started = time.monotonic()
    while admin.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <>"
                        " pg_backend_pid() AND backend_type = 'client backend'",
                        (db,)).fetchone()[0]:
        assert time.monotonic() - started < timeout, "the killed seed's session never ended"
        time.sleep(0.02)
    return time.monotonic() - started


def test_sigkill_during_seed_leaves_all_or_nothing(app, admin_conn, fault_scale):
    assert app.cli("create").code == 0
    assert app.cli("migrate").code == 0
    rounds = 2 * fault_scale
    rng = random.Random(1234)
    ref = app.url.with_(dbname=unique_name("seedref"))
    app.extra_dbs.append(ref.dbname)
    admin_conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {} OWNER {}").format(
        sql.Identifier(ref.dbname), sql.Identifier(app.db), sql.Identifier(app.role)))
    full = _timed_run(SEED_ARGS, app.cwd, _env(app, ref))
    with psycopg.connect(**ref.connect_kwargs()) as conn:
        expected = _fingerprint(conn)
        assert _counts(conn) == COUNTS
    with app.connect() as conn:
        catalog = _catalog(conn)
    assert len(catalog) >= 8  # keys, foreign keys and indexes: something to lose
    outcomes: Counter[str] = Counter()
    slowest_cleanup = 0.0
    for rnd in range(rounds):
        delay = rng.uniform(0, full * 1.05)
        code = _kill_after(SEED_ARGS, app.cwd, _env(app, app.url), delay)
        slowest_cleanup = max(slowest_cleanup, _wait_for_backends_to_end(admin_conn, app.db))
        with app.connect() as conn:
            counts = _counts(conn)
            assert counts in ((0, 0, 0), COUNTS), (rnd, delay, counts)
            assert _catalog(conn) == catalog, (rnd, delay)
            assert _sequences_ahead(conn)
        outcomes["finished before the kill" if code == 0 else
                 "committed" if counts == COUNTS else "rolled back"] += 1
        r = app.cli(*SEED_ARGS, "--json")
        assert r.code == 0, (rnd, delay, r.output)
        assert json.loads(r.out)["inserted"] == (
            dict.fromkeys(("users", "posts", "votes"), 0) if counts == COUNTS else
            dict(zip(("users", "posts", "votes"), COUNTS, strict=True)))
        with app.connect() as conn:
            assert _counts(conn) == COUNTS and _fingerprint(conn) == expected
            assert _catalog(conn) == catalog
            assert _sequences_ahead(conn)
            conn.execute("TRUNCATE users, posts, votes RESTART IDENTITY CASCADE")
            conn.commit()
    print(f"seed crashes: {rounds} rounds (full run {full:.2f}s); {dict(outcomes)}; slowest "
          f"server-side cleanup after the kill {slowest_cleanup:.2f}s; partial loads: 0")


# -- reset ----------------------------------------------------------------------------------
def test_sigkill_during_reset_leaves_the_old_database_or_the_new_one(app, admin_conn, fault_scale):
    """The name always holds a whole database: the old one untouched, or the new one migrated
    and seeded; never none, never a half-built one. The next reset collects any leftovers."""
    from dbkit.setup import side_name

    assert app.cli("setup").code == 0
    rounds = 2 * fault_scale
    rng = random.Random(2024)
    args = ["reset", "--yes"]
    full = _timed_run(args, app.cwd, _env(app, app.url))
    outcomes: Counter[str] = Counter()
    for rnd in range(rounds):
        with app.connect() as conn:
            conn.execute("CREATE TABLE keep (v text)")
            conn.execute("INSERT INTO keep VALUES ('old')")
            old_oid = conn.execute("SELECT oid FROM pg_database"
                                   " WHERE datname = current_database()").fetchone()[0]
        delay = rng.uniform(0, full * 1.05)
        _kill_after(args, app.cwd, _env(app, app.url), delay)
        with app.connect() as conn:
            oid = conn.execute("SELECT oid FROM pg_database"
                               " WHERE datname = current_database()").fetchone()[0]
            if oid == old_oid:
                assert conn.execute("SELECT v FROM keep").fetchall() == [("old",)], (rnd, delay)
                outcomes["old kept"] += 1
            else:
                assert not _exists(conn, "keep"), (rnd, delay)
                assert conn.execute("SELECT count(*) FROM posts").fetchone()[0] > 0
                outcomes["new in place"] += 1
        assert app.cli("status", "--check").code == 0, (rnd, delay)  # fully migrated either way
        r = app.cli(*args)
        assert r.code == 0, (rnd, delay, r.output)
        assert admin_conn.execute(
            "SELECT count(*) FROM pg_database WHERE datname IN (%s, %s)",
            (side_name(app.db, "reset"), side_name(app.db, "retired"))).fetchone()[0] == 0
    print(f"reset crashes: {rounds} rounds (full run {full:.2f}s); {dict(outcomes)}; "
          "name without a whole database: 0")


# -- the server going down mid-seed ---------------------------------------------------------
# Per phase: a million rows to stop in the middle of; fewer to reach the later phases sooner
# (still enough for the load to put keys aside: dbkit.seed.bulk.DEFER_MIN_ROWS).
BIG_SEED = {"copy": ["seed", "--users", "10000", "--posts", "1000000", "--seed", "5", "--append"],
            "rebuild": ["seed", "--users", "10000", "--posts", "200000", "--seed", "5",
                        "--append"],
            "commit": ["seed", "--users", "10000", "--posts", "60000", "--seed", "5", "--append"]}


@pytest.fixture
def private_server() -> Iterator[LocalServer]:
    """A cluster of this test's own, to stop under a running seed (the shared test server is
    never stopped): tests/cluster.py's throwaway cluster, kept as a LocalServer to stop and
    start it."""
    base = Path(tempfile.mkdtemp(prefix="dbkit-crash-", dir=fast_tmp()))
    os.chmod(base, 0o711)  # as root the server runs as 'postgres', which must reach its data
    server = LocalServer(base / "cluster", fast=True)
    try:
        server.start()
        yield server
    finally:
        server.destroy()
        with contextlib.suppress(OSError):
            base.rmdir()


def _in_phase(watch: psycopg.Connection, phase: str) -> bool:
    """Whether the seed's session is in ``phase``, as the server's views show it (``watch``: an
    admin's session in the seeded database)."""
    query: LiteralString
    if phase == "copy":  # well into the posts
        query = ("SELECT count(*) FROM pg_stat_progress_copy WHERE datname = current_database()"
                 " AND relid = 'posts'::regclass AND tuples_processed >= 200000")
    elif phase == "rebuild":  # the keys put aside for the load: after COPY, before COMMIT
        query = ("SELECT count(*) FROM pg_stat_progress_create_index"
                 " WHERE datname = current_database()")
    else:  # COMMIT, held up by SLOW_COMMIT's trigger
        query = ("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                 " AND state = 'active' AND query = 'COMMIT'")
    return bool(watch.execute(query).fetchone()[0])


# A deferred trigger that keeps the seed's COMMIT busy (once) before anything is committed.
SLOW_COMMIT = """
CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF current_setting('test.slept', true) IS DISTINCT FROM 'yes' THEN
    PERFORM set_config('test.slept', 'yes', true);
    PERFORM pg_sleep(30);
  END IF;
  RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON users DEFERRABLE INITIALLY DEFERRED
  FOR EACH ROW EXECUTE FUNCTION slow_commit();
"""


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["copy", "rebuild", "commit"])
def test_server_stopped_mid_seed_is_one_line_exit_4_and_keeps_nothing(private_server, tmp_path,
                                                                      phase):
    """``pg_ctl stop -m immediate`` (a crash, to the server's data) while ``dbkit seed`` streams
    a million rows, rebuilds the keys it put aside, or commits: one line, exit 4 (the connection
    was lost; nothing was loaded, or, lost during COMMIT, that it may or may not have been
    kept), and once the server is back the tables hold what they held before, every constraint
    in place."""
    admin = private_server.admin_url()
    role, db, password = unique_name("role"), unique_name("db"), unique_name("pw")
    with psycopg.connect(autocommit=True, **admin.connect_kwargs()) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
            sql.Identifier(role), sql.Literal(password)))
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(db),
                                                                   sql.Identifier(role)))
    url = DbURL(user=role, password=password, host=admin.host, port=admin.port, dbname=db)
    env = clean_env(DATABASE_URL=url.render(reveal=True), DBKIT_ADMIN_URL=admin.render(reveal=True))
    for args in (["migrate"], ["seed", "--users", "20", "--posts", "30", "--votes", "40"]):
        done = subprocess.run([sys.executable, "-m", "dbkit", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
    if phase == "commit":
        with psycopg.connect(autocommit=True, **admin.connect_kwargs(dbname=db)) as conn:
            conn.execute(SLOW_COMMIT)
    with psycopg.connect(**url.connect_kwargs()) as conn:
        before, catalog = _counts(conn), _catalog(conn)
    assert before == (20, 30, 40)

    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "dbkit", *BIG_SEED[phase]], cwd=tmp_path,
                            env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        with psycopg.connect(autocommit=True, **admin.connect_kwargs(dbname=db)) as watch:
            while not _in_phase(watch, phase):
                assert proc.poll() is None, f"the seed ended (exit {proc.returncode}) first"
                assert time.monotonic() - started < 60, f"no {phase} within 60s"
                time.sleep(0.01)
        stopped_at = time.monotonic() - started
        private_server.stop("immediate")
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 4, (proc.returncode, err)
    assert err.count("\n") == 1 and "Traceback" not in err and not out, err
    assert err.startswith(f"dbkit: error: cannot seed {db}: lost the connection to the server")
    if phase == "commit":
        assert "during COMMIT, so the seed may or may not have been kept" in err
    else:
        assert "nothing was loaded" in err
    assert "run the seed again" in err
    private_server.start()
    with psycopg.connect(**url.connect_kwargs()) as conn:
        assert _counts(conn) == before  # 0 new rows: the seed was all or nothing
        assert _catalog(conn) == catalog
        assert _sequences_ahead(conn)
    print(f"server stopped {stopped_at:.2f}s into the seed ({phase}): exit 4, one line, "
          "0 new rows after restart")
