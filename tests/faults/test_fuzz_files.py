"""Bad-input fuzzing of files: migration file names and contents, CSV/JSON/JSONL seed files.

Every case ends in success or a clean, documented error — one ``dbkit: error:`` line, a
documented exit code, never 1 ("unexpected"), no traceback. Beyond that:

- migrations: every command that reads them (lint, migrate --dry-run, migrate, status,
  verify, rollback --all) on a fresh database, in development and production mode; whatever
  migrate reports as applied is exactly what yoyo's table records;
- seed files: a failed load leaves the tables exactly as they were; a successful one adds
  exactly the rows it reports, and the identity sequences stay ahead of the ids.

Short version: 30 + 60 examples (derandomized); ``--long-faults``: 10 times as many, random.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import psycopg
import pytest
from cluster import drop_everything, unique_name
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from psycopg import sql

from dbkit.errors import EXIT_CODES

pytestmark = pytest.mark.faults
DOCUMENTED = {code for code, _ in EXIT_CODES} - {1}


def clean_outcome(result, what: object) -> None:
    assert "Traceback" not in result.output, (what, result.output)
    assert result.code in DOCUMENTED | {0}, (what, result.output)
    if result.code:
        lines = [ln for ln in result.err.splitlines() if ln.strip()
                 and not ln.startswith("dbkit: warning:")]
        assert len(lines) == 1 and lines[0].startswith("dbkit: error:"), (what, result.err)


def fuzz_settings(fault_scale: int, base: int) -> settings:
    return settings(max_examples=base * fault_scale, deadline=None, derandomize=fault_scale == 1,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow, HealthCheck.data_too_large])


text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30)

# -- migrations -----------------------------------------------------------------------------
SQL_FRAGMENTS = [
    "CREATE TABLE IF NOT EXISTS fz_a (id int PRIMARY KEY, v text);\n",
    "CREATE TABLE fz_b (id int REFERENCES fz_a);\n",
    "INSERT INTO fz_a VALUES (1, 'x');\n", "INSERT INTO fz_a VALUES (1, 'x') ON CONFLICT DO NOTHING;\n",
    "ALTER TABLE fz_a ADD COLUMN w int NOT NULL DEFAULT 0;\n", "DROP TABLE fz_a;\n",
    "CREATE INDEX CONCURRENTLY IF NOT EXISTS fz_i ON fz_a (v);\n", "CREATE INDEX fz_j ON fz_a (v);\n",
    "SELECT 1;\n", "SELECT * FROM generate_series(1, 3);\n", "SELECT 1/0;\n", "SELECT pg_sleep(0.01);\n",
    "BEGIN;\n", "COMMIT;\n", "ROLLBACK;\n", "VACUUM;\n", "SAVEPOINT s; ROLLBACK TO s;\n",
    "SET search_path = nowhere;\n", "SET lock_timeout = 1;\n", "SET ROLE postgres;\n", "RESET ALL;\n",
    "CREATE DATABASE fz_nope;\n", "DO $$ BEGIN RAISE EXCEPTION 'boom'; END $$;\n",
    "DO $$ BEGIN RAISE NOTICE 'hello'; END $$;\n", "CREATE FUNCTION fz_f() RETURNS int AS $$ SELECT 1; $$"
    " LANGUAGE sql;\n", "DROP TABLE _yoyo_migration;\n", "DELETE FROM _yoyo_migration;\n",
    "SELECT pg_terminate_backend(pg_backend_pid());\n", "LOCK TABLE fz_a IN ACCESS EXCLUSIVE MODE;\n",
    "-- transactional: false\n", "-- transactional: maybe\n", "-- depends: 0001_a\n",
    "-- depends: nosuch\n", "-- dbkit: ignore all\n", "-- a comment\n", "/* unterminated comment",
    "'unterminated string", "$$ unterminated dollar", ";;;\n", "\n", "\r\n", "\ufeff", "é ✓ 🐘\n",
    "\\copy fz_a FROM stdin\n", "COPY fz_a FROM STDIN;\n", "CREATE TABLE \"fz \"\"q\"\" t\" (x int);\n",
]
name_stems = st.one_of(
    st.from_regex(r"\A(000[1-4]|0010|1|10|2)_[a-z]{1,6}\Z"),
    st.sampled_from(["0001_a", "0002_b", "post-apply", "post-apply2", "_tmp_yoyonew1", "-", ".",
                     "0003_a.rollback", " 0001 spaced", "x" * 240, "ünïcode ✓", "a'b\"c;--",
                     "new\nline"]),
    text.filter(lambda s: s not in ("", ".", "..")),
)
suffixes = st.sampled_from([".sql", ".sql", ".sql", ".rollback.sql", ".py", ".SQL", "", ".txt"])
contents = st.tuples(st.lists(st.sampled_from(SQL_FRAGMENTS), max_size=6), text,
                     st.sampled_from([b"", b"", b"\xff\xfe", b"\x00", b"\xc3"])).map(
    lambda t: "".join(t[0]).encode() + t[1].encode() + t[2])
migration_dirs = st.lists(st.tuples(name_stems, suffixes, contents), max_size=5)


def _file_name(stem: str, suffix: str) -> str | None:
    name = stem + suffix
    ok = "/" not in name and "\x00" not in name and name not in (".", "..") and \
        len(name.encode()) <= 255
    return name if ok else None


def test_migration_file_names_and_contents(app, admin_conn, fault_scale):
    assert app.cli("create").code == 0
    directory = app.cwd / "fuzz-migrations"
    outcomes: dict[str, dict[int, int]] = {}

    @fuzz_settings(fault_scale, 30)
    @given(files=migration_dirs, env=st.sampled_from(["development", "production"]))
    @example(files=[("0001_a", ".sql", b""), ("new\nline", ".sql", b"")], env="development")
    @example(files=[("\x0c", ".sql", b"")], env="production")
    def check(files: list[tuple[str, str, bytes]], env: str) -> None:
        directory.mkdir(exist_ok=True)
        for old in directory.iterdir():
            old.unlink()
        for stem, suffix, data in files:
            name = _file_name(stem, suffix)
            if name:
                (directory / name).write_bytes(data)
        db = unique_name("fz")
        admin_conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
            sql.Identifier(db), sql.Identifier(app.role)))
        url = app.url.with_(dbname=db)
        run_env = {"DATABASE_URL": url.render(reveal=True), "DBKIT_ENV": env,
                   "DBKIT_MIGRATIONS": str(directory), "DBKIT_LOCK_TIMEOUT": "2s"}
        try:
            clean_outcome(app.cli("lint", str(directory)), ("lint", files))
            for args in [("migrate", "--dry-run"), ("migrate", "--json"), ("status",),
                         ("verify",), ("rollback", "--all"), ("migrate", "--json")]:
                r = app.cli(*args, **run_env)
                clean_outcome(r, (args, env, files))
                per = outcomes.setdefault(" ".join(args), {})
                per[r.code] = per.get(r.code, 0) + 1
                if args == ("migrate", "--json") and r.code == 0:
                    reported = {m["id"] for m in json.loads(r.out)["applied"]}
                    with psycopg.connect(**url.connect_kwargs()) as conn:
                        recorded = {row[0] for row in conn.execute(
                            "SELECT migration_id FROM _yoyo_migration")} if conn.execute(
                            "SELECT to_regclass('_yoyo_migration')").fetchone()[0] else set()
                    assert reported <= recorded, (reported, recorded, files)
        finally:
            drop_everything(app.pg, [db], [])

    check()
    print(f"migration file fuzz: exit codes per command {outcomes}")


def test_new_migration_names(app, fault_scale):
    @fuzz_settings(fault_scale, 20)
    @given(name=st.one_of(text, st.sampled_from(["", " ", "../../etc/passwd", "a/b", "x" * 500,
                                                 "--help", "-", "ünïcode", "\x00"])))
    def check(name: str) -> None:
        r = app.cli("new", "--", name, DBKIT_MIGRATIONS=str(app.cwd / "new-migrations"))
        clean_outcome(r, name)
        if r.code == 0:  # always inside the directory, whatever the name
            for line in r.out.splitlines():
                path = Path(line.split(None, 1)[1].split(" (")[0])
                assert path.parent == app.cwd / "new-migrations", line

    check()


# -- seed files -----------------------------------------------------------------------------
COLUMNS = {
    "users": ["id", "email", "password_hash", "created_at"],
    "posts": ["id", "title", "content", "published", "created_at", "owner_id", "owner_email"],
    "votes": ["post_id", "post_owner_email", "post_title", "user_id", "user_email"],
}
VALUES = ["", "1", "2", "3", "0", "-1", "07", " 2 ", "9223372036854775807", "9223372036854775808",
          "1e3", "1.5", "true", "f", "yes", "maybe", "2024-05-01T12:00:00Z", "2024-02-30",
          "2024-05-01 12:00:00+14:00", "2024-05-01T12:00:00+23:59", "0001-01-01", "9999-12-31",
          "ada@example.com", "ADA@example.com", "bob@example.com", "new@example.com", "  ",
          "Hello", "hello", "a\"b", "line\nbreak", "x,y", "\x00", "é ✓", "\t", "\\N", "NULL"]
cell = st.one_of(st.sampled_from(VALUES), text)
json_value = st.one_of(st.sampled_from(VALUES), text, st.integers(-3, 2**64),
                       st.booleans(), st.none(), st.floats(allow_nan=True),
                       st.sampled_from(["\ud800", "x\udfff", [1], {"a": 1}]))


EMAILS = ["alice@example.com", "bob@example.com", "BOB@example.com", "zed@example.com",
          "yan@example.com"]
TITLES = ["Hello, world", "Fuzzed", "Another one"]


@st.composite
def plausible(draw, table: str) -> dict[str, object]:
    """A row that may well load (names from the sample data and a small pool), so the fuzzer
    reaches the database-side checks and successes, not only the parser's refusals."""
    email, ident = st.sampled_from(EMAILS), st.integers(1, 40)
    ts = st.sampled_from(["2024-05-01T12:00:00Z", "2023-01-01 08:00:00+02:00", "2022-03-04"])
    if table == "users":
        row = {"email": draw(email)} | draw(st.fixed_dictionaries(
            {}, optional={"id": ident, "password_hash": st.just("!"), "created_at": ts}))
    elif table == "posts":
        owner = draw(st.sampled_from([{"owner_email": draw(email)}, {"owner_id": draw(ident)}]))
        row = {"title": draw(st.one_of(st.sampled_from(TITLES), text)), "content": draw(text),
               **owner} | draw(st.fixed_dictionaries(
                   {}, optional={"id": ident, "published": st.sampled_from(["t", "no", True]),
                                 "created_at": ts}))
    else:
        post = draw(st.sampled_from([{"post_id": draw(ident)}, {
            "post_owner_email": draw(email), "post_title": draw(st.sampled_from(TITLES))}]))
        row = {**post, **draw(st.sampled_from([{"user_email": draw(email)},
                                                {"user_id": draw(ident)}]))}
    if draw(st.integers(0, 5)) == 0:  # one mutation
        key = draw(st.sampled_from([*COLUMNS[table], "unknown", ""]))
        if draw(st.booleans()):
            row.pop(key, None)
        else:
            row[key] = draw(json_value)
    return row


