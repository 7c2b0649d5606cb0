"""The deploy gate's no-op paths: ``dbkit status`` and a ``dbkit migrate`` with nothing to do
cost one connection and one query, and keep every guarantee of the locked path: drift is
reported (a rename still refuses), a run killed mid-migration is still noticed, checksums of
migrations applied by yoyo are still recorded, a yoyo lock row is still waited for, and a
same-named table elsewhere on the search_path is never read as the bookkeeping."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from dbkit.migrate import commands
from dbkit.migrate.files import packaged_dir
from dbkit.settings import Settings


@contextmanager
def counted() -> Iterator[dict[str, Any]]:
    """Connections opened and statements sent by dbkit meanwhile (real ones, counted)."""
    seen: dict[str, Any] = {"connections": 0, "statements": []}
    connect, execute = psycopg.Connection.connect, psycopg.Connection.execute

    def counting_connect(*args: Any, **kwargs: Any) -> Any:
        seen["connections"] += 1
        return connect(*args, **kwargs)

    def counting_execute(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        seen["statements"].append(query)
        return execute(self, query, *args, **kwargs)

    psycopg.Connection.connect = counting_connect  # type: ignore[method-assign]
    psycopg.Connection.execute = counting_execute  # type: ignore[method-assign]
    real = psycopg.connect
    psycopg.connect = counting_connect  # type: ignore[assignment]
    try:
        yield seen
    finally:
        psycopg.Connection.connect = connect  # type: ignore[method-assign]
        psycopg.Connection.execute = execute  # type: ignore[method-assign]
        psycopg.connect = real  # type: ignore[assignment]


def _target(app: Any, **flags: Any) -> Any:
    env = {k: v for k, v in app.env().items() if v is not None}
    return Settings.load(flags=flags, environ=env, cwd=app.cwd).target()


def test_noop_migrate_is_one_connection_and_one_query(migrated):
    target = _target(migrated)
    with counted() as seen:
        result = commands.migrate(target)
    assert result.applied == [] and result.already_applied == 6
    assert seen["connections"] == 1 and len(seen["statements"]) == 1, seen


def test_status_is_one_connection_and_one_query(migrated):
    target = _target(migrated)
    with counted() as seen:
        report = commands.status(target)
    assert report.pending == [] and len(report.applied) == 6
    assert seen["connections"] == 1 and len(seen["statements"]) == 1, seen


def test_with_pending_migrations_migrate_takes_the_lock(created):
    with counted() as seen:
        result = commands.migrate(_target(created))
    assert len(result.applied) == 6
    assert any("pg_try_advisory_xact_lock" in str(q) for q in seen["statements"])


def _copy_migrations(app: Any) -> Any:
    d = app.cwd / "migrations"
    shutil.copytree(packaged_dir(), d)
    return d


def test_noop_migrate_still_warns_about_an_edited_file(migrated):
    d = _copy_migrations(migrated)
    (d / "0002_create_users.sql").write_text((d / "0002_create_users.sql").read_text() + "\n-- x\n")
    r = migrated.cli("migrate")
    assert r.code == 0 and "nothing to apply" in r.out
    assert "0002_create_users.sql was edited since it was applied" in r.err


def test_noop_migrate_still_refuses_a_rename_beyond_to(migrated):
    """A renamed applied file: its new name is pending, but past ``--to`` nothing would run;
    the run refuses all the same, as the locked path does."""
    d = _copy_migrations(migrated)
    (d / "0006_require_post_owner.sql").rename(d / "0007_require_post_owner.sql")
    (d / "0006_require_post_owner.rollback.sql").rename(d / "0007_require_post_owner.rollback.sql")
    r = migrated.cli("migrate", "--to", "0005_index_posts_owner")
    assert r.code == 11, r.output
    assert "renamed to 0007_require_post_owner.sql" in r.err


def test_noop_migrate_notices_a_run_killed_mid_migration(migrated):
    with migrated.connect(autocommit=True) as conn:
        conn.execute("INSERT INTO _dbkit_history (run_id, migration_id, direction, outcome,"
                     " os_user, hostname, dbkit_version) VALUES (gen_random_uuid(),"
                     " '0007_x', 'apply', 'running', 'u', 'h', '0')")
    r = migrated.cli("migrate")
    assert r.code == 0 and "nothing to apply" in r.out
    assert "interrupted mid-migration" in r.err
    with migrated.connect() as conn:
        assert conn.execute("SELECT outcome FROM _dbkit_history WHERE migration_id = '0007_x'"
                            ).fetchone() == ("interrupted",)


def test_noop_migrate_records_checksums_of_migrations_yoyo_applied(migrated):
    with migrated.connect(autocommit=True) as conn:
        conn.execute("DELETE FROM _dbkit_checksum WHERE migration_id = '0003_add_post_owner'")
    r = migrated.cli("migrate")
    assert r.code == 0, r.output
    with migrated.connect() as conn:
        assert conn.execute("SELECT count(*) FROM _dbkit_checksum").fetchone() == (6,)


def test_noop_migrate_waits_for_a_yoyo_lock_row(migrated):
    with migrated.connect(autocommit=True) as conn:
        conn.execute("INSERT INTO yoyo_lock (locked, ctime, pid) VALUES (1, now(), 4242)")
    r = migrated.cli("migrate", "--lock-timeout", "300ms")
    assert r.code == 9 and "process 4242" in r.err, r.output


def test_a_same_named_table_earlier_on_the_search_path_is_not_the_bookkeeping(migrated):
    """The one query names the tables unqualified: when the current schema (the first on the
    search_path) lacks some, though a later one has them all, the careful look decides, as
    before: the bookkeeping is the current schema's (here: nothing applied in it)."""
    with migrated.connect(autocommit=True) as conn:
        conn.execute("CREATE SCHEMA shadow")
        conn.execute("CREATE TABLE shadow._yoyo_migration (LIKE public._yoyo_migration)")
        conn.execute(f'ALTER ROLE "{migrated.role}" SET search_path = shadow, public')
    report = commands.status(_target(migrated))
    assert report.applied == [] and len(report.pending) == 6


def test_a_role_that_may_only_read_the_bookkeeping_still_gets_the_locked_paths_refusal(migrated):
    """Up to date, but the role could not take the lock: the one look does not say "up to
    date" for it; the locked path refuses, as it always did (exit 5)."""
    reader, password = f"{migrated.role}_ro", "ro-pw-1"
    migrated.extra_roles.append(reader)
    with psycopg.connect(autocommit=True, **migrated.pg.connect_kwargs()) as admin:
        admin.execute(f"CREATE ROLE \"{reader}\" LOGIN PASSWORD '{password}'")
    with migrated.connect(autocommit=True) as conn:
        conn.execute(f'GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{reader}"')
    with psycopg.connect(autocommit=True, **migrated.pg.connect_kwargs()) as admin:
        admin.execute(f'GRANT CONNECT ON DATABASE "{migrated.db}" TO "{reader}"')
    url = migrated.url.with_(user=reader, password=password).render(reveal=True)
    assert migrated.cli("status", "--check", DATABASE_URL=url).code == 0
    r = migrated.cli("migrate", DATABASE_URL=url)
    assert r.code == 5, r.output
