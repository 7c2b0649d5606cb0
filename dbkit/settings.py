"""Settings, resolved once: command-line flags, then the environment, then ``.env``, then defaults.

This is the only module that reads ``os.environ``; everything else receives a ``Settings``.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dbkit.errors import ConfigError
from dbkit.urls import DbURL

# variable name -> (Settings field, default, help). README and .env.example document the same.
VARIABLES: dict[str, tuple[str, Any, str]] = {
    "DATABASE_URL": ("database_url", None,
                     "the application's database: postgresql://role:password@host:port/database"),
    "DBKIT_ADMIN_URL": ("admin_url", None,
                        "a connection allowed to create roles and databases"),
    "DBKIT_APP_ROLE": ("app_role", None, "optional second, DML-only role for the application"),
    "DBKIT_MIGRATIONS": ("migrations", None, "migrations directory"),
    "DBKIT_MIGRATE_URL": ("migrate_url", None,
                          "direct (non-pooled) URL for migrations, when DATABASE_URL is a pooler"),
    "DBKIT_ENV": ("env", "development", "development | test | production (guards reset/lint)"),
    "DBKIT_DATA_DIR": ("data_dir", ".dbkit", "where dbkit's own local PostgreSQL keeps its data"),
    "DBKIT_PG_BIN": ("pg_bin", None, "directory holding initdb/pg_ctl/postgres"),
    "DBKIT_LOCK_TIMEOUT": ("lock_timeout", "5s", "lock_timeout for migration statements"),
    "DBKIT_STATEMENT_TIMEOUT": ("statement_timeout", "0",
                                "statement_timeout for migration statements (0 = none)"),
    "DBKIT_CONNECT_TIMEOUT": ("connect_timeout", "5", "seconds to wait for a connection"),
}

_ENV_KEY = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=")


@dataclass
class Settings:
    database_url: str | None = None
    admin_url: str | None = None
    app_role: str | None = None
    migrations: str | None = None
    migrate_url: str | None = None
    env: str = "development"
    data_dir: str = ".dbkit"
    pg_bin: str | None = None
    lock_timeout: str = "5s"
    statement_timeout: str = "0"
    connect_timeout: str = "5"
    env_file: Path = Path(".env")
    cwd: Path = field(default_factory=Path.cwd)
    # libpq's PG* variables (from the environment or .env), so "is a server configured?"
    # can be answered without anyone else reading os.environ.
    pg_env: dict[str, str] = field(default_factory=dict)
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
        """Resolve settings. ``flags`` uses field names; ``None`` values mean "not given"."""
        flags = {k: v for k, v in (flags or {}).items() if v is not None}
        environ = os.environ if environ is None else environ
        cwd = cwd or Path.cwd()
        explicit_file = env_file is not None
        path = Path(env_file) if env_file is not None else cwd / ".env"
        if not path.is_absolute():
            path = cwd / path
        file_values = read_env_file(path, required=explicit_file)
        _warn_unparsed(path)
        values: dict[str, Any] = {}
        for var, (name, default, _help) in VARIABLES.items():
            if name in flags:
                values[name] = flags[name]
            elif environ.get(var):
                values[name] = environ[var]
            elif file_values.get(var):
                values[name] = file_values[var]
            else:
                values[name] = default
        pg_env = {k: v for k, v in file_values.items() if k.startswith("PG") and v}
        pg_env.update({k: v for k, v in environ.items() if k.startswith("PG") and v})
        s = cls(**values, env_file=path, cwd=cwd, pg_env=pg_env,
                **{k: bool(flags.get(k, False)) for k in ("local", "debug", "verbose")})
        s.validate()
        return s

    def validate(self) -> None:
        if self.env not in ("development", "test", "production"):
            raise ConfigError(f"DBKIT_ENV must be development, test or production (got {self.env!r})")
        try:
            if float(self.connect_timeout) <= 0:
                raise ValueError
        except ValueError:
            raise ConfigError("DBKIT_CONNECT_TIMEOUT must be a positive number of seconds") from None
        port = self.pg_env.get("PGPORT")
        if port is not None and not (port.isdigit() and 0 < int(port) < 65536):
            raise ConfigError(f"PGPORT must be a port number (got {port!r})")
        for url, what in ((self.database_url, "DATABASE_URL"), (self.admin_url, "DBKIT_ADMIN_URL"),
                          (self.migrate_url, "DBKIT_MIGRATE_URL")):
            if url:
                DbURL.parse(url, what)

    # -- typed accessors -------------------------------------------------------------
    def app_url(self) -> DbURL:
        if not self.database_url:
            raise ConfigError(
                "DATABASE_URL is not set",
                hint="set DATABASE_URL in the environment or .env (or run dbkit setup)",
            )
        url = DbURL.parse(self.database_url, "DATABASE_URL")
        if not url.dbname or not url.user:
            raise ConfigError("DATABASE_URL must name both a role and a database",
                              hint="use postgresql://role:password@host:port/database")
        return url

    def migration_url(self) -> DbURL:
        """Where migrations run: DBKIT_MIGRATE_URL (a direct, unpooled URL) or DATABASE_URL."""
        if self.migrate_url:
            return DbURL.parse(self.migrate_url, "DBKIT_MIGRATE_URL")
        return self.app_url()

    def admin(self) -> DbURL | None:
        return DbURL.parse(self.admin_url, "DBKIT_ADMIN_URL") if self.admin_url else None

    @property
    def data_path(self) -> Path:
        p = Path(self.data_dir)
        return p if p.is_absolute() else self.cwd / p

    @property
    def production(self) -> bool:
        return self.env == "production"


def read_env_file(path: Path, required: bool = False) -> dict[str, str]:
    if not path.exists():
        if required:
            raise ConfigError(f"env file {path} does not exist", hint="check --env-file")
        return {}
    from dotenv import dotenv_values

    try:
        return {k: v for k, v in dotenv_values(path).items() if v is not None}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read env file {path}: {exc.__class__.__name__}") from None


def _warn_unparsed(path: Path) -> None:
    """python-dotenv skips a line it cannot parse without a word; say which one, or a broken
    DATABASE_URL line reads as 'DATABASE_URL is not set'."""
    if not path.is_file():
        return
    from dotenv.parser import parse_stream

    try:
        with path.open(encoding="utf-8") as f:
            bad = [b.original.line for b in parse_stream(f) if b.error]
    except (OSError, UnicodeDecodeError):
        return  # read_env_file has already said so
    for line in bad:
        logging.getLogger("dbkit").warning("%s:%d: cannot parse this line; it is ignored",
                                           path, line)


def update_env_file(path: Path, key: str, value: str) -> None:
    """Set ``key`` in a .env file, keeping every other line and comment; mode 0600.

    Written to a temporary file and renamed, so a crash never leaves a half-written file.
    """
    check_env_writable(path)
    try:
        _write_env(path, key, value)
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or exc.__class__.__name__
        raise ConfigError(f"cannot write env file {path}: {why}",
                          hint="make it a writable file, or choose another with --env-file"
                          ) from None


def check_env_writable(path: Path) -> None:
    """Fail before anything is created whose secret would then have nowhere to go."""
    if path.exists() and not path.is_file():
        raise ConfigError(f"env file {path} is not a regular file",
                          hint="remove or rename it, or choose another with --env-file")
    where = path if path.exists() else path.parent
    if not os.access(where, os.W_OK) or not path.parent.is_dir():
        raise ConfigError(f"env file {path} cannot be written",
                          hint="make it writable, or choose another with --env-file")


def _write_env(path: Path, key: str, value: str) -> None:
    lines = path.read_text().splitlines(keepends=True) if path.exists() else []
    new_line = f"{key}='{value}'\n" if "'" not in value else f'{key}="{value}"\n'
    for i, line in enumerate(lines):
        m = _ENV_KEY.match(line)
        if m and m.group(1) == key:
            lines[i] = new_line
            break
    else:
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
        lines.append(new_line)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".env.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            f.writelines(lines)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
