"""Fleet mode: ``--targets FILE`` over many databases on two real servers, multi-host URLs,
and waiting for a read-write server."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from cluster import throwaway_cluster, unique_name
from helpers import clean_env
from psycopg import sql

from dbkit.fleet import FleetReport, Outcome, read_targets
from dbkit.settings import Settings
from dbkit.urls import DbURL

MIGRATIONS = {
    "0001_accounts.sql": "CREATE TABLE accounts (id int PRIMARY KEY);\n",
    "0002_events.sql": "-- a table the broken target already has\n"
                       "CREATE TABLE events (id int);\n"
                       "SELECT pg_sleep(coalesce(current_setting('dbkit_test.sleep', true), '0')"
                       "::float);\n",
    "0003_index.sql": "CREATE INDEX events_id ON events (id);\n",
}
LATEST = ["0001_accounts", "0002_events", "0003_index"]


@dataclass
class Fleet:
    servers: list[DbURL]  # admin URLs
    role: str
    password: str
    dbs: list[tuple[int, str]]  # (server index, database)

    def url(self, server: int, db: str, *, password: bool = True) -> DbURL:
        admin = self.servers[server]
        return DbURL(user=self.role, password=self.password if password else None,
                     host=admin.host, port=admin.port, dbname=db)

    def write(self, path: Path, *, password: bool = True, extra: str = "") -> Path:
        lines = ["# the fleet, one database per line", ""]
        lines += [self.url(s, d, password=password).render(reveal=True) for s, d in self.dbs]
        path.write_text("\n".join(lines) + "\n" + extra)
        return path

    def applied(self, server: int, db: str) -> list[str]:
        with psycopg.connect(**self.url(server, db).connect_kwargs()) as conn:
            if conn.execute("SELECT to_regclass('_yoyo_migration')").fetchone()[0] is None:
                return []
            return [r[0] for r in conn.execute(
                "SELECT migration_id FROM _yoyo_migration ORDER BY migration_id")]

    def tables(self, server: int, db: str) -> set[str]:
        with psycopg.connect(**self.url(server, db).connect_kwargs()) as conn:
            return {r[0] for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                "AND tablename IN ('accounts', 'events')")}


@pytest.fixture(scope="module")
def second_pg() -> Iterator[DbURL]:
    with throwaway_cluster() as url:
        yield url


def _make_fleet(servers: list[DbURL], count: int) -> Iterator[Fleet]:
    role, password = unique_name("fleet"), unique_name("pw")
    fleet = Fleet(servers, role, password, [(i % len(servers), unique_name(f"t{i:03d}"))
                                            for i in range(count)])
    for admin in servers:
        with psycopg.connect(autocommit=True, **admin.connect_kwargs()) as conn:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(password)))
    for s, db in fleet.dbs:
        with psycopg.connect(autocommit=True, **servers[s].connect_kwargs()) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(db), sql.Identifier(role)))
    try:
        yield fleet
    finally:
        for i, admin in enumerate(servers):
            with psycopg.connect(autocommit=True, **admin.connect_kwargs()) as conn:
                for s, db in fleet.dbs:
                    if s == i:
                        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                            sql.Identifier(db)))
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


@pytest.fixture
def small_fleet(pg: DbURL, second_pg: DbURL) -> Iterator[Fleet]:
    yield from _make_fleet([pg, second_pg], 6)


@pytest.fixture
def migrations(tmp_path: Path) -> Path:
    d = tmp_path / "migrations"
    d.mkdir()
    for name, text in MIGRATIONS.items():
        (d / name).write_text(text)
    return d


def _break(fleet: Fleet, index: int) -> None:
    """Make one target's second migration fail: it already has the table (owned by the admin,
    so the owner cannot take it over either)."""
    s, db = fleet.dbs[index]
    with psycopg.connect(autocommit=True,
                         **fleet.servers[s].connect_kwargs(dbname=db)) as conn:
        conn.execute("CREATE TABLE events (id int)")


# -- the targets file ----------------------------------------------------------------------
def test_targets_file_skips_comments_and_blank_lines(tmp_path: Path):
    path = tmp_path / "targets"
    path.write_text("# tenants\n\npostgresql://u:pw@h1/a\n   \n  # b is gone\n"
                    "postgresql://u@h2:5433/c\n")
    urls = read_targets(path, Settings())
    assert [(u.host, u.port, u.dbname) for u in urls] == [("h1", None, "a"), ("h2", 5433, "c")]


@pytest.mark.parametrize(("text", "said"), [
    ("postgresql://u:s3cret@h/a\nmysql://u:s3cret@h/b\n", "targets:2"),
    ("postgresql://u:s3cret@h/a\npostgresql://h/b\n", "targets:2: the URL must name both"),
    ("postgresql://u:s3cret@h/a\npostgresql://u:other@h/a\n", "the same database as line 1"),
    ("# nothing\n\n", "lists no databases"),
])
def test_a_bad_targets_file_is_refused_naming_the_line_never_the_password(app, tmp_path: Path,
                                                                           text: str, said: str):
    path = tmp_path / "targets"
    path.write_text(text)
    r = app.cli("migrate", "--targets", str(path))
    assert r.code == 3, r.output
    assert said in r.err
    assert "s3cret" not in r.output and "other" not in r.output
    assert "Traceback" not in r.output and len(r.err.strip().splitlines()) == 1


def test_a_missing_targets_file_is_a_config_error(app):
    r = app.cli("status", "--targets", "nope.txt")
    assert r.code == 3 and "does not exist" in r.err


# -- fleet runs on two servers -------------------------------------------------------------
def test_fleet_migrate_over_two_servers_then_rerun_touches_nothing(app, small_fleet, migrations):
    targets = small_fleet.write(app.cwd / "targets")
    r = app.cli("migrate", "--targets", str(targets), "--migrations", str(migrations), "--json")
    assert r.code == 0, r.output
    report = json.loads(r.out)
    assert report["counts"] == {"applied": 6}
    assert {small_fleet.servers[s].port for s, _ in small_fleet.dbs} == \
        {small_fleet.servers[0].port, small_fleet.servers[1].port}
    for s, db in small_fleet.dbs:
        assert small_fleet.applied(s, db) == LATEST
    again = app.cli("migrate", "--targets", str(targets), "--migrations", str(migrations),
                    "--json")
    assert again.code == 0, again.output
    assert json.loads(again.out)["counts"] == {"up to date": 6}
    assert all(t["result"]["applied"] == [] for t in json.loads(again.out)["targets"])


def test_one_broken_target_fails_alone_rolled_back_to_its_last_good_migration(
        app, small_fleet, migrations):
    _break(small_fleet, 2)
    targets = small_fleet.write(app.cwd / "targets")
    r = app.cli("migrate", "--targets", str(targets), "--migrations", str(migrations), "--json")
    assert r.code == 8, r.output
    report = json.loads(r.out)
    assert len(report["targets"]) == 6
    broken = report["targets"][2]
    assert broken["outcome"] == "failed" and broken["exit_code"] == 8
    assert "0002_events.sql:2" in broken["error"]  # the file and the line of the statement
    for i, (s, db) in enumerate(small_fleet.dbs):
        assert small_fleet.applied(s, db) == (LATEST[:1] if i == 2 else LATEST)
    assert small_fleet.password not in r.output


def test_text_summary_counts_outcomes_and_names_each_failure_in_one_line(
        app, small_fleet, migrations):
    _break(small_fleet, 4)
    targets = small_fleet.write(app.cwd / "targets")
    r = app.cli("migrate", "--targets", str(targets), "--migrations", str(migrations))
    assert r.code == 8
    lines = r.out.splitlines()
    assert lines[0].startswith("migrate: 6 target(s)") and "5 applied" in lines[0] \
        and "1 failed" in lines[0]
    failures = [line for line in lines if line.startswith("failed: ")]
    s, db = small_fleet.dbs[4]
    assert len(failures) == 1 and db in failures[0] and "***" in failures[0]
    assert any(line.startswith("slowest: ") for line in lines)
    assert small_fleet.password not in r.output


def test_canary_failure_stops_before_any_other_target_changes(app, small_fleet, migrations):
    _break(small_fleet, 0)
    targets = small_fleet.write(app.cwd / "targets")
    r = app.cli("migrate", "--targets", str(targets), "--migrations", str(migrations),
                "--canary", "3", "--json")
    assert r.code == 8, r.output
    report = json.loads(r.out)
    assert [t["outcome"] for t in report["targets"]] == ["failed"] + ["skipped"] * 5
    assert "canary" in report["stopped_why"]
    for s, db in small_fleet.dbs[1:]:
        assert small_fleet.applied(s, db) == [] and small_fleet.tables(s, db) == set()


def test_passing_canaries_let_the_rest_run(app, small_fleet, migrations):
    _break(small_fleet, 5)
    targets = small_fleet.write(app.cwd / "targets")
    r = app.cli("migrate", "--targets", str(targets), "--migrations", str(migrations),
                "--canary", "2", "--json")
    assert r.code == 8
    assert [t["outcome"] for t in json.loads(r.out)["targets"]] == ["applied"] * 5 + ["failed"]


def test_fail_fast_starts_nothing_after_the_first_failure(app, small_fleet, migrations):
    _break(small_fleet, 1)
    targets = small_fleet.write(app.cwd / "targets")
    r = app.cli("migrate", "--targets", str(targets), "--migrations", str(migrations),
                "--parallel", "1", "--fail-fast", "--json")
    assert r.code == 8
    assert [t["outcome"] for t in json.loads(r.out)["targets"]] == \
        ["applied", "failed", "skipped", "skipped", "skipped", "skipped"]
    s, db = small_fleet.dbs[3]
    assert small_fleet.applied(s, db) == []


def test_without_fail_fast_a_failure_never_stops_the_others(app, small_fleet, migrations):
    _break(small_fleet, 1)
    targets = small_fleet.write(app.cwd / "targets")
    r = app.cli("migrate", "--targets", str(targets), "--migrations", str(migrations),
                "--parallel", "1", "--json")
    assert [t["outcome"] for t in json.loads(r.out)["targets"]] == \
        ["applied", "failed", "applied", "applied", "applied", "applied"]


def test_status_check_over_a_fleet_exits_10_when_any_target_is_behind(app, small_fleet,
                                                                      migrations):
    targets = small_fleet.write(app.cwd / "targets")
    first = Path(app.cwd / "one")
    first.write_text(small_fleet.url(*small_fleet.dbs[0]).render(reveal=True) + "\n")
    assert app.cli("migrate", "--targets", str(first), "--migrations", str(migrations)).code == 0
    r = app.cli("status", "--check", "--targets", str(targets), "--migrations", str(migrations),
                "--json")
    assert r.code == 10, r.output
    assert json.loads(r.out)["counts"] == {"up to date": 1, "behind": 5}
    plain = app.cli("status", "--targets", str(targets), "--migrations", str(migrations))
    assert plain.code == 0  # without --check, behind is a report, not a failure
    assert app.cli("migrate", "--targets", str(targets), "--migrations", str(migrations)).code == 0
    assert app.cli("status", "--check", "--targets", str(targets),
                   "--migrations", str(migrations)).code == 0


def test_an_unreachable_target_is_exit_4_and_the_others_still_run(app, small_fleet, migrations):
    targets = small_fleet.write(
        app.cwd / "targets",
        extra=f"postgresql://{small_fleet.role}:{small_fleet.password}@127.0.0.1:1/nowhere\n")
    r = app.cli("migrate", "--targets", str(targets), "--migrations", str(migrations), "--json")
    assert r.code == 4, r.output
    report = json.loads(r.out)
    assert report["counts"] == {"applied": 6, "unreachable": 1}
    assert small_fleet.password not in r.output


def test_a_failed_migration_outranks_an_unreachable_target_in_the_exit_code():
    report = FleetReport("migrate", [Outcome("a", "unreachable", 4), Outcome("b", "failed", 8),
                                     Outcome("c", "behind", 10)])
    assert report.exit_code == 8
    assert FleetReport("status", [Outcome("a", "behind", 10), Outcome("b", "ok")]).exit_code == 10
    assert FleetReport("status", [Outcome("a", "behind", 10),
                                  Outcome("b", "unreachable", 4)]).exit_code == 4
    assert FleetReport("verify", [Outcome("a", "drift", 11), Outcome("b", "ok")]).exit_code == 11


def test_verify_over_a_fleet_names_the_drifted_target(app, small_fleet, migrations):
    targets = small_fleet.write(app.cwd / "targets")
    assert app.cli("migrate", "--targets", str(targets), "--migrations", str(migrations)).code == 0
    (migrations / "0003_index.sql").write_text("CREATE INDEX events_id2 ON events (id);\n")
    r = app.cli("verify", "--targets", str(targets), "--migrations", str(migrations), "--json")
    assert r.code == 11, r.output
    assert set(json.loads(r.out)["counts"]) == {"drift"}


def test_doctor_over_a_fleet_reports_each_target(app, small_fleet, migrations):
    targets = small_fleet.write(app.cwd / "targets")
    assert app.cli("migrate", "--targets", str(targets), "--migrations", str(migrations)).code == 0
    r = app.cli("doctor", "--targets", str(targets), "--json",
                DBKIT_MIGRATIONS=str(migrations))
    report = json.loads(r.out)
    assert len(report["targets"]) == 6
    assert all(t["result"]["checks"] for t in report["targets"])
    assert r.code == report["exit_code"]


def test_passwords_may_come_from_a_pgpass_file(app, small_fleet, migrations, tmp_path: Path):
    targets = small_fleet.write(app.cwd / "targets", password=False)
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"*:*:*:{small_fleet.role}:{small_fleet.password}\n")
    passfile.chmod(0o600)
    (app.cwd / ".env").write_text(f"PGPASSFILE={passfile}\n")  # read by dbkit, not the shell
    r = app.cli("migrate", "--targets", str(targets), "--migrations", str(migrations), "--json")
    assert r.code == 0, r.output
    assert json.loads(r.out)["counts"] == {"applied": 6}


# -- multi-host URLs -------------------------------------------------------------------------
def _dead_port() -> int:
    """A port nothing listens on: port 1 (tcpmux) is never a PostgreSQL's, unlike a random
    free port, which another test's new cluster may take a moment later."""
    return 1