@st.composite
def records_for(draw, table: str) -> list[object]:
    keys = st.one_of(st.sampled_from(COLUMNS[table]), st.sampled_from(["", "unknown"]))
    recs: list[object] = draw(st.lists(st.one_of(
        plausible(table), plausible(table), plausible(table), plausible(table),
        st.dictionaries(keys, json_value, max_size=5)), max_size=5))
    if draw(st.integers(0, 9)) == 0:
        recs.append(draw(json_value))  # not an object
    return recs


def _cell(value: object) -> str:
    return "" if value is None else str(value)


@st.composite
def csv_file(draw, table: str) -> bytes:
    recs = [r for r in draw(records_for(table)) if isinstance(r, dict)]
    header = list(dict.fromkeys(k for r in recs for k in r))
    if draw(st.integers(0, 5)) == 0:
        header = draw(st.lists(st.sampled_from([*COLUMNS[table], "", "ID", " Email "]),
                               max_size=5))
    buf = io.StringIO()
    writer = csv.writer(buf)
    if header or draw(st.booleans()):
        writer.writerow(header)
    for r in recs:
        row = [_cell(r.get(k)) for k in header]
        if draw(st.integers(0, 9)) == 0:
            row = row[:-1] if draw(st.booleans()) else [*row, draw(cell)]  # ragged
        writer.writerow(row)
    data = buf.getvalue()
    if draw(st.integers(0, 9)) == 0:
        data = data.replace('"', "", 1)  # break the quoting
    raw = data.encode(errors="surrogatepass")
    return draw(st.sampled_from([b"", b"\xef\xbb\xbf"])) + raw + draw(
        st.sampled_from([b"", b"", b"", b"\xff", b"\x00\n"]))


