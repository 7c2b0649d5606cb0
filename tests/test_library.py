"""The library as a program calls it, without the CLI: its guards hold on their own, and what a
step made (a generated password) is handed back rather than read back from a file."""

from __future__ import annotations

import psycopg
import pytest

from dbkit import provision
from dbkit import setup as lifecycle
from dbkit.errors import Refused
from dbkit.settings import Settings, Target


def _settings(app, **env: str) -> Settings:
    return Settings.load(environ={k: v for k, v in app.env(**env).items() if v is not None},
                         cwd=app.cwd)


def _oid(admin_conn: psycopg.Connection, db: str) -> int | None:
    row = admin_conn.execute("SELECT oid FROM pg_database WHERE datname = %s", (db,)).fetchone()
    return row[0] if row else None


@pytest.mark.parametrize("how", ["DBKIT_ENV", "env argument"])
def test_library_reset_refuses_production(created, admin_conn, how):
    before = _oid(admin_conn, created.db)
    s = _settings(created, DBKIT_ENV="production" if how == "DBKIT_ENV" else "development")
    with pytest.raises(Refused, match="refused in production"):
        lifecycle.reset(s, created.pg, env="production" if how == "env argument" else None)
    assert _oid(admin_conn, created.db) == before  # the same database, untouched


def test_library_reset_replaces_the_database_outside_production(created, admin_conn):
    before = _oid(admin_conn, created.db)
    result = lifecycle.reset(_settings(created), created.pg, seed=False)
    assert result.changed and _oid(admin_conn, created.db) not in (None, before)


def test_library_drop_refuses_production(created, admin_conn):
    s = _settings(created, DBKIT_ENV="production")
    with pytest.raises(Refused):
        provision.drop(s.target(), created.pg)
    assert _oid(admin_conn, created.db) is not None


def test_create_hands_back_the_password_it_generated(app, admin_conn):
    """No password in DATABASE_URL: create generates one and returns it in ``login``; that URL
    logs in, and it is the one written to .env."""
    from dbkit.envfile import read

    s = _settings(app, DATABASE_URL=app.url.with_(password=None).render())
    result = provision.create(s.target(), app.pg)
    assert result.login is not None and result.login.password
    assert result.login.password not in str(result.as_dict())
    with psycopg.connect(**result.login.connect_kwargs()) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (app.role,)
    assert read(app.cwd / ".env")["DATABASE_URL"] == result.login.render(reveal=True)


def test_a_target_aimed_at_another_database_keeps_its_routes(tmp_path):
    s = Settings.load(environ={"DATABASE_URL": "postgresql://app:pw@pooler:6432/posts",
                               "DBKIT_MIGRATE_URL": "postgresql://app:pw@primary:5432/posts"},
                      cwd=tmp_path)
    other = s.target().at("posts_copy")
    assert (other.url.host, other.url.port, other.url.dbname) == ("pooler", 6432, "posts_copy")
    assert (other.migrate_url.host, other.migrate_url.dbname) == ("primary", "posts_copy")
    plain = Target.of(s.target().url, s)  # no separate route: migrations follow the URL
    assert plain.with_url(plain.url.with_(password="new")).migrate_url.password == "new"