def test_a_multi_host_url_with_a_dead_first_host_migrates_on_the_live_one(created, migrations):
    app = created
    live = app.url
    url = (f"postgresql://{app.role}:{app.password}@127.0.0.1:{_dead_port()},"
           f"{live.host}:{live.port}/{app.db}?target_session_attrs=read-write")
    r = app.cli("migrate", "--migrations", str(migrations), DATABASE_URL=url)
    assert r.code == 0, r.output
    assert "3 migration(s) applied" in r.out and app.password not in r.output
    with app.connect() as conn:
        assert conn.execute("SELECT count(*) FROM _yoyo_migration").fetchone()[0] == 3


def test_only_a_read_only_server_answering_is_exit_4_with_the_hint_and_nothing_written(
        created, migrations, admin_conn):
    app = created
    # A session that is read-only is what libpq's target_session_attrs=read-write rejects
    # (a standby reports it the same way).
    admin_conn.execute(sql.SQL("ALTER DATABASE {} SET default_transaction_read_only = on")
                       .format(sql.Identifier(app.db)))
    live = app.url
    url = (f"postgresql://{app.role}:{app.password}@127.0.0.1:{_dead_port()},"
           f"{live.host}:{live.port}/{app.db}?target_session_attrs=read-write")
    r = app.cli("migrate", "--migrations", str(migrations), DATABASE_URL=url)
    assert r.code == 4, r.output
    assert "no read-write server" in r.err and "target_session_attrs=read-write" in r.err
    assert len(r.err.strip().splitlines()) == 1 and app.password not in r.output
    with app.connect() as conn:
        assert conn.execute("SELECT to_regclass('_yoyo_migration')").fetchone()[0] is None


