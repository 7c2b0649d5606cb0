"""Settings, resolved once: command-line flags, then the environment, then ``.env``, then defaults.

This is the only module that reads ``os.environ``. Every value is parsed and checked here, once,
into its type (URLs into ``DbURL``, durations into milliseconds, directories into absolute
``Path``s), so a bad value is the same error (exit 3, naming where it came from) for every
command. Everything else receives a ``Settings``, and a command that acts on one database a
``Target``: that database's URLs together with the settings (dbmate's ``DB``).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from dbkit import envfile
from dbkit.errors import ConfigError, Refused
from dbkit.urls import DbURL

Env = Literal["development", "test", "production"]
ENVS: tuple[Env, ...] = ("development", "test", "production")


@dataclass(frozen=True)
class Variable:
    """One setting: its environment variable, the flag that overrides it, its default."""

    name: str
    key: str  # the key in Settings.load(flags=...)
    flag: str | None
    default: str | None
    help: str


# README and .env.example document the same variables (a test keeps them in step).
VARIABLES: tuple[Variable, ...] = (
    Variable("DATABASE_URL", "database_url", None, None,
             "the application's database: postgresql://role:password@host:port/database "
             "(or a libpq key=value string)"),
    Variable("DBKIT_ADMIN_URL", "admin_url", None, None,
             "a connection allowed to create roles and databases"),
    Variable("DBKIT_APP_ROLE", "app_role", "--app-role", None,
             "optional second, DML-only role for the application"),
    Variable("DBKIT_APP_URL", "app_url", None, None,
             "the app role's URL (written by dbkit create/setup)"),
    Variable("DBKIT_MIGRATIONS", "migrations", "--migrations", None, "migrations directory"),
    Variable("DBKIT_MIGRATE_URL", "migrate_url", None, None,
             "direct (non-pooled) URL for migrations, when DATABASE_URL is a pooler"),
    Variable("DBKIT_ENV", "env", None, "development",
             "development | test | production (guards reset/drop/lint)"),
    Variable("DBKIT_DATA_DIR", "data_dir", None, ".dbkit",
             "where dbkit's own local PostgreSQL keeps its data"),
    Variable("DBKIT_PG_BIN", "pg_bin", None, None, "directory holding initdb/pg_ctl/postgres"),
    Variable("DBKIT_PG_SEARCH", "pg_search", None, None,
             "where to look for PostgreSQL's bin directory when DBKIT_PG_BIN is unset, after "
             "pg_config and PATH: directory globs separated by ':' (default: the usual system "
             "locations); the dbkit[embedded] extra's binaries are always tried last"),
    Variable("DBKIT_LOCK_TIMEOUT", "lock_timeout", "--lock-timeout", "5s",
             "how long to wait for the migration lock and for table locks"),
    Variable("DBKIT_STATEMENT_TIMEOUT", "statement_timeout", "--statement-timeout", "0",
             "statement_timeout for migration statements (0 = none)"),
    Variable("DBKIT_CONNECT_TIMEOUT", "connect_timeout", None, "5",
             "how long to wait for a connection"),
)

# libpq's variables that say where and as whom to connect: any of them means "an admin server
# is configured". Others (PGDATA, PGBIN, PGSSLMODE, PGAPPNAME...) steer nothing of dbkit's.
CONNECTION_VARIABLES = ("PGHOST", "PGHOSTADDR", "PGPORT", "PGUSER", "PGDATABASE", "PGPASSWORD",
                        "PGPASSFILE", "PGSERVICE", "PGSERVICEFILE")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|min|h)?\s*$")
_UNIT_MS = {"ms": 1, "s": 1000, "min": 60_000, "h": 3_600_000}
_MAX_MS = 2_147_483_647  # PostgreSQL's limit for lock_timeout and statement_timeout (~24 days)


def parse_duration(value: str, what: str) -> int:
    """``5s``, ``500ms``, ``2min``, ``1h`` in milliseconds; a bare number is seconds (as
    PostgreSQL's own ``connect_timeout`` is); ``0`` means no limit. The one duration parser."""
    m = _DURATION.match(value)
    hint = f"fix {what}; a bare number means seconds, 0 means no limit"
    if not m:
        raise ConfigError(f"{what} must be a duration like 5s, 500ms or 2min (got {value!r})",
                          hint=hint)
    ms = round(float(m.group(1)) * _UNIT_MS[m.group(2) or "s"])
    if ms > _MAX_MS:
        raise ConfigError(f"{what} is longer than PostgreSQL allows (about 24 days; got {value!r})",
                          hint=hint)
    return ms


@dataclass(frozen=True)
class Settings:
    database_url: DbURL | None = None
    admin_url: DbURL | None = None
    app_role: str | None = None
    app_url: DbURL | None = None
    migrations: Path | None = None  # an explicit choice; see dbkit.migrate.files.migrations_dir
    migrate_url: DbURL | None = None
    env: Env = "development"
    data_dir: Path = field(default_factory=lambda: Path.cwd() / ".dbkit")
    pg_bin: Path | None = None
    # DBKIT_PG_SEARCH: directory globs searched for binaries (None: dbkit.server's defaults)
    pg_search: tuple[str, ...] | None = None
    lock_timeout_ms: int = 5000
    statement_timeout_ms: int = 0
    connect_timeout_ms: int = 5000
    env_file: Path = field(default_factory=lambda: Path.cwd() / ".env")
    cwd: Path = field(default_factory=Path.cwd)
    # libpq's connection variables (from the environment or .env), so "is a server
    # configured?" can be answered without anyone else reading os.environ.
    pg_env: Mapping[str, str] = field(default_factory=dict)
    local: bool = False
    debug: bool = False
    verbose: bool = False

    @classmethod
    def load(
        cls,
        flags: Mapping[str, Any] | None = None,
        environ: Mapping[str, str] | None = None,
        env_file: str | Path | None = None,
        cwd: Path | None = None,
    ) -> Settings:
        """Resolve and check every setting. ``flags`` uses the keys of ``VARIABLES`` (and
        ``local``/``debug``/``verbose``); ``None`` values mean "not given"."""
        given = {k: v for k, v in (flags or {}).items() if v is not None}
        environ = os.environ if environ is None else environ
        cwd = cwd or Path.cwd()
        path = Path(env_file) if env_file is not None else cwd / ".env"
        if not path.is_absolute():
            path = cwd / path
        in_file = envfile.read(path, required=env_file is not None)
        envfile.warn_unparsable(path)
        raw: dict[str, tuple[str, str] | None] = {}  # key -> (value, where it came from)
        for var in VARIABLES:
            if var.key in given:
                raw[var.key] = (str(given[var.key]), var.flag or var.name)
            elif environ.get(var.name):
                raw[var.key] = (environ[var.name], var.name)
            elif in_file.get(var.name):
                raw[var.key] = (in_file[var.name], f"{var.name} (in {path.name})")
            else:
                raw[var.key] = (var.default, var.name) if var.default is not None else None
        pg_env = {k: v for k, v in in_file.items() if k in CONNECTION_VARIABLES and v}
        pg_env.update({k: v for k, v in environ.items() if k in CONNECTION_VARIABLES and v})
        _check_pg_env(pg_env)
        return cls(**_parse(raw, cwd), env_file=path, cwd=cwd, pg_env=pg_env,
                   local=bool(given.get("local")), debug=bool(given.get("debug")),
                   verbose=bool(given.get("verbose")))

    def target(self) -> Target:
        """The application's database (DATABASE_URL), for a command that acts on it."""
        if self.database_url is None:
            raise ConfigError(
                "DATABASE_URL is not set",
                hint="set DATABASE_URL in the environment or .env (or run dbkit setup)",
            )
        return Target.of(self.database_url, self, migrate_url=self.migrate_url)

    @property
    def production(self) -> bool:
        return self.env == "production"

    def refuse_in_production(self, what: str, *, allowed: bool = False,
                             override: str | None = "--allow-production",
                             hint: str | None = None) -> None:
        """The production guard, one for every command that destroys or fakes data: Refused
        (exit 16) when DBKIT_ENV=production, unless ``allowed`` by its explicit override."""
        if self.production and not allowed:
            raise Refused(f"{what} is refused in production (DBKIT_ENV=production)",
                          hint=hint or (f"if you really mean it, pass {override}" if override
                                        else "do it by hand, deliberately, if ever"))

    @property
    def connect_timeout_s(self) -> int:
        """libpq's ``connect_timeout`` takes whole seconds."""
        return max(1, -(-self.connect_timeout_ms // 1000))


def child_environment(**extra: str) -> dict[str, str]:
    """The environment for a PostgreSQL client program dbkit runs (pg_dump): this process's,
    without libpq's PG* variables (dbkit names the connection itself), plus ``extra``."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")} | extra


def _parse(raw: Mapping[str, tuple[str, str] | None], cwd: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("database_url", "admin_url", "app_url", "migrate_url"):
        item = raw[key]
        out[key] = DbURL.parse(item[0], item[1]) if item else None
    for key in ("app_role",):
        item = raw[key]
        out[key] = item[0] if item else None
    for key in ("migrations", "data_dir", "pg_bin"):
        item = raw[key]
        out[key] = _path(item[0], cwd) if item else None
    search = raw["pg_search"]
    out["pg_search"] = (tuple(p for p in search[0].split(os.pathsep) if p.strip())
                        if search else None)
    env_item = raw["env"]
    assert env_item is not None  # it has a default
    if env_item[0] not in ENVS:
        raise ConfigError(f"{env_item[1]} must be development, test or production "
                          f"(got {env_item[0]!r})")
    out["env"] = cast(Env, env_item[0])
    for key in ("lock_timeout", "statement_timeout", "connect_timeout"):
        item = raw[key]
        assert item is not None  # each has a default
        out[f"{key}_ms"] = parse_duration(item[0], item[1])
        if key == "connect_timeout" and out[f"{key}_ms"] <= 0:
            raise ConfigError(f"{item[1]} must be more than 0 (got {item[0]!r})",
                              hint="give the connection some seconds, e.g. 5")
    return out


def _path(value: str, cwd: Path) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else cwd / p


def _check_pg_env(pg_env: Mapping[str, str]) -> None:
    port = pg_env.get("PGPORT")
    if port is not None and not (port.isdigit() and 0 < int(port) < 65536):
        raise ConfigError(f"PGPORT must be a port number (got {port!r})")
    for key in ("PGHOST", "PGUSER", "PGDATABASE", "PGHOSTADDR", "PGSERVICE"):
        # libpq would cut the value at a NUL or take a newline literally: refuse, as in URLs
        if any(ord(ch) < 32 or ord(ch) == 127 for ch in pg_env.get(key, "")):
            raise ConfigError(f"{key} contains a control character (a newline?)",
                              hint=f"set {key} to the plain value")


@dataclass(frozen=True)
class Target:
    """One database to act on, as dbmate's ``DB``: how the application's role reaches it
    (``url``), how migrations reach it (``migrate_url``: a direct route when ``url`` is a
    pooler), and the settings that say how long to wait and where the migrations are."""

    url: DbURL
    migrate_url: DbURL
    settings: Settings

    @classmethod
    def of(cls, url: DbURL, settings: Settings, *, migrate_url: DbURL | None = None) -> Target:
        if not url.dbname or not url.user:
            raise ConfigError("DATABASE_URL must name both a role and a database",
                              hint="use postgresql://role:password@host:port/database")
        return cls(url, migrate_url or url, settings)

    @property
    def dbname(self) -> str:
        assert self.url.dbname is not None  # checked in of()
        return self.url.dbname

    @property
    def role(self) -> str:
        assert self.url.user is not None  # checked in of()
        return self.url.user

    def at(self, dbname: str) -> Target:
        """The same servers and roles, another database (a scratch copy, say)."""
        return dataclasses.replace(self, url=self.url.with_(dbname=dbname),
                                   migrate_url=self.migrate_url.with_(dbname=dbname))

    def with_url(self, url: DbURL) -> Target:
        """The same database reached with ``url`` (e.g. now with the password create made);
        migrations follow unless they have a route of their own."""
        own = self.migrate_url if self.migrate_url != self.url else url
        return dataclasses.replace(self, url=url, migrate_url=own)
