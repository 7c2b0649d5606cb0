"""Test databases: a template kept at the latest migrations, and cheap clones of it.

The template is named after a fingerprint of the migration files (and the seed data when
seeded), so a clone can never come from a stale template: changed files mean a new name,
which does not exist yet and gets built. Builds run under an advisory lock into a temporary
database that is renamed only when complete, so a template under its final name is always
whole. Clones are ``CREATE DATABASE … TEMPLATE`` (WAL_LOG, the fastest for small schemas).

Template and clones belong to a dedicated login role (``dbkit_test``), never the admin, so
tests run with the rights the application has. Its password is derived from the admin's
(HMAC), so every process and xdist worker computes the same one without storing it anywhere.

The clones of a live process (the pytest plugin) are in ``dbkit.clones``; ``dbkit wait`` and
``dbkit reset`` in ``dbkit.ci``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dbkit.db import admin_url, connect
from dbkit.errors import (
    ConfigError,
    Conflict,
    ConnectError,
    DbkitError,
    InvalidName,
    LockTimeout,
    PermissionDenied,
)
from dbkit.urls import DbURL

if TYPE_CHECKING:
    import psycopg

    from dbkit.settings import Settings

log = logging.getLogger("dbkit")

OWNER = "dbkit_test"
TEMPLATE_PREFIX = "dbkit_tpl_"
BUILD_PREFIX = "dbkit_tplbuild_"
CLI_PREFIX = "dbkit_test_"
PLUGIN_PREFIX = "dbkit_pt_"
_RESERVED_PREFIXES = (TEMPLATE_PREFIX, BUILD_PREFIX, PLUGIN_PREFIX)
LOCK_CLASS = 0x64626B74  # "dbkt": advisory lock class; objid 0 = builds (+1: dbkit.clones)
BUILD_LOCK_WAIT = "300s"  # a build is migrations + seed: seconds, not minutes


@dataclass
class Template:
    name: str
    fingerprint: str
    owner: str
    seeded: bool
    built: bool  # True when this call built it (False: it was already there)
    dropped_stale: list[str] = field(default_factory=list)
    seconds: float = 0.0


# -- names, fingerprint, owner --------------------------------------------------------------
def fingerprint(settings: Settings, *, seed: bool = False, owner: str = OWNER) -> str:
    """sha256 over the migration files' names and contents (plus seed data when seeding)."""
    from dbkit import __version__
    from dbkit.migrate import migrations_dir

    h = hashlib.sha256(f"dbkit {__version__}\nowner {owner}\nseed {seed}\n".encode())
    directory = migrations_dir(settings)
    _hash_dir(h, directory)
    if seed:
        for path in _seed_inputs(settings):
            _hash_dir(h, path) if path.is_dir() else _hash_file(h, path, path.name)
    return h.hexdigest()


def _hash_dir(h: Any, directory: Path) -> None:
    if not directory.is_dir():
        raise ConfigError(f"migrations directory {directory} does not exist",
                          hint="set DBKIT_MIGRATIONS or create the directory")
    for path in sorted(directory.iterdir()):
        if path.is_file() and not path.name.startswith("."):
            _hash_file(h, path, path.name)


def _hash_file(h: Any, path: Path, name: str) -> None:
    data = path.read_bytes()
    h.update(f"{name}\0{len(data)}\0".encode())
    h.update(data)


def _seed_inputs(settings: Settings) -> list[Path]:
    """Files that decide what the sample seed writes (its data and its code)."""
    import dbkit.seed as seeding

    here = Path(seeding.__file__).parent
    names = ("seed.py", "seed_load.py", "seed_read.py", "data")
    return [p for p in (here / n for n in names) if p.exists()]


def template_name(fp: str) -> str:
    return TEMPLATE_PREFIX + fp[:12]


def owner_password(admin: DbURL, owner: str = OWNER) -> str | None:
    """Same on every process that knows the admin password; None when the admin has none
    (trust/peer setups), in which case the owner logs in the same way."""
    if admin.password is None:
        return None
    return hmac.new(admin.password.encode(), f"dbkit-test-owner:{owner}".encode(),
                    hashlib.sha256).hexdigest()[:32]


