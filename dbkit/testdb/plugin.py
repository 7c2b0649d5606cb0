"""pytest plugin (entry point ``pytest11: dbkit``): migrated test databases in milliseconds.

Fixtures:
  ``dbkit_template`` (session)  the template at the latest migrations (built once, shared by
                                every run and xdist worker until the migration files change);
  ``dbkit_db``       (function) a ``DbURL`` of a fresh clone for this test, dropped afterwards
                                (made ahead by a warm pool of clones while earlier tests run);
  ``dbkit_url``      (function) the same database as a connectable URL string
                                (``psycopg.connect(dbkit_url)``), its password masked in repr();
  ``dbkit_conn``     (function) a psycopg connection to one migrated database per worker,
                                inside a transaction rolled back after the test.

Nothing happens unless a test asks for one of them. The admin server comes from dbkit's usual
settings (DBKIT_ADMIN_URL, PG* variables, .env, or dbkit's local server) or the ini keys below.
The test role's password never reaches pytest's report: any failure text, captured output or
log that contains it is shown with it masked.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import pytest

# What the plugin learns once per process, for its hooks.
_DEMAND = pytest.StashKey[int]()  # collected tests that ask for a database of their own
_SECRETS = pytest.StashKey[set[str]]()  # passwords of the URLs handed to tests
_USES_OWN_DB = ("dbkit_db", "dbkit_url")

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
    parser.addini("dbkit_background", "drop used clones and make the next ones in background "
                  "threads while tests run (false: all in the tests' own setup/teardown)",
                  type="bool", default=True)
    parser.addini("dbkit_pool", "clones made ahead per worker: 'auto' (a run-wide budget of "
                  "8, split between xdist workers) or N; 0 turns the pool off", default="auto")
    parser.addoption("--dbkit-pool", dest="dbkit_pool", default=None, metavar="N",
                     help="clones dbkit makes ahead per worker ('auto' or N; 0: off); "
                     "overrides the dbkit_pool ini key")


def pytest_configure(config: pytest.Config) -> None:
    from dbkit.errors import DbkitError
    from dbkit.testdb.pool import budget

    try:
        budget(_pool_setting(config))
    except DbkitError as exc:  # a typo in the option is a usage error, said before any test
        raise pytest.UsageError(f"dbkit: {exc.message} (hint: {exc.hint})") from None
    config.stash[_SECRETS] = set()


def _pool_setting(config: pytest.Config) -> str:
    given = config.getoption("dbkit_pool", None)
    return str(given if given is not None else config.getini("dbkit_pool"))


def pytest_collection_finish(session: pytest.Session) -> None:
    """How many databases this process's tests will ask for: the pool makes no more.
    (An xdist worker collects every test but runs its share: an upper bound there.)"""
    session.config.stash[_DEMAND] = sum(
        1 for item in session.items if any(f in getattr(item, "fixturenames", ())
                                           for f in _USES_OWN_DB))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Mask the test role's password wherever a report would show it: assertion rewriting,
    ``-l`` locals, exception messages, captured output and logs."""
    report = yield
    secrets = item.config.stash.get(_SECRETS, set())
    if not secrets:
        return report
    if report.longrepr is not None:
        text = str(report.longrepr)
        if any(secret in text for secret in secrets):
            report.longrepr = _mask(text, secrets)
    report.sections = [(title, _mask(body, secrets)) for title, body in report.sections]
    return report


def _mask(text: str, secrets: set[str]) -> str:
    from urllib.parse import quote

    from dbkit.urls import MASK

    for secret in secrets:
        text = text.replace(secret, MASK).replace(quote(secret, safe=""), MASK)
    return text


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
    from dbkit.testdb.pool import budget
    from dbkit.testdb.template import owner_password

    config = request.config
    workerinput = getattr(config, "workerinput", {})
    worker = workerinput.get("workerid", "main")
    try:
        settings = _settings(config)
        # each xdist worker has its own pool: the run-wide budget is split between them
        size, makers = budget(_pool_setting(config), int(workerinput.get("workercount", 1)))
        admin_url = admin.resolve(settings)
        session = CloneSession(settings, admin_url, worker=worker,
                               seed=bool(config.getini("dbkit_seed")),
                               background=bool(config.getini("dbkit_background")),
                               pool=size, makers=makers, demand=config.stash.get(_DEMAND, None))
    except DbkitError as exc:
        _fail(exc)
    secret = owner_password(admin_url, session.template.owner)
    if secret:
        config.stash.setdefault(_SECRETS, set()).add(secret)
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


class SecretURL(str):
    """A connection URL that is the real thing to every library (``psycopg.connect(url)``,
    SQLAlchemy's ``create_engine(url)``, an app's settings) and masked in ``repr()``, which is
    what pytest shows of a value in assertions and locals. (Text built from it, such as
    ``url + "?x"``, is a plain ``str`` again; the plugin masks the password in reports anyway.)
    """

    __slots__ = ()

    def __repr__(self) -> str:
        from dbkit.urls import mask_secrets

        return repr(mask_secrets(str.__str__(self)))


@pytest.fixture
def dbkit_url(dbkit_db: DbURL) -> SecretURL:
    """The ``dbkit_db`` database as a URL string one can connect with as it is:
    ``psycopg.connect(dbkit_url)``. Its password is masked in pytest's output."""
    return SecretURL(dbkit_db.render(reveal=True))


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
