"""A primary (the suite's cluster) and a hot standby streaming from it: what writes is refused
on the standby before anything is attempted, what reads works there, and ``migrate
--wait-replicas`` waits for the standby to replay the migrations (and says which replica is
behind when it does not)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import psycopg
import pytest
from cluster import StreamingReplica, throwaway_cluster
from conftest import App

from dbkit.urls import DbURL

pytestmark = pytest.mark.slow  # the replica's first start: about 2 s per xdist worker

HINT = "target_session_attrs=read-write"


def has_table(url: DbURL, table: str) -> bool:
    with psycopg.connect(**url.connect_kwargs()) as conn:
        return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone() == (True,)


def grant_stats(admin_conn: psycopg.Connection, role: str) -> None:
    """What --wait-replicas needs to see replay positions (a statistics-only role)."""
    admin_conn.execute(f'GRANT pg_read_all_stats TO "{role}"')  # noqa: S608 - a test's own name


@pytest.fixture
def on_standby(created: App, replica: StreamingReplica) -> tuple[App, dict[str, str]]:
    """``created`` with its first two migrations applied on the primary and replayed by the
    standby, and the settings that point dbkit at the standby instead."""
    r = created.cli("migrate", "--to", "0002_create_users")
    assert r.code == 0, r.output
    replica.catch_up()
    return created, {"DATABASE_URL": replica.url_for(created.url).render(reveal=True)}


def applied_on_primary(app: App) -> list[str]:
    with app.connect() as conn:
        return [r[0] for r in conn.execute(
            "SELECT migration_id FROM _yoyo_migration ORDER BY 1")]


@pytest.mark.parametrize("command", [
    ["migrate"], ["rollback"], ["verify", "--accept", "0001_create_posts"], ["seed"],
    ["migrate", "--wait-replicas", "2"]])
def test_writes_on_a_standby_are_refused_before_anything_is_attempted(
        on_standby: tuple[App, dict[str, str]], replica: StreamingReplica,
        command: list[str]) -> None:
    app, standby = on_standby
    errors_before = replica.log_errors()
    r = app.cli(*command, **standby)
    assert r.code == 4, r.output
    assert "is a standby (in recovery, read-only); nothing was attempted" in r.err
    assert HINT in r.err and "Traceback" not in r.output
    assert app.password not in r.output
    # nothing was attempted: the standby refused no statement (a write would log an ERROR)
    assert replica.log_errors() == errors_before
    assert applied_on_primary(app) == ["0001_create_posts", "0002_create_users"]


def test_reading_works_on_a_standby(on_standby: tuple[App, dict[str, str]]) -> None:
    app, standby = on_standby
    r = app.cli("status", "--json", **standby)
    assert r.code == 0, r.output
    report = json.loads(r.out)
    assert [a["id"] for a in report["applied"]] == ["0001_create_posts", "0002_create_users"]
    assert report["pending"][0] == "0003_add_post_owner"
    assert app.cli("verify", **standby).code == 0
    assert app.cli("history", **standby).code == 0
    r = app.cli("dump", **standby)
    assert r.code == 0 and "CREATE TABLE public.users" in r.out, r.output
    assert app.cli("status", "--check", **standby).code == 10  # the gate reads a standby too
    r = app.cli("migrate", "--dry-run", **standby)  # a dry run writes nothing: allowed, warned
    assert r.code == 0, r.output
    assert "standby (read-only): the real run would be refused" in r.err


def test_wait_replicas_returns_once_the_standby_has_the_schema(
        created: App, replica: StreamingReplica, admin_conn: psycopg.Connection) -> None:
    """With replay paused the run applies everything and keeps waiting (the standby has not
    got the tables); resumed, it exits 0 and the standby has them."""
    grant_stats(admin_conn, created.role)
    standby = replica.url_for(created.url)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DBKIT_", "PG")) and k != "DATABASE_URL"}
    env.update({k: v for k, v in created.env().items() if v is not None})
    with replica.paused():
        proc = subprocess.Popen([sys.executable, "-m", "dbkit", "migrate", "--wait-replicas",
                                 "60", "--json"], cwd=created.cwd, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 60
            while len(applied_on_primary_or_none(created)) < 6 and proc.poll() is None:
                assert time.monotonic() < deadline, "the migrations were not applied"
                time.sleep(0.05)
            assert not has_table(standby, "votes")  # replay is paused: not there yet
            assert proc.poll() is None, proc.communicate()  # ... so it still waits
        except BaseException:
            proc.kill()
            raise
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert has_table(standby, "votes")  # right after exit: the standby has the schema
    result = json.loads(out)
    assert [r["id"] for r in result["applied"]][-1] == "0006_require_post_owner"
    (seen,) = result["replicas"]["replicas"]
    assert seen["name"] == replica.name and seen["behind_bytes"] <= 0


def applied_on_primary_or_none(app: App) -> list[str]:
    try:
        return applied_on_primary(app)
    except psycopg.errors.UndefinedTable:
        return []


def test_wait_replicas_times_out_naming_the_replica_behind(
        created: App, replica: StreamingReplica, admin_conn: psycopg.Connection) -> None:
    grant_stats(admin_conn, created.role)
    with replica.paused():
        r = created.cli("migrate", "--wait-replicas", "2")
    assert r.code == 4, r.output
    assert f"6 migration(s) applied on {created.db}, but 1 of 1 replica(s)" in r.err
    assert f"replica {replica.name} (127.0.0.1), " in r.err and "bytes behind" in r.err
    assert "after 2s" in r.err and "--wait-replicas again" in r.err
    assert len(applied_on_primary(created)) == 6  # the migrations stay applied
    # a re-run applies nothing and waits (30 s at most: the flag's default) for the resumed one
    r = created.cli("migrate", "--wait-replicas")
    assert r.code == 0, r.output
    assert "nothing to apply" in r.out and "1 replica(s) replayed up to" in r.out
    assert has_table(replica.url_for(created.url), "votes")


def test_wait_replicas_needs_to_see_the_replay_positions(
        created: App, replica: StreamingReplica) -> None:
    """The database owner alone may not read pg_stat_replication's positions: exit 5 naming
    the grant, after the migrations (which stay applied)."""
    r = created.cli("migrate", "--wait-replicas", "5")
    assert r.code == 5, r.output
    assert "may not see how far the 1 replica(s)" in r.err
    assert f"GRANT pg_read_all_stats TO {created.role}" in r.err
    assert len(applied_on_primary(created)) == 6


def test_wait_replicas_without_replicas_returns_at_once(tmp_path) -> None:  # noqa: ANN001
    """A server nobody streams from (a fresh cluster of its own: the suite's may have the
    replica by now): nothing to wait for, said in --verbose."""
    if os.environ.get("DBKIT_TEST_ADMIN_URL"):
        pytest.skip("needs a cluster of its own")
    with throwaway_cluster() as pg:
        app = App(pg=pg, cwd=tmp_path, role="solo", db="solo", password="solo-pw")
        assert app.cli("create").code == 0
        r = app.cli("--verbose", "migrate", "--wait-replicas", "5", "--json")
        assert r.code == 0, r.output
        assert "no streaming replicas in pg_stat_replication" in r.err
        assert json.loads(r.out)["replicas"]["replicas"] == []


# -- doctor ---------------------------------------------------------------------------------
def doctor(app: App, **env: str | None) -> tuple[int, dict[str, dict[str, str]]]:
    r = app.cli("doctor", "--json", **env)
    assert app.password not in r.output
    return r.code, {c["name"]: c for c in json.loads(r.out)["checks"]}


def test_doctor_names_each_replica_and_warns_when_one_is_far_behind(
        created: App, replica: StreamingReplica) -> None:
    replica.catch_up()
    code, checks = doctor(created)
    assert code == 0
    check = checks["replication"]
    assert check["status"] == "pass", check
    assert check["detail"].startswith("a primary with 1 streaming replica(s): ")
    # (bytes or a few kB behind: the cluster writes WAL of its own meanwhile; never MB)
    assert re.search(rf"{replica.name} \(127\.0\.0\.1\) streaming, "
                     r"(\d+ bytes|[\d.]+ kB) behind", check["detail"]), check
    with replica.paused():
        with created.connect() as conn:  # ~20 MB of WAL the paused standby cannot replay
            conn.execute("CREATE TABLE bulk AS SELECT g, repeat('x', 100) AS pad"
                         " FROM generate_series(1, 150000) g")
        code, checks = doctor(created)
    assert code == 0  # a warning, not a failure
    check = checks["replication"]
    assert check["status"] == "warn", check
    assert f"{replica.name} (127.0.0.1) streaming, " in check["detail"]
    assert " MB behind" in check["detail"] and "--wait-replicas" in check["hint"]


def test_doctor_on_a_standby_says_so(on_standby: tuple[App, dict[str, str]],
                                     replica: StreamingReplica) -> None:
    app, standby = on_standby
    code, checks = doctor(app, **standby)
    check = checks["replication"]
    assert check["status"] == "warn", check
    assert check["detail"].startswith("a standby (in recovery, read-only): ")
    assert HINT in check["hint"]
    assert checks["server"]["status"] == "pass"
    with replica.paused():
        _, checks = doctor(app, **standby)
    assert "replay is paused" in checks["replication"]["detail"]


def test_doctor_reports_an_idle_slot_and_fails_a_lost_one(
        created: App, admin_conn: psycopg.Connection) -> None:
    """A slot nobody streams from keeps WAL (a warning); once max_slot_wal_keep_size let the
    server remove WAL it still needed, its replica can never catch up (a failure)."""
    slot = f"slot_{created.db}"
    admin_conn.execute("SELECT pg_create_physical_replication_slot(%s, true)", (slot,))
    try:
        code, checks = doctor(created)
        assert code == 0
        check = checks["replication"]
        assert check["status"] == "warn", check
        assert f"slot {slot} (physical): nobody streams from it, it keeps " in check["detail"]
        admin_conn.execute("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'")
        # (the checkpointer handles the reload's signal before the CHECKPOINT asked after it)
        admin_conn.execute("SELECT pg_reload_conf()")
        with created.connect() as conn:  # > 2 WAL segments past the slot
            conn.execute("CREATE TABLE bulk AS SELECT g, repeat('x', 100) AS pad"
                         " FROM generate_series(1, 300000) g")
        admin_conn.execute("SELECT pg_switch_wal()")
        # A streaming replica of this cluster (another test's) has no slot: let it receive
        # everything first, or the checkpoint removes WAL it still needs and breaks it for
        # every later test; only the idle slot is to lose its WAL.
        deadline = time.monotonic() + 30
        while admin_conn.execute(
                "SELECT count(*) FROM pg_stat_replication WHERE flush_lsn IS NULL"
                " OR flush_lsn < pg_current_wal_lsn()").fetchone()[0] and \
                time.monotonic() < deadline:
            time.sleep(0.05)
        admin_conn.execute("CHECKPOINT")
        code, checks = doctor(created)
        assert code == 17
        check = checks["replication"]
        assert check["status"] == "fail", check
        assert f"replication slot(s) {slot} lost the WAL their replica needs" in check["detail"]
    finally:
        admin_conn.execute("ALTER SYSTEM RESET max_slot_wal_keep_size")
        admin_conn.execute("SELECT pg_reload_conf()")
        admin_conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))


# -- multi-host URLs with a real standby -----------------------------------------------------
def _ha(app: App, *hosts: tuple[str, int], attrs: str = "read-write") -> str:
    where = ",".join(f"{h}:{p}" for h, p in hosts)
    return (f"postgresql://{app.role}:{app.password}@{where}/{app.db}"
            f"?target_session_attrs={attrs}")


@pytest.mark.slow
def test_an_ha_url_listing_the_standby_first_migrates_on_the_primary(
        created: App, replica: StreamingReplica) -> None:
    primary = created.url
    replica.catch_up()  # the standby must know the role, or the login there is the error
    url = _ha(created, ("127.0.0.1", replica.port), (str(primary.host), int(primary.port or 0)))
    r = created.cli("migrate", DATABASE_URL=url)
    assert r.code == 0, r.output
    assert len(applied_on_primary(created)) == 6 and created.password not in r.output


@pytest.mark.slow
def test_an_ha_url_where_only_the_standby_answers_is_exit_4_and_nothing_is_written(
        created: App, replica: StreamingReplica) -> None:
    dead = 1  # nothing listens on port 1 (a freed random port may be a new server's by now)
    replica.catch_up()  # the standby must know the role created a moment ago on the primary
    url = _ha(created, ("127.0.0.1", dead), ("127.0.0.1", replica.port))
    r = created.cli("migrate", DATABASE_URL=url)
    assert r.code == 4, r.output
    assert "no read-write server" in r.err and "target_session_attrs=read-write" in r.err
    assert len(r.err.strip().splitlines()) == 1 and created.password not in r.output
    with created.connect() as conn:
        assert conn.execute("SELECT to_regclass('_yoyo_migration')").fetchone()[0] is None
    # and dbkit wait keeps waiting for a read-write host rather than settling on the standby
    w = created.cli("wait", "--timeout", "1", DATABASE_URL=url, DBKIT_ADMIN_URL=None)
    assert w.code == 4 and "only standbys answer" in w.err, w.output


@pytest.mark.slow
def test_a_no_op_migrate_on_a_standby_is_refused_too(created: App,
                                                     replica: StreamingReplica) -> None:
    """Nothing pending is no excuse: a deploy gate pointed at a standby by mistake would
    otherwise report "up to date" forever while the primary moves on."""
    assert created.cli("migrate").code == 0
    replica.catch_up()
    r = created.cli("migrate", DATABASE_URL=replica.url_for(created.url).render(reveal=True))
    assert r.code == 4 and "standby" in r.err, r.output