def owner_url(admin: DbURL, dbname: str, owner: str = OWNER) -> DbURL:
    return admin.with_(user=owner, password=owner_password(admin, owner), dbname=dbname)


def check_prefix(prefix: str, *, allow_reserved: bool = False) -> str:
    if not prefix or len(prefix.encode()) > 40:
        raise InvalidName(f"test database prefix {prefix!r} must be 1-40 bytes",
                          hint="names are PREFIX + a number, at most 63 bytes")
    if "\x00" in prefix:
        raise InvalidName("test database prefix contains a NUL byte")
    if not allow_reserved and any(prefix.startswith(r) or r.startswith(prefix)
                                  for r in _RESERVED_PREFIXES):
        raise InvalidName(f"prefix {prefix!r} overlaps dbkit's own names "
                          f"({', '.join(_RESERVED_PREFIXES)})", hint="choose another --prefix")
    return prefix


# -- admin-side primitives ------------------------------------------------------------------
@contextlib.contextmanager
def db_errors() -> Iterator[None]:
    """Driver errors become dbkit's named errors (one line, no traceback)."""
    import psycopg

    try:
        yield
    except psycopg.errors.InsufficientPrivilege as exc:
        raise PermissionDenied(f"the admin role cannot manage test databases: "
                               f"{exc.diag.message_primary}") from None
    except psycopg.Error as exc:
        if isinstance(exc, psycopg.OperationalError) and exc.sqlstate is None:
            raise ConnectError(f"lost the connection to the server: {exc}") from None
        raise DbkitError(f"test database operation failed: {exc.diag.message_primary or exc}"
                         ) from None


@contextlib.contextmanager
def admin_session(settings: Settings) -> Iterator[tuple[psycopg.Connection, DbURL]]:
    admin = admin_url(settings)
    with connect(admin, settings, autocommit=True) as conn, db_errors():
        yield conn, admin


@contextlib.contextmanager
def build_lock(conn: psycopg.Connection, wait: str = BUILD_LOCK_WAIT) -> Iterator[None]:
    """Serialise template builds across processes/workers on this server."""
    import psycopg

    conn.execute("SELECT set_config('lock_timeout', %s, false)", (wait,))
    try:
        conn.execute("SELECT pg_advisory_lock(%s, 0)", (LOCK_CLASS,))
    except psycopg.errors.LockNotAvailable:
        raise LockTimeout(f"another process has been building a test template for {wait}",
                          hint="wait for it, or end it (pg_stat_activity shows the holder)") from None
    finally:
        conn.execute("SELECT set_config('lock_timeout', '0', false)")
    try:
        yield
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s, 0)", (LOCK_CLASS,))


def ensure_owner(conn: psycopg.Connection, admin: DbURL, owner: str = OWNER) -> None:
    """The dedicated role: LOGIN, no special rights, the derived password. Call under the lock."""
    from psycopg import sql

    row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", (owner,)).fetchone()
    if row and row[0]:
        raise InvalidName(f"role {owner!r} is a superuser; test databases need a plain role")
    password = owner_password(admin, owner)
    attrs = sql.SQL("LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION")
    pw = sql.SQL("")
    if password is not None:
        # the verifier is computed here, so the password never reaches the statement log
        verifier = conn.pgconn.encrypt_password(password.encode(), owner.encode(),
                                                b"scram-sha-256").decode()
        pw = sql.SQL(" PASSWORD {}").format(sql.Literal(verifier))
    verb = "ALTER" if row else "CREATE"
    conn.execute(sql.SQL(verb + " ROLE {} {}{}").format(sql.Identifier(owner), attrs, pw))
    su, member = conn.execute("SELECT rolsuper, pg_has_role(current_user, %s, 'MEMBER')"
                              " FROM pg_roles WHERE rolname = current_user", (owner,)).fetchone()
    if not su and not member:  # CREATE DATABASE … OWNER needs membership (CREATEROLE admins)
        conn.execute(sql.SQL("GRANT {} TO CURRENT_USER").format(sql.Identifier(owner)))


