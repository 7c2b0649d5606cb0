"""dbkit migrate / rollback / status / verify / new against a real PostgreSQL."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from dbkit.migrate.files import migrations_dir, packaged_dir
from dbkit.server import find_pg_bin
from dbkit.settings import Settings

PACKAGED = packaged_dir()

POSTS_IDS = ["0001_create_posts", "0002_create_users", "0003_add_post_owner",
             "0004_create_votes", "0005_index_posts_owner",
             "0006_require_post_owner"]


def write(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


def rows(app, query: str, params: tuple = ()) -> list[tuple]:
    with app.connect() as conn:
        return conn.execute(query, params).fetchall()


def applied_ids(app) -> list[str]:
    return [r[0] for r in rows(app, "SELECT migration_id FROM _yoyo_migration ORDER BY 1")]


def pg_dump_schema(app) -> str:
    url = app.url
    conninfo = psycopg.conninfo.make_conninfo(host=url.host, port=url.port, user=url.user,
                                              dbname=url.dbname)
    proc = subprocess.run([str(find_pg_bin() / "pg_dump"), "--schema-only", "--no-comments",
                           "-d", conninfo], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PGPASSWORD": url.password or ""})
    assert proc.returncode == 0, proc.stderr
    # \restrict / \unrestrict carry a random key per run (pg_dump's psql-injection guard)
    return "\n".join(ln for ln in proc.stdout.splitlines()
                     if not ln.startswith(("\\restrict", "\\unrestrict")))


def yoyo(app, *args: str) -> subprocess.CompletedProcess[str]:
    """yoyo's own CLI on the app's database; the password travels in PGPASSWORD, not argv."""
    url = app.url.with_(password=None).render(scheme="postgresql+psycopg")
    exe = Path(sys.executable).parent / "yoyo"
    return subprocess.run([str(exe), *args, "--batch", "--database", url], capture_output=True,
                          text=True, timeout=60,
                          env={**os.environ, "PGPASSWORD": app.password or ""})


@pytest.fixture
def posts_copy(created) -> Path:
    """A private copy of the posts migrations (tests edit it)."""
    d = created.cwd / "posts_migrations"
    shutil.copytree(PACKAGED, d)
    return d


# -- migrate, roll back, migrate: the same schema -------------------------------------------
def test_migrate_rollback_all_migrate_gives_identical_schema(created):
    app = created
    r = app.cli("migrate")
    assert r.code == 0, r.output
    first = pg_dump_schema(app)
    assert "CREATE TABLE public.posts" in first and "CREATE TABLE public.votes" in first
    r = app.cli("rollback", "--all")
    assert r.code == 0, r.output
    assert rows(app, "SELECT to_regclass('posts'), to_regclass('users'), to_regclass('votes')"
                ) == [(None, None, None)]
    assert applied_ids(app) == []
    r = app.cli("migrate")
    assert r.code == 0, r.output
    assert pg_dump_schema(app) == first


def test_migrations_run_as_the_database_url_role(created):
    app = created
    assert app.cli("migrate").code == 0
    owners = rows(app, "SELECT tablename, tableowner FROM pg_tables WHERE schemaname = 'public'"
                       " AND tablename IN ('posts', 'users', 'votes')")
    assert sorted(owners) == [("posts", app.role), ("users", app.role), ("votes", app.role)]


def test_posts_schema_behaves_as_the_tutorial_app_needs(created):
    app = created
    assert app.cli("migrate").code == 0
    with app.connect(autocommit=True) as conn:
        uid = conn.execute("INSERT INTO users (email, password_hash) VALUES ('Ann@x.org', 'h')"
                           " RETURNING id").fetchone()[0]
        with pytest.raises(psycopg.errors.UniqueViolation):  # unique case-insensitively
            conn.execute("INSERT INTO users (email, password_hash) VALUES ('ann@X.ORG', 'h')")
        pid, published = conn.execute(
            "INSERT INTO posts (title, content, owner_id) VALUES ('t', 'c', %s)"
            " RETURNING id, published", (uid,)).fetchone()
        assert published is True
        with pytest.raises(psycopg.errors.NotNullViolation):
            conn.execute("INSERT INTO posts (title, content) VALUES ('t', 'c')")
        conn.execute("INSERT INTO votes (post_id, user_id) VALUES (%s, %s)", (pid, uid))
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("INSERT INTO votes (post_id, user_id) VALUES (%s, %s)", (pid, uid))
        conn.execute("DELETE FROM users WHERE id = %s", (uid,))  # cascades to posts and votes
        assert conn.execute("SELECT (SELECT count(*) FROM posts) + (SELECT count(*) FROM votes)"
                            ).fetchone()[0] == 0


def test_owner_migration_succeeds_on_posts_with_rows(created):
    app = created
    assert app.cli("migrate", "--to", "0002_create_users").code == 0
    with app.connect() as conn:
        conn.execute("INSERT INTO posts (title, content) SELECT 't' || g, 'c' FROM"
                     " generate_series(1, 50) g")
        conn.commit()
    r = app.cli("migrate")
    assert r.code == 0, r.output
    owners = rows(app, "SELECT DISTINCT u.email FROM posts p JOIN users u ON u.id = p.owner_id")
    assert owners == [("legacy-owner@invalid",)]
    assert applied_ids(app) == POSTS_IDS


# -- yoyo's own CLI agrees ------------------------------------------------------------------
def test_yoyo_cli_lists_every_migration_as_applied(created):
    app = created
    assert app.cli("migrate").code == 0
    listed = yoyo(app, "list", str(PACKAGED))
    assert listed.returncode == 0, listed.stderr
    status = {line.split()[1]: line.split()[0] for line in listed.stdout.splitlines()
              if line.split() and line.split()[0] in ("A", "U")}
    assert status == {i: "A" for i in POSTS_IDS}
    # and yoyo's apply agrees there is nothing left to do: nothing runs twice
    applied = yoyo(app, "apply", str(PACKAGED))
    assert applied.returncode == 0, applied.stderr
    assert rows(app, "SELECT count(*) FROM _yoyo_migration")[0][0] == len(POSTS_IDS)
    assert rows(app, "SELECT count(*) FROM _yoyo_log WHERE operation = 'apply'")[0][0] == len(POSTS_IDS)


def test_dbkit_agrees_with_migrations_applied_by_yoyo(created):
    app = created
    assert yoyo(app, "apply", str(PACKAGED)).returncode == 0
    r = app.cli("status", "--json")
    assert r.code == 0, r.output
    report = json.loads(r.out)
    assert report["pending"] == [] and report["unverified"] == POSTS_IDS
    r = app.cli("migrate")
    assert r.code == 0, r.output
    assert "nothing to apply" in r.out
    # dbkit adopted their checksums: an edit from now on is caught
    assert json.loads(app.cli("status", "--json").out)["unverified"] == []


# -- a broken migration is named and rolled back --------------------------------------------
def test_broken_migration_names_file_and_position_and_keeps_earlier(created):
    app = created
    d = write(app.cwd / "m", {
        "0001_ok.sql": "CREATE TABLE a (id int);\n",
        "0002_broken.sql": "-- a comment line\nCREATE TABLE b (id int);\nSELECT nosuch FROM b;\n",
        "0003_after.sql": "CREATE TABLE c (id int);\n",
    })
    r = app.cli("migrate", "--migrations", str(d))
    assert r.code == 8, r.output
    assert "0002_broken.sql:3:8" in r.err and 'column "nosuch" does not exist' in r.err
    assert "Traceback" not in r.output and len(r.err.strip().splitlines()) == 1
    assert applied_ids(app) == ["0001_ok"]
    assert rows(app, "SELECT to_regclass('a') IS NOT NULL, to_regclass('b'), to_regclass('c')"
                ) == [(True, None, None)]
    # fixed, it applies, and the earlier one is not applied again
    (d / "0002_broken.sql").write_text("CREATE TABLE b (id int);\n")
    r = app.cli("migrate", "--migrations", str(d))
    assert r.code == 0, r.output
    assert applied_ids(app) == ["0001_ok", "0002_broken", "0003_after"]


def test_syntax_error_position_points_into_the_file(created):
    app = created
    d = write(app.cwd / "m", {"0001_typo.sql": "-- header\n\nCREATE TABEL t (id int);\n"})
    r = app.cli("migrate", "--migrations", str(d))
    assert r.code == 8
    assert "0001_typo.sql:3:8" in r.err and 'syntax error at or near "TABEL"' in r.err


# -- drift: applied files that changed ------------------------------------------------------
def test_edited_applied_migration_fails_verify_naming_the_file(created, posts_copy):
    app = created
    m = ("--migrations", str(posts_copy))
    assert app.cli("migrate", *m).code == 0
    r = app.cli("verify", *m)
    assert r.code == 0, r.output
    edited = posts_copy / "0002_create_users.sql"
    edited.write_text(edited.read_text() + "ALTER TABLE users ADD COLUMN name text;\n")
    r = app.cli("verify", *m)
    assert r.code == 11, r.output
    assert "0002_create_users.sql" in r.err and "edited" in r.err
    r = app.cli("verify", "--json", *m)
    assert r.code == 11
    assert [(d["id"], d["kind"]) for d in json.loads(r.out)["drift"]] == \
        [("0002_create_users", "edited")]
    for cmd in ("status", "migrate"):  # they warn, and still work
        r = app.cli(cmd, *m)
        assert r.code == 0, r.output
        assert "warning" in r.err and "0002_create_users.sql" in r.err


def test_verify_accept_records_a_deliberate_edit(created, posts_copy):
    """Flyway's repair: a comment fixed in an applied migration need not fail verify forever."""
    app = created
    m = ("--migrations", str(posts_copy))
    assert app.cli("migrate", *m).code == 0
    edited = posts_copy / "0002_create_users.sql"
    edited.write_text("-- users: one row per account (comment fixed after the fact)\n"
                      + edited.read_text())
    assert app.cli("verify", *m).code == 11
    for bad, why in (("0009_nope", "no migration file"), ("nonsense", "no migration file")):
        r = app.cli("verify", "--accept", bad, *m)
        assert r.code == 3 and why in r.err, r.output
    r = app.cli("verify", "--accept", "0002_create_users", *m)
    assert r.code == 0, r.output
    assert "accepted 0002_create_users" in r.err and "match their files" in r.out
    assert app.cli("verify", *m).code == 0
    again = app.cli("verify", "--accept", "0002_create_users", *m)
    assert again.code == 0 and "accepted" not in again.err  # nothing left to accept
    assert rows(app, "SELECT direction, outcome FROM _dbkit_history WHERE direction = 'accept'"
                ) == [("accept", "ok")]
    assert app.cli("rollback", "--to", "0001_create_posts", *m).code == 0
    r = app.cli("verify", "--accept", "0002_create_users", *m)  # not applied any more
    assert r.code == 3 and "not applied" in r.err


