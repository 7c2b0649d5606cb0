"""Real processes: eight concurrent migrates, SIGKILL mid-migration, the lock and its timeout."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
from helpers import clean_env

from dbkit.migrate.files import packaged_dir
from dbkit.pg import MIGRATIONS

PACKAGED = packaged_dir()

POSTS_IDS = ["0001_create_posts", "0002_create_users", "0003_add_post_owner",
             "0004_create_votes", "0005_index_posts_owner",
             "0006_require_post_owner"]

# The middle migration sleeps only when the session asks for it (dbkit_test.sleep, set through
# the URL's options), so the run after the kill finishes at once.
SLOW = {
    "0001_marks.sql": "CREATE TABLE marks (id text NOT NULL);\nINSERT INTO marks VALUES ('0001');\n",
    "0002_slow.sql": "INSERT INTO marks VALUES ('0002');\nCREATE TABLE slow (id int);\n"
                     "SELECT pg_sleep(coalesce(current_setting('dbkit_test.sleep', true), '0')"
                     "::float);\n",
    "0003_after.sql": "INSERT INTO marks VALUES ('0003');\n",
}


def counts(app, query: str) -> dict[str, int]:
    with app.connect() as conn:
        return dict(conn.execute(query).fetchall())


# -- concurrent migrators: each migration applied once --------------------------------------
def test_eight_concurrent_migrates_apply_each_migration_once(created):
    app = created
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: app.subprocess("migrate", "--json"), range(8)))
    codes = [r.code for r in results]
    assert set(codes) <= {0, 9}, [r.err for r in results]
    assert 0 in codes
    for r in results:
        if r.code == 9:
            assert "migration lock" in r.err and "Traceback" not in r.err
    applied_by = [json.loads(r.out)["applied"] for r in results if r.code == 0]
    assert sorted(m["id"] for runs in applied_by for m in runs) == POSTS_IDS  # each once, in all
    assert counts(app, "SELECT migration_id, count(*) FROM _yoyo_migration GROUP BY 1") == \
        {i: 1 for i in POSTS_IDS}
    assert counts(app, "SELECT migration_id, count(*) FROM _yoyo_log GROUP BY 1") == \
        {i: 1 for i in POSTS_IDS}
    assert counts(app, "SELECT migration_id, count(*) FROM _dbkit_history GROUP BY 1") == \
        {i: 1 for i in POSTS_IDS}
    assert app.cli("status", "--check").code == 0


def test_waiter_gives_up_after_lock_timeout_naming_the_holder(created):
    app = created
    with app.connect() as holder:
        holder.execute("SELECT pg_advisory_xact_lock(%s::int4, %s::int4)", MIGRATIONS[:2])
        holder_pid = holder.info.backend_pid
        started = time.monotonic()
        r = app.cli("migrate", "--lock-timeout", "300ms")
        waited = time.monotonic() - started
    assert r.code == 9, r.output
    assert "another migration holds the migration lock" in r.err
    assert f"server pid {holder_pid}" in r.err and "gave up after 0.3s" in r.err
    assert waited < 5
    assert app.cli("migrate").code == 0  # the holder is gone: nothing was left behind


def test_a_yoyo_lock_row_is_reported_not_broken(created):
    app = created
    assert app.cli("migrate").code == 0
    with app.connect() as conn:
        conn.execute("INSERT INTO yoyo_lock (locked, ctime, pid) VALUES (1, now(), 4242)")
        conn.commit()
    r = app.cli("migrate", "--lock-timeout", "300ms")
    assert r.code == 9 and "process 4242" in r.err and "yoyo break-lock" in r.err
    import re

    assert re.search(r"\(since \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\)", r.err), r.err  # one format
    with app.connect() as conn:
        conn.execute("DELETE FROM yoyo_lock")
        conn.commit()
    assert app.cli("migrate").code == 0


def test_migrate_holds_off_a_concurrent_yoyo_apply(created, tmp_path):
    """While dbkit holds the lock, yoyo's lock row is taken too: yoyo waits, then finds
    nothing to do."""
    app = created
    assert app.cli("migrate", "--to", "0001_create_posts").code == 0
    d = tmp_path / "m"
    d.mkdir()
    for name in ("0001_create_posts.sql", "0002_create_users.sql"):
        (d / name).write_text((PACKAGED / name).read_text())
    (d / "0002_create_users.sql").write_text(
        (d / "0002_create_users.sql").read_text() + "\nSELECT pg_sleep(1.5);\n")
    dbkit = subprocess.Popen([sys.executable, "-m", "dbkit", "migrate", "--migrations", str(d)],
                             cwd=app.cwd, env=clean_env(**_env(app)), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    _wait_for_query(app, "pg_sleep")
    url = app.url.with_(password=None).render(scheme="postgresql+psycopg")
    yoyo = subprocess.run([str(Path(sys.executable).parent / "yoyo"), "apply", "--batch",
                           "--database", url, str(d)], capture_output=True, text=True, timeout=60,
                          env={**clean_env(), "PGPASSWORD": app.password or ""})
    out, err = dbkit.communicate(timeout=60)
    assert dbkit.returncode == 0, err
    assert yoyo.returncode == 0, yoyo.stderr
    assert counts(app, "SELECT migration_id, count(*) FROM _yoyo_migration GROUP BY 1") == \
        {"0001_create_posts": 1, "0002_create_users": 1}


# -- a migrator killed mid-migration leaves nothing half-applied ----------------------------
def test_sigkill_mid_migration_then_migrate_again(created, tmp_path):
    app = created
    d = tmp_path / "slow"
    d.mkdir()
    for name, text in SLOW.items():
        (d / name).write_text(text)
    slow_url = app.url.with_(params=(("options", "-c dbkit_test.sleep=60"),))
    proc = subprocess.Popen([sys.executable, "-m", "dbkit", "migrate", "--migrations", str(d)],
                            cwd=app.cwd, env=clean_env(**_env(app, DATABASE_URL=slow_url.render(
                                reveal=True))), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for_query(app, "pg_sleep")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    # the database is at the version before the slow migration
    r = app.cli("status", "--json", "--migrations", str(d))
    assert json.loads(r.out)["pending"] == ["0002_slow", "0003_after"]
    started = time.monotonic()
    r = app.cli("migrate", "--migrations", str(d))
    assert r.code == 0, r.output
    assert time.monotonic() - started < 10  # no lock left behind to wait out
    assert "interrupted" in r.err  # the user is told
    assert counts(app, "SELECT id, count(*) FROM marks GROUP BY 1") == \
        {"0001": 1, "0002": 1, "0003": 1}  # nothing applied twice
    assert counts(app, "SELECT migration_id, count(*) FROM _yoyo_migration GROUP BY 1") == \
        {"0001_marks": 1, "0002_slow": 1, "0003_after": 1}
    with app.connect() as conn:
        outcomes = conn.execute("SELECT outcome FROM _dbkit_history WHERE migration_id ="
                                " '0002_slow' ORDER BY id").fetchall()
    assert outcomes == [("interrupted",), ("ok",)]


def _env(app, **extra: str) -> dict[str, str]:
    return {k: v for k, v in app.env(**extra).items() if v is not None}


def _wait_for_query(app, needle: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    with psycopg.connect(autocommit=True, **app.pg.connect_kwargs()) as admin:
        while time.monotonic() < deadline:
            if admin.execute("SELECT 1 FROM pg_stat_activity WHERE datname = %s AND state ="
                             " 'active' AND query LIKE %s", (app.db, f"%{needle}%")).fetchone():
                return
            time.sleep(0.02)
    raise AssertionError(f"no session ran {needle} within {timeout}s")
