"""``dbkit setup`` on a running server vs the shell chain doing the same work by hand.

Same end state on both sides, checked after the runs: a login role with a SCRAM password, a
UTF8 database owned by it, PUBLIC's rights on the database and on schema ``public`` revoked,
``public`` owned by the role, the posts schema applied with yoyo's bookkeeping, and the sample
data (5 users, 10 posts, 24 votes) — compared row by row without ids.

- ``dbkit setup``: ``python -m dbkit setup`` (one process: create, migrate, seed);
- ``dbkit.setup.setup()``: the same in-process (no interpreter start, no imports);
- the shell chain, five processes: ``createuser --login -P`` (password typed on stdin,
  hashed by libpq on the client), ``createdb -O -E UTF8``, ``yoyo apply`` of the same
  migration files, ``psql -1 -f harden.sql -f seed.sql`` (REVOKE/ALTER SCHEMA, then the sample
  rows as INSERTs) — each step's median is printed too.

Passwords go through PGPASSWORD or stdin, never argv. dbkit's modules are byte-compiled
first, as a wheel install leaves them (bench_startup.compiled). dbkit additionally records checksums
and history (``_dbkit_checksum``, ``_dbkit_history``), lints pending migrations and checks the
schema before seeding; the chain does none of that. Each run starts from nothing (role and
database dropped, untimed); runs are interleaved; medians.

The server: the fsync-off throwaway cluster (``throwaway_cluster`` of tests/cluster.py), or
DBKIT_TEST_ADMIN_URL's. ``python -m bench setup`` or ``python -m bench.bench_setup``.

Then the migrate step alone, the posts schema on an empty database: ``dbkit migrate`` (CLI
and in-process) vs ``yoyo apply`` of the same files vs ``psql -1 -f`` of them concatenated
(the floor).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import cluster, interleaved, median, save, table

PASSWORD = "bench-setup-pw"
NAMES = {"dbkit setup": "bench_setup_cli", "dbkit.setup.setup()": "bench_setup_lib",
         "shell chain": "bench_setup_chain"}


def seed_sql(conn: Any) -> str:
    """The shipped sample as plain INSERTs (owners, posts and voters found by e-mail)."""
    from psycopg import sql

    from dbkit.seed.commands import SAMPLE

    data = json.loads(SAMPLE.read_text())

    def values(rows: list[dict[str, Any]], cols: list[str]) -> sql.Composable:
        return sql.SQL(", ").join(
            sql.SQL("({})").format(sql.SQL(", ").join(sql.Literal(r.get(c)) for c in cols))
            for r in rows)

    users = sql.SQL("INSERT INTO users (email, password_hash, created_at) SELECT email,"
                    " password_hash, created_at::timestamptz FROM (VALUES {}) v(email,"
                    " password_hash, created_at);").format(
        values(data["users"], ["email", "password_hash", "created_at"]))
    posts = sql.SQL(
        "INSERT INTO posts (title, content, published, created_at, owner_id) SELECT v.title,"
        " v.content, coalesce(v.published, true), v.created_at::timestamptz, u.id FROM (VALUES"
        " {}) v(owner_email, title, content, published, created_at) JOIN users u ON"
        " lower(u.email) = lower(v.owner_email);").format(
        values(data["posts"], ["owner_email", "title", "content", "published", "created_at"]))
    votes = sql.SQL(
        "INSERT INTO votes (post_id, user_id) SELECT p.id, u.id FROM (VALUES {})"
        " v(owner_email, title, user_email) JOIN users o ON lower(o.email) ="
        " lower(v.owner_email) JOIN posts p ON p.owner_id = o.id AND p.title = v.title"
        " JOIN users u ON lower(u.email) = lower(v.user_email);").format(
        values(data["votes"], ["post_owner_email", "post_title", "user_email"]))
    return "\n".join(q.as_string(conn) for q in (users, posts, votes)) + "\n"


HARDEN = """REVOKE ALL ON DATABASE :"DBNAME" FROM PUBLIC;
ALTER SCHEMA public OWNER TO :"USER";
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
"""

STATE = """SELECT r.rolcanlogin, r.rolsuper, r.rolcreatedb, r.rolcreaterole,
  left(a.rolpassword, 13), pg_get_userbyid(d.datdba) = r.rolname, pg_encoding_to_char(d.encoding),
  d.datacl IS NOT NULL AND NOT EXISTS (SELECT 1 FROM aclexplode(d.datacl) x WHERE x.grantee = 0)
