"""dbkit testdb / wait / reset against a real server: N databases at once, a template that follows
the migration files, all-or-nothing resets, and waiting for a server that is not up yet."""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from cluster import throwaway_cluster, unique_name
from psycopg import sql

from dbkit import pg
from dbkit.admin import resolve
from dbkit.errors import ConfigError
from dbkit.server import free_port
from dbkit.settings import Settings
from dbkit.testdb import clones, pool
from dbkit.testdb import template as testdb
from dbkit.urls import DbURL

REPO = Path(__file__).resolve().parent.parent
MIGRATIONS = REPO / "migrations"


def dbs_with(conn: psycopg.Connection, prefix: str) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT datname FROM pg_database WHERE left(datname, length(%s)) = %s ORDER BY 1",
        (prefix, prefix))]


def schema_of(url: DbURL) -> dict[str, object]:
    with psycopg.connect(**url.connect_kwargs()) as conn:
        cols = conn.execute(
            "SELECT table_name || '.' || column_name FROM information_schema.columns"
            " WHERE table_schema = 'public' ORDER BY 1").fetchall()
        return {
            "user": conn.execute("SELECT current_user").fetchone()[0],
            "tables": sorted(r[0] for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                " AND tablename !~ '^_|yoyo'")),  # not the migration bookkeeping
            "columns": {c[0] for c in cols},
            "indexes": {r[0] for r in conn.execute(
                "SELECT indexname FROM pg_indexes WHERE schemaname = 'public'")},
            "posts": conn.execute("SELECT count(*) FROM posts").fetchone()[0],
        }


@pytest.fixture
def migrations(tmp_path: Path, admin_conn: psycopg.Connection) -> Iterator[Path]:
    """A private copy of the posts migrations (so editing one affects only this test); the
    templates built from it are dropped afterwards."""
    d = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, d)
    (d / "0000_test_marker.sql").write_text(f"-- unique to this test: {unique_name('m')}\n"
                                            "SELECT 1 WHERE false;\n")
    yield d
    for (name,) in admin_conn.execute(
            "SELECT datname FROM pg_database WHERE datistemplate"
            " AND shobj_description(oid, 'pg_database') LIKE %s", (f'%"{d.resolve()}|%',)):
        pg.drop_database(admin_conn, name, template=True)


def settings_for(app, migrations: Path) -> Settings:
    return Settings.load(flags={"admin_url": app.pg.render(reveal=True),
                                "migrations": str(migrations)}, environ={}, cwd=app.cwd)


# -- testdb create --count 5 / drop ---------------------------------------------------------
def test_create_count_5_full_posts_schema_then_drop_removes_all(app, admin_conn, migrations):
    prefix = unique_name("ci") + "_"
    r = app.cli("testdb", "create", "--count", "5", "--prefix", prefix, "--json", "--reveal",
                DBKIT_MIGRATIONS=str(migrations))
    assert r.code == 0, r.output
    out = json.loads(r.out)
    app.extra_dbs += out["databases"]
    assert out["databases"] == [f"{prefix}{i}" for i in range(1, 6)]
    assert dbs_with(admin_conn, prefix) == sorted(out["databases"])
    for url in out["urls"]:
        s = schema_of(DbURL.parse(url))
        assert s["user"] == testdb.OWNER  # the dedicated role, not the admin
        assert s["tables"] == ["posts", "users", "votes"]
        assert "posts.owner_id" in s["columns"] and "users.email" in s["columns"]
        assert {"posts_owner_id_idx", "votes_user_id_idx", "users_email_lower_key"} <= s["indexes"]
    # isolated: a row in one is not in another
    first, second = (DbURL.parse(u) for u in out["urls"][:2])
    with psycopg.connect(**first.connect_kwargs()) as conn:
        conn.execute("INSERT INTO users (email, password_hash) VALUES ('a@x', '!')")
    with psycopg.connect(**second.connect_kwargs()) as conn:
        assert conn.execute("SELECT count(*) FROM users").fetchone()[0] == 0
    # the template cannot be connected to (so cloning it never fails on a stray session)
    tpl = out["template"]
    assert admin_conn.execute("SELECT datistemplate, NOT datallowconn FROM pg_database"
                              " WHERE datname = %s", (tpl,)).fetchone() == (True, True)

    d = app.cli("testdb", "drop", "--prefix", prefix, "--json", DBKIT_MIGRATIONS=str(migrations))
    assert d.code == 0, d.output
    assert sorted(json.loads(d.out)["dropped"]) == sorted(out["databases"])
    assert dbs_with(admin_conn, prefix) == []
    again = app.cli("testdb", "drop", "--prefix", prefix)
    assert again.code == 0 and "nothing to drop" in again.out


