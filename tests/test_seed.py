"""dbkit seed against a real server: idempotent sample data, deterministic synthetic data, files
whose bad rows load nothing and are named, refusal on an unmigrated database; plus file formats,
--json, progress only on a terminal, flat memory."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
from pathlib import Path

import psycopg
from cluster import unique_name
from psycopg import sql

SYNTH = ("--users", "500", "--posts", "50000", "--votes", "20000", "--seed", "7")
TABLES = ("users", "posts", "votes")


def counts(app, dbname: str | None = None) -> dict[str, int]:
    with psycopg.connect(**app.url.connect_kwargs(dbname)) as conn:
        return {t: conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(t)))
                .fetchone()[0] for t in TABLES}


def fingerprint(conn: psycopg.Connection) -> dict[str, str]:
    """md5 over every row of each table in key order (ids included)."""
    out = {}
    for table, key in (("users", "id"), ("posts", "id"), ("votes", "post_id, user_id")):
        out[table] = conn.execute(sql.SQL("SELECT md5(string_agg(t::text, '|' ORDER BY {})) FROM {} t")
                                  .format(sql.SQL(key), sql.Identifier(table))).fetchone()[0]
    return out


def foreign_keys_hold(conn: psycopg.Connection) -> None:
    orphans = conn.execute(
        "SELECT (SELECT count(*) FROM posts p WHERE NOT EXISTS"
        "        (SELECT 1 FROM users u WHERE u.id = p.owner_id)),"
        "       (SELECT count(*) FROM votes v WHERE NOT EXISTS"
        "        (SELECT 1 FROM posts p WHERE p.id = v.post_id)),"
        "       (SELECT count(*) FROM votes v WHERE NOT EXISTS"
        "        (SELECT 1 FROM users u WHERE u.id = v.user_id))").fetchone()
    assert orphans == (0, 0, 0)
    # The constraints themselves are back (seeding may rebuild them) and validated.
    fks = conn.execute("SELECT conname, convalidated FROM pg_constraint WHERE contype = 'f'"
                       " AND conrelid IN ('posts'::regclass, 'votes'::regclass) ORDER BY 1").fetchall()
    assert fks == [("posts_owner_id_fkey", True), ("votes_post_id_fkey", True),
                   ("votes_user_id_fkey", True)]
    idx = {r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE schemaname = 'public'")}
    assert {"posts_owner_id_idx", "votes_user_id_idx", "users_email_lower_key"} <= idx


def schema_snapshot(conn: psycopg.Connection) -> list[tuple[str, ...]]:
    """Every constraint and index of the three tables, as the server defines them."""
    return conn.execute(
        "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid), convalidated::text"
        " FROM pg_constraint WHERE conrelid IN ('users'::regclass, 'posts'::regclass,"
        " 'votes'::regclass) UNION ALL SELECT tablename, indexname, indexdef, '' FROM pg_indexes"
        " WHERE tablename IN ('users', 'posts', 'votes') ORDER BY 1, 2, 3").fetchall()


# -- dbkit seed twice -----------------------------------------------------------------------
def test_sample_seed_twice_second_run_adds_nothing(migrated):
    first = migrated.cli("seed")
    assert first.code == 0, first.output
    after_first = counts(migrated)
    assert all(after_first[t] > 0 for t in TABLES), after_first
    second = migrated.cli("seed", "--json")
    assert second.code == 0, second.output
    assert counts(migrated) == after_first
    data = json.loads(second.out)
    assert data["inserted"] == {"users": 0, "posts": 0, "votes": 0}
    assert data["skipped"] == after_first


def test_sample_seed_keeps_rows_already_there_and_fills_the_rest(migrated):
    with migrated.connect() as conn:  # one sample user already signed up, e-mail in other case
        conn.execute("INSERT INTO users (email, password_hash) VALUES ('Alice@Example.com', 'x')")
    r = migrated.cli("seed", "--json")
    assert r.code == 0, r.output
    assert json.loads(r.out)["skipped"]["users"] == 1
    with migrated.connect() as conn:
        assert conn.execute("SELECT password_hash FROM users WHERE lower(email) = "
                            "'alice@example.com'").fetchall() == [("x",)]
        assert conn.execute("SELECT count(*) FROM posts p JOIN users u ON u.id = p.owner_id"
                            " WHERE u.email = 'Alice@Example.com'").fetchone()[0] == 2


# -- synthetic data: same seed, same data on two fresh databases ----------------------------
def test_synthetic_same_seed_identical_on_two_fresh_databases_fks_hold(migrated):
    other = unique_name("db")
    migrated.extra_dbs.append(other)
    other_url = migrated.url.with_(dbname=other).render(reveal=True)
    for args in (("create",), ("migrate",)):
        r = migrated.cli(*args, DATABASE_URL=other_url)
        assert r.code == 0, r.output
    a = migrated.cli("seed", *SYNTH)
    b = migrated.cli("seed", *SYNTH, DATABASE_URL=other_url)
    assert a.code == 0 and b.code == 0, a.output + b.output
    expected = {"users": 500, "posts": 50000, "votes": 20000}
    assert counts(migrated) == counts(migrated, other) == expected
    with migrated.connect() as c1, psycopg.connect(**migrated.url.connect_kwargs(other)) as c2:
        assert fingerprint(c1) == fingerprint(c2)
        foreign_keys_hold(c1)
        assert schema_snapshot(c1) == schema_snapshot(c2)
        assert c1.execute("SELECT min(id), max(id) FROM posts").fetchone() == (1, 50000)
        # Identity sequences moved past the explicit ids: the app's next insert works.
        c1.execute("INSERT INTO users (email, password_hash) VALUES ('new@example.com', '!')")
        assert c1.execute("SELECT max(id) FROM users").fetchone()[0] == 501
    assert "rows/s" in a.out and "70,500" in a.out


def test_synthetic_rerun_is_a_no_op_other_seed_is_refused_append_adds(migrated):
    small = ("--users", "50", "--posts", "400", "--votes", "300")
    assert migrated.cli("seed", *small, "--seed", "3").code == 0
    with migrated.connect() as conn:
        before = fingerprint(conn)
    again = migrated.cli("seed", *small, "--seed", "3")
    assert again.code == 0, again.output
    assert "already loaded" in again.out
    other = migrated.cli("seed", *small, "--seed", "4")
    assert other.code == 7, other.output
    assert "--append" in other.err and "Traceback" not in other.err
    with migrated.connect() as conn:
        assert fingerprint(conn) == before
    more = migrated.cli("seed", *small, "--seed", "4", "--append")
    assert more.code == 0, more.output
    assert counts(migrated) == {"users": 100, "posts": 800, "votes": 600}
    with migrated.connect() as conn:
        foreign_keys_hold(conn)
        # The appended posts belong to the appended users only.
        assert conn.execute("SELECT min(owner_id) FROM posts WHERE id > 400").fetchone()[0] > 50


def test_failure_while_rebuilding_constraints_leaves_the_database_as_it_was(migrated):
    from dbkit.seed.synthetic import Generator, Plan

    # The first appended user (id 2) will get this e-mail; take it first, in another case.
    taken = Generator(Plan(60000, 0, 0, 5, first_user=2)).users(0).split("\t")[1]
    with migrated.connect() as conn:
        conn.execute("INSERT INTO users (id, email, password_hash) VALUES (1, %s, '!')",
                     [taken.upper()])
    r = migrated.cli("seed", "--users", "60000", "--seed", "5", "--append")
    assert r.code == 7, r.output  # the unique e-mail index, rebuilt after the COPY, refuses
    assert "users_email_lower_key" in r.err and "Traceback" not in r.err
    assert counts(migrated) == {"users": 1, "posts": 0, "votes": 0}
    with migrated.connect() as conn:
        assert conn.execute("SELECT indexdef FROM pg_indexes WHERE indexname ="
                            " 'users_email_lower_key'").fetchone()[0].startswith("CREATE UNIQUE")


def test_synthetic_counts_that_cannot_hold_are_refused(migrated):
    r = migrated.cli("seed", "--users", "2", "--posts", "3", "--votes", "7")
    assert r.code == 3 and "at most once per post" in r.err
    r = migrated.cli("seed", "--posts", "10")
    assert r.code == 3 and "--users" in r.err
    assert counts(migrated) == {"users": 0, "posts": 0, "votes": 0}


# -- --from: a bad row loads nothing and names the line -------------------------------------
def write(dirpath: Path, name: str, text: str) -> Path:
    dirpath.mkdir(exist_ok=True)
    p = dirpath / name
    p.write_text(text)
    return p


USERS_CSV = "id,email,created_at\n1,ann@example.com,2024-01-01T10:00:00Z\n2,bo@example.com,\n"


def test_csv_bad_row_loads_nothing_and_names_line_and_column(migrated):
    d = migrated.cwd / "data"
    write(d, "users.csv", USERS_CSV)
    write(d, "posts.csv", "id,owner_id,title,content,published\n"
                          "1,1,First,Hello,true\n"
                          "2,2,Second,\"multi\nline body\",false\n"
                          "3,1,Third,Bad flag,maybe\n")
    r = migrated.cli("seed", "--from", str(d))
    assert r.code == 14, r.output
    assert f"{d / 'posts.csv'}:5: column 5 (published)" in r.err  # the quoted newline counts
    assert "maybe" in r.err and "Traceback" not in r.err
    assert counts(migrated) == {"users": 0, "posts": 0, "votes": 0}  # users.csv was fine: no


def test_csv_row_naming_a_missing_owner_is_found_by_line(migrated):
    d = migrated.cwd / "data"
    write(d, "users.csv", USERS_CSV)
    write(d, "posts.csv", "owner_email,title,content\nann@example.com,A,x\nnobody@example.com,B,y\n")
    r = migrated.cli("seed", "--from", str(d / "users.csv"), "--from", str(d / "posts.csv"))
    assert r.code == 14, r.output
    assert "posts.csv:3: column 1 (owner_email): no user with e-mail 'nobody@example.com'" in r.err
    assert counts(migrated)["users"] == 0


def test_csv_good_files_load_and_load_again_adds_nothing(migrated):
    d = migrated.cwd / "data"
    write(d, "users.csv", USERS_CSV)
    write(d, "posts.csv", "owner_email,title,content\nann@example.com,A,x\nBO@example.com,B,y\n")
    write(d, "votes.csv", "post_owner_email,post_title,user_email\nann@example.com,A,bo@example.com\n")
    first = migrated.cli("seed", "--from", str(d))
    assert first.code == 0, first.output
    assert counts(migrated) == {"users": 2, "posts": 2, "votes": 1}
    again = migrated.cli("seed", "--from", str(d))
    assert again.code == 0 and counts(migrated) == {"users": 2, "posts": 2, "votes": 1}
    with migrated.connect() as conn:  # explicit ids kept; the sequence moved past them
        conn.execute("INSERT INTO users (email, password_hash) VALUES ('c@example.com', '!')")
        assert conn.execute("SELECT max(id) FROM users").fetchone()[0] == 3


# -- JSON input ---------------------------------------------------------------------------
def test_json_object_file_and_jsonl_load(migrated):
    d = migrated.cwd / "data"
    doc = {"users": [{"email": "x@example.com"}, {"email": "y@example.com"}],
           "posts": [{"owner_email": "x@example.com", "title": "T", "content": "c",
                      "published": False, "created_at": "2024-03-01 12:00:00"}]}
    seed_json = write(d, "seed.json", json.dumps(doc, indent=2))
    votes = write(d, "votes.jsonl", '{"post_owner_email": "x@example.com", "post_title": "T",'
                                    ' "user_email": "y@example.com"}\n')
    r = migrated.cli("seed", "--from", str(seed_json), "--from", str(votes), "--json")
    assert r.code == 0, r.output
    assert json.loads(r.out)["inserted"] == {"users": 2, "posts": 1, "votes": 1}
    with migrated.connect() as conn:
        row = conn.execute("SELECT published, created_at = '2024-03-01 12:00:00+00' FROM posts"
                           ).fetchone()
    assert row == (False, True)  # naive timestamps are UTC


def test_json_bad_record_names_its_line_and_field(migrated):
    d = migrated.cwd / "data"
    p = write(d, "users.json", '[\n  {"email": "a@example.com"},\n  {"email": "b@example.com",\n'
                               '   "id": "seven"}\n]\n')
    r = migrated.cli("seed", "--from", str(p))
    assert r.code == 14, r.output
    assert f"{p}:3: field 'id': expected a positive integer" in r.err
    broken = write(d, "users.jsonl", '{"email": "a@example.com"}\n{"email": \n')
    r = migrated.cli("seed", "--from", str(broken))
    assert r.code == 14 and f"{broken}:2: column" in r.err and "invalid JSON" in r.err
    assert counts(migrated)["users"] == 0


# -- refuse on an unmigrated database / pending migrations ----------------------------------
def test_unmigrated_database_refused_with_hint_to_migrate(app):
    assert app.cli("create").code == 0
    r = app.cli("seed")
    assert r.code == 13, r.output
    assert "hint: run dbkit migrate" in r.err and "Traceback" not in r.err
    r = app.cli("seed", *SYNTH)
    assert r.code == 13 and "run dbkit migrate" in r.err


def test_pending_migration_refused_even_when_tables_exist(app):
    assert app.cli("create").code == 0
    assert app.cli("migrate", "--to", "0005_index_posts_owner").code == 0
    r = app.cli("seed")
    assert r.code == 13, r.output
    assert "1 migration(s) pending (0006_require_post_owner)" in r.err
    assert "run dbkit migrate" in r.err
    assert counts(app) == {"users": 0, "posts": 0, "votes": 0}


# -- runs as the DATABASE_URL role; --dry-run ------------------------------------------------
def test_seed_runs_as_database_url_role_without_rights_refused(migrated, admin_conn):
    reader = unique_name("ro")
    migrated.extra_roles.append(reader)
    admin_conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'pw'").format(sql.Identifier(reader)))
    admin_conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
        sql.Identifier(migrated.db), sql.Identifier(reader)))
    with migrated.connect(autocommit=True) as conn:
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {0};"
                             " GRANT SELECT ON ALL TABLES IN SCHEMA public TO {0}").format(
            sql.Identifier(reader)))
    url = migrated.url.with_(user=reader, password="pw").render(reveal=True)
    r = migrated.cli("seed", DATABASE_URL=url)
    assert r.code == 5, r.output
    assert counts(migrated) == {"users": 0, "posts": 0, "votes": 0}


def sequences(app) -> list[tuple[int, bool]]:
    with app.connect() as conn:
        return [conn.execute(sql.SQL("SELECT last_value, is_called FROM {}").format(
            sql.Identifier(f"{t}_id_seq"))).fetchone() for t in ("users", "posts")]


def test_dry_run_reports_and_changes_nothing_not_even_sequences(migrated):
    r = migrated.cli("seed", "--dry-run", "--json")
    assert r.code == 0, r.output
    data = json.loads(r.out)
    assert data["dry_run"] is True and data["inserted"]["users"] == 5
    assert counts(migrated) == {"users": 0, "posts": 0, "votes": 0}
    assert sequences(migrated) == [(1, False), (1, False)]
    assert migrated.cli("seed").code == 0  # sample rows take ids from the sequences
    after_sample = sequences(migrated)
    for args in (("seed", "--dry-run", "--users", "10", "--posts", "20", "--append"),
                 ("seed", "--dry-run")):
        r = migrated.cli(*args)
        assert r.code == 0 and "dry run (rolled back)" in r.out, r.output
        assert sequences(migrated) == after_sample


# -- output: --json, progress only on a terminal --------------------------------------------
def test_json_output_has_rows_and_rate(migrated):
    r = migrated.cli("seed", "--users", "20", "--posts", "100", "--votes", "50", "--json")
    assert r.code == 0, r.output
    data = json.loads(r.out)
    assert data["mode"] == "synthetic" and data["seed"] == 0
    assert data["inserted"] == {"users": 20, "posts": 100, "votes": 50}
    assert data["rows"] == 170 and data["rows_per_s"] > 0
    assert data["database"] == migrated.db and data["role"] == migrated.role


def test_progress_bar_on_a_terminal_only(migrated):
    args = ("seed", "--users", "100", "--posts", "20000")
    piped = migrated.subprocess(*args)
    assert piped.code == 0, piped.output
    assert piped.err == ""  # stderr is a pipe: no bar, not even a label
    assert "seeding" not in piped.out
    with migrated.connect() as conn:
        conn.execute("TRUNCATE users, posts, votes")
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k not in migrated.env()}
    env.update({k: v for k, v in migrated.env().items() if v is not None})
    proc = subprocess.Popen([sys.executable, "-m", "dbkit", *args], cwd=migrated.cwd, env=env,
                            stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    tty_err = b""
    while True:
        ready, _, _ = select.select([master], [], [], 60)
        if not ready:
            break
        try:
            chunk = os.read(master, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        tty_err += chunk
    out, _ = proc.communicate(timeout=60)
    os.close(master)
    assert proc.returncode == 0, tty_err
    assert b"seeding" in tty_err and b"20100/20100" in tty_err
    assert b"seeding" not in out and b"rows/s" in out


# -- memory stays flat ------------------------------------------------------------------------
_RSS = """
import resource, subprocess, sys
subprocess.run([sys.executable, "-m", "dbkit", *sys.argv[1:]], check=True, capture_output=True)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)  # KiB on Linux
"""


def peak_rss_mib(app, *args: str) -> float:
    env = {k: v for k, v in os.environ.items() if k not in app.env()}
    env.update({k: v for k, v in app.env().items() if v is not None})
    out = subprocess.run([sys.executable, "-c", _RSS, *args], cwd=app.cwd, env=env, check=True,
                         capture_output=True, text=True, timeout=300).stdout
    return int(out.strip()) / 1024


def test_peak_memory_is_flat_in_the_row_count(migrated):
    small = peak_rss_mib(migrated, "seed", "--users", "100", "--posts", "5000")
    with migrated.connect() as conn:
        conn.execute("TRUNCATE users, posts, votes")
        before = schema_snapshot(conn)
    big = peak_rss_mib(migrated, "seed", "--users", "5000", "--posts", "300000",
                       "--votes", "200000")
    assert counts(migrated) == {"users": 5000, "posts": 300000, "votes": 200000}
    with migrated.connect() as conn:  # keys, foreign keys and indexes rebuilt exactly
        foreign_keys_hold(conn)
        assert schema_snapshot(conn) == before
    assert big < 150, f"peak RSS {big:.0f} MiB"
    assert big - small < 25, f"peak RSS grew from {small:.0f} to {big:.0f} MiB with 100x the rows"


def test_the_hint_after_setup_seeded_the_sample_works_when_followed(app):
    """Right after setup (sample loaded), seed --help's synthetic example is refused; its hint
    must lead somewhere that works, not back to the sample."""
    assert app.cli("setup").code == 0
    synthetic = ("seed", "--users", "20", "--posts", "50", "--votes", "30", "--seed", "7")
    r = app.cli(*synthetic)
    assert r.code == 7 and "dbkit reset --no-seed" in r.err and "--append" in r.err, r.output
    assert app.cli("reset", "--yes", "--no-seed").code == 0
    again = app.cli(*synthetic)
    assert again.code == 0, again.output
    production = app.cli(*synthetic, "--append", "--allow-production", DBKIT_ENV="production")
    assert production.code == 0, production.output
    refused = app.cli(*synthetic[:-2], "--seed", "8", "--allow-production",
                      DBKIT_ENV="production")
    assert refused.code == 7 and "reset" not in refused.err, refused.output