def test_wait_waits_for_a_read_write_server_when_the_url_asks_for_one(created, admin_conn):
    app = created
    admin_conn.execute(sql.SQL("ALTER DATABASE {} SET default_transaction_read_only = on")
                       .format(sql.Identifier(app.db)))
    url = app.url.with_(params=(("target_session_attrs", "read-write"),)).render(reveal=True)
    env = {"DATABASE_URL": url, "DBKIT_ADMIN_URL": None}
    r = app.cli("wait", "--timeout", "1", **env)
    assert r.code == 4 and "only standbys answer" in r.err, r.output
    full = clean_env(DATABASE_URL=url)
    proc = subprocess.Popen([sys.executable, "-m", "dbkit", "wait", "--timeout", "20"],
                            cwd=app.cwd, env=full, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)
    assert proc.poll() is None  # still waiting: only a read-only server answers
    admin_conn.execute(sql.SQL("ALTER DATABASE {} RESET default_transaction_read_only")
                       .format(sql.Identifier(app.db)))
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "accepts connections" in out and app.password not in out + err


# -- 200 databases, a broken one, SIGKILL and SIGTERM ------------------------------------------
@pytest.fixture
def big_fleet(pg: DbURL, second_pg: DbURL) -> Iterator[Fleet]:
    yield from _make_fleet([pg, second_pg], 200)