FROM pg_roles r JOIN pg_authid a ON a.oid = r.oid JOIN pg_database d ON d.datname = %s
WHERE r.rolname = %s"""
INSIDE = """SELECT pg_get_userbyid(n.nspowner) = current_user,
  NOT has_schema_privilege('public', 'public', 'CREATE'),
  (SELECT count(*) FROM _yoyo_migration),
  (SELECT md5(string_agg(concat_ws('|', email, password_hash, created_at), ',' ORDER BY email))
   FROM users),
  (SELECT md5(string_agg(concat_ws('|', u.email, title, content, published, p.created_at), ','
   ORDER BY u.email, title)) FROM posts p JOIN users u ON u.id = p.owner_id),
  (SELECT md5(string_agg(concat_ws('|', o.email, p.title, u.email), ','
   ORDER BY o.email, p.title, u.email)) FROM votes v JOIN posts p ON p.id = v.post_id
   JOIN users o ON o.id = p.owner_id JOIN users u ON u.id = v.user_id)
FROM pg_namespace n WHERE n.nspname = 'public'"""


def main(runs: int = 7) -> list[dict[str, object]]:
    import psycopg
    from psycopg import sql

    from bench.bench_startup import compiled
    from dbkit import setup
    from dbkit.migrate.files import packaged_dir
    from dbkit.server import find_pg_bin
    from dbkit.settings import Settings

    compiled()  # dbkit's .pyc, as a wheel install leaves them (see bench_startup)
    packaged = packaged_dir()
    bindir = find_pg_bin()
    yoyo = str(Path(sys.executable).parent / "yoyo")
    base_env = {k: v for k, v in os.environ.items()
                if not k.startswith(("DBKIT_", "PG")) and k != "DATABASE_URL"}
    with cluster(os.environ.get("DBKIT_TEST_ADMIN_URL")) as admin, \
            tempfile.TemporaryDirectory(prefix="bench-setup-") as tmp, \
            psycopg.connect(autocommit=True, **admin.connect_kwargs()) as conn:
        work = Path(tmp)
        (work / "harden.sql").write_text(HARDEN)
        (work / "seed.sql").write_text(seed_sql(conn))
        urls = {case: admin.with_(user=name, password=PASSWORD, dbname=name)
                for case, name in NAMES.items()}
        host = ["-h", str(admin.host), "-p", str(admin.port)]
        admin_env = {**base_env, "PGPASSWORD": admin.password or ""}
        app_env = {**base_env, "PGPASSWORD": PASSWORD}
        steps: dict[str, list[float]] = {}

        def fresh(case: str) -> None:
            name = NAMES[case]
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))

        def timed(step: str, args: list[str], env: dict[str, str], stdin: str | None = None
                  ) -> None:
            started = time.perf_counter()
            # start_new_session: no controlling terminal, so createuser -P reads stdin
            subprocess.run(args, env=env, input=stdin, check=True, capture_output=True,
                           text=True, start_new_session=True)
            steps.setdefault(step, []).append(time.perf_counter() - started)

        def chain() -> None:
            name = NAMES["shell chain"]
            timed("createuser --login -P", [str(bindir / "createuser"), *host, "-U",
                                            admin.user or "postgres", "--login", "-P", name],
                  admin_env, stdin=f"{PASSWORD}\n{PASSWORD}\n")
            timed("createdb -O -E UTF8", [str(bindir / "createdb"), *host, "-U",
                                          admin.user or "postgres", "-O", name, "-E", "UTF8",
                                          name], admin_env)
            yoyo_url = urls["shell chain"].with_(password=None).render(scheme="postgresql+psycopg")
            timed("yoyo apply", [yoyo, "apply", "--batch", "--database", yoyo_url, str(packaged)],
                  app_env)
            timed("psql -1 -f harden.sql -f seed.sql",
                  [str(bindir / "psql"), "-X", "-q", "-1", "-v", "ON_ERROR_STOP=1", *host, "-U",
                   name, "-d", name, "-f", str(work / "harden.sql"), "-f", str(work / "seed.sql")],
                  app_env)

        def cli() -> None:
            env = {**base_env, "DBKIT_ADMIN_URL": admin.render(reveal=True),
                   "DATABASE_URL": urls["dbkit setup"].render(reveal=True)}
            subprocess.run([sys.executable, "-m", "dbkit", "setup"], cwd=work, env=env,
                           check=True, capture_output=True)

        def lib() -> None:
            s = Settings.load(environ={
                "DBKIT_ADMIN_URL": admin.render(reveal=True),
                "DATABASE_URL": urls["dbkit.setup.setup()"].render(reveal=True)}, cwd=work)
            setup.setup(s, admin)

        times = interleaved({"dbkit setup": cli, "dbkit.setup.setup()": lib,
                             "shell chain": chain}, runs=runs, warmup=1, setup=fresh)
        states = {}
        for case, url in urls.items():
            outer = conn.execute(STATE, (url.dbname, url.user)).fetchone()
            with psycopg.connect(**url.connect_kwargs()) as c:
                states[case] = (outer, c.execute(INSIDE).fetchone())
        same = len(set(states.values())) == 1
        if not same:
            raise SystemExit(f"end states differ: {states}")
        for case in NAMES:
            fresh(case)
        rows = table("Setup on a running server (create + migrate + seed)", [
            ("dbkit setup (CLI) vs the shell chain", "dbkit setup", "shell chain"),
            ("dbkit.setup.setup() vs the shell chain", "dbkit.setup.setup()", "shell chain"),
        ], times)
        print("\nshell chain, median per step: " + "; ".join(
            f"{step} {median(t[1:]) * 1000:.0f} ms" for step, t in steps.items()))
        print(f"end states identical (role, database, privileges, migrations, sample rows): {same}")
        rows.append({"what": "shell chain steps (ms)",
                     "steps": {s: round(median(t[1:]) * 1000, 1) for s, t in steps.items()},
                     "identical_end_state": same})
        rows += _migrate_posts(admin, conn, work, bindir, yoyo, base_env, runs)
    save("setup", rows)
    return rows


MIGRATE_ROLE = "bench_setup_mig"
MIGRATE_CASES = {"dbkit migrate": "bench_mig_cli",
                 "dbkit.migrate.commands.migrate()": "bench_mig_lib",
                 "yoyo apply": "bench_mig_yoyo", "psql -1 -f": "bench_mig_psql"}
SCHEMA = """SELECT string_agg(format('%s %s', tablename, indexdef), E'\\n' ORDER BY indexdef)
FROM pg_indexes WHERE schemaname = 'public' AND tablename IN ('users', 'posts', 'votes')"""


def _migrate_posts(admin: Any, conn: Any, work: Path, bindir: Path, yoyo: str,
                   base_env: dict[str, str], runs: int) -> list[dict[str, object]]:
    """The migrate step alone: the posts schema (6 migrations) on an empty database.

    ``psql -1 -f`` runs the concatenated files in one transaction, the floor (no bookkeeping;
    the concurrent index is built plainly, as a transaction requires)."""
    import psycopg
    from psycopg import sql

    from dbkit.migrate import commands as migrate
    from dbkit.migrate.files import packaged_dir
    from dbkit.settings import Settings, Target

    packaged = packaged_dir()
    files = sorted(p for p in packaged.glob("*.sql") if not p.name.endswith(".rollback.sql"))
    flat = "".join(p.read_text() for p in files).replace("CREATE INDEX CONCURRENTLY",
                                                         "CREATE INDEX")
    (work / "posts.sql").write_text(flat)
    role = sql.Identifier(MIGRATE_ROLE)
    conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(role))
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(role, sql.Literal(PASSWORD)))
    urls = {case: admin.with_(user=MIGRATE_ROLE, password=PASSWORD, dbname=db)
            for case, db in MIGRATE_CASES.items()}
    env = {**base_env, "PGPASSWORD": PASSWORD}

    def fresh(case: str) -> None:
        db = sql.Identifier(MIGRATE_CASES[case])
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(db))
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(db, role))

    def run(args: list[str], extra: dict[str, str] | None = None) -> None:
        subprocess.run(args, cwd=work, env={**env, **(extra or {})}, check=True,
                       capture_output=True)

    cases = {
        "dbkit migrate": lambda: run([sys.executable, "-m", "dbkit", "migrate"], {
            "DATABASE_URL": urls["dbkit migrate"].render(reveal=True)}),
        "dbkit.migrate.commands.migrate()": lambda: migrate.migrate(Target.of(
            urls["dbkit.migrate.commands.migrate()"], Settings.load(environ={}, cwd=work))),
        "yoyo apply": lambda: run([yoyo, "apply", "--batch", "--database", urls["yoyo apply"]
                                   .with_(password=None).render(scheme="postgresql+psycopg"),
                                   str(packaged)]),
        "psql -1 -f": lambda: run([str(bindir / "psql"), "-X", "-q", "-1", "-v",
                                   "ON_ERROR_STOP=1", "-h", str(admin.host), "-p", str(admin.port),
                                   "-U", MIGRATE_ROLE, "-d", MIGRATE_CASES["psql -1 -f"], "-f",
                                   str(work / "posts.sql")]),
    }
    try:
        times = interleaved(cases, runs=runs, warmup=1, setup=fresh)
        schemas = set()
        for url in urls.values():
            with psycopg.connect(**url.connect_kwargs()) as c:
                schemas.add(c.execute(SCHEMA).fetchone()[0])
        if len(schemas) != 1:
            raise SystemExit(f"the posts schema differs between the cases: {schemas}")
        rows = table("Migrate the posts schema (6 migrations) on an empty database", [
            ("dbkit migrate (CLI) vs yoyo apply (CLI)", "dbkit migrate", "yoyo apply"),
            ("dbkit migrate (CLI) vs psql -1 -f (floor)", "dbkit migrate", "psql -1 -f"),
            ("dbkit.migrate.commands.migrate() vs psql -1 -f (floor)",
             "dbkit.migrate.commands.migrate()", "psql -1 -f"),
        ], times)
        print("same tables and indexes in every case: True")
        return rows
    finally:
        for db in MIGRATE_CASES.values():
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(db)))
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(role))


if __name__ == "__main__":
    main()