@st.composite
def seed_dir(draw) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for table in draw(st.lists(st.sampled_from(list(COLUMNS)), min_size=1, max_size=3,
                               unique=True)):
        kind = draw(st.sampled_from(["csv", "json", "jsonl", "object"]))
        if kind == "csv":
            files[f"{table}.csv"] = draw(csv_file(table))
        elif kind == "json":
            files[f"{table}.json"] = json.dumps(draw(records_for(table))).encode()
        elif kind == "jsonl":
            lines = [json.dumps(r) for r in draw(records_for(table))]
            files[f"{table}.jsonl"] = "\n".join(lines).encode()
        else:
            obj = {t: draw(records_for(t if t in COLUMNS else "users")) for t in draw(st.lists(
                st.sampled_from([*COLUMNS, "extra"]), max_size=3, unique=True))}
            files["data.json"] = json.dumps(obj, indent=draw(st.sampled_from([None, 1]))).encode()
    if draw(st.integers(0, 9)) == 0:  # truncated or garbage JSON
        name = next(iter(files))
        files[name] = files[name][: draw(st.integers(0, max(0, len(files[name]) - 1)))]
    return files


def _state(conn: psycopg.Connection) -> tuple:
    return conn.execute(
        "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM posts),"
        " (SELECT count(*) FROM votes),"
        " (SELECT md5(coalesce(string_agg(u::text, ',' ORDER BY id), '')) FROM users u),"
        " (SELECT md5(coalesce(string_agg(p::text, ',' ORDER BY id), '')) FROM posts p),"
        " (SELECT md5(coalesce(string_agg(v::text, ',' ORDER BY v::text), '')) FROM votes v)"
    ).fetchone()