def test_create_stopped_half_way_leaves_none_of_its_databases(app, admin_conn, migrations):
    """All N or none: SIGTERM (a cancelled CI job) after the first clones drops those too."""
    import signal
    import subprocess
    import sys

    from helpers import clean_env

    prefix = unique_name("half") + "_"
    assert app.cli("testdb", "create", "--prefix", prefix + "warm",  # build the template first
                   DBKIT_MIGRATIONS=str(migrations)).code == 0
    app.extra_dbs.append(prefix + "warm1")
    env = clean_env(**{k: v for k, v in app.env(DBKIT_MIGRATIONS=str(migrations)).items()
                       if v is not None})
    proc = subprocess.Popen([sys.executable, "-m", "dbkit", "testdb", "create", "--count", "1000",
                             "--prefix", prefix], cwd=app.cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    app.extra_dbs += [f"{prefix}{i}" for i in range(1, 1001)]
    deadline = time.monotonic() + 60
    while len(dbs_with(admin_conn, prefix + "2")) < 1:  # a few clones exist
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "terminated" in err, err
    assert [d for d in dbs_with(admin_conn, prefix) if not d.startswith(prefix + "warm")] == []


def _spawn_create(app, migrations: Path, *args: str):
    """``dbkit testdb create`` as a real process (so signals reach it as they would in CI)."""
    import subprocess
    import sys

    from helpers import clean_env

    env = clean_env(**{k: v for k, v in app.env(DBKIT_MIGRATIONS=str(migrations)).items()
                       if v is not None})
    return subprocess.Popen([sys.executable, "-m", "dbkit", "testdb", "create", *args],
                            cwd=app.cwd, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


@contextlib.contextmanager
def template_held(admin_url: DbURL, template: str) -> Iterator[None]:
    """Every CREATE DATABASE … TEMPLATE ``template`` waits while this lasts: an open COMMENT
    ON DATABASE holds a lock on the template that conflicts with the one a clone takes. So the
    clones a run has in flight can be counted, and a failure can land while they are."""
    with psycopg.connect(**admin_url.connect_kwargs()) as held:
        note = held.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database"
                            " WHERE datname = %s", (template,)).fetchone()
        held.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(
            sql.Identifier(template), sql.Literal(note[0] if note else None)))
        try:
            yield
        finally:
            held.rollback()


def clones_waiting(conn: psycopg.Connection, template: str) -> int:
    return conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        " AND query LIKE 'CREATE DATABASE %%' AND query LIKE %s",
        (f"%TEMPLATE \"{template}\"%",)).fetchone()[0]