def wait_sessions_gone(conn: psycopg.Connection, dbname: str, timeout: float = 2.0) -> None:
    """Wait for just-closed sessions to leave; DROP/RENAME would otherwise sleep in 100 ms steps."""
    deadline = time.monotonic() + timeout
    while conn.execute("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = %s"
                       " AND pid <> pg_backend_pid())", (dbname,)).fetchone()[0]:
        if time.monotonic() > deadline:
            return  # WITH (FORCE) ends whatever is still there
        time.sleep(0.002)


def drop_database(conn: psycopg.Connection, dbname: str, *, template: bool = False) -> None:
    from psycopg import sql

    ident = sql.Identifier(dbname)
    if template:
        conn.execute(sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE false").format(ident))
    wait_sessions_gone(conn, dbname)
    log.info("DROP DATABASE %s", dbname)
    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))


def clone(conn: psycopg.Connection, template: str, name: str, owner: str = OWNER) -> None:
    from psycopg import sql

    log.info("CREATE DATABASE %s TEMPLATE %s", name, template)
    conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {} OWNER {}").format(
        sql.Identifier(name), sql.Identifier(template), sql.Identifier(owner)))


def owned(conn: psycopg.Connection, prefix: str, owner: str) -> list[tuple[str, bool]]:
    return [(r[0], r[1]) for r in conn.execute(
        "SELECT datname, datistemplate FROM pg_database WHERE left(datname, length(%s)) = %s"
        " AND datdba = (SELECT oid FROM pg_roles WHERE rolname = %s) ORDER BY datname",
        (prefix, prefix, owner))]


# -- the template ---------------------------------------------------------------------------
def ensure_template(conn: psycopg.Connection, admin: DbURL, settings: Settings, *,
                    seed: bool = False, owner: str = OWNER) -> Template:
    """Make sure the template for the current migration files exists; build it if not."""
    started = time.perf_counter()
    fp = fingerprint(settings, seed=seed, owner=owner)
    name = template_name(fp)
    source = f"{Path(_migrations_dir(settings)).resolve()}|seed={seed}"
    with build_lock(conn):
        ensure_owner(conn, admin, owner)
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                              (name,)).fetchone()
        built = False
        if not exists:
            _build(conn, admin, settings, name, fp, source, seed=seed, owner=owner)
            built = True
        stale = _drop_stale_templates(conn, name, source, owner)
    return Template(name=name, fingerprint=fp, owner=owner, seeded=seed, built=built,
                    dropped_stale=stale, seconds=round(time.perf_counter() - started, 3))


def _migrations_dir(settings: Settings) -> Path:
    from dbkit.migrate import migrations_dir

    return migrations_dir(settings)


def _build(conn: psycopg.Connection, admin: DbURL, settings: Settings, name: str, fp: str,
           source: str, *, seed: bool, owner: str) -> None:
    from psycopg import sql

    from dbkit import migrate

    build = BUILD_PREFIX + fp[:12]
    log.info("building test template %s", name)
    drop_database(conn, build)  # a crashed build's leftover (we hold the lock: nobody else's)
    enc = conn.execute("SELECT pg_encoding_to_char(encoding) FROM pg_database"
                       " WHERE datname = 'template1'").fetchone()[0]
    tail = sql.SQL("" if enc == "UTF8" else " TEMPLATE template0 LC_COLLATE 'C' LC_CTYPE 'C'")
    conn.execute(sql.SQL("CREATE DATABASE {} OWNER {} ENCODING 'UTF8'{}").format(
        sql.Identifier(build), sql.Identifier(owner), tail))
    try:
        with connect(admin, settings, dbname=build) as target:
            target.execute(sql.SQL("ALTER SCHEMA public OWNER TO {}").format(sql.Identifier(owner)))
            target.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
            target.commit()
        url = owner_url(admin, build, owner)
        # The migrations run as the owner, as the application's own migrations would.
        migrate.migrate(settings, url=url)
        if seed:
            from dbkit import seed as seeding

            seeding.seed_sample(dataclasses.replace(settings, database_url=url.render(reveal=True)))
        wait_sessions_gone(conn, build, timeout=10)
        ident = sql.Identifier(build)
        # Template first, name last: a database under the final name is always complete.
        conn.execute(sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false"
                             ).format(ident))
        conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(ident, sql.Identifier(name)))
    except BaseException:
        with contextlib.suppress(Exception):
            drop_database(conn, build, template=True)
        raise
    note = json.dumps({"dbkit": "test template", "source": source, "fingerprint": fp})
    conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(name),
                                                                   sql.Literal(note)))