def test_seed_files_csv_json_jsonl(app, fault_scale):
    assert app.cli("create").code == 0
    assert app.cli("migrate").code == 0
    assert app.cli("seed").code == 0  # sample rows to conflict with
    base = app.cwd / "fuzz-seed"
    outcomes: dict[int, int] = {}

    @fuzz_settings(fault_scale, 60)
    @given(files=seed_dir(), as_dir=st.booleans(), dry=st.booleans())
    def check(files: dict[str, bytes], as_dir: bool, dry: bool) -> None:
        d = base / unique_name("case")
        d.mkdir(parents=True)
        for name, data in files.items():
            (d / name).write_bytes(data)
        targets = [str(d)] if as_dir or "data.json" in files else [str(d / n) for n in files]
        if "data.json" in files and not as_dir:
            targets = [str(d / "data.json")]
        with app.connect() as conn:
            before = _state(conn)
        r = app.cli("seed", "--json", *(["--dry-run"] if dry else []),
                    *(x for t in targets for x in ("--from", t)))
        clean_outcome(r, files)
        outcomes[r.code] = outcomes.get(r.code, 0) + 1
        with app.connect() as conn:
            after = _state(conn)
            ahead = conn.execute(
                "SELECT bool_and(coalesce(pg_sequence_last_value(pg_get_serial_sequence(t,"
                " 'id')::regclass), 0) >= m) FROM (VALUES ('users', (SELECT coalesce(max(id), 0)"
                " FROM users)), ('posts', (SELECT coalesce(max(id), 0) FROM posts))) x(t, m)"
            ).fetchone()[0]
        assert ahead
        if r.code or dry:
            assert after == before, (files, r.output)  # nothing loaded, nothing changed
        else:
            inserted = json.loads(r.out)["inserted"]
            assert [after[i] - before[i] for i in range(3)] == \
                [inserted["users"], inserted["posts"], inserted["votes"]], (files, r.out)

    check()
    print(f"seed file fuzz: exit codes {dict(sorted(outcomes.items()))}")
    assert 0 in outcomes and 14 in outcomes  # the generator reaches both sides