def wait_until(check, what: str, proc=None, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"dbkit exited before {what}: {proc.communicate()}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.mark.slow
def test_create_makes_its_clones_four_at_a_time_all_at_the_latest_schema(app, admin_conn,
                                                                         migrations):
    """N=6: four clones in flight at once (no more: the documented budget), then all six, in
    order, each at the latest schema."""
    prefix = unique_name("par") + "_"
    warm = app.cli("testdb", "create", "--prefix", prefix + "warm", "--json",
                   DBKIT_MIGRATIONS=str(migrations))  # builds the template
    assert warm.code == 0, warm.output
    app.extra_dbs.append(prefix + "warm1")
    tpl = json.loads(warm.out)["template"]
    app.extra_dbs += [f"{prefix}{i}" for i in range(1, 7)]
    with template_held(app.pg, tpl):
        proc = _spawn_create(app, migrations, "--count", "6", "--prefix", prefix, "--json",
                             "--reveal")
        wait_until(lambda: clones_waiting(admin_conn, tpl) >= 4, "four clones in flight", proc)
        time.sleep(0.2)  # room for a fifth, were there one
        assert clones_waiting(admin_conn, tpl) == 4
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    result = json.loads(out)
    assert result["databases"] == [f"{prefix}{i}" for i in range(1, 7)]
    assert dbs_with(admin_conn, prefix + "") == sorted([*result["databases"], prefix + "warm1"])
    for url in result["urls"]:
        s = schema_of(DbURL.parse(url))
        assert s["user"] == testdb.OWNER and s["tables"] == ["posts", "users", "votes"]
        assert {"posts_owner_id_idx", "votes_user_id_idx", "users_email_lower_key"} <= s["indexes"]


def test_create_interrupted_by_ctrl_c_leaves_none_of_its_databases(app, admin_conn, migrations):
    """SIGINT once the first clone is there: every clone landed or in flight is dropped."""
    import signal

    prefix = unique_name("int") + "_"
    assert app.cli("testdb", "create", "--prefix", prefix + "warm",  # build the template first
                   DBKIT_MIGRATIONS=str(migrations)).code == 0
    app.extra_dbs.append(prefix + "warm1")
    proc = _spawn_create(app, migrations, "--count", "1000", "--prefix", prefix)
    app.extra_dbs += [f"{prefix}{i}" for i in range(1, 1001)]
    wait_until(lambda: any(not d.startswith(prefix + "warm") for d in dbs_with(admin_conn, prefix)),
               "the first clone", proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert [d for d in dbs_with(admin_conn, prefix) if not d.startswith(prefix + "warm")] == []


def test_create_failing_on_one_clone_drops_the_others_even_those_in_flight(app, admin_conn,
                                                                          migrations):
    """PREFIX2 is a template database (a test role's, so not refused up front): replacing it
    fails while the clones of PREFIX1, 3 and 4 are still waiting in CREATE DATABASE. The run
    fails in one line and leaves none of them, then or after they would have landed."""
    prefix = unique_name("bad") + "_"
    warm = app.cli("testdb", "create", "--prefix", prefix + "warm", "--json",
                   DBKIT_MIGRATIONS=str(migrations))
    assert warm.code == 0, warm.output
    app.extra_dbs.append(prefix + "warm1")
    tpl = json.loads(warm.out)["template"]
    bad = f"{prefix}2"
    admin_conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
        sql.Identifier(bad), sql.Identifier(testdb.OWNER)))
    admin_conn.execute(sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE true").format(
        sql.Identifier(bad)))
    app.extra_dbs += [f"{prefix}{i}" for i in range(1, 9)]
    try:
        with template_held(app.pg, tpl):
            proc = _spawn_create(app, migrations, "--count", "8", "--prefix", prefix)
            _, err = proc.communicate(timeout=60)  # it fails while the others wait on the lock
            assert proc.returncode not in (0, 1), err
            assert err.count("\n") == 1 and "template database" in err, err
            assert clones_waiting(admin_conn, tpl) == 0  # their sessions were ended
            assert [d for d in dbs_with(admin_conn, prefix) if "warm" not in d] == [bad]
        time.sleep(0.2)
        assert [d for d in dbs_with(admin_conn, prefix) if "warm" not in d] == [bad]
    finally:
        pg.drop_database(admin_conn, bad, template=True)


