"""dbkit doctor against a real server: a healthy database passes, a deliberately misconfigured
one is reported check by check."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import psycopg
from psycopg import sql

from dbkit.doctor import hba_matches
from dbkit.urls import DbURL

CHECKS = ["server", "tls", "auth", "admin-role", "owner-role", "app-role", "bookkeeping",
          "public-connect",
          "pending-migrations", "drift", "locks", "long-transactions", "invalid-indexes", "pooler",
          "replication"]


def _migrations(app, *names: str) -> Path:  # noqa: ANN001
    d = app.cwd / "migrations"
    d.mkdir(exist_ok=True)
    for i, name in enumerate(names, 1):
        (d / f"{i:04d}_{name}.sql").write_text(f"CREATE TABLE {name} (id bigint PRIMARY KEY);\n")
    return d


def _doctor(app, *args: str, **env: str | None) -> tuple[int, dict[str, dict], str]:  # noqa: ANN001
    r = app.cli("doctor", "--json", *args, **env)
    data = json.loads(r.out)
    assert app.password not in r.output
    return r.code, {c["name"]: c for c in data["checks"]}, r.err


def test_healthy_database_passes_with_one_line_per_check(app) -> None:  # noqa: ANN001
    _migrations(app, "things")
    assert app.cli("create").code == 0
    assert app.cli("migrate").code == 0
    r = app.cli("doctor")
    assert r.code == 0, r.output
    lines = r.out.splitlines()
    assert [line.split()[1] for line in lines] == CHECKS
    # all pass; the app role's login check has nothing to try in single-role mode
    assert all(line.split()[0] == ("skip" if line.split()[1] == "app-role" else "pass")
               for line in lines), r.out
    code, checks, _ = _doctor(app)
    assert code == 0 and list(checks) == CHECKS
    assert checks["server"]["detail"].startswith("PostgreSQL 1")
    assert checks["auth"]["detail"] == "scram-sha-256 (from pg_hba.conf)"
    assert "superuser" in checks["admin-role"]["detail"]


def test_misconfigured_database_fails_and_warns(app, admin_conn) -> None:  # noqa: ANN001
    _migrations(app, "things")
    assert app.cli("create").code == 0
    admin_conn.execute(sql.SQL("ALTER ROLE {} SUPERUSER").format(sql.Identifier(app.role)))
    admin_conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO PUBLIC").format(
        sql.Identifier(app.db)))
    code, checks, err = _doctor(app)
    assert code == 17, err
    assert checks["owner-role"]["status"] == "fail"
    assert "is a superuser" in checks["owner-role"]["detail"]
    assert checks["public-connect"]["status"] == "fail"
    assert checks["pending-migrations"]["status"] == "warn"
    assert "1 pending: 0001_things" in checks["pending-migrations"]["detail"]
    assert "2 check(s) failed: owner-role, public-connect" in err
    r = app.cli("doctor")  # text: the failing lines say so and carry a hint
    assert r.code == 17
    assert any(line.startswith("fail  owner-role") and "hint:" in line for line in r.out.splitlines())
    assert any(line.startswith("warn  pending-migrations") for line in r.out.splitlines())


def test_warnings_alone_keep_exit_zero(app) -> None:  # noqa: ANN001
    _migrations(app, "things")
    assert app.cli("create").code == 0
    code, checks, _ = _doctor(app)
    assert code == 0
    assert checks["pending-migrations"]["status"] == "warn"
    assert not [c for c in checks.values() if c["status"] == "fail"]


def test_drift_fails_naming_the_file(app) -> None:  # noqa: ANN001
    d = _migrations(app, "things")
    assert app.cli("create").code == 0
    assert app.cli("migrate").code == 0
    (d / "0001_things.sql").write_text("CREATE TABLE things (id bigint PRIMARY KEY, x int);\n")
    code, checks, _ = _doctor(app)
    assert code == 17
    assert checks["drift"]["status"] == "fail"
    assert "0001_things" in checks["drift"]["detail"]


def test_locks_long_transactions_and_invalid_indexes(app) -> None:  # noqa: ANN001
    _migrations(app, "things")
    assert app.cli("create").code == 0
    assert app.cli("migrate").code == 0
    with app.connect(autocommit=True) as conn:
        conn.execute("INSERT INTO things VALUES (1), (2)")
        conn.execute("CREATE TABLE dup (x int)")
        conn.execute("INSERT INTO dup VALUES (1), (1)")
        try:
            conn.execute("CREATE UNIQUE INDEX CONCURRENTLY dup_x ON dup (x)")
        except psycopg.errors.UniqueViolation:
            pass  # leaves dup_x behind, INVALID: exactly what the check is for
    with app.connect() as holder:
        holder.execute("SELECT * FROM things").fetchall()  # idle in transaction, lock held
        code, checks, _ = _doctor(app, "--long-transaction", "0")
        pid = holder.info.backend_pid
    assert code == 0  # warnings only
    assert checks["locks"]["status"] == "warn"
    assert f"pid {pid}" in checks["locks"]["detail"] and "AccessShareLock on things" in \
        checks["locks"]["detail"]
    assert checks["long-transactions"]["status"] == "warn"
    assert f"pid {pid}" in checks["long-transactions"]["detail"]
    assert checks["invalid-indexes"]["status"] == "warn"
    assert "dup_x" in checks["invalid-indexes"]["detail"]
    code, checks, _ = _doctor(app)  # the transaction ended: nothing held
    assert checks["locks"]["status"] == "pass"
    assert checks["long-transactions"]["status"] == "pass"


def test_admin_without_privileges_and_unreadable_hba(app, admin_conn) -> None:  # noqa: ANN001
    _migrations(app)
    assert app.cli("create").code == 0
    weak = f"{app.role}_weak"
    app.extra_roles.append(weak)
    admin_conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
        sql.Identifier(weak), sql.Literal(app.password)))
    weak_url = app.pg.with_(user=weak, password=app.password, dbname="postgres")
    code, checks, _ = _doctor(app, DBKIT_ADMIN_URL=weak_url.render(reveal=True))
    assert code == 17
    assert checks["admin-role"]["status"] == "fail"
    assert "lacks CREATEROLE and CREATEDB" in checks["admin-role"]["detail"]
    # neither connection may read pg_hba_file_rules: the method comes from the login itself
    assert checks["auth"]["status"] == "pass"
    assert checks["auth"]["detail"].startswith("password (scram-sha-256")


def test_unreachable_server_fails_once_and_skips_the_rest(app) -> None:  # noqa: ANN001
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    url = app.url.with_(port=port)
    code, checks, err = _doctor(app, DATABASE_URL=url.render(reveal=True))
    assert code == 17
    assert checks["server"]["status"] == "fail"
    assert checks["admin-role"]["status"] == "pass"  # the admin server is a different one
    assert {c["status"] for n, c in checks.items() if n not in ("server", "admin-role")} == {"skip"}
    assert "1 check(s) failed: server" in err


def test_hba_rule_matching() -> None:
    url = DbURL(user="app", dbname="appdb", host="10.0.0.5")
    rule = ["host", ["all"], ["all"], "10.0.0.0", "255.255.255.0"]
    assert hba_matches(*rule, "10.0.0.7", False, url, set())
    assert not hba_matches(*rule, "10.0.1.7", False, url, set())
    assert not hba_matches("local", ["all"], ["all"], None, None, "10.0.0.7", False, url, set())
    assert hba_matches("local", ["all"], ["all"], None, None, None, False, url, set())
    assert not hba_matches("hostssl", ["all"], ["all"], "all", None, "10.0.0.7", False, url, set())
    assert hba_matches("host", ["appdb"], ["+staff"], "0.0.0.0", "0.0.0.0", "10.0.0.7", True,
                        url, {"staff"})
    assert not hba_matches("host", ["otherdb"], ["all"], "all", None, "10.0.0.7", False, url, set())