def test_renamed_and_deleted_applied_migrations_are_drift(created, posts_copy):
    app = created
    m = ("--migrations", str(posts_copy))
    assert app.cli("migrate", *m).code == 0
    (posts_copy / "0004_create_votes.sql").rename(posts_copy / "0006_create_votes.sql")
    r = app.cli("verify", *m)
    assert r.code == 11 and "renamed to 0006_create_votes.sql" in r.err
    r = app.cli("migrate", *m)  # would create votes a second time: refused, nothing runs
    assert r.code == 11 and "0006_create_votes" in r.err
    assert "0006_create_votes" not in applied_ids(app)
    (posts_copy / "0006_create_votes.sql").unlink()
    r = app.cli("verify", *m)
    assert r.code == 11 and "0004_create_votes.sql was deleted" in r.err


# -- status --check as a deploy gate --------------------------------------------------------
def test_status_check_is_a_deploy_gate(created):
    app = created
    r = app.cli("status", "--check")
    assert r.code == 10, r.output
    assert f"{len(POSTS_IDS)} migration(s) pending" in r.err
    assert app.cli("migrate", "--to", "0003_add_post_owner").code == 0
    assert app.cli("status", "--check").code == 10
    assert app.cli("migrate").code == 0
    r = app.cli("status", "--check")
    assert r.code == 0, r.output
    assert f"{len(POSTS_IDS)} applied, 0 pending" in r.out


