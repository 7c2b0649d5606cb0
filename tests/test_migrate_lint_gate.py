"""dbkit migrate lints pending migrations first: unsafe ones are refused outside development."""

from __future__ import annotations

import psycopg
import pytest

FILES = {
    "0001_things.sql": "CREATE TABLE things (id bigint PRIMARY KEY, x int);\n",
    "0002_index.sql": "SELECT 1;\nCREATE INDEX things_x ON things (x);\n",
}


@pytest.fixture
def unsafe(app):
    assert app.cli("create").code == 0
    d = app.cwd / "m"
    d.mkdir()
    for name, text in FILES.items():
        (d / name).write_text(text)
    return app, str(d)


def applied(app) -> list[str]:
    with app.connect() as c:
        try:
            return [r[0] for r in c.execute(
                "SELECT migration_id FROM _yoyo_migration ORDER BY 1").fetchall()]
        except psycopg.errors.UndefinedTable:
            return []


def test_refused_outside_development_then_applied_with_allow_unsafe(unsafe):
    app, d = unsafe
    r = app.cli("migrate", "--migrations", d, DBKIT_ENV="production")
    assert r.code == 12, r.output
    assert "0002_index.sql:2: [index-not-concurrent]" in r.err
    assert "--allow-unsafe" in r.err and "Traceback" not in r.output
    assert applied(app) == []  # refused before anything ran
    r = app.cli("migrate", "--migrations", d, "--allow-unsafe", DBKIT_ENV="production")
    assert r.code == 0, r.output
    assert "allowed by --allow-unsafe" in r.err
    assert applied(app) == ["0001_things", "0002_index"]


def test_only_a_warning_in_development(unsafe):
    app, d = unsafe
    r = app.cli("migrate", "--migrations", d, DBKIT_ENV="development")
    assert r.code == 0, r.output
    assert "allowed by DBKIT_ENV=development" in r.err and "0002_index.sql:2" in r.err
    assert applied(app) == ["0001_things", "0002_index"]


def test_dry_run_shows_findings_and_safe_migrations_pass(unsafe):
    app, d = unsafe
    r = app.cli("migrate", "--migrations", d, "--dry-run", DBKIT_ENV="production")
    assert r.code == 0 and "index-not-concurrent" in r.err and "would refuse" in r.err
    assert applied(app) == []
    assert app.cli("migrate", DBKIT_ENV="production").code == 0  # the shipped ones are clean
