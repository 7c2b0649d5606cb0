"""Where the app connects, and its connection pool.

The app connects as the application role that ``dbkit setup --app-role posts_app`` made: it may
read and write the posts tables but not change the schema or the migration bookkeeping. dbkit
writes that role's URL to ``.env`` as ``DBKIT_APP_URL`` (beside the owner's ``DATABASE_URL``);
a real environment variable wins over ``.env``, as in dbkit itself.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from dotenv import dotenv_values
from psycopg import Connection
from psycopg.rows import DictRow, dict_row
from psycopg_pool import ConnectionPool


class ConfigError(RuntimeError):
    pass


def database_url(environ: Mapping[str, str] | None = None, env_file: Path | None = None) -> str:
    """DBKIT_APP_URL, else DATABASE_URL (the owner's: a one-role setup), each taken from the
    environment first, then from ``.env`` in the working directory."""
    env_file = env_file if env_file is not None else Path.cwd() / ".env"
    values = {k: v for k, v in dotenv_values(env_file).items() if v} if env_file.is_file() else {}
    values.update(os.environ if environ is None else environ)
    for key in ("DBKIT_APP_URL", "DATABASE_URL"):
        if values.get(key):
            return values[key]
    raise ConfigError(f"posts_api: neither DBKIT_APP_URL nor DATABASE_URL is set (nor in "
                      f"{env_file}); run `dbkit setup --app-role posts_app` in this directory")


Pool = ConnectionPool[Connection[DictRow]]


def make_pool(url: str, *, max_size: int = 10) -> Pool:
    """A pool of connections that return rows as dicts. Not opened yet: the app opens it when
    it starts. A request waits at most 10 s for a free connection (then 503)."""
    return ConnectionPool(url, min_size=1, max_size=max_size, open=False, timeout=10,
                          connection_class=Connection[DictRow],
                          kwargs={"row_factory": dict_row}, name="posts_api")
