"""pytest plugin (entry point ``pytest11: dbkit``): migrated test databases in milliseconds.

Fixtures:
  ``dbkit_template`` (session)  the template at the latest migrations (built once, shared by
                                every run and xdist worker until the migration files change);
  ``dbkit_db``       (function) a ``DbURL`` of a fresh clone for this test, dropped afterwards;
  ``dbkit_conn``     (function) a psycopg connection to one migrated database per worker,
                                inside a transaction rolled back after the test.

Nothing happens unless a test asks for one of them. The admin server comes from dbkit's usual
settings (DBKIT_ADMIN_URL, PG* variables, .env, or dbkit's local server) or the ini keys below.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import pytest

if TYPE_CHECKING:
    import psycopg

    from dbkit.settings import Settings
    from dbkit.testdb.clones import CloneSession
    from dbkit.testdb.template import Template
    from dbkit.urls import DbURL


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("dbkit_admin_url", "admin connection URL for test databases "
                  "(default: dbkit's settings: DBKIT_ADMIN_URL, PG*, .env, local server)")
    parser.addini("dbkit_env_file", "dbkit .env file to read settings from (default: ./.env)")
    parser.addini("dbkit_migrations", "migrations directory (default: dbkit's setting)")
    parser.addini("dbkit_seed", "build the template with the sample data", type="bool",
                  default=False)
    parser.addini("dbkit_background", "drop used clones and make the next one in a background "
                  "thread while tests run", type="bool", default=True)


def _fail(exc: Exception) -> NoReturn:
    from dbkit.urls import mask_secrets

    msg = getattr(exc, "message", str(exc))
    hint = getattr(exc, "hint", "")
    pytest.fail(f"dbkit: {mask_secrets(msg)}" + (f" (hint: {hint})" if hint else ""),
                pytrace=False)


def _settings(config: pytest.Config) -> Settings:
    from dbkit.settings import Settings

    flags = {"admin_url": config.getini("dbkit_admin_url") or None,
             "migrations": config.getini("dbkit_migrations") or None}
    env_file = config.getini("dbkit_env_file") or None
    root = Path(config.rootpath)
    if flags["migrations"] and not Path(flags["migrations"]).is_absolute():
        flags["migrations"] = str(root / flags["migrations"])
    return Settings.load(flags=flags, env_file=env_file, cwd=root)


@pytest.fixture(scope="session")
def _dbkit_session(request: pytest.FixtureRequest) -> Iterator[CloneSession]:
    from dbkit import admin
    from dbkit.errors import DbkitError
    from dbkit.testdb.clones import CloneSession

    config = request.config
    worker = getattr(config, "workerinput", {}).get("workerid", "main")
    try:
        settings = _settings(config)
        session = CloneSession(settings, admin.resolve(settings), worker=worker,
                               seed=bool(config.getini("dbkit_seed")),
                               background=bool(config.getini("dbkit_background")))
    except DbkitError as exc:
        _fail(exc)
    try:
        yield session
    finally:
        session.close()


@pytest.fixture(scope="session")
def dbkit_template(_dbkit_session: CloneSession) -> Template:
    """The migrated template (``.name``, ``.fingerprint``, ``.built``)."""
    return _dbkit_session.template


@pytest.fixture
def dbkit_db(_dbkit_session: CloneSession) -> Iterator[DbURL]:
    """URL of a fresh database at the latest schema, dropped after the test (pass or fail;
    in the background by default, and in any case before the session ends).

    Connect with ``psycopg.connect(**dbkit_db.connect_kwargs())`` or hand
    ``dbkit_db.render(reveal=True)`` to your application; ``str()`` masks the password."""
    from dbkit.errors import DbkitError

    try:
        url = _dbkit_session.clone()
    except DbkitError as exc:
        _fail(exc)
    try:
        yield url
    finally:
        _dbkit_session.drop(url.dbname or "")


class _Shared:
    """One connection per worker to the shared database, reopened if a test broke it."""

    def __init__(self, session: CloneSession) -> None:
        self.session = session
        self.url = session.clone("shared")
        self.conn: psycopg.Connection | None = None

    def get(self) -> psycopg.Connection:
        from psycopg.rows import tuple_row

        from dbkit.db import connect

        if self.conn is None or self.conn.closed or self.conn.broken:
            self.conn = connect(self.url, self.session.settings)
        self.conn.autocommit = False
        self.conn.row_factory = tuple_row
        return self.conn

    def release(self) -> None:
        if self.conn is not None and not self.conn.closed and not self.conn.broken:
            self.conn.rollback()

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


@pytest.fixture(scope="session")
def _dbkit_shared(_dbkit_session: CloneSession) -> Iterator[_Shared]:
    from dbkit.errors import DbkitError

    try:
        shared = _Shared(_dbkit_session)
    except DbkitError as exc:
        _fail(exc)
    try:
        yield shared
    finally:
        shared.close()  # the database itself goes with the session's clones


@pytest.fixture
def dbkit_conn(_dbkit_shared: _Shared) -> Iterator[psycopg.Connection]:
    """A connection inside a transaction that is rolled back after the test.

    The cheapest isolation; a test that calls ``commit()`` leaks its rows to later tests on the
    same worker: use ``dbkit_db`` for those."""
    from dbkit.errors import DbkitError

    try:
        conn = _dbkit_shared.get()
    except DbkitError as exc:
        _fail(exc)
    try:
        yield conn
    finally:
        _dbkit_shared.release()