# -- transaction control inside a migration -------------------------------------------------
CONTROL = ["COMMIT;\n", "ROLLBACK;\n", "BEGIN;\n", "END;\n", "ABORT;\n", "START TRANSACTION;\n",
           "SAVEPOINT s;\n", "ROLLBACK TO SAVEPOINT s;\n", "RELEASE SAVEPOINT s;\n",
           "SELECT 1/0;\n"]


def test_a_recorded_migration_is_always_whole(app, admin_conn, fault_scale):
    """Statements that end or open transactions inside a migration file: whatever happens,
    a migration recorded as applied has every one of its CREATE TABLEs in place, and one that
    failed without a COMMIT of its own left nothing behind."""
    assert app.cli("create").code == 0
    directory = app.cwd / "tx-migrations"
    directory.mkdir()

    @fuzz_settings(fault_scale, 20)
    @given(parts=st.lists(st.one_of(st.sampled_from(CONTROL), st.just("CREATE")), min_size=1,
                          max_size=6), transactional=st.booleans())
    @example(parts=["CREATE", "ROLLBACK;\n", "CREATE"], transactional=True)
    @example(parts=["BEGIN;\n", "CREATE"], transactional=False)
    def check(parts: list[str], transactional: bool) -> None:
        names = [f"tx_{i}" for i, p in enumerate(parts) if p == "CREATE"]
        body = "" if transactional else "-- transactional: false\n"
        body += "".join(f"CREATE TABLE tx_{i} (x int);\n" if p == "CREATE" else p
                        for i, p in enumerate(parts))
        for old in directory.iterdir():
            old.unlink()
        (directory / "0001_tx.sql").write_text(body)
        db = unique_name("tx")
        admin_conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
            sql.Identifier(db), sql.Identifier(app.role)))
        url = app.url.with_(dbname=db)
        try:
            r = app.cli("migrate", "--migrations", str(directory),
                        DATABASE_URL=url.render(reveal=True))
            clean_outcome(r, body)
            with psycopg.connect(**url.connect_kwargs()) as conn:
                recorded = conn.execute("SELECT count(*) FROM _yoyo_migration").fetchone()[0]
                present = [n for n in names if conn.execute(
                    "SELECT to_regclass(%s) IS NOT NULL", (n,)).fetchone()[0]]
            assert recorded == (1 if r.code == 0 else 0), (body, r.output)
            if recorded:
                assert present == names, (body, "recorded as applied, but missing",
                                          sorted(set(names) - set(present)))
            elif transactional and "COMMIT;\n" not in parts and "END;\n" not in parts:
                assert present == [], (body, "failed, yet left", present)
        finally:
            drop_everything(app.pg, [db], [])

    check()