def _spawn(app, *args: str, **env: str) -> subprocess.Popen[str]:
    full = clean_env(**{k: v for k, v in app.env().items() if v is not None}, **env)
    return subprocess.Popen([sys.executable, "-m", "dbkit", *args], cwd=app.cwd, env=full,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _applied_counts(fleet: Fleet) -> list[int]:
    return [len(fleet.applied(s, db)) for s, db in fleet.dbs]


def _whole(fleet: Fleet, index: int, broken: int | None = None) -> None:
    """Every recorded migration fully there, nothing unrecorded: the tables match the
    bookkeeping (the broken target had its ``events`` table before any migration)."""
    s, db = fleet.dbs[index]
    applied, tables = fleet.applied(s, db), fleet.tables(s, db)
    expect = {"accounts"} if applied[:1] == LATEST[:1] else set()
    if "0002_events" in applied or index == broken:
        expect.add("events")
    assert tables == expect, (db, applied, tables)


@pytest.mark.slow
def test_two_hundred_targets_one_broken_then_sigkill_and_a_rerun(app, big_fleet, migrations):
    fleet = big_fleet
    broken = 137
    _break(fleet, broken)
    targets = fleet.write(app.cwd / "targets")
    args = ("migrate", "--targets", str(targets), "--migrations", str(migrations), "--json")
    # Killed mid-way: each migration sleeps a little (only in this run) so the kill lands
    # while some targets are done and others are running.
    proc = _spawn(app, *args, PGOPTIONS="-c dbkit_test.sleep=0.2")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # targets start in file order: watch the first ones
        time.sleep(0.2)
        if sum(1 for s, db in fleet.dbs[:30] if len(fleet.applied(s, db)) == 3) >= 20:
            break
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    counts = _applied_counts(fleet)
    assert 20 <= sum(1 for c in counts if c == 3) < 199, counts  # really mid-way
    time.sleep(0.5)  # the server ends the killed sessions (their transactions roll back)
    for i in range(len(fleet.dbs)):
        _whole(fleet, i, broken)
    r = app.subprocess(*args, timeout=600)
    assert r.code == 8, r.err[-2000:]
    report = json.loads(r.out)
    assert len(report["targets"]) == 200
    failed = [i for i, t in enumerate(report["targets"]) if t["outcome"] == "failed"]
    assert failed == [broken]
    assert "0002_events.sql:2" in report["targets"][broken]["error"]
    counts = _applied_counts(fleet)
    assert counts[broken] == 1 and all(c == 3 for i, c in enumerate(counts) if i != broken)
    for i in range(len(fleet.dbs)):
        _whole(fleet, i, broken)
    assert fleet.password not in r.out + r.err


@pytest.mark.slow
def test_sigterm_stops_new_targets_lets_running_ones_finish_and_reports(app, small_fleet,
                                                                          migrations):
    targets = small_fleet.write(app.cwd / "targets")
    proc = _spawn(app, "migrate", "--targets", str(targets), "--migrations", str(migrations),
                  "--parallel", "1", "--json", PGOPTIONS="-c dbkit_test.sleep=1")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and sum(_applied_counts(small_fleet)) == 0:
        time.sleep(0.2)  # the first target's first migration is in
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    report = json.loads(out)
    assert report["stopped_by"] == "SIGTERM"
    outcomes = [t["outcome"] for t in report["targets"]]
    assert outcomes[0] == "applied" and outcomes[-1] == "skipped", outcomes
    counts = _applied_counts(small_fleet)
    assert counts[0] == 3 and counts[-1] == 0  # the running one finished whole
    for i in range(len(small_fleet.dbs)):
        _whole(small_fleet, i)


def test_fleet_help_is_documented_on_every_fleet_command(app):
    for command in ("migrate", "status", "verify", "doctor"):
        r = app.cli(command, "--help")
        assert "--targets FILE" in r.out and "--parallel N" in r.out, command


def test_provisioning_accepts_an_ha_url_when_one_of_its_hosts_is_the_admins(app):
    live = app.url
    dead = _dead_port()
    ha = (f"postgresql://{app.role}:{app.password}@127.0.0.1:{dead},{live.host}:{live.port}"
          f"/{app.db}")
    r = app.cli("create", DATABASE_URL=ha)
    assert r.code == 0, r.output
    elsewhere = f"postgresql://{app.role}:{app.password}@127.0.0.1:{dead},127.0.0.2:{dead}/{app.db}"
    r = app.cli("create", DATABASE_URL=elsewhere)
    assert r.code == 3 and f"names the server at localhost:{dead}" in r.err, r.output


def test_a_pattern_line_stands_for_every_matching_database_on_that_server(app, small_fleet,
                                                                          migrations):
    on_first = sorted(db for s, db in small_fleet.dbs if s == 0)
    pattern = small_fleet.url(0, "t00?_*").render(reveal=True)  # the fleet's names: t000_...
    explicit = small_fleet.url(0, on_first[0]).render(reveal=True)
    path = app.cwd / "targets"
    path.write_text(f"{explicit}\n{pattern}\n")
    r = app.cli("status", "--targets", str(path), "--migrations", str(migrations), "--json")
    assert r.code == 0, r.output
    named = [t["target"].rsplit("/", 1)[1] for t in json.loads(r.out)["targets"]]
    assert named[0] == on_first[0] and sorted(named) == on_first, named
    path.write_text(small_fleet.url(0, "nomatch_*").render(reveal=True) + "\n")
    r = app.cli("status", "--targets", str(path), "--migrations", str(migrations))
    assert r.code == 3 and "no database on" in r.err and small_fleet.password not in r.err


def test_the_per_server_cap_holds_while_both_servers_work(app, small_fleet):
    """At most --per-server sessions of the walk on one server at once, whatever --parallel
    allows; watched from the servers' own pg_stat_activity."""
    import threading

    from dbkit import fleet

    targets = [small_fleet.url(s, d) for s, d in small_fleet.dbs]
    seen: dict[int, int] = {}
    lock = threading.Lock()

    def work(target) -> Outcome:  # noqa: ANN001
        with psycopg.connect(**target.url.connect_kwargs(), application_name="fleet-cap") as c:
            c.execute("SELECT pg_sleep(0.3)")
            port = target.url.port
            with psycopg.connect(**small_fleet.servers[0 if port == small_fleet.servers[0].port
                                                      else 1].connect_kwargs()) as admin:
                n = admin.execute("SELECT count(*) FROM pg_stat_activity WHERE "
                                  "application_name = 'fleet-cap'").fetchone()[0]
            with lock:
                seen[port] = max(seen.get(port, 0), n)
        return Outcome("", "ok")

    report = fleet.run("probe", targets, Settings(), work,
                       fleet.FleetOptions(parallel=6, per_server=2))
    assert report.counts == {"ok": 6}
    assert set(seen) == {s.port for s in small_fleet.servers}
    assert all(n <= 2 for n in seen.values()), seen


def test_verbose_fleet_output_names_each_target_and_masks_every_password(app, small_fleet, migrations):
    targets = small_fleet.write(app.cwd / "targets")
    r = app.cli("-v", "migrate", "--targets", str(targets), "--migrations", str(migrations))
    assert r.code == 0, r.output
    applying = [ln for ln in r.err.splitlines() if "applying 0003_index" in ln]
    assert len(applying) == 6  # one per target, each naming its database
    assert {next(d for _, d in small_fleet.dbs if f"/{d}: " in ln) for ln in applying} == \
        {d for _, d in small_fleet.dbs}
    assert small_fleet.password not in r.output
