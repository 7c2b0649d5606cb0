"""Migrations at scale: 10 / 100 / 1000 generated migrations.

- apply: ``dbkit.migrate.commands.migrate`` (in-process) vs the floor ``psql -1 -f all.sql`` (every
  statement in one file, one transaction, no bookkeeping, whole process) and vs yoyo's own
  in-process ``apply_migrations``; each on a fresh database.
- status over N applied migrations: ``dbkit.migrate.commands.status`` (in-process) vs the floor
  ``psql -c 'SELECT … FROM _yoyo_migration'`` (whole process) and vs ``yoyo list`` (CLI).

Per-migration milliseconds are printed too: constant across N means linear time. The server is
the fsync-off throwaway cluster, or DBKIT_TEST_ADMIN_URL's. ``python -m bench migrate``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import cluster, interleaved, median, save, table

SIZES = (10, 100, 1000)
ROLE, PASSWORD = "bench_migrate", "bench-migrate-pw"


def _generate(directory: Path, n: int) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(1, n + 1):
        stmt = f"CREATE TABLE t_{i:05d} (id bigint PRIMARY KEY, v text NOT NULL DEFAULT '');\n"
        (directory / f"{i:05d}_t.sql").write_text(stmt)
        (directory / f"{i:05d}_t.rollback.sql").write_text(f"DROP TABLE t_{i:05d};\n")
        lines.append(stmt)
    flat = directory.parent / f"all_{n}.sql"
    flat.write_text("".join(lines))
    return flat


def main() -> list[dict[str, object]]:
    import psycopg
    from psycopg import sql

    from dbkit.migrate import commands as migrate
    from dbkit.server import find_pg_bin
    from dbkit.settings import Settings, Target

    psql = str(find_pg_bin() / "psql")
    yoyo_cli = str(Path(sys.executable).parent / "yoyo")
    rows: list[dict[str, object]] = []
    with cluster(os.environ.get("DBKIT_TEST_ADMIN_URL")) as admin, \
            tempfile.TemporaryDirectory(prefix="bench-migrate-") as tmp, \
            psycopg.connect(autocommit=True, **admin.connect_kwargs()) as conn:
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(ROLE)))
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
            sql.Identifier(ROLE), sql.Literal(PASSWORD)))
        env = {**os.environ, "PGPASSWORD": PASSWORD}
        try:
            for n in SIZES:
                rows += _size(n, Path(tmp), admin, conn, psql, yoyo_cli, env, migrate, Settings,
                              Target)
        finally:
            for n in SIZES:
                for kind in ("dbkit", "psql", "yoyo"):
                    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                        sql.Identifier(f"bench_m{n}_{kind}")))
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(ROLE)))
    save("migrate", rows)
    return rows


def _size(n, tmp, admin, conn, psql, yoyo_cli, env, migrate, Settings, Target):  # noqa: ANN001
    from psycopg import sql
    from yoyo import get_backend, read_migrations

    d = tmp / f"m{n}"
    flat = _generate(d, n)
    urls = {k: admin.with_(user=ROLE, password=PASSWORD, dbname=f"bench_m{n}_{k}")
            for k in ("dbkit", "psql", "yoyo")}
    settings = Settings.load(flags={"migrations": str(d), "lock_timeout": "0"}, environ={},
                             cwd=tmp)
    target = Target.of(urls["dbkit"], settings)

    def fresh(name: str) -> None:
        kind = name.split()[0]
        db = sql.Identifier(urls[kind].dbname)
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(db))
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(db, sql.Identifier(ROLE)))

    def libpq(kind: str) -> list[str]:
        u = urls[kind]
        return ["-h", str(u.host), "-p", str(u.port), "-U", ROLE, "-d", u.dbname]

    def yoyo_apply() -> None:
        u = urls["yoyo"]
        backend = get_backend(u.render(reveal=True, scheme="postgresql+psycopg"))
        with backend.lock():
            backend.apply_migrations(backend.to_apply(read_migrations(str(d))))
        backend.connection.close()

    runs, warmup = (2, 0) if n >= 1000 else (3, 1)
    apply_times = interleaved({
        "dbkit apply": lambda: migrate.migrate(target),
        "psql -1 -f": lambda: subprocess.run([psql, "-q", "-X", "-1", "-v", "ON_ERROR_STOP=1",
                                              "-f", str(flat), *libpq("psql")], env=env,
                                             check=True, capture_output=True),
        "yoyo apply": yoyo_apply,
    }, runs=runs, warmup=warmup, setup=fresh)
    # the last dbkit/yoyo runs left N applied migrations behind: status over those
    yoyo_url = urls["dbkit"].with_(password=None).render(scheme="postgresql+psycopg")
    status_times = interleaved({
        "dbkit status": lambda: migrate.status(target),
        "psql select": lambda: subprocess.run([psql, "-q", "-X", "-c",
                                               "SELECT migration_id FROM _yoyo_migration",
                                               *libpq("dbkit")], env=env, check=True,
                                              capture_output=True),
        "yoyo list": lambda: subprocess.run([yoyo_cli, "list", "--batch", "--database", yoyo_url,
                                             str(d)], env=env, check=True, capture_output=True),
    }, runs=3, warmup=1)
    assert len(migrate.status(target).applied) == n
    rows = table(f"{n} migrations", [
        (f"apply {n} vs psql -1 -f (floor)", "dbkit apply", "psql -1 -f"),
        (f"apply {n} vs yoyo in-process", "dbkit apply", "yoyo apply"),
        (f"status over {n} vs psql select (floor)", "dbkit status", "psql select"),
        (f"status over {n} vs yoyo list (CLI)", "dbkit status", "yoyo list"),
    ], {**apply_times, **status_times})
    per = median(apply_times["dbkit apply"]) * 1000 / n
    print(f"\ndbkit: {per:.2f} ms per migration applied; status over {n}: "
          f"{median(status_times['dbkit status']) * 1000:.0f} ms")
    for r in rows:
        r["n"] = n
    rows.append({"what": f"dbkit ms per migration (n={n})", "dbkit": round(per, 3), "unit": "ms",
                 "n": n, "when": time.strftime("%F %T")})
    return rows


if __name__ == "__main__":
    main()