def test_create_twice_replaces_and_text_output_masks_password(app, admin_conn, migrations):
    prefix = unique_name("tw") + "_"
    app.extra_dbs += [f"{prefix}1", f"{prefix}2"]
    env = {"DBKIT_MIGRATIONS": str(migrations)}
    assert app.cli("testdb", "create", "--count", "2", "--prefix", prefix, **env).code == 0
    r = app.cli("testdb", "create", "--count", "2", "--prefix", prefix, **env)
    assert r.code == 0, r.output
    assert "(up to date)" in r.out and ":***@" in r.out
    password = testdb.owner_password(app.pg)
    assert password and password not in r.output
    assert dbs_with(admin_conn, prefix) == [f"{prefix}1", f"{prefix}2"]


def test_seeded_template_is_separate_and_holds_the_sample(app, admin_conn, migrations):
    prefix = unique_name("sd") + "_"
    app.extra_dbs += [f"{prefix}1", f"{prefix}2"]
    env = {"DBKIT_MIGRATIONS": str(migrations)}
    plain = json.loads(app.cli("testdb", "create", "--prefix", prefix, "--json", "--reveal",
                               **env).out)
    r = app.cli("testdb", "create", "--count", "2", "--prefix", prefix, "--seed", "--json",
                "--reveal", **env)
    assert r.code == 0, r.output
    seeded = json.loads(r.out)
    assert seeded["template"] != plain["template"]
    assert all(schema_of(DbURL.parse(u))["posts"] > 0 for u in seeded["urls"])
    # both templates stay: one is not a stale version of the other
    assert admin_conn.execute("SELECT count(*) FROM pg_database WHERE datname = ANY(%s)",
                              ([plain["template"], seeded["template"]],)).fetchone()[0] == 2


def test_drop_and_create_leave_databases_of_others_alone(app, admin_conn, migrations):
    prefix = unique_name("fo") + "_"
    foreign = f"{prefix}1"  # same name pattern, not made by dbkit
    admin_conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(foreign)))
    app.extra_dbs.append(foreign)
    env = {"DBKIT_MIGRATIONS": str(migrations)}
    r = app.cli("testdb", "create", "--prefix", prefix, **env)
    assert r.code == 7 and "not a dbkit test database" in r.err
    assert app.cli("testdb", "drop", "--prefix", prefix, **env).code == 0
    assert dbs_with(admin_conn, prefix) == [foreign]
    bad = app.cli("testdb", "create", "--prefix", "dbkit_tpl_x", **env)
    assert bad.code == 6 and "overlaps" in bad.err and "Traceback" not in bad.output


def test_an_admin_without_rights_gets_one_line_permission_denied(app, admin_conn, migrations):
    weak = unique_name("weak")
    admin_conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'weak-pw'").format(sql.Identifier(weak)))
    app.extra_roles.append(weak)
    url = app.pg.with_(user=weak, password="weak-pw")
    r = app.cli("testdb", "create", DBKIT_ADMIN_URL=url.render(reveal=True),
                DBKIT_MIGRATIONS=str(migrations))
    assert r.code == 5, r.output
    assert "cannot manage test databases" in r.err and r.err.count("\n") == 1
    assert "weak-pw" not in r.output


def test_drop_all_removes_templates_and_dead_runs_clones_too(app, migrations):
    # --all drops every dbkit template on the server: a server of its own, so that tests
    # running in parallel on the shared one are not disturbed
    with throwaway_cluster() as other, psycopg.connect(autocommit=True,
                                                       **other.connect_kwargs()) as conn:
        env = {"DBKIT_ADMIN_URL": other.render(reveal=True), "DBKIT_MIGRATIONS": str(migrations)}
        assert app.cli("testdb", "create", "--count", "2", **env).code == 0
        s = Settings.load(flags={"admin_url": other.render(reveal=True),
                                 "migrations": str(migrations)}, environ={}, cwd=app.cwd)
        dead = clones.CloneSession(s, resolve(s))
        dead.clone()
        dead.conn.close()  # killed
        r = app.cli("testdb", "drop", "--all", "--json", **env)
        assert r.code == 0, r.output
        assert len(json.loads(r.out)["dropped"]) == 4  # 2 clones, the dead run's, the template
        assert dbs_with(conn, "dbkit_") == []