def _drop_stale_templates(conn: psycopg.Connection, current: str, source: str,
                          owner: str) -> list[str]:
    """Older templates of the same migrations directory (other checkouts' stay)."""
    import psycopg

    dropped = []
    for dbname, _is_tpl in owned(conn, TEMPLATE_PREFIX, owner):
        if dbname == current:
            continue
        note = conn.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database"
                            " WHERE datname = %s", (dbname,)).fetchone()
        try:
            same = note and json.loads(note[0] or "{}").get("source") == source
        except ValueError:
            same = False
        if same:
            try:
                drop_database(conn, dbname, template=True)
                dropped.append(dbname)
            except psycopg.Error as exc:  # in use by an older run: next time
                log.warning("could not drop stale template %s: %s", dbname, exc)
    return dropped


# -- `dbkit testdb create/drop` -------------------------------------------------------------
@dataclass
class CreateResult:
    template: str
    template_built: bool
    databases: list[str]
    urls: list[str]  # masked unless reveal=True
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def create(settings: Settings, *, count: int = 1, prefix: str = CLI_PREFIX, seed: bool = False,
           reveal: bool = False) -> CreateResult:
    """N fresh databases PREFIX1..PREFIXN at the latest schema (existing ones are replaced)."""
    check_prefix(prefix)
    if count < 1:
        raise ConfigError("--count must be at least 1")
    names = [f"{prefix}{i}" for i in range(1, count + 1)]
    for n in names:
        if len(n.encode()) > 63:
            raise InvalidName(f"test database name {n!r} is longer than 63 bytes")
    started = time.perf_counter()
    with admin_session(settings) as (conn, admin):
        tpl = ensure_template(conn, admin, settings, seed=seed)
        foreign = conn.execute(
            "SELECT datname FROM pg_database WHERE datname = ANY(%s)"
            " AND datdba <> (SELECT oid FROM pg_roles WHERE rolname = %s)", (names, OWNER)).fetchall()
        if foreign:
            raise Conflict(f"database {foreign[0][0]!r} exists and is not a dbkit test database",
                           hint="choose another --prefix")
        touched: list[str] = []  # including the one being cloned: it may land after all
        try:
            for n in names:
                touched.append(n)
                drop_database(conn, n)
                clone(conn, tpl.name, n)
        except BaseException:  # all N or none: a half-made set is no use to a test run
            for n in touched:
                with contextlib.suppress(Exception):
                    drop_database(conn, n)
            raise
    urls = [owner_url(admin, n).render(reveal=reveal) for n in names]
    return CreateResult(template=tpl.name, template_built=tpl.built, databases=names, urls=urls,
                        seconds=round(time.perf_counter() - started, 3))


@dataclass
class DropResult:
    dropped: list[str]

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def drop(settings: Settings, *, prefix: str = CLI_PREFIX, everything: bool = False) -> DropResult:
    """Drop the test databases named PREFIX… (only those owned by the test role).

    ``everything`` also drops the templates, interrupted builds and the plugin's clones whose
    process is gone (clones of a live pytest run are left alone)."""
    check_prefix(prefix)
    dropped: list[str] = []
    with admin_session(settings) as (conn, _admin):
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (OWNER,)).fetchone():
            return DropResult(dropped)
        for dbname, is_tpl in owned(conn, prefix, OWNER):
            drop_database(conn, dbname, template=is_tpl)
            dropped.append(dbname)
        if everything:
            from dbkit.clones import collect_stale

            dropped += collect_stale(conn, own_token=None)
            with build_lock(conn):
                for pre in (BUILD_PREFIX, TEMPLATE_PREFIX):
                    for dbname, is_tpl in owned(conn, pre, OWNER):
                        drop_database(conn, dbname, template=is_tpl)
                        dropped.append(dbname)
    return DropResult(dropped)