def test_status_json_lists_applied_with_time_and_pending(created):
    app = created
    assert app.cli("migrate", "--to", "0002_create_users").code == 0
    r = app.cli("status", "--json")
    assert r.code == 0, r.output
    report = json.loads(r.out)
    assert [a["id"] for a in report["applied"]] == POSTS_IDS[:2]
    assert all(a["applied_at"].endswith("Z") for a in report["applied"])
    assert report["pending"] == POSTS_IDS[2:] and report["up_to_date"] is False
    assert "***" in report["database"] and (app.password or "") not in r.out


# -- options -------------------------------------------------------------------------------
def test_dry_run_prints_sql_and_changes_nothing(created):
    app = created
    r = app.cli("migrate", "--dry-run")
    assert r.code == 0, r.output
    assert "CREATE TABLE posts" in r.out and "CREATE INDEX CONCURRENTLY" in r.out
    assert rows(app, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")[0][0] == 0
    assert app.cli("migrate").code == 0
    r = app.cli("rollback", "--steps", "3", "--dry-run")
    assert r.code == 0, r.output
    assert "DROP INDEX CONCURRENTLY" in r.out and "DROP TABLE votes" in r.out
    assert applied_ids(app) == POSTS_IDS


def test_rollback_steps_and_to(created):
    app = created
    assert app.cli("migrate").code == 0
    assert app.cli("rollback").code == 0
    assert applied_ids(app) == POSTS_IDS[:-1]
    r = app.cli("rollback", "--to", "0001_create_posts")
    assert r.code == 0, r.output
    assert applied_ids(app) == POSTS_IDS[:1]
    assert app.cli("migrate", "--to", "0003_add_post_owner").code == 0
    assert applied_ids(app) == POSTS_IDS[:3]
    assert app.cli("rollback", "--steps", "2").code == 0
    assert applied_ids(app) == POSTS_IDS[:1]
    assert app.cli("rollback", "--to", "0004_create_votes").code == 3  # not applied
    r = app.cli("migrate", "--to", "0004_votes")  # a typo: said in one line, with where to look
    assert r.code == 3 and r.err.count("\n") == 1
    assert "no migration with that id" in r.err and "dbkit status lists the ids" in r.err


def test_rollback_without_rollback_file_refuses(created):
    app = created
    d = write(app.cwd / "m", {"0001_a.sql": "CREATE TABLE a (id int);\n"})
    assert app.cli("migrate", "--migrations", str(d)).code == 0
    r = app.cli("rollback", "--migrations", str(d))
    assert r.code == 8 and "no rollback file for 0001_a" in r.err
    assert applied_ids(app) == ["0001_a"]


def test_migrate_twice_is_idempotent(created):
    app = created
    assert app.cli("migrate").code == 0
    r = app.cli("migrate")
    assert r.code == 0 and f"nothing to apply ({len(POSTS_IDS)} applied)" in r.out
    assert rows(app, "SELECT count(*) FROM _yoyo_log")[0][0] == len(POSTS_IDS)


def test_rows_selected_by_a_migration_do_not_corrupt_json(created):
    app = created
    d = write(app.cwd / "m", {"0001_report.sql": "CREATE TABLE a (id int);\nSELECT 42 AS answer;\n"})
    r = app.cli("migrate", "--json", "--migrations", str(d))
    assert r.code == 0, r.output
    assert [m["id"] for m in json.loads(r.out)["applied"]] == ["0001_report"]


def test_lock_timeout_applies_to_migration_statements(created, admin_conn):
    app = created
    d = write(app.cwd / "m", {"0001_a.sql": "CREATE TABLE a (id int);\n",
                              "0002_alter.sql": "ALTER TABLE a ADD COLUMN b int;\n"})
    assert app.cli("migrate", "--migrations", str(d), "--to", "0001_a").code == 0
    with psycopg.connect(**app.pg.connect_kwargs(dbname=app.db)) as blocker:
        blocker.execute("LOCK TABLE a IN ACCESS SHARE MODE")  # a long reader holds the table
        r = app.cli("migrate", "--migrations", str(d), "--lock-timeout", "200ms")
    assert r.code == 9, r.output
    assert "0002_alter.sql:1:1" in r.err and "lock_timeout" in r.err
    assert applied_ids(app) == ["0001_a"]


def test_lock_timeout_applies_to_non_transactional_migrations(created):
    app = created
    d = write(app.cwd / "m", {"0001_a.sql": "CREATE TABLE a (id int);\n",
                              "0002_alter.sql": "-- transactional: false\n"
                                                "ALTER TABLE a ADD COLUMN b int;\n"})
    assert app.cli("migrate", "--migrations", str(d), "--to", "0001_a").code == 0
    with psycopg.connect(**app.pg.connect_kwargs(dbname=app.db)) as blocker:
        blocker.execute("LOCK TABLE a IN ACCESS SHARE MODE")
        r = app.cli("migrate", "--migrations", str(d), "--lock-timeout", "200ms")
    assert r.code == 9, r.output
    assert "0002_alter.sql:2:1" in r.err and "not recorded as applied" in r.err
    assert app.cli("migrate", "--migrations", str(d)).code == 0
    assert applied_ids(app) == ["0001_a", "0002_alter"]


def test_statement_timeout_applies_to_migration_statements(created):
    app = created
    d = write(app.cwd / "m", {"0001_slow.sql": "SELECT pg_sleep(5);\n"})
    r = app.cli("migrate", "--migrations", str(d), "--statement-timeout", "100ms")
    assert r.code == 8, r.output
    assert "statement_timeout" in r.err and "0001_slow.sql" in r.err
    assert applied_ids(app) == []


def test_bad_timeout_value_is_a_config_error(created):
    r = created.cli("migrate", "--lock-timeout", "soon")
    assert r.code == 3 and "duration" in r.err


def test_non_transactional_migration_reports_invalid_index(created):
    app = created
    d = write(app.cwd / "m", {
        "0001_t.sql": "CREATE TABLE t (x int);\nINSERT INTO t VALUES (1), (1);\n",
        "0002_idx.sql": "-- transactional: false\n"
                        "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS t_x_key ON t (x);\n",
    })
    r = app.cli("migrate", "--migrations", str(d))
    assert r.code == 8 and "could not create unique index" in r.err
    with app.connect(autocommit=True) as conn:
        conn.execute("DELETE FROM t WHERE ctid = (SELECT max(ctid) FROM t)")
    r = app.cli("migrate", "--migrations", str(d))  # IF NOT EXISTS skips the INVALID leftover
    assert r.code == 8 and "t_x_key is INVALID" in r.err and "DROP INDEX CONCURRENTLY" in r.err
    assert applied_ids(app) == ["0001_t"]
    with app.connect(autocommit=True) as conn:
        conn.execute("DROP INDEX CONCURRENTLY t_x_key")
    assert app.cli("migrate", "--migrations", str(d)).code == 0
    assert applied_ids(app) == ["0001_t", "0002_idx"]


# -- directory and new ---------------------------------------------------------------------
def test_migrations_directory_precedence(tmp_path):
    assert migrations_dir(Settings.load(environ={}, cwd=tmp_path)) == PACKAGED
    (tmp_path / "migrations").mkdir()
    assert migrations_dir(Settings.load(environ={}, cwd=tmp_path)) == tmp_path / "migrations"
    other = Settings.load(flags={"migrations": "other"}, environ={}, cwd=tmp_path)
    assert migrations_dir(other) == tmp_path / "other"
    s = Settings.load(environ={"DBKIT_MIGRATIONS": "/abs/m"}, cwd=tmp_path)
    assert migrations_dir(s) == Path("/abs/m")


def test_local_migrations_directory_is_used(created):
    app = created
    write(app.cwd / "migrations", {"0001_mine.sql": "CREATE TABLE mine (id int);\n"})
    assert app.cli("migrate").code == 0
    assert applied_ids(app) == ["0001_mine"]
    plan = app.cli("migrate", "--dry-run", "--migrations", str(PACKAGED)).out
    assert plan.count("-- 000") == len(POSTS_IDS)


def test_missing_directory_is_a_config_error(created):
    r = created.cli("status", "--migrations", "nope")
    assert r.code == 3 and "does not exist" in r.err


def test_new_writes_next_numbered_pair_and_is_idempotent(created):
    app = created
    d = write(app.cwd / "migrations", {"0007_x.sql": "", "0007_x.rollback.sql": ""})
    r = app.cli("new", "Add posts slug")
    assert r.code == 0, r.output
    assert (d / "0008_add_posts_slug.sql").exists() and (d / "0008_add_posts_slug.rollback.sql").exists()
    r = app.cli("new", "add posts slug")
    assert r.code == 0 and "exists" in r.out
    assert sorted(p.name for p in d.iterdir()) == ["0007_x.rollback.sql", "0007_x.sql",
                                                    "0008_add_posts_slug.rollback.sql",
                                                    "0008_add_posts_slug.sql"]
    (d / "0008_add_posts_slug.sql").write_text("CREATE TABLE s (id int);\n")
    (d / "0008_add_posts_slug.rollback.sql").write_text("DROP TABLE s;\n")
    assert app.cli("migrate").code == 0 and app.cli("rollback").code == 0


def test_new_in_an_empty_directory_starts_at_0001(app):
    r = app.cli("new", "init")
    assert r.code == 0, r.output
    assert (app.cwd / "migrations" / "0001_init.sql").exists()
    assert app.cli("new", "!!!").code == 3


def test_password_never_printed(created):
    app = created
    for args in (("migrate", "--json"), ("status",), ("migrate", "--dry-run"), ("history",)):
        r = app.cli(*args)
        assert r.code == 0 and app.password not in r.output


def test_role_without_create_privilege_fails_fast_and_clearly(created, app):
    from cluster import unique_name

    from dbkit.envfile import read as read_env_file

    dml = unique_name("dml")
    app.extra_roles.append(dml)
    assert app.cli("create", "--app-role", dml).code == 0
    dml_url = read_env_file(app.cwd / ".env")["DBKIT_APP_URL"]
    r = app.cli("migrate", DATABASE_URL=dml_url)
    assert r.code == 5, r.output
    assert "cannot create the migration bookkeeping tables" in r.err
    assert app.cli("migrate").code == 0  # the owner can
    assert app.cli("status", "--check").code == 0
    # the bookkeeping is the owner's alone: the DML role cannot even read it
    r = app.cli("status", "--check", DATABASE_URL=dml_url)
    assert r.code == 5, r.output
    assert "permission denied" in r.err and "owner" in r.err


def test_bookkeeping_commits_with_the_migration_or_not_at_all(created):
    """yoyo records after committing; dbkit records inside the migration's transaction, so a
    migration whose record cannot be written leaves no trace either."""
    app = created
    d = write(app.cwd / "m", {"0001_a.sql": "CREATE TABLE a (id int);\n",
                              "0002_sabotage.sql": "CREATE TABLE x (id int);\n"
                                                   "ALTER TABLE _yoyo_log RENAME TO gone;\n"})
    r = app.cli("migrate", "--migrations", str(d))
    assert r.code == 8, r.output
    assert "0002_sabotage.sql (recording it)" in r.err
    assert rows(app, "SELECT to_regclass('x'), to_regclass('gone'), to_regclass('_yoyo_log')"
                " IS NOT NULL") == [(None, None, True)]
    assert applied_ids(app) == ["0001_a"]


def test_python_migrations_are_refused_with_the_way_out(created):
    """A FastAPI project may already have an Alembic ./migrations (env.py, versions/*.py)."""
    app = created
    (app.cwd / "migrations" / "versions").mkdir(parents=True)
    (app.cwd / "migrations" / "env.py").write_text("# alembic\n")
    r = app.cli("migrate")
    assert r.code == 3 and r.err.count("\n") == 1, r.output
    assert "env.py: dbkit runs SQL migrations only" in r.err and "DBKIT_MIGRATIONS" in r.err
    assert app.cli("migrate", "--migrations", str(PACKAGED)).code == 0


def test_mark_applied_adopts_a_database_that_already_has_the_schema(created):
    """A tutorial database made by hand (or by create_all) already has posts and users: those
    migrations are recorded without running, the rest then apply (yoyo mark, alembic stamp)."""
    app = created
    with app.connect() as conn:  # the schema of the first two migrations, made outside dbkit
        for mid in POSTS_IDS[:2]:
            conn.execute((PACKAGED / f"{mid}.sql").read_text())
    r = app.cli("migrate")
    assert r.code == 8 and "already exists" in r.err, r.output
    assert f"dbkit migrate --mark-applied --to {POSTS_IDS[0]}" in r.err  # the way out
    r = app.cli("migrate", "--mark-applied")
    assert r.code == 3 and "needs --to" in r.err
    r = app.cli("migrate", "--mark-applied", "--to", POSTS_IDS[1], "--dry-run")
    assert r.code == 0 and "recorded only; not run" in r.out and "CREATE" not in r.out
    assert applied_ids(app) == []
    r = app.cli("migrate", "--mark-applied", "--to", POSTS_IDS[1], "--json")
    assert r.code == 0, r.output
    assert [(a["id"], a["direction"]) for a in json.loads(r.out)["applied"]] == \
        [(POSTS_IDS[0], "mark"), (POSTS_IDS[1], "mark")]
    assert applied_ids(app) == POSTS_IDS[:2]
    assert app.cli("migrate").code == 0
    assert applied_ids(app) == POSTS_IDS
    assert app.cli("verify").code == 0  # marked ones carry their checksums
    listed = yoyo(app, "list", str(PACKAGED)).stdout.splitlines()
    assert {ln.split()[1]: ln.split()[0] for ln in listed if ln.split()[:1] in (["A"], ["U"])} \
        == {i: "A" for i in POSTS_IDS}  # yoyo agrees
    assert rows(app, "SELECT direction, count(*) FROM _dbkit_history WHERE outcome = 'ok'"
                     " GROUP BY 1 ORDER BY 1") == [("apply", 4), ("mark", 2)]
    assert rows(app, "SELECT operation FROM _yoyo_log WHERE migration_id = %s",
                (POSTS_IDS[0],)) == [("mark",)]
    assert app.cli("migrate", "--mark-applied", "--to", POSTS_IDS[1]).code == 0  # twice: no-op


def test_mark_applied_upgrades_a_history_table_made_before_it(created):
    app = created
    assert app.cli("migrate", "--to", POSTS_IDS[0]).code == 0
    with app.connect() as conn:  # the constraint as dbkit wrote it before --mark-applied
        name = conn.execute("SELECT conname FROM pg_constraint WHERE conrelid ="
                            " '_dbkit_history'::regclass AND contype = 'c'"
                            " AND pg_get_constraintdef(oid) LIKE '%direction%'").fetchone()[0]
        conn.execute(f'ALTER TABLE _dbkit_history DROP CONSTRAINT "{name}", ADD CONSTRAINT'
                     f" \"{name}\" CHECK (direction IN ('apply', 'rollback'))")
    r = app.cli("migrate", "--mark-applied", "--to", POSTS_IDS[1])
    assert r.code == 0, r.output
    assert applied_ids(app) == POSTS_IDS[:2]


def test_dump_is_the_app_schema_stable_and_follows_the_migrations(created):
    app = created
    assert app.cli("migrate").code == 0
    r = app.cli("dump")
    assert r.code == 0, r.output
    assert "CREATE TABLE public.posts" in r.out and "CREATE TABLE public.votes" in r.out
    for bookkeeping in ("_yoyo_migration", "yoyo_lock", "_dbkit_history", "_dbkit_checksum"):
        assert bookkeeping not in r.out
    assert r.out.rstrip().endswith("\n".join(f"--   {i}" for i in POSTS_IDS))
    assert "\\restrict" not in r.out and app.password not in r.output
    first, second = app.cwd / "schema1.sql", app.cwd / "schema2.sql"
    assert app.cli("dump", "--file", str(first)).code == 0
    assert app.cli("dump", "--file", str(second)).code == 0
    assert first.read_text() == second.read_text() == r.out  # stable: diffs mean changes
    assert app.cli("rollback").code == 0
    after = app.cli("dump").out
    assert after != r.out and f"--   {POSTS_IDS[-1]}" not in after


def test_dump_without_pg_dump_says_where_to_get_it(created, tmp_path):
    app = created
    assert app.cli("migrate").code == 0
    bin_dir = tmp_path / "bin"  # initdb, pg_ctl and postgres, but no pg_dump
    bin_dir.mkdir()
    for name in ("initdb", "pg_ctl", "postgres"):
        (bin_dir / name).symlink_to(find_pg_bin() / name)
    r = app.cli("dump", DBKIT_PG_BIN=str(bin_dir))
    assert r.code == 15 and r.err.count("\n") == 1, r.output
    assert "no pg_dump" in r.err and "DBKIT_PG_BIN" in r.err
    r = app.cli("dump", "--file", str(tmp_path / "no" / "such" / "dir.sql"))
    assert r.code == 3 and "cannot write" in r.err


def test_the_printed_yoyo_list_command_run_as_printed_shows_every_migration_applied(created):
    """README: "yoyo list agrees". The line status --yoyo prints, with the password put back
    where it shows ***, is a shell command that says so."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    from urllib.parse import quote

    app = created
    assert app.cli("migrate").code == 0
    r = app.cli("status", "--yoyo")
    assert r.code == 0 and r.out.startswith("yoyo list --batch --database "), r.output
    assert app.password not in r.out and "***" in r.out
    line = r.out.strip().replace("***", quote(app.password, safe=""))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    out = subprocess.run(["bash", "-c", line], capture_output=True, text=True, env=env,
                         cwd=app.cwd, timeout=120)
    assert out.returncode == 0, out.stderr[-1000:]
    listed = [ln.split() for ln in out.stdout.splitlines() if ln.strip().startswith(("A ", "U "))]
    from dbkit.migrate.files import discover, packaged_dir

    ids = [f.id for f in discover(packaged_dir())]
    assert sorted(row[1] for row in listed if row[0] == "A") == sorted(ids), out.stdout
    assert not [row for row in listed if row[0] == "U"]