# -- editing a migration rebuilds the template ----------------------------------------------
def test_editing_a_migration_rebuilds_the_template(app, admin_conn, migrations):
    prefix = unique_name("ed") + "_"
    app.extra_dbs.append(f"{prefix}1")
    env = {"DBKIT_MIGRATIONS": str(migrations)}
    first = json.loads(app.cli("testdb", "create", "--prefix", prefix, "--json", "--reveal",
                               **env).out)
    assert first["template_built"] is True
    assert "posts.subtitle" not in schema_of(DbURL.parse(first["urls"][0]))["columns"]
    same = json.loads(app.cli("testdb", "create", "--prefix", prefix, "--json", **env).out)
    assert same["template"] == first["template"] and same["template_built"] is False

    edited = migrations / "0001_create_posts.sql"
    edited.write_text(edited.read_text().replace("title      text        NOT NULL,",
                                                 "title      text        NOT NULL,\n"
                                                 "    subtitle   text,"))
    r = app.cli("testdb", "create", "--prefix", prefix, "--json", "--reveal", **env)
    assert r.code == 0, r.output
    rebuilt = json.loads(r.out)
    assert rebuilt["template_built"] is True and rebuilt["template"] != first["template"]
    assert "posts.subtitle" in schema_of(DbURL.parse(rebuilt["urls"][0]))["columns"]
    # the stale template of this migrations directory is gone, the new one is the only one
    assert admin_conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                              (first["template"],)).fetchone() is None


def test_concurrent_builders_share_one_template(app, admin_conn, migrations):
    """Several processes/workers asking at once: one builds, the others wait and reuse it."""
    s = settings_for(app, migrations)
    results: list[object] = []

    def worker() -> None:
        try:
            session = clones.CloneSession(s, resolve(s), worker="t")
            results.append(session.template)
            url = session.clone()
            results.append(schema_of(url)["tables"])
            session.close()
        except Exception as exc:  # surfaced by the assertion below
            results.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    templates = [r for r in results if isinstance(r, testdb.Template)]
    assert len(templates) == 4, results
    assert len({t.name for t in templates}) == 1
    assert sum(t.built for t in templates) == 1
    assert [r for r in results if isinstance(r, list)] == [["posts", "users", "votes"]] * 4
    assert admin_conn.execute("SELECT count(*) FROM pg_database WHERE datname LIKE %s",
                              (testdb.BUILD_PREFIX + "%",)).fetchone()[0] == 0


# -- stale clones: a dead session's are collected, a live one's are not ---------------------
def test_clones_of_a_dead_session_are_collected_live_ones_kept(app, admin_conn, migrations):
    s = settings_for(app, migrations)
    live = clones.CloneSession(s, resolve(s), worker="gw0")
    dead = clones.CloneSession(s, resolve(s), worker="gw1")
    try:
        live_db = live.clone().dbname
        dead_db = dead.clone().dbname
        dead.conn.close()  # what a SIGKILL does: the server ends the session and its lock
        nxt = clones.CloneSession(s, resolve(s))
        try:
            assert dead_db in nxt.collected and live_db not in nxt.collected
            names = dbs_with(admin_conn, testdb.PLUGIN_PREFIX)
            assert dead_db not in names and live_db in names
        finally:
            nxt.close()
    finally:
        live.close()
    assert live_db not in dbs_with(admin_conn, testdb.PLUGIN_PREFIX)


def test_pool_hands_out_clones_made_ahead_and_close_leaves_nothing(app, admin_conn, migrations):
    s = settings_for(app, migrations)
    session = clones.CloneSession(s, resolve(s), worker="bg", background=True, pool=3, makers=2)
    try:
        assert session.pool is not None and session.pool.settle(60)
        assert session.pool.ready() == 3  # made before anyone asked
        urls = []
        for _ in range(5):
            url = session.clone()
            assert schema_of(url)["tables"] == ["posts", "users", "votes"]
            urls.append(url)
            session.drop(url.dbname)
        assert len({u.dbname for u in urls}) == 5
        assert session.pool.stats["ready"] == 5 and session.pool.stats["direct"] == 0
        assert session.pool.settle(60)
        mine = dbs_with(admin_conn, testdb.PLUGIN_PREFIX + session.token)
        assert 1 <= len(mine) <= 3 and not {u.dbname for u in urls} & set(mine)  # used: dropped
    finally:
        session.close()
    assert dbs_with(admin_conn, testdb.PLUGIN_PREFIX + session.token) == []


