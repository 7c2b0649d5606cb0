"""The test template: a database kept at the latest migrations, for cheap clones.

The template is named after a fingerprint of the migration files (and the seed data when
seeded), so a clone can never come from a stale template: changed files mean a new name,
which does not exist yet and gets built. Builds run under an advisory lock into a temporary
database that is renamed only when complete, so a template under its final name is always
whole. Clones are copies of it (``dbkit.pg.clone_database``).

Template and clones belong to a dedicated login role (``dbkit_test``), never the admin, so
tests run with the rights the application has. Its password is derived from the admin's
(HMAC), so every process and xdist worker computes the same one without storing it anywhere.

The clones of a live process (the pytest plugin) are in ``dbkit.testdb.clones``; the
``dbkit testdb`` commands in ``dbkit.testdb.commands``.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dbkit import pg
from dbkit.db import connect, translate
from dbkit.errors import ConfigError, InvalidName, LockTimeout, PermissionDenied
from dbkit.migrate.commands import migrate
from dbkit.migrate.files import migrations_dir
from dbkit.seed import commands as seeding
from dbkit.settings import Target
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
BUILD_LOCK_WAIT_S = 300  # a build is migrations + seed: seconds, not minutes


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

    h = hashlib.sha256(f"dbkit {__version__}\nowner {owner}\nseed {seed}\n".encode())
    directory = migrations_dir(settings)
    _hash_dir(h, directory)
    if seed:
        for path in _seed_inputs(settings):
            _hash_dir(h, path) if path.is_dir() else _hash_file(h, path, path.name)
    return h.hexdigest()


def signature(settings: Settings, *, seed: bool = False) -> tuple[tuple[str, int, int], ...]:
    """What ``fingerprint`` reads, told by the files' names, sizes and modification times:
    cheap enough to check before every clone is handed out (a few stat calls, no reads).
    A changed signature means the fingerprint must be computed again."""
    paths = [migrations_dir(settings)] + (_seed_inputs(settings) if seed else [])
    out: list[tuple[str, int, int]] = []
    for top in paths:
        try:
            entries = sorted(top.iterdir()) if top.is_dir() else [top]
        except OSError:
            entries = []
        for path in entries:
            try:
                st = path.stat()
            except OSError:
                continue
            out.append((str(path), st.st_size, st.st_mtime_ns))
    return tuple(out)


def _hash_dir(h: Any, directory: Path) -> None:
    """Every file's name and bytes (a migration's rollback file and its directives count)."""
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
    """What decides what the sample seed writes: the seed package (its data and its code)."""
    return [seeding.SAMPLE.parent]


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


# -- admin-side steps ------------------------------------------------------------------------
@contextlib.contextmanager
def db_errors(conn: psycopg.Connection[Any] | None = None) -> Iterator[None]:
    """Driver errors become dbkit's named errors (one line, no traceback). ``conn`` is the
    admin's: a refusal is hinted by what that admin lacks, not with advice it has followed."""
    import psycopg

    try:
        yield
    except psycopg.Error as exc:
        denied = isinstance(exc, psycopg.errors.InsufficientPrivilege)
        hint = _refused_hint(conn) if denied and conn is not None else None
        raise translate(exc, "the admin role cannot manage test databases" if denied
                        else "test database operation failed",
                        hints={PermissionDenied: hint} if hint else None) from None


def _refused_hint(conn: psycopg.Connection[Any]) -> str | None:
    import psycopg

    try:
        return pg.refused_hint(pg.admin_powers(conn))
    except psycopg.Error:  # the connection went with the error: the generic hint then
        return None


@contextlib.contextmanager
def build_lock(conn: psycopg.Connection[Any], wait_s: int = BUILD_LOCK_WAIT_S) -> Iterator[None]:
    """Serialise template builds across processes/workers on this server."""
    import psycopg

    conn.execute("SELECT set_config('lock_timeout', %s, false)", (f"{wait_s}s",))
    try:
        pg.session_lock(conn, pg.TEMPLATE_BUILDS)
    except psycopg.errors.LockNotAvailable:
        raise LockTimeout(f"another process has been building a test template for {wait_s}s",
                          hint="wait for it, or end it (pg_stat_activity shows the holder)") from None
    finally:
        conn.execute("SELECT set_config('lock_timeout', '0', false)")
    try:
        yield
    finally:
        pg.session_unlock(conn, pg.TEMPLATE_BUILDS)


def ensure_owner(conn: psycopg.Connection[Any], admin: DbURL, owner: str = OWNER) -> None:
    """The dedicated role: LOGIN, no special rights, the derived password, and the admin
    holding its privileges (to create, rename and drop its databases). Call under the lock.

    An existing role is converged, naming only the attributes that drifted: a non-superuser
    admin (managed services) may not name NOSUPERUSER or NOREPLICATION even to keep them so.
    Every check comes before the first change."""
    try:
        powers = pg.check_admin(conn)
    except PermissionDenied as exc:  # said as every other refusal of the testdb commands is
        raise PermissionDenied(f"the admin role cannot manage test databases: {exc.message}",
                               hint=exc.hint) from None
    info = pg.role_info(conn, owner)
    if info and info["super"]:
        raise InvalidName(f"role {owner!r} is a superuser; test databases need a plain role")
    password = owner_password(admin, owner)
    member = pg.admin_is_member(conn, owner)
    fix: list[str] = []
    if info is not None:
        fix = pg.role_drift(info)
        pg.check_changeable(conn, owner, fix, powers)
        # The password is set again whatever it was: only a superuser can read the verifier.
        if fix or password is not None or not member:
            pg.check_manageable(conn, owner, powers)
        if fix or password is not None:
            conn.execute(pg.role_statement(conn, owner, exists=True, attributes=fix,
                                           password=password).sql)
    else:
        conn.execute(pg.role_statement(conn, owner, exists=False, password=password).sql)
    if not member:
        conn.execute(pg.grant_to_admin_sql(owner, powers.version))


def owned(conn: psycopg.Connection[Any], prefix: str, owner: str) -> list[tuple[str, bool]]:
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
    source = f"{migrations_dir(settings).resolve()}|seed={seed}"
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


def _build(conn: psycopg.Connection[Any], admin: DbURL, settings: Settings, name: str, fp: str,
           source: str, *, seed: bool, owner: str) -> None:
    from psycopg import sql

    build = BUILD_PREFIX + fp[:12]
    log.info("building test template %s", name)
    pg.drop_database(conn, build)  # a crashed build's leftover (we hold the lock: nobody else's)
    conn.execute(pg.create_database_sql(conn, build, owner))
    try:
        with connect(admin.with_(dbname=build), settings) as target:
            for stmt in pg.own_public_schema_sql(owner):
                target.execute(stmt)
            target.commit()
        # The migrations run as the owner, as the application's own migrations would.
        as_owner = Target.of(owner_url(admin, build, owner), settings)
        migrate(as_owner)
        if seed:
            # a template is a test database whatever DBKIT_ENV says: its demo data is the point
            seeding.seed_sample(as_owner, allow_production=True)
        pg.wait_sessions_gone(conn, build, timeout_s=10)
        # Template first, name last: a database under the final name is always complete.
        conn.execute(pg.make_template_sql(build))
        conn.execute(pg.rename_database_sql(build, name))
    except BaseException:
        with contextlib.suppress(Exception):
            pg.drop_database(conn, build, template=True)
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
                pg.drop_database(conn, dbname, template=True)
                dropped.append(dbname)
            except psycopg.Error as exc:  # in use by an older run: next time
                log.warning("could not drop stale template %s: %s", dbname, exc)
    return dropped