def test_pool_makes_no_more_than_the_tests_ask_for(app, admin_conn, migrations):
    s = settings_for(app, migrations)
    session = clones.CloneSession(s, resolve(s), worker="few", background=True, pool=6,
                                  makers=2, demand=2)
    try:
        assert session.pool is not None and session.pool.settle(60)
        assert len(dbs_with(admin_conn, testdb.PLUGIN_PREFIX + session.token)) == 2
        for _ in range(2):
            session.drop(session.clone().dbname)
        assert session.pool.settle(60)
        assert dbs_with(admin_conn, testdb.PLUGIN_PREFIX + session.token) == []
    finally:
        session.close()


def test_pool_never_hands_out_a_clone_of_a_stale_template(app, admin_conn, migrations):
    s = settings_for(app, migrations)
    session = clones.CloneSession(s, resolve(s), worker="stale", background=True, pool=3,
                                  makers=2)
    try:
        assert session.pool is not None and session.pool.settle(60)
        old = set(dbs_with(admin_conn, testdb.PLUGIN_PREFIX + session.token))
        assert len(old) == 3
        old_template = session.template.name
        (migrations / "9999_extra.sql").write_text("CREATE TABLE extra (id int);\n")
        url = session.clone()
        assert url.dbname not in old
        assert "extra" in schema_of(url)["tables"]
        assert session.template.name != old_template
        assert session.pool.stats["discarded"] == 3
        session.drop(url.dbname)
        assert session.pool.settle(60)
        now = set(dbs_with(admin_conn, testdb.PLUGIN_PREFIX + session.token))
        assert not now & old  # the old template's clones went
        for name in now:
            assert "extra" in schema_of(session.url(name))["tables"]
    finally:
        session.close()
    assert dbs_with(admin_conn, testdb.PLUGIN_PREFIX + session.token) == []


def test_pool_follows_a_template_another_run_dropped(app, admin_conn, migrations):
    s = settings_for(app, migrations)
    session = clones.CloneSession(s, resolve(s), worker="gone", background=True, pool=2,
                                  makers=1)
    try:
        assert session.pool is not None and session.pool.settle(60)
        for _ in range(2):  # the ready ones are whole clones: fine to hand out
            session.drop(session.clone().dbname)
        pg.drop_database(admin_conn, session.template.name, template=True)  # testdb drop --all
        urls = [session.clone() for _ in range(3)]
        for url in urls:
            assert schema_of(url)["tables"] == ["posts", "users", "votes"]
            session.drop(url.dbname)
    finally:
        session.close()
    assert dbs_with(admin_conn, testdb.PLUGIN_PREFIX + session.token) == []


def test_a_pool_session_alone_keeps_its_runs_clones_from_collection(app, admin_conn, migrations):
    """Clones are collected only once every session of their run is gone: the pool's too."""
    s = settings_for(app, migrations)
    session = clones.CloneSession(s, resolve(s), worker="held", background=True, pool=1,
                                  makers=1)
    try:
        assert session.pool is not None and session.pool.settle(60)
        session.conn.close()  # the main session gone; the pool's thread still holds the token
        assert clones.collect_stale(admin_conn, own_token=None) == []
    finally:
        session.close()
    dropped = clones.collect_stale(admin_conn, own_token=None)  # every session gone now
    assert dropped == [] or all(n.startswith(testdb.PLUGIN_PREFIX + session.token)
                                for n in dropped)
    assert dbs_with(admin_conn, testdb.PLUGIN_PREFIX + session.token) == []


@pytest.mark.parametrize(("setting", "workers", "expected"), [
    ("auto", 1, (8, 4)), (None, 2, (4, 2)), ("auto", 3, (2, 1)), ("auto", 8, (2, 1)), ("0", 4, (0, 1)),
    ("5", 3, (5, 3)), ("64", 1, (64, 8))])
def test_pool_budget(setting, workers, expected):
    assert pool.budget(setting, workers) == expected


@pytest.mark.parametrize("setting", ["lots", "-1", "65", "2.5"])
def test_pool_budget_refuses_what_it_cannot_mean(setting):
    with pytest.raises(ConfigError):
        pool.budget(setting)


# -- reset ----------------------------------------------------------------------------------
@pytest.fixture
def app_with_row(app):
    assert app.cli("create").code == 0
    with app.connect() as conn:
        conn.execute("CREATE TABLE keep (v text)")
        conn.execute("INSERT INTO keep VALUES ('precious')")
    return app


def rows(app) -> list[tuple[str]]:
    with app.connect() as conn:
        return conn.execute("SELECT v FROM keep").fetchall()


def test_reset_refused_in_production_and_data_stays(app_with_row):
    app = app_with_row
    r = app.cli("reset", "--yes", DBKIT_ENV="production")
    assert r.code == 16, r.output
    assert "refused in production" in r.err and "Traceback" not in r.output
    assert rows(app) == [("precious",)]
    r = app.cli("reset", "--yes", "--env", "production")
    assert r.code == 16 and "refused" in r.err
    # a development flag does not lift a production environment
    r = app.cli("reset", "--yes", "--env", "development", DBKIT_ENV="production")
    assert r.code == 16
    assert rows(app) == [("precious",)]


def test_reset_needs_yes_off_a_terminal(app_with_row):
    r = app_with_row.cli("reset")
    assert r.code == 16 and "--yes" in r.err
    assert rows(app_with_row) == [("precious",)]


def test_reset_drops_and_sets_up_again(app_with_row):
    app = app_with_row
    r = app.cli("reset", "--yes", "--json", DBKIT_MIGRATIONS=str(MIGRATIONS))
    assert r.code == 0, r.output
    steps = [s["step"] for s in json.loads(r.out)["steps"]]
    assert steps == ["create", "migrate", "seed", "swap"]
    with app.connect() as conn:
        assert conn.execute("SELECT to_regclass('keep')").fetchone()[0] is None
        assert conn.execute("SELECT count(*) FROM posts").fetchone()[0] > 0


# -- wait -----------------------------------------------------------------------------------
def test_wait_closed_port_fails_after_about_the_timeout(app):
    closed = DbURL(user="postgres", password="s3cr3t-xyz", host="127.0.0.1", port=free_port(),
                   dbname="postgres")
    started = time.monotonic()
    r = app.cli("wait", "--timeout", "2", DBKIT_ADMIN_URL=closed.render(reveal=True))
    elapsed = time.monotonic() - started
    assert r.code == 4, r.output
    assert 1.8 <= elapsed < 5, elapsed  # about the timeout (slack for a loaded shared machine)
    assert r.err.count("\n") == 1 and "Traceback" not in r.err
    assert f"127.0.0.1:{closed.port}" in r.err and "did not accept connections within 2s" in r.err
    assert "s3cr3t-xyz" not in r.output


def test_wait_returns_at_once_when_the_server_is_up(app):
    started = time.monotonic()
    r = app.cli("wait", "--timeout", "10", "--json")
    assert r.code == 0, r.output
    assert time.monotonic() - started < 5  # well before the 10 s timeout
    assert json.loads(r.out)["url"] == str(app.pg)
    # no login is needed to see the server is up (like pg_isready): a wrong password is fine
    wrong = app.pg.with_(password="definitely-wrong")
    assert app.cli("wait", "--timeout", "5", DBKIT_ADMIN_URL=wrong.render(reveal=True)).code == 0
